"""Connection caps and timeouts: before login, per address, in total; idle and stall."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import argon2
import blake3
import pytest

from tcpft.auth import UserStore
from tcpft.client import Session
from tcpft.errors import ConnectError, ErrorCode
from tcpft.frames import FrameDecoder
from tcpft.limits import MAX_DATA_PAYLOAD
from tcpft.messages import (
    Ack,
    Data,
    Done,
    Error,
    FileHeader,
    Get,
    ListRequest,
    Login,
    Put,
    PutReady,
    decode_message,
)

from ..conftest import ALICE, Env, ServerThread
from .rawclient import SECOND_ADDRESS, RawConn, expect_error, frame, logged_in
from .test_login import needs_second_address

StartServer = Callable[..., ServerThread]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; return the seconds it took, fail after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def count(srv: ServerThread) -> int:
    return int(srv.call(lambda: srv.server.connection_count))


def refused(conn: RawConn) -> bool:
    """True if the server drops ``conn`` at once; False if it keeps it open."""
    try:
        return conn.recv(0.4) == b""
    except TimeoutError:
        return False


@contextlib.contextmanager
def idle(srv: ServerThread, n: int, source: str | None = None) -> Iterator[list[RawConn]]:
    """``n`` plain TCP connections that never say anything, all accepted by the server."""
    conns: list[RawConn] = []
    try:
        for _ in range(n):
            before = count(srv)
            conns.append(RawConn(srv.port, tls=False, source=source))
            wait_for(lambda b=before: count(srv) == b + 1, 5, "the server to accept")  # type: ignore[misc]
        yield conns
    finally:
        for c in conns:
            c.close()


@pytest.mark.timeout(30)
def test_cap_on_connections_not_logged_in(
    start_server: StartServer, login: Callable[..., Session]
) -> None:
    srv = start_server(max_unauthenticated=3, max_connections=50, max_per_address=50)
    with idle(srv, 3):
        with RawConn(srv.port, tls=False) as extra:
            assert refused(extra), "a 4th connection before login should be dropped"
        with pytest.raises(ConnectError):
            login(srv)
    wait_for(lambda: count(srv) == 0, 5, "the idle connections to go")
    # Logged-in sessions do not use up the pre-login cap.
    sessions = [login(srv) for _ in range(3)]
    try:
        with idle(srv, 3), RawConn(srv.port, tls=False) as extra:
            assert refused(extra)
    finally:
        for s in sessions:
            s.close()


@needs_second_address
@pytest.mark.timeout(30)
def test_cap_per_address(start_server: StartServer) -> None:
    srv = start_server(max_per_address=2, max_unauthenticated=50, max_connections=50)
    with idle(srv, 2):
        with RawConn(srv.port, tls=False) as extra:
            assert refused(extra), "a 3rd connection from 127.0.0.1 should be dropped"
        # Another address still gets in, up to its own cap.
        with (
            idle(srv, 2, source=SECOND_ADDRESS),
            RawConn(srv.port, tls=False, source=SECOND_ADDRESS) as extra,
        ):
            assert refused(extra)


@needs_second_address
@pytest.mark.timeout(30)
def test_cap_in_total_counts_logged_in_sessions(
    start_server: StartServer, login: Callable[..., Session]
) -> None:
    srv = start_server(max_connections=3, max_per_address=50, max_unauthenticated=50)
    session = login(srv)
    try:
        with idle(srv, 1), idle(srv, 1, source=SECOND_ADDRESS):
            for source in (None, SECOND_ADDRESS):
                with RawConn(srv.port, tls=False, source=source) as extra:
                    assert refused(extra), f"a 4th connection (from {source}) got in"
        assert session.list() is not None  # the session itself is unharmed
    finally:
        session.close()
    wait_for(lambda: count(srv) == 0, 5, "all connections to close")
    with login(srv) as again:  # slots are given back
        assert again.user == "alice"


@pytest.mark.timeout(30)
def test_idle_timeout_closes_a_silent_session(start_server: StartServer) -> None:
    srv = start_server(idle_timeout=1.0)
    with logged_in(srv.port, ALICE) as conn:
        start = time.monotonic()
        expect_error(conn, ErrorCode.IDLE_TIMEOUT, timeout=5.0)
        took = time.monotonic() - start
        assert conn.read_message(3.0) is None
    assert 0.9 <= took <= 2.0, f"idle session closed after {took:.2f} s (timeout 1 s)"
    wait_for(lambda: count(srv) == 0, 3, "the session to be released")


@pytest.mark.timeout(60)
def test_stall_timeout_closes_a_client_that_stops_reading(
    start_server: StartServer, login: Callable[..., Session], env: Env
) -> None:
    stall = 1.0
    (env.root / "huge.bin").write_bytes(b"\x5a" * (24 * 1024 * 1024))
    srv = start_server(stall_timeout=stall)
    with logged_in(srv.port, ALICE, rcvbuf=4096) as conn:
        conn.send(frame(Get("huge.bin")))
        started = time.monotonic()
        # While it is stuck, the server serves others as usual.
        with login(srv) as s:
            s.download("hello.txt", env.client)
        assert (env.client / "hello.txt").read_text() == "hello, world\n"
        wait_for(lambda: count(srv) == 0, stall + 10, "the stalled session to be closed")
        elapsed = time.monotonic() - started
        print(f"stalled download closed after {elapsed:.2f} s")
        # The close path may spend up to 2 x 2 s trying to say goodbye to a peer
        # that reads nothing (_CLOSE_TIMEOUT for the ERROR, then for the TLS close).
        assert elapsed <= stall + 5.5, f"stalled download closed after {elapsed:.2f} s"
        # Reading now drains what was buffered, then the connection ends.
        conn.sock.settimeout(5)
        assert conn.wait_closed(10.0) < 10.0


@pytest.mark.timeout(30)
def test_the_idle_timeout_counts_a_whole_request_not_each_byte(
    start_server: StartServer,
) -> None:
    """A request dripped a byte at a time, each byte within the idle timeout, is still
    one request that took too long (it used to keep the session open for ever)."""
    srv = start_server(idle_timeout=1.0)
    with logged_in(srv.port, ALICE) as conn:
        request = frame(Get("hello.txt"))
        start = time.monotonic()
        with contextlib.suppress(OSError):
            for byte in request[:-1]:
                conn.send(bytes([byte]))
                time.sleep(0.3)
        expect_error(conn, ErrorCode.IDLE_TIMEOUT, timeout=5.0)
        took = time.monotonic() - start
    assert took < 2.5, f"a dripped request was waited for {took:.2f} s (timeout 1 s)"


@pytest.mark.timeout(60)
def test_an_upload_sent_slowly_but_steadily_is_not_a_stall(
    start_server: StartServer, env: Env
) -> None:
    """The stall timeout is the longest time without a byte, not the time one DATA
    frame takes: 256 KiB in 16 KiB pieces 0.15 s apart take 2.4 s, the timeout is 1 s."""
    srv = start_server(stall_timeout=1.0)
    content = bytes(range(256)) * 1024
    with logged_in(srv.port, ALICE, version=4) as conn:
        conn.send(frame(Put("slow.bin", len(content), 0)))
        assert isinstance(conn.read_message(), PutReady)
        data = frame(Data(content))
        for i in range(0, len(data), 16 * 1024):
            conn.send(data[i : i + 16 * 1024])
            time.sleep(0.15)
        conn.send(frame(Done(blake3.blake3(content).digest())))
        assert conn.read_message(10.0) == Ack(True)
    assert (env.root / "slow.bin").read_bytes() == content


@pytest.mark.timeout(60)
@pytest.mark.parametrize("warm", [False, True], ids=["written", "sendfile"])
def test_a_download_read_slowly_but_steadily_is_not_a_stall(
    start_server: StartServer, env: Env, warm: bool
) -> None:
    """The server waits for a client that takes its bytes slowly, as long as it takes
    some within every stall timeout: here 16 KiB every 13 ms (1.2 MB/s) against a
    0.25 s timeout, where one DATA frame (512 KiB written, 1 MiB by sendfile once the
    digest is known) takes 0.44 s or more to be taken, and the end of the file is
    still on its way when the server starts to wait for the ACK."""
    content = os.urandom(8 * 1024 * 1024)
    (env.root / "slow.bin").write_bytes(content)
    srv = start_server(plaintext=True, stall_timeout=0.25)
    if warm:
        with logged_in(srv.port, ALICE, version=4, tls=False) as conn:
            conn.send(frame(Get("slow.bin")))
            while not isinstance(conn.read_message(), Done):
                pass
            conn.send(frame(Ack(True)))
    with logged_in(srv.port, ALICE, version=4, tls=False, rcvbuf=16 * 1024) as conn:
        conn.send(frame(Get("slow.bin")))
        decoder, received = FrameDecoder(), 0
        messages: list[object] = []
        started = time.monotonic()
        while not messages or not isinstance(messages[-1], (Done, Error)):
            piece = conn.sock.recv(16 * 1024)
            assert piece, "the server closed the connection"
            decoder.feed(piece)
            received += len(piece)
            while (got := decoder.next_frame(lambda _: MAX_DATA_PAYLOAD)) is not None:
                messages.append(decode_message(got.type, got.payload))
            if isinstance(messages[-1] if messages else None, (Done, Error)):
                break
            time.sleep(max(0.0, started + received / 1.2e6 - time.monotonic()))
        took = time.monotonic() - started
        conn.send(frame(Ack(True)))
    assert isinstance(messages[0], FileHeader) and isinstance(messages[-1], Done), messages[-1]
    assert b"".join(m.data for m in messages if isinstance(m, Data)) == content
    assert took > 5.0, f"read in {took:.2f} s: not slowly enough to test anything"


class _SlowHasher(argon2.PasswordHasher):
    """Verification takes 0.4 s: time enough to cut the connection meanwhile."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)

    def verify(self, hash: Any, password: Any) -> Any:
        time.sleep(0.4)
        return super().verify(hash, password)


@pytest.mark.timeout(30)
def test_cut_right_after_a_good_login_gives_the_pre_login_slot_back(
    start_server: StartServer, login: Callable[..., Session]
) -> None:
    users = UserStore(hasher=_SlowHasher())
    users.add(*ALICE, write=True)
    srv = start_server(users=users, max_unauthenticated=2)
    for _ in range(2):
        conn = RawConn(srv.port)
        conn.hello()
        conn.send(frame(Login(*ALICE)))
        time.sleep(0.15)  # the server has the LOGIN and is verifying it
        conn.reset()
        wait_for(lambda: count(srv) == 0, 5, "the cut session to end")
    with login(srv) as s:  # the server still takes new clients
        assert s.user == "alice"
    assert srv.call(lambda: srv.server._unauthenticated) == 0


@pytest.mark.timeout(30)
def test_stall_timeout_closes_an_upload_that_stops_sending(
    start_server: StartServer, env: Env
) -> None:
    srv = start_server(stall_timeout=1.0)
    with logged_in(srv.port, ALICE) as conn:
        conn.send(frame(Put("stalled.bin", 1000, 0)))
        assert isinstance(conn.read_message(), PutReady)
        conn.send(frame(Data(b"x" * 100)))
        start = time.monotonic()
        expect_error(conn, ErrorCode.IDLE_TIMEOUT, timeout=5.0)
        assert conn.read_message(3.0) is None
        took = time.monotonic() - start
    assert 0.9 <= took <= 2.5, f"stalled upload closed after {took:.2f} s (stall 1 s)"
    wait_for(lambda: count(srv) == 0, 3, "the session to be released")
    assert not (env.root / "stalled.bin").exists()
    partial = env.root / ".stalled.bin.tcpft-part"
    assert partial.read_bytes() == b"x" * 100  # kept for a resume


@pytest.mark.timeout(30)
def test_pre_login_buffering_is_bounded(start_server: StartServer) -> None:
    """While the server is busy judging a LOGIN, whatever else the client sends must
    not pile up in server memory beyond a small bound: the server reads only while it
    waits for a frame, at most one pre-login frame (4 KiB) at a time, and takes at most
    16 KiB when no read is waiting."""
    srv = start_server(login_failure_delay=1.5, penalty_threshold=100)
    with RawConn(srv.port) as conn:
        conn.hello()
        conn.send(frame(Login("alice", "wrong")))
        conn.sock.settimeout(0.5)
        junk, start = b"\0" * (256 * 1024), time.monotonic()
        with contextlib.suppress(OSError):
            while time.monotonic() - start < 1.0:  # until the send buffers are full
                conn.send(junk)

        def buffered() -> int:
            return sum(
                len(s.receiver._extra) + s.conn._decoder.buffered
                for s in srv.server._sessions.values()
            )

        held = int(srv.call(buffered))
    assert held <= 32 * 1024, f"an unauthenticated client made the server hold {held} bytes"


@pytest.mark.timeout(60)
def test_a_plaintext_download_reset_mid_sendfile_logs_no_error(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A warm plaintext download goes out with sendfile; a client that resets the
    connection then made asyncio raise RuntimeError ("Transport is closing"), which
    the server logged as an internal error with a traceback."""
    srv = start_server(plaintext=True)
    with logged_in(srv.port, ALICE, version=4, tls=False) as conn:  # warm the digest
        conn.send(frame(Get("data.bin")))
        while not isinstance(msg := conn.read_message(), Done):
            assert isinstance(msg, (FileHeader, Data)), msg
        conn.send(frame(Ack(True)))
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            conn = logged_in(srv.port, ALICE, version=4, tls=False)
            conn.send(frame(Get("data.bin")))
            assert isinstance(conn.read_message(), FileHeader)
            conn.reset()
        deadline = time.monotonic() + 5
        while srv.call(lambda: srv.server.connection_count) and time.monotonic() < deadline:
            time.sleep(0.05)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.mark.timeout(30)
def test_a_listing_over_max_list_bytes_is_refused_and_listing_goes_on(
    start_server: StartServer, env: Env
) -> None:
    """Too large a listing gets TOO_LARGE; refusals and small listings give their slot
    back (at most 4 listings are made at once), so the next ones are served."""
    (env.root / "wide").mkdir()
    for i in range(40):
        (env.root / "wide" / (f"{i:02d}" + "w" * 200)).write_text("x")
    srv = start_server(max_list_bytes=4096)
    with logged_in(srv.port, ALICE, version=4) as conn:
        for _ in range(6):
            conn.send(frame(ListRequest("wide")))
            expect_error(conn, ErrorCode.TOO_LARGE)
        for _ in range(6):
            conn.send(frame(ListRequest("")))
            assert "wide" in conn.read_listing()
