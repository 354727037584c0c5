"""The bulk-data fast path: Connection.receive_data_header and the sinks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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
    limit_malloc_arenas,
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


def test_malloc_arenas_can_be_limited_on_glibc() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert limit_malloc_arenas(16) is True  # no fewer than glibc allows 2 cores by default
