"""Login defences against a real TLS server: deadline, attempts, delay, oracle, limits,
and per-address penalties."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import argon2
import pytest

from tcpft.auth import UserStore
from tcpft.client import Session
from tcpft.errors import ErrorCode, Penalized
from tcpft.limits import MAX_PASSWORD_BYTES, MAX_USERNAME_BYTES
from tcpft.messages import Error, Hello, Login, LoginOk

from ..conftest import ALICE, ServerThread
from .rawclient import (
    SECOND_ADDRESS,
    RawConn,
    client_hello,
    expect_error,
    frame,
    second_address_usable,
)

StartServer = Callable[..., ServerThread]

needs_second_address = pytest.mark.skipif(
    not second_address_usable(), reason="127.0.0.2 is not usable as a source address here"
)


def _drip(
    conn: RawConn, data: bytes, *, raw: bool, every: float, limit: float
) -> tuple[float, bytes]:
    """Send ``data`` one byte per ``every`` seconds until the server closes.

    Returns the seconds it took and the bytes received meanwhile.
    """
    start, got = time.monotonic(), b""
    for i in range(len(data)):
        try:
            if raw:
                conn.send_raw(data[i : i + 1])
            else:
                conn.send(data[i : i + 1])
        except OSError:
            break  # the server is gone: that is what we wait for
        try:
            received = conn.recv(every)
        except TimeoutError:
            pass
        else:
            got += received
            if received:  # something arrived (the ERROR): wait for the close itself
                conn.wait_closed(limit)
            break
        assert time.monotonic() - start < limit, "the server is still waiting for the drip"
    return time.monotonic() - start, got


@pytest.mark.timeout(30)
def test_login_deadline_is_total_not_reset_by_each_byte(start_server: StartServer) -> None:
    srv = start_server(login_timeout=1.5)
    start = time.monotonic()
    with RawConn(srv.port) as conn:
        conn.hello()
        login = frame(Login("alice", "x" * 300))  # 300+ bytes: 60 s at one byte per 0.2 s
        _, got = _drip(conn, login, raw=False, every=0.2, limit=8.0)
        elapsed = time.monotonic() - start
    assert got[:1] == bytes([Error.TYPE]), got  # told why: LOGIN_TIMEOUT
    assert 1.4 <= elapsed <= 1.5 + 1.5, f"closed after {elapsed:.2f} s, deadline was 1.5 s"


@pytest.mark.timeout(30)
def test_login_deadline_covers_the_tls_handshake(start_server: StartServer) -> None:
    srv = start_server(login_timeout=1.5)
    hello = client_hello()
    start = time.monotonic()
    with RawConn(srv.port, tls=False) as conn:
        _, got = _drip(conn, hello, raw=True, every=0.2, limit=8.0)
    elapsed = time.monotonic() - start
    assert got == b"", f"nothing may be sent in the clear before TLS: {got!r}"
    assert elapsed <= 1.5 + 1.5, f"closed after {elapsed:.2f} s, deadline was 1.5 s"


@pytest.mark.timeout(30)
def test_login_deadline_sends_login_timeout_error(start_server: StartServer) -> None:
    srv = start_server(login_timeout=1.0)
    with RawConn(srv.port) as conn:
        conn.hello()
        start = time.monotonic()
        expect_error(conn, ErrorCode.LOGIN_TIMEOUT, timeout=4.0)
        assert conn.read_message(3.0) is None
        assert time.monotonic() - start < 3.0


@pytest.mark.timeout(30)
def test_at_most_n_attempts_per_connection(start_server: StartServer) -> None:
    srv = start_server(max_login_attempts=3, penalty_threshold=100)
    with RawConn(srv.port) as conn:
        conn.hello()
        for _ in range(3):
            reply = conn.login("alice", "wrong-password")
            assert isinstance(reply, Error) and reply.code == ErrorCode.AUTH_FAILED, reply
        # A fourth attempt, even with the right password, is never judged.
        with contextlib.suppress(OSError):
            conn.send(frame(Login(*ALICE)))
        assert conn.read_message(5.0) is None, "the connection should be closed"


@pytest.mark.timeout(30)
def test_delay_after_each_failure_only(start_server: StartServer) -> None:
    delay = 0.6
    srv = start_server(login_failure_delay=delay, penalty_threshold=100)
    with RawConn(srv.port) as conn:
        conn.hello()
        for _ in range(2):
            t0 = time.monotonic()
            reply = conn.login("alice", "wrong-password")
            took = time.monotonic() - t0
            assert isinstance(reply, Error) and reply.code == ErrorCode.AUTH_FAILED
            assert took >= delay, f"failure answered after {took:.3f} s, delay is {delay}"
        t0 = time.monotonic()
        reply = conn.login(*ALICE)
        took = time.monotonic() - t0
        assert isinstance(reply, LoginOk)
        assert took < delay, f"a success should not be delayed ({took:.3f} s)"


@pytest.mark.timeout(30)
def test_unknown_user_and_wrong_password_get_the_same_bytes(start_server: StartServer) -> None:
    srv = start_server(penalty_threshold=100)
    replies = []
    attempts = [
        ("alice", "wrong-password"),  # known user, wrong password
        ("mallory", "wrong-password"),  # unknown user
        ("bob", ""),  # known user, empty password
        ("m" * 200, "wrong-password"),  # over the name limit: refused before hashing
    ]
    for user, password in attempts:
        with RawConn(srv.port) as conn:
            conn.hello()
            conn.send(frame(Login(user, password)))
            replies.append(conn.read_frame(10.0))
    assert replies[0] is not None
    assert all(r == replies[0] for r in replies), replies


class _CountingHasher(argon2.PasswordHasher):
    """A cheap argon2 hasher that counts verifications (they run in worker threads)."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verifications = 0
        self._lock = threading.Lock()

    def verify(self, hash: Any, password: Any) -> Any:
        with self._lock:
            self.verifications += 1
        return super().verify(hash, password)


@pytest.mark.timeout(30)
def test_overlong_credentials_are_refused_before_hashing(start_server: StartServer) -> None:
    hasher = _CountingHasher()
    users = UserStore(hasher=hasher)
    users.add(*ALICE, write=True)
    srv = start_server(users=users, penalty_threshold=100)

    def attempt(user: str, password: str) -> int:
        before = hasher.verifications
        with RawConn(srv.port) as conn:
            conn.hello()
            reply = conn.login(user, password)
        assert isinstance(reply, Error) and reply.code == ErrorCode.AUTH_FAILED, reply
        return hasher.verifications - before

    # At the limits the credentials are hashed (the limits are not too tight) ...
    assert attempt("u" * MAX_USERNAME_BYTES, "password") == 1
    assert attempt("alice", "p" * MAX_PASSWORD_BYTES) == 1
    # ... one byte over, they are refused without any hashing, with the same reply.
    assert attempt("u" * (MAX_USERNAME_BYTES + 1), "password") == 0
    assert attempt("alice", "p" * (MAX_PASSWORD_BYTES + 1)) == 0
    assert attempt("é" * 33, "password") == 0  # 66 UTF-8 bytes: bytes are counted
    assert attempt("alice", "é" * 513) == 0


@pytest.mark.timeout(30)
def test_login_frame_of_exactly_4096_bytes_is_judged_one_more_is_rejected(
    start_server: StartServer,
) -> None:
    srv = start_server(penalty_threshold=100)
    password = "p" * (4096 - 2 - len("alice") - 2)
    assert len(Login("alice", password).encode_payload()) == 4096
    with RawConn(srv.port) as conn:
        conn.hello()
        reply = conn.login("alice", password)
        assert isinstance(reply, Error) and reply.code == ErrorCode.AUTH_FAILED
        conn.send(frame(Login("alice", password + "p")))
        expect_error(conn, ErrorCode.FRAME_TOO_LARGE)
        assert conn.read_message() is None


def _try_login(port: int, user: tuple[str, str], source: str | None = None) -> Error | LoginOk:
    with RawConn(port, source=source) as conn:
        conn.hello()
        reply = conn.login(*user)
        assert isinstance(reply, Error | LoginOk), reply
        if isinstance(reply, Error) and reply.code == ErrorCode.PENALIZED:
            assert conn.read_message() is None, "PENALIZED must close the connection"
        return reply


def _code(reply: Error | LoginOk) -> str:
    return "OK" if isinstance(reply, LoginOk) else ErrorCode(reply.code).name


@needs_second_address
@pytest.mark.timeout(40)
def test_penalty_grows_and_spares_other_addresses(
    start_server: StartServer, login: Callable[..., Session]
) -> None:
    base = 0.8
    srv = start_server(
        penalty_threshold=3, penalty_base=base, penalty_max=30.0, max_login_attempts=3
    )
    bad = ("alice", "wrong-password")
    # Three failures on one connection reach the threshold: the address is barred.
    with RawConn(srv.port) as conn:
        conn.hello()
        for _ in range(3):
            reply = conn.login(*bad)
            assert isinstance(reply, Error) and reply.code == ErrorCode.AUTH_FAILED
    barred_at = time.monotonic()
    # Even the right password is refused from that address, with PENALIZED.
    assert _code(_try_login(srv.port, ALICE)) == "PENALIZED"
    with pytest.raises(Penalized):
        login(srv)
    # Another address is not affected at all: it logs in, and fails normally.
    assert _code(_try_login(srv.port, ALICE, source=SECOND_ADDRESS)) == "OK"
    assert _code(_try_login(srv.port, bad, source=SECOND_ADDRESS)) == "AUTH_FAILED"
    # Once the first penalty ran out, one more failure bars it for twice as long.
    time.sleep(max(0.0, barred_at + base + 0.3 - time.monotonic()))
    assert _code(_try_login(srv.port, bad)) == "AUTH_FAILED"
    failed_at = time.monotonic()
    time.sleep(base + 0.2)  # past the first penalty's length, within the second's
    assert _code(_try_login(srv.port, ALICE)) == "PENALIZED"
    assert time.monotonic() - failed_at < 2 * base
    time.sleep(max(0.0, failed_at + 2 * base + 0.3 - time.monotonic()))
    assert _code(_try_login(srv.port, ALICE)) == "OK"


@pytest.mark.timeout(30)
def test_penalized_reply_comes_before_any_hashing(start_server: StartServer) -> None:
    hasher = _CountingHasher()
    users = UserStore(hasher=hasher)
    users.add(*ALICE, write=True)
    srv = start_server(users=users, penalty_threshold=1, penalty_base=30.0)
    assert _code(_try_login(srv.port, ("alice", "wrong"))) == "AUTH_FAILED"
    before = hasher.verifications
    for _ in range(3):
        assert _code(_try_login(srv.port, ALICE)) == "PENALIZED"
    assert hasher.verifications == before


@pytest.mark.timeout(30)
def test_hello_with_version_zero_is_refused(start_server: StartServer) -> None:
    srv = start_server()
    with RawConn(srv.port) as conn:
        conn.send(frame(Hello(0, "ancient")))
        expect_error(conn, ErrorCode.UNSUPPORTED_VERSION)
        assert conn.read_message() is None
