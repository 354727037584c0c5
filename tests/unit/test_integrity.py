"""Digests: the resume prefix digest over real files, align_down, and the hash cache."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpft.integrity import (
    HashCache,
    Identity,
    PrefixScan,
    align_down,
    prefix_digest,
    scan_prefix,
)
from tcpft.limits import RESUME_BLOCK_SIZE

BS = RESUME_BLOCK_SIZE


@pytest.fixture(scope="module")
def content() -> bytes:
    # Two blocks and a bit, each block different so a swapped block would show.
    return b"".join(bytes([i]) * BS for i in (1, 2)) + os.urandom(12345)


@pytest.fixture
def fd(tmp_path: Path, content: bytes) -> Iterator[int]:
    path = tmp_path / "file.bin"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


def test_block_size_is_4_mib() -> None:
    assert BS == 4 * 1024 * 1024


def test_prefix_digest_definition_on_a_real_file(fd: int, content: bytes) -> None:
    scan = scan_prefix(fd, 2 * BS)
    b0 = hashlib.sha256(content[:BS]).digest()
    b1 = hashlib.sha256(content[BS : 2 * BS]).digest()
    assert scan.blocks == [b0, b1]
    assert scan.digest == hashlib.sha256(b0 + b1).digest()
    assert scan.digest == prefix_digest([b0, b1])
    # It is not the plain SHA-256 of the prefix.
    assert scan.digest != hashlib.sha256(content[: 2 * BS]).digest()


def test_whole_hash_after_scan_equals_hash_of_prefix(fd: int, content: bytes) -> None:
    scan = scan_prefix(fd, 2 * BS)
    assert scan.whole.digest() == hashlib.sha256(content[: 2 * BS]).digest()
    # The running hash goes on: feeding the rest gives the digest of the whole file.
    scan.whole.update(content[2 * BS :])
    assert scan.whole.hexdigest() == hashlib.sha256(content).hexdigest()


def test_scan_of_one_block(fd: int, content: bytes) -> None:
    scan = scan_prefix(fd, BS)
    assert scan.blocks == [hashlib.sha256(content[:BS]).digest()]
    assert scan.digest == hashlib.sha256(hashlib.sha256(content[:BS]).digest()).digest()


def test_scan_of_nothing(fd: int) -> None:
    scan = scan_prefix(fd, 0)
    assert scan.blocks == []
    assert scan.digest == hashlib.sha256(b"").digest()
    assert scan.whole.digest() == hashlib.sha256(b"").digest()


def test_scan_does_not_move_the_file_offset(fd: int) -> None:
    os.lseek(fd, 7, os.SEEK_SET)
    scan_prefix(fd, BS)
    assert os.lseek(fd, 0, os.SEEK_CUR) == 7


def test_scan_of_a_short_file_raises_eof(tmp_path: Path) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(b"x" * (BS + 10))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(EOFError):
            scan_prefix(fd, 2 * BS)
    finally:
        os.close(fd)


def test_scan_of_an_empty_file_raises_eof(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(EOFError):
            scan_prefix(fd, BS)
    finally:
        os.close(fd)


def test_prefix_scan_digest_property() -> None:
    blocks = [b"\x01" * 32, b"\x02" * 32]
    scan = PrefixScan(blocks, hashlib.sha256())
    assert scan.digest == hashlib.sha256(b"\x01" * 32 + b"\x02" * 32).digest()


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (0, 0),
        (1, 0),
        (BS - 1, 0),
        (BS, BS),
        (BS + 1, BS),
        (2 * BS + 12345, 2 * BS),
        (10 * BS, 10 * BS),
        (2**62 + 5, 2**62),
    ],
)
def test_align_down(offset: int, expected: int) -> None:
    assert align_down(offset) == expected


# --- the hash cache ------------------------------------------------------------------

A: Identity = (1, 1, 10, 100, 7)
B: Identity = (1, 2, 10, 100, 7)
C: Identity = (1, 3, 10, 100, 7)
DA, DB, DC = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32


def test_cache_put_and_get() -> None:
    cache = HashCache()
    assert cache.sha256(A) is None
    cache.put_sha256(A, DA)
    assert cache.sha256(A) == DA
    assert cache.sha256(B) is None
    assert len(cache) == 1


def test_identity_change_misses() -> None:
    cache = HashCache()
    cache.put_sha256(A, DA)
    assert cache.sha256((1, 1, 10, 101, 7)) is None  # mtime changed
    assert cache.sha256((1, 1, 11, 100, 7)) is None  # size changed
    assert cache.sha256((1, 1, 10, 100, 8)) is None  # ctime changed: written, mtime set back


def test_cache_evicts_least_recently_put() -> None:
    cache = HashCache(max_entries=2)
    cache.put_sha256(A, DA)
    cache.put_sha256(B, DB)
    cache.put_sha256(C, DC)
    assert len(cache) == 2
    assert cache.sha256(A) is None
    assert cache.sha256(B) == DB
    assert cache.sha256(C) == DC


def test_cache_update_refreshes_recency() -> None:
    cache = HashCache(max_entries=2)
    cache.put_sha256(A, DA)
    cache.put_sha256(B, DB)
    cache.put_blocks(A, [DA])  # A is used again
    cache.put_sha256(C, DC)
    assert cache.sha256(B) is None
    assert cache.sha256(A) == DA
    assert cache.blocks(A, 1) == [DA]


def test_cache_read_refreshes_recency() -> None:
    cache = HashCache(max_entries=2)
    cache.put_sha256(A, DA)
    cache.put_sha256(B, DB)
    assert cache.sha256(A) == DA  # A is used
    cache.put_sha256(C, DC)
    assert cache.sha256(A) == DA
    assert cache.sha256(B) is None


def test_blocks_none_when_fewer_cached() -> None:
    cache = HashCache()
    assert cache.blocks(A, 1) is None
    cache.put_sha256(A, DA)
    assert cache.blocks(A, 1) is None  # entry exists, no blocks yet
    cache.put_blocks(A, [DA, DB])
    assert cache.blocks(A, 3) is None
    assert cache.blocks(A, 2) == [DA, DB]
    assert cache.blocks(A, 1) == [DA]
    assert cache.blocks(A, 0) == []


def test_blocks_keeps_the_longer_list() -> None:
    cache = HashCache()
    cache.put_blocks(A, [DA, DB, DC])
    cache.put_blocks(A, [DA])
    assert cache.blocks(A, 3) == [DA, DB, DC]


def test_blocks_returned_are_a_copy() -> None:
    cache = HashCache()
    given = [DA, DB]
    cache.put_blocks(A, given)
    given.append(DC)
    assert cache.blocks(A, 3) is None
    got = cache.blocks(A, 2)
    assert got is not None
    got.append(DC)
    assert cache.blocks(A, 3) is None


def test_cache_of_size_zero_caches_nothing() -> None:
    cache = HashCache(max_entries=0)
    cache.put_sha256(A, DA)
    assert cache.sha256(A) is None


def test_cache_thread_safety_smoke() -> None:
    cache = HashCache(max_entries=64)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(2000):
                ident = (n, i % 100, i, 0, 0)
                digest = hashlib.sha256(f"{n}-{i}".encode()).digest()
                cache.put_sha256(ident, digest)
                cache.put_blocks(ident, [digest])
                got = cache.sha256(ident)
                assert got is None or got == digest
                blocks = cache.blocks(ident, 1)
                assert blocks is None or blocks == [digest]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(cache) <= 64


def test_cache_saved_and_loaded(tmp_path: Path) -> None:
    cache = HashCache()
    cache.put_sha256(A, DA)
    cache.put_blocks(B, [DB, DC])
    cache.put_sha256(C, DC)
    cache.put_blocks(C, [DA])
    cache.save(tmp_path / "digests")
    again = HashCache()
    assert again.load(tmp_path / "digests") == 3
    assert again.sha256(A) == DA and again.blocks(A, 1) is None
    assert again.sha256(B) is None and again.blocks(B, 2) == [DB, DC]
    assert again.sha256(C) == DC and again.blocks(C, 1) == [DA]
    assert not (tmp_path / "digests.tmp").exists()
    assert (tmp_path / "digests").stat().st_mode & 0o777 == 0o600  # as the users file
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "digests").mkdir()  # the rename cannot replace a directory
    with pytest.raises(OSError):
        cache.save(tmp_path / "blocked" / "digests")
    assert not (tmp_path / "blocked" / "digests.tmp").exists()


def test_a_damaged_saved_cache_costs_only_its_entries(tmp_path: Path) -> None:
    good = '{"id":[1,1,10,100,7],"sha256":"' + DA.hex() + '","blocks":null}'
    bad = [
        "not json",
        "[]",
        '{"id":[1,1,10,100],"sha256":null,"blocks":null}',  # four numbers
        '{"id":[1,1,10,100,-7],"sha256":null,"blocks":null}',
        '{"id":[1,1,10,100,true],"sha256":null,"blocks":null}',
        '{"id":[1,2,10,100,7],"sha256":"abcd","blocks":null}',  # short digest
        '{"id":[1,2,10,100,7],"sha256":"zz' + "0" * 62 + '","blocks":null}',
        '{"id":[1,2,10,100,7],"sha256":null,"blocks":"' + "a" * 66 + '"}',  # 33 bytes
        '{"id":[1,2,10,100,7],"sha256":null,"blocks":""}',
        '{"id":[1,2,10,100,7]}',
    ]
    (tmp_path / "digests").write_text("\n".join([*bad, good]) + "\n")
    cache = HashCache()
    assert cache.load(tmp_path / "digests") == 1
    assert cache.sha256(A) == DA and len(cache) == 1
    (tmp_path / "binary").write_bytes(os.urandom(4096))
    assert HashCache().load(tmp_path / "binary") == 0
    assert HashCache().load(tmp_path / "missing") == 0
    (tmp_path / "a-directory").mkdir()
    assert HashCache().load(tmp_path / "a-directory") == 0
