"""Digests: the whole-file SHA-256, the resume prefix digest, and the server's hash cache.

The prefix digest of the first ``N`` bytes of a file (``N`` a multiple of
:data:`~tcpft.limits.RESUME_BLOCK_SIZE`) is the SHA-256 of the concatenated SHA-256
digests of its blocks. Block digests can be cached, so a server answers a resume of
an unchanged file without reading its prefix again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .limits import RESUME_BLOCK_SIZE

#: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns): a file's content is assumed
#: unchanged while all five stay the same (the ctime changes on every write and cannot
#: be set back, unlike the mtime).
Identity = tuple[int, int, int, int, int]

log = logging.getLogger("tcpft.integrity")
_SAVED_MAX_BYTES = 256 * 1024 * 1024  # a saved cache larger than this is not read

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

    def save(self, path: Path) -> None:
        """Write the cache to ``path``, atomically (a temporary file, then a rename).

        One JSON object per line: ``{"id": [5 ints], "sha256": hex or null,
        "blocks": concatenated hex digests or null}``, least recently used first.

        Raises:
            OSError: the file cannot be written.
        """
        with self._lock:
            items = [(ident, c.sha256, c.blocks) for ident, c in self._items.items()]
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "w", encoding="ascii") as fh:
                for ident, sha, blocks in items:
                    record = {
                        "id": list(ident),
                        "sha256": sha.hex() if sha else None,
                        "blocks": b"".join(blocks).hex() if blocks else None,
                    }
                    fh.write(json.dumps(record, separators=(",", ":")) + "\n")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
            raise

    def load(self, path: Path) -> int:
        """Add the entries saved in ``path`` by :meth:`save`; return how many.

        A missing file loads nothing; malformed lines are skipped, and a file over
        256 MiB is not read: the cache only saves work, so a damaged one costs nothing
        but that. Raises nothing.
        """
        try:
            if path.stat().st_size > _SAVED_MAX_BYTES:
                log.warning("%s is too large; not loaded", path)
                return 0
            lines = path.read_text(encoding="ascii").splitlines()
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s: %s", path, exc)
            return 0
        loaded = 0
        for line in lines:
            entry = _parse_saved(line)
            if entry is None:
                continue
            ident, sha, blocks = entry
            if sha is not None:
                self.put_sha256(ident, sha)
            if blocks is not None:
                self.put_blocks(ident, blocks)
            loaded += 1
        return loaded


def _parse_saved(line: str) -> tuple[Identity, bytes | None, list[bytes] | None] | None:
    """One line written by :meth:`HashCache.save`, or None if it is not well formed."""
    try:
        record = json.loads(line)
        ident, sha, blocks = record["id"], record["sha256"], record["blocks"]
        if not (
            isinstance(ident, list)
            and len(ident) == 5
            and all(type(n) is int and n >= 0 for n in ident)
        ):
            return None
        digest = bytes.fromhex(sha) if sha is not None else None
        raw = bytes.fromhex(blocks) if blocks is not None else None
    except (ValueError, TypeError, KeyError):  # json.JSONDecodeError is a ValueError
        return None
    if digest is not None and len(digest) != 32:
        return None
    if raw is not None and (not raw or len(raw) % 32):
        return None
    parts = [raw[i : i + 32] for i in range(0, len(raw), 32)] if raw is not None else None
    return (ident[0], ident[1], ident[2], ident[3], ident[4]), digest, parts
