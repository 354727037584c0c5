"""Digests: the whole-file digest, the resume prefix digest, and the server's hash cache.

The digest algorithm follows the protocol version: BLAKE3 (32 bytes) from version 3,
SHA-256 before. The prefix digest of the first ``N`` bytes of a file (``N`` a multiple
of :data:`~tcpft.limits.RESUME_BLOCK_SIZE`) is the digest of the concatenated digests
of its blocks, all with the same algorithm. Block digests can be cached, so a server
answers a resume of an unchanged file without reading its prefix again.
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
from typing import Final, Literal, Protocol

import blake3

from .limits import RESUME_BLOCK_SIZE

#: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns): a file's content is assumed
#: unchanged while all five stay the same (the ctime changes on every write and cannot
#: be set back, unlike the mtime).
Identity = tuple[int, int, int, int, int]

log = logging.getLogger("tcpft.integrity")
_SAVED_MAX_BYTES = 256 * 1024 * 1024  # a saved cache larger than this is not read

_READ_SIZE = 1024 * 1024

Algorithm = Literal["sha256", "blake3"]
SHA256: Final = "sha256"
BLAKE3: Final = "blake3"
#: The protocol version from which every digest on the wire is BLAKE3.
BLAKE3_VERSION: Final = 3


class Hasher(Protocol):
    """What hashlib's SHA-256 and blake3's hasher have in common (both release the GIL)."""

    def update(self, data: bytes | bytearray | memoryview, /) -> object: ...
    def digest(self) -> bytes: ...


def algorithm_for(version: int) -> Algorithm:
    """The digest algorithm of a session in protocol ``version``."""
    return BLAKE3 if version >= BLAKE3_VERSION else SHA256


def new_hasher(algorithm: Algorithm) -> Hasher:
    """A fresh hasher; BLAKE3 is single-threaded (the transfer uses the other core)."""
    if algorithm == BLAKE3:
        return blake3.blake3()
    return hashlib.sha256()


def labelled(algorithm: Algorithm, digest: bytes) -> str:
    """``digest`` as shown to people and scripts: ``blake3:<hex>`` (empty stays empty)."""
    return f"{algorithm}:{digest.hex()}" if digest else ""


def align_down(offset: int) -> int:
    """The largest multiple of the resume block size not above ``offset``."""
    return offset - offset % RESUME_BLOCK_SIZE


def prefix_digest(block_digests: list[bytes], algorithm: Algorithm) -> bytes:
    """The prefix digest over the given block digests."""
    hasher = new_hasher(algorithm)
    hasher.update(b"".join(block_digests))
    return hasher.digest()


@dataclass
class PrefixScan:
    """What reading a file's prefix yields: its block digests and a running whole-file hash."""

    algorithm: Algorithm
    blocks: list[bytes]
    whole: Hasher = field(repr=False)

    @property
    def digest(self) -> bytes:
        return prefix_digest(self.blocks, self.algorithm)


def scan_prefix(fd: int, length: int, algorithm: Algorithm) -> PrefixScan:
    """Read bytes ``[0, length)`` of ``fd`` (with pread) once, hashing them both ways.

    ``length`` must be a multiple of the block size. Blocking: run it in a thread.

    Raises:
        OSError: the read failed.
        EOFError: the file is shorter than ``length``.
    """
    whole = new_hasher(algorithm)
    blocks: list[bytes] = []
    pos = 0
    while pos < length:
        block = new_hasher(algorithm)
        end = pos + RESUME_BLOCK_SIZE
        while pos < end:
            chunk = os.pread(fd, min(_READ_SIZE, end - pos), pos)
            if not chunk:
                raise EOFError(f"file ends at {pos}, before {length}")
            block.update(chunk)
            whole.update(chunk)
            pos += len(chunk)
        blocks.append(block.digest())
    return PrefixScan(algorithm, blocks, whole)


#: What the cache is keyed by: a file's identity, and the digest algorithm.
_Key = tuple[Algorithm, Identity]


@dataclass
class _Cached:
    digest: bytes | None = None
    blocks: list[bytes] | None = None


class HashCache:
    """A bounded, thread-safe LRU of digests keyed by file identity and algorithm."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._items: OrderedDict[_Key, _Cached] = OrderedDict()
        self._lock = threading.Lock()

    def _entry(self, key: _Key) -> _Cached:
        if self._max <= 0:
            return _Cached()  # a cache of size zero keeps nothing
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = _Cached()
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)
        return item

    def _hit(self, key: _Key) -> _Cached | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def digest(self, ident: Identity, algorithm: Algorithm) -> bytes | None:
        """The cached whole-file digest, if any."""
        with self._lock:
            item = self._hit((algorithm, ident))
            return item.digest if item else None

    def blocks(self, ident: Identity, algorithm: Algorithm, count: int) -> list[bytes] | None:
        """The first ``count`` cached block digests, if that many are cached."""
        with self._lock:
            item = self._hit((algorithm, ident))
            if item is None or item.blocks is None or len(item.blocks) < count:
                return None
            return item.blocks[:count]

    def put_digest(self, ident: Identity, algorithm: Algorithm, digest: bytes) -> None:
        with self._lock:
            self._entry((algorithm, ident)).digest = digest

    def put_blocks(self, ident: Identity, algorithm: Algorithm, blocks: list[bytes]) -> None:
        with self._lock:
            item = self._entry((algorithm, ident))
            if item.blocks is None or len(blocks) > len(item.blocks):
                item.blocks = list(blocks)

    def __len__(self) -> int:
        return len(self._items)

    def save(self, path: Path) -> None:
        """Write the cache to ``path``, atomically (a temporary file, then a rename).

        One JSON object per line: ``{"id": [5 ints], "algorithm": "blake3" or "sha256",
        "digest": hex or null, "blocks": concatenated hex digests or null}``, least
        recently used first.

        Raises:
            OSError: the file cannot be written.
        """
        with self._lock:
            items = [(key, c.digest, c.blocks) for key, c in self._items.items()]
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "w", encoding="ascii") as fh:
                for (algorithm, ident), digest, blocks in items:
                    record = {
                        "id": list(ident),
                        "algorithm": algorithm,
                        "digest": digest.hex() if digest else None,
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
        but that. Lines saved before BLAKE3 (``"sha256"`` in place of ``"algorithm"``
        and ``"digest"``) load as SHA-256 entries. Raises nothing.
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
        loaded = damaged = 0
        for line in lines:
            entry = _parse_saved(line)
            if entry is None:
                damaged += 1
                continue
            (algorithm, ident), digest, blocks = entry
            if digest is not None:
                self.put_digest(ident, algorithm, digest)
            if blocks is not None:
                self.put_blocks(ident, algorithm, blocks)
            loaded += 1
        if damaged:
            log.warning("%s: skipped %d damaged line(s)", path, damaged)
        return loaded


def _parse_saved(line: str) -> tuple[_Key, bytes | None, list[bytes] | None] | None:
    """One line written by :meth:`HashCache.save`, or None if it is not well formed."""
    try:
        record = json.loads(line)
        if "algorithm" in record:
            algorithm, hexed = record["algorithm"], record["digest"]
        else:  # saved by a version without BLAKE3
            algorithm, hexed = SHA256, record["sha256"]
        ident, blocks = record["id"], record["blocks"]
        if algorithm not in (SHA256, BLAKE3) or not (
            isinstance(ident, list)
            and len(ident) == 5
            and all(type(n) is int and n >= 0 for n in ident)
        ):
            return None
        digest = bytes.fromhex(hexed) if hexed is not None else None
        raw = bytes.fromhex(blocks) if blocks is not None else None
    # json.JSONDecodeError is a ValueError; RecursionError: nested too deeply ("[[[[...").
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    if digest is not None and len(digest) != 32:
        return None
    if raw is not None and (not raw or len(raw) % 32):
        return None
    parts = [raw[i : i + 32] for i in range(0, len(raw), 32)] if raw is not None else None
    key: _Key = (algorithm, (ident[0], ident[1], ident[2], ident[3], ident[4]))
    return key, digest, parts
