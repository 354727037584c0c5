"""The bulk-data fast path: Connection.receive_data_header and the sinks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tcpft.errors import ErrorCode, FrameTooLarge, LocalProtocolError, RemoteProtocolError
from tcpft.messages import (
    PROTOCOL_VERSION,
    Error,
    FileHeader,
    Get,
    Hello,
    ListEnd,
    Login,
    LoginOk,
    Welcome,
)
from tcpft.native import (
    preallocate,
    release_preallocation,
    start_writeback,
)
from tcpft.protocol import NEED_DATA, Connection, Role, State
from tcpft.server import _read_cached
from tcpft.sink import InlineSink, ThreadSink


def _downloading(size: int = 10) -> tuple[Connection, Connection]:
    c, s = Connection(Role.CLIENT), Connection(Role.SERVER)
    for sender, receiver, msg in [
        (c, s, Hello(PROTOCOL_VERSION, "t")),
        (s, c, Welcome(PROTOCOL_VERSION, "t")),
        (c, s, Login("u", "p")),
        (s, c, LoginOk("u")),
        (s, c, ListEnd()),
        (c, s, Get("f")),
        (s, c, FileHeader("f", size, 0)),
    ]:
        receiver.receive_data(sender.send(msg))
        assert receiver.next_event() == msg
    return c, s


def test_data_header_advances_the_count() -> None:
    c, s = _downloading(10)
    assert c.receive_data_header(s.send_data_header(6)) == 6
    assert c.remaining == 4 and c.state is State.DOWNLOADING


def test_other_frames_go_through_the_decoder() -> None:
    c, s = _downloading(10)
    frame = s.send_error(ErrorCode.FILE_CHANGED, "the file changed")  # non-fatal
    assert c.receive_data_header(frame[:5]) is None
    c.receive_data(frame[5:])
    event = c.next_event()
    assert isinstance(event, Error) and c.state is State.READY


def test_data_beyond_the_announced_size_is_refused() -> None:
    c, _ = _downloading(10)
    with pytest.raises(RemoteProtocolError):
        c.receive_data_header(bytes([0x0A, 0, 0, 0, 11]))
    assert c.state is State.CLOSED


def test_oversize_data_is_refused_from_the_header() -> None:
    c, _ = _downloading(10)
    with pytest.raises(FrameTooLarge):
        c.receive_data_header(bytes([0x0A, 0, 0x10, 0, 1]))


def test_data_in_the_wrong_state_is_refused() -> None:
    c = Connection(Role.CLIENT)
    c.send(Hello(PROTOCOL_VERSION, "t"))
    with pytest.raises(RemoteProtocolError):
        c.receive_data_header(bytes([0x0A, 0, 0, 0, 1]))


def test_needs_an_empty_buffer() -> None:
    c, _ = _downloading(10)
    c.receive_data(b"\x0a")
    assert c.next_event() is NEED_DATA
    with pytest.raises(LocalProtocolError):
        c.receive_data_header(bytes(5))


@pytest.mark.parametrize("sink_class", [InlineSink, ThreadSink])
def test_sinks_write_and_hash_in_order(tmp_path: Path, sink_class: type) -> None:
    chunks = [os.urandom(n) for n in (1, 1000, 1 << 20, 77, 300_000)]
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    hasher = hashlib.sha256()
    sink = sink_class(fd, hasher)
    for i, chunk in enumerate(chunks):
        if i % 2:
            sink.submit(chunk, len(chunk))  # bytes from the general path
        else:
            buf = sink.buffer()
            buf[: len(chunk)] = chunk
            sink.submit(buf, len(chunk))
    sink.close()
    os.close(fd)
    data = b"".join(chunks)
    assert (tmp_path / "out").read_bytes() == data
    assert hasher.digest() == hashlib.sha256(data).digest()


def test_thread_sink_reports_a_failed_write() -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        sink = ThreadSink(fd, hashlib.sha256())
        sink.submit(b"x" * 10, 10)
        with pytest.raises(OSError):
            sink.close()
    finally:
        os.close(fd)


def test_preallocation_reserves_blocks_but_keeps_the_size(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"x" * 100)
        preallocate(fd, 100, 4 << 20)
        st = os.fstat(fd)
        assert st.st_size == 100  # a partial file still says how much was received
        if st.st_blocks * 512 < 4 << 20:
            pytest.skip("this file system does not preallocate")
        os.write(fd, b"y" * 1000)
        release_preallocation(fd)
        st = os.fstat(fd)
        assert st.st_size == 1100
        assert st.st_blocks * 512 <= 64 * 1024  # the unused reservation is given back
    finally:
        os.close(fd)
    assert (tmp_path / "part").read_bytes() == b"x" * 100 + b"y" * 1000


def test_preallocation_is_best_effort(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "part", os.O_WRONLY | os.O_CREAT)
    try:
        preallocate(fd, 0, 1 << 62)  # far more than any disk: refused, silently
        preallocate(fd, 0, 0)
        release_preallocation(fd)
        assert os.fstat(fd).st_size == 0
    finally:
        os.close(fd)


def test_writeback_is_best_effort_and_keeps_the_data(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, data)
        start_writeback(fd, 0, len(data))
        start_writeback(fd, 1 << 20, 1 << 40)  # past the end: nothing more to write
        start_writeback(fd, 0, 0)
        assert os.fstat(fd).st_size == len(data)
    finally:
        os.close(fd)
    start_writeback(fd, 0, 4096)  # a closed descriptor: refused, silently
    assert (tmp_path / "part").read_bytes() == data


def test_cached_read_gives_the_bytes_or_none(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    (tmp_path / "f").write_bytes(data)  # just written: in the page cache
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        got = _read_cached(fd, 1000, 5)
        if got is None:
            pytest.skip("no RWF_NOWAIT reads here")
        assert got == data[5:1005]
        assert _read_cached(fd, 2000, 99_000) is None  # short: the file is shorter
    finally:
        os.close(fd)


_FREED_LOGIN_BLOCKS = """
import ctypes, json, sys
from tcpft.native import tune_server_malloc
applied = tune_server_malloc() if sys.argv[1] == "tuned" else []
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss_kib():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
before = rss_kib()
for _ in range(3):  # an argon2id login's memory, asked for and given back
    block = libc.malloc(19 << 20)
    ctypes.memset(block, 1, 19 << 20)
    libc.free(block)
print(json.dumps({"applied": applied, "kept_kib": rss_kib() - before}))
"""


def _freed_login_blocks(mode: str, **env: str) -> dict[str, Any]:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run(
        [sys.executable, "-c", _FREED_LOGIN_BLOCKS, mode],
        env={**clean, **env}, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_a_server_gives_back_the_memory_of_big_blocks_it_freed() -> None:
    tuned = _freed_login_blocks("tuned")
    assert tuned["applied"] == ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"]
    assert tuned["kept_kib"] < 4 * 1024, tuned
    # glibc's default: after the first block, the next ones come from the heap and stay.
    assert _freed_login_blocks("default")["kept_kib"] > 16 * 1024


def test_the_users_own_malloc_settings_win() -> None:
    tuned = _freed_login_blocks("tuned", MALLOC_ARENA_MAX="4")
    assert tuned["applied"] == ["MALLOC_MMAP_THRESHOLD_"]
    tuned = _freed_login_blocks("tuned", MALLOC_MMAP_THRESHOLD_="1048576")
    assert tuned["applied"] == ["MALLOC_ARENA_MAX"]
    tuned = _freed_login_blocks("tuned", MALLOC_TRIM_THRESHOLD_="1048576")
    assert tuned["applied"] == ["MALLOC_ARENA_MAX"]
    tuned = _freed_login_blocks("tuned", GLIBC_TUNABLES="glibc.malloc.arena_max=4")
    assert tuned["applied"] == ["MALLOC_MMAP_THRESHOLD_"]
