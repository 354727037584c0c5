"""Digests: the whole-file SHA-256, the resume prefix digest, and the server's hash cache.

The prefix digest of the first ``N`` bytes of a file (``N`` a multiple of
:data:`~tcpft.limits.RESUME_BLOCK_SIZE`) is the SHA-256 of the concatenated SHA-256
digests of its blocks. Block digests can be cached, so a server answers a resume of
an unchanged file without reading its prefix again.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from .limits import RESUME_BLOCK_SIZE

#: (st_dev, st_ino, st_size, st_mtime_ns): a file's content is assumed unchanged
#: while all four stay the same.
Identity = tuple[int, int, int, int]

_READ_SIZE = 1024 * 1024


def align_down(offset: int) -> int:
    """The largest multiple of the resume block size not above ``offset``."""
    return offset - offset % RESUME_BLOCK_SIZE


def prefix_digest(block_digests: list[bytes]) -> bytes:
    """The prefix digest over the given block digests."""
    return hashlib.sha256(b"".join(block_digests)).digest()


@dataclass
class PrefixScan:
    """What reading a file's prefix yields: its block digests and a running SHA-256."""

    blocks: list[bytes]
    whole: hashlib._Hash = field(repr=False)

    @property
    def digest(self) -> bytes:
        return prefix_digest(self.blocks)


def scan_prefix(fd: int, length: int) -> PrefixScan:
    """Read bytes ``[0, length)`` of ``fd`` (with pread) once, hashing them both ways.

    ``length`` must be a multiple of the block size. Blocking: run it in a thread.

    Raises:
        OSError: the read failed.
        EOFError: the file is shorter than ``length``.
    """
    whole = hashlib.sha256()
    blocks: list[bytes] = []
    pos = 0
    while pos < length:
        block = hashlib.sha256()
        end = pos + RESUME_BLOCK_SIZE
        while pos < end:
            chunk = os.pread(fd, min(_READ_SIZE, end - pos), pos)
            if not chunk:
                raise EOFError(f"file ends at {pos}, before {length}")
            block.update(chunk)
            whole.update(chunk)
            pos += len(chunk)
        blocks.append(block.digest())
    return PrefixScan(blocks, whole)


@dataclass
class _Cached:
    sha256: bytes | None = None
    blocks: list[bytes] | None = None


class HashCache:
    """A bounded, thread-safe LRU of digests keyed by file identity."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._items: OrderedDict[Identity, _Cached] = OrderedDict()
        self._lock = threading.Lock()

    def _entry(self, ident: Identity) -> _Cached:
        if self._max <= 0:
            return _Cached()  # a cache of size zero keeps nothing
        item = self._items.get(ident)
        if item is None:
            item = self._items[ident] = _Cached()
        self._items.move_to_end(ident)
        while len(self._items) > self._max:
            self._items.popitem(last=False)
        return item

    def _hit(self, ident: Identity) -> _Cached | None:
        item = self._items.get(ident)
        if item is not None:
            self._items.move_to_end(ident)
        return item

    def sha256(self, ident: Identity) -> bytes | None:
        """The cached whole-file digest, if any."""
        with self._lock:
            item = self._hit(ident)
            return item.sha256 if item else None

    def blocks(self, ident: Identity, count: int) -> list[bytes] | None:
        """The first ``count`` cached block digests, if that many are cached."""
        with self._lock:
            item = self._hit(ident)
            if item is None or item.blocks is None or len(item.blocks) < count:
                return None
            return item.blocks[:count]

    def put_sha256(self, ident: Identity, digest: bytes) -> None:
        with self._lock:
            self._entry(ident).sha256 = digest

    def put_blocks(self, ident: Identity, blocks: list[bytes]) -> None:
        with self._lock:
            item = self._entry(ident)
            if item.blocks is None or len(blocks) > len(item.blocks):
                item.blocks = list(blocks)

    def __len__(self) -> int:
        return len(self._items)
