"""Digests: the algorithms, the resume prefix digest over real files, align_down, and
the hash cache."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from tcpft.integrity import (
    BLAKE3,
    SHA256,
    Algorithm,
    HashCache,
    Identity,
    PrefixScan,
    algorithm_for,
    align_down,
    labelled,
    new_hasher,
    prefix_digest,
    scan_prefix,
)
from tcpft.limits import DIGEST_SIZE, RESUME_BLOCK_SIZE

BS = RESUME_BLOCK_SIZE
ALGORITHMS: list[Algorithm] = [SHA256, BLAKE3]


def ref(algorithm: Algorithm, data: bytes) -> bytes:
    """The digest straight from the libraries, to check ours against."""
    if algorithm == BLAKE3:
        return blake3.blake3(data).digest()
    return hashlib.sha256(data).digest()


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


@pytest.mark.parametrize(("version", "algorithm"), [(1, SHA256), (2, SHA256), (3, BLAKE3)])
def test_the_protocol_version_picks_the_algorithm(version: int, algorithm: str) -> None:
    assert algorithm_for(version) == algorithm


def test_known_answers() -> None:
    # BLAKE3 of the empty input, from the BLAKE3 specification's test vectors.
    blake3_empty = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert new_hasher(BLAKE3).digest().hex() == blake3_empty
    sha256_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    hasher = new_hasher(SHA256)
    hasher.update(b"abc")
    assert hasher.digest().hex() == sha256_abc


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hashers_take_every_buffer_type(algorithm: Algorithm) -> None:
    hasher = new_hasher(algorithm)
    for piece in (b"ab", bytearray(b"cd"), memoryview(b"xefx")[1:3]):
        hasher.update(piece)
    assert hasher.digest() == ref(algorithm, b"abcdef")
    assert len(hasher.digest()) == DIGEST_SIZE


def test_labelled() -> None:
    assert labelled(BLAKE3, b"\xab\x01") == "blake3:ab01"
    assert labelled(SHA256, b"\xff") == "sha256:ff"
    assert labelled(BLAKE3, b"") == ""


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_prefix_digest_definition_on_a_real_file(
    fd: int, content: bytes, algorithm: Algorithm
) -> None:
    scan = scan_prefix(fd, 2 * BS, algorithm)
    b0 = ref(algorithm, content[:BS])
    b1 = ref(algorithm, content[BS : 2 * BS])
    assert scan.blocks == [b0, b1]
    assert scan.digest == ref(algorithm, b0 + b1)
    assert scan.digest == prefix_digest([b0, b1], algorithm)
    # It is not the plain digest of the prefix.
    assert scan.digest != ref(algorithm, content[: 2 * BS])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_whole_hash_after_scan_equals_hash_of_prefix(
    fd: int, content: bytes, algorithm: Algorithm
) -> None:
    scan = scan_prefix(fd, 2 * BS, algorithm)
    assert scan.whole.digest() == ref(algorithm, content[: 2 * BS])
    # The running hash goes on: feeding the rest gives the digest of the whole file.
    scan.whole.update(content[2 * BS :])
    assert scan.whole.digest() == ref(algorithm, content)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_scan_of_one_block(fd: int, content: bytes, algorithm: Algorithm) -> None:
    scan = scan_prefix(fd, BS, algorithm)
    assert scan.blocks == [ref(algorithm, content[:BS])]
    assert scan.digest == ref(algorithm, ref(algorithm, content[:BS]))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_scan_of_nothing(fd: int, algorithm: Algorithm) -> None:
    scan = scan_prefix(fd, 0, algorithm)
    assert scan.blocks == []
    assert scan.digest == ref(algorithm, b"")
    assert scan.whole.digest() == ref(algorithm, b"")


def test_scan_does_not_move_the_file_offset(fd: int) -> None:
    os.lseek(fd, 7, os.SEEK_SET)
    scan_prefix(fd, BS, BLAKE3)
    assert os.lseek(fd, 0, os.SEEK_CUR) == 7


def test_scan_of_a_short_file_raises_eof(tmp_path: Path) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(b"x" * (BS + 10))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(EOFError):
            scan_prefix(fd, 2 * BS, BLAKE3)
    finally:
        os.close(fd)


def test_scan_of_an_empty_file_raises_eof(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(EOFError):
            scan_prefix(fd, BS, SHA256)
    finally:
        os.close(fd)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_prefix_scan_digest_property(algorithm: Algorithm) -> None:
    blocks = [b"\x01" * 32, b"\x02" * 32]
    scan = PrefixScan(algorithm, blocks, new_hasher(algorithm))
    assert scan.digest == ref(algorithm, b"\x01" * 32 + b"\x02" * 32)


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
B3: Algorithm = BLAKE3


def test_cache_put_and_get() -> None:
    cache = HashCache()
    assert cache.digest(A, B3) is None
    cache.put_digest(A, B3, DA)
    assert cache.digest(A, B3) == DA
    assert cache.digest(B, B3) is None
    assert len(cache) == 1


def test_identity_change_misses() -> None:
    cache = HashCache()
    cache.put_digest(A, B3, DA)
    assert cache.digest((1, 1, 10, 101, 7), B3) is None  # mtime changed
    assert cache.digest((1, 1, 11, 100, 7), B3) is None  # size changed
    assert cache.digest((1, 1, 10, 100, 8), B3) is None  # ctime changed: written, mtime set back


def test_cache_evicts_least_recently_put() -> None:
    cache = HashCache(max_entries=2)
    cache.put_digest(A, B3, DA)
    cache.put_digest(B, B3, DB)
    cache.put_digest(C, B3, DC)
    assert len(cache) == 2
    assert cache.digest(A, B3) is None
    assert cache.digest(B, B3) == DB
    assert cache.digest(C, B3) == DC


def test_cache_update_refreshes_recency() -> None:
    cache = HashCache(max_entries=2)
    cache.put_digest(A, B3, DA)
    cache.put_digest(B, B3, DB)
    cache.put_blocks(A, B3, [DA])  # A is used again
    cache.put_digest(C, B3, DC)
    assert cache.digest(B, B3) is None
    assert cache.digest(A, B3) == DA
    assert cache.blocks(A, B3, 1) == [DA]


def test_cache_read_refreshes_recency() -> None:
    cache = HashCache(max_entries=2)
    cache.put_digest(A, B3, DA)
    cache.put_digest(B, B3, DB)
    assert cache.digest(A, B3) == DA  # A is used
    cache.put_digest(C, B3, DC)
    assert cache.digest(A, B3) == DA
    assert cache.digest(B, B3) is None


def test_blocks_none_when_fewer_cached() -> None:
    cache = HashCache()
    assert cache.blocks(A, B3, 1) is None
    cache.put_digest(A, B3, DA)
    assert cache.blocks(A, B3, 1) is None  # entry exists, no blocks yet
    cache.put_blocks(A, B3, [DA, DB])
    assert cache.blocks(A, B3, 3) is None
    assert cache.blocks(A, B3, 2) == [DA, DB]
    assert cache.blocks(A, B3, 1) == [DA]
    assert cache.blocks(A, B3, 0) == []


def test_blocks_keeps_the_longer_list() -> None:
    cache = HashCache()
    cache.put_blocks(A, B3, [DA, DB, DC])
    cache.put_blocks(A, B3, [DA])
    assert cache.blocks(A, B3, 3) == [DA, DB, DC]


def test_blocks_returned_are_a_copy() -> None:
    cache = HashCache()
    given = [DA, DB]
    cache.put_blocks(A, B3, given)
    given.append(DC)
    assert cache.blocks(A, B3, 3) is None
    got = cache.blocks(A, B3, 2)
    assert got is not None
    got.append(DC)
    assert cache.blocks(A, B3, 3) is None


def test_cache_of_size_zero_caches_nothing() -> None:
    cache = HashCache(max_entries=0)
    cache.put_digest(A, B3, DA)
    assert cache.digest(A, B3) is None


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
                cache.put_digest(ident, B3, digest)
                cache.put_blocks(ident, B3, [digest])
                got = cache.digest(ident, B3)
                assert got is None or got == digest
                blocks = cache.blocks(ident, B3, 1)
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
    cache.put_digest(A, B3, DA)
    cache.put_blocks(B, B3, [DB, DC])
    cache.put_digest(C, B3, DC)
    cache.put_blocks(C, B3, [DA])
    cache.save(tmp_path / "digests")
    again = HashCache()
    assert again.load(tmp_path / "digests") == 3
    assert again.digest(A, B3) == DA and again.blocks(A, B3, 1) is None
    assert again.digest(B, B3) is None and again.blocks(B, B3, 2) == [DB, DC]
    assert again.digest(C, B3) == DC and again.blocks(C, B3, 1) == [DA]
    assert not (tmp_path / "digests.tmp").exists()
    assert (tmp_path / "digests").stat().st_mode & 0o777 == 0o600  # as the users file
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "digests").mkdir()  # the rename cannot replace a directory
    with pytest.raises(OSError):
        cache.save(tmp_path / "blocked" / "digests")
    assert not (tmp_path / "blocked" / "digests.tmp").exists()


def test_algorithms_are_cached_apart(tmp_path: Path) -> None:
    cache = HashCache()
    cache.put_digest(A, SHA256, DA)
    cache.put_blocks(A, BLAKE3, [DB])
    assert cache.digest(A, BLAKE3) is None and cache.blocks(A, SHA256, 1) is None
    assert cache.digest(A, SHA256) == DA and cache.blocks(A, BLAKE3, 1) == [DB]
    cache.save(tmp_path / "digests")
    again = HashCache()
    assert again.load(tmp_path / "digests") == 2
    assert again.digest(A, SHA256) == DA and again.digest(A, BLAKE3) is None
    assert again.blocks(A, BLAKE3, 1) == [DB] and again.blocks(A, SHA256, 1) is None


def test_a_cache_saved_before_blake3_loads_as_sha256(tmp_path: Path) -> None:
    old = '{"id":[1,1,10,100,7],"sha256":"' + DA.hex() + '","blocks":"' + DB.hex() + '"}'
    (tmp_path / "digests").write_text(old + "\n")
    cache = HashCache()
    assert cache.load(tmp_path / "digests") == 1
    assert cache.digest(A, SHA256) == DA and cache.blocks(A, SHA256, 1) == [DB]
    assert cache.digest(A, BLAKE3) is None


def test_a_damaged_saved_cache_costs_only_its_entries(tmp_path: Path) -> None:
    good = '{"id":[1,1,10,100,7],"algorithm":"blake3","digest":"' + DA.hex() + '","blocks":null}'
    bad = [
        "not json",
        "[]",
        "7",
        '"digest"',
        '{"id":[1,1,10,100],"algorithm":"blake3","digest":null,"blocks":null}',  # four numbers
        '{"id":[1,1,10,100,-7],"algorithm":"blake3","digest":null,"blocks":null}',
        '{"id":[1,1,10,100,true],"algorithm":"blake3","digest":null,"blocks":null}',
        '{"id":[1,2,10,100,7],"algorithm":"md5","digest":null,"blocks":null}',
        '{"id":[1,2,10,100,7],"algorithm":["blake3"],"digest":null,"blocks":null}',
        '{"id":[1,2,10,100,7],"algorithm":"blake3","digest":"abcd","blocks":null}',  # short
        '{"id":[1,2,10,100,7],"algorithm":"blake3","digest":"zz' + "0" * 62 + '","blocks":null}',
        '{"id":[1,2,10,100,7],"algorithm":"blake3","digest":null,"blocks":"' + "a" * 66 + '"}',
        '{"id":[1,2,10,100,7],"algorithm":"blake3","digest":null,"blocks":""}',
        '{"id":[1,2,10,100,7],"algorithm":"blake3"}',
        '{"id":[1,2,10,100,7],"sha256":"abcd","blocks":null}',  # the old form, short
        '{"id":[1,2,10,100,7]}',
    ]
    (tmp_path / "digests").write_text("\n".join([*bad, good]) + "\n")
    cache = HashCache()
    assert cache.load(tmp_path / "digests") == 1
    assert cache.digest(A, BLAKE3) == DA and len(cache) == 1
    (tmp_path / "binary").write_bytes(os.urandom(4096))
    assert HashCache().load(tmp_path / "binary") == 0
    assert HashCache().load(tmp_path / "missing") == 0
    (tmp_path / "a-directory").mkdir()
    assert HashCache().load(tmp_path / "a-directory") == 0


def test_a_deeply_nested_line_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = '{"id":[1,1,10,100,7],"algorithm":"blake3","digest":"' + DA.hex() + '","blocks":null}'
    (tmp_path / "digests").write_text("[" * 100_000 + "\n" + "{" * 100_000 + "\n" + good + "\n")
    cache = HashCache()
    with caplog.at_level(logging.WARNING, logger="tcpft.integrity"):
        assert cache.load(tmp_path / "digests") == 1
    assert cache.digest(A, BLAKE3) == DA
    assert any("skipped 2 damaged line(s)" in r.getMessage() for r in caplog.records)
