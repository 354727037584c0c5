"""tcpft.tls.TLSStream and open_client_tls, against a real TLS peer on 127.0.0.1.

The peer is a blocking ``ssl.SSLSocket`` in a thread, running one handler per test.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tcpft.errors import ConnectError, TimeoutExpired
from tcpft.tls import (
    KnownHosts,
    TLSStream,
    certificate_fingerprint,
    client_context,
    ensure_server_certificate,
    fingerprint,
    open_client_tls,
    server_context,
)

from .peer import TIMEOUT, Handler, peer

RECORD = 16 * 1024

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return ensure_server_certificate(tmp_path_factory.mktemp("tls") / "state")


def tls_peer(cert_pair: tuple[Path, Path], body: Callable[[ssl.SSLSocket], object]) -> Handler:
    """A handler that completes a TLS handshake as the server, then runs ``body``."""
    ctx = server_context(*cert_pair)

    def handler(conn: socket.socket) -> None:
        tls = ctx.wrap_socket(conn, server_side=True)
        body(tls)

    return handler


def answer_close(tls: ssl.SSLSocket) -> None:
    """Read up to the client's close_notify and answer it, as tcpft's server does."""
    while tls.recv(4096):
        pass
    tls.unwrap()


@contextmanager
def stream_to(port: int) -> Iterator[TLSStream]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    stream = TLSStream(sock, client_context(), None)
    try:
        stream.do_handshake()
        yield stream
    finally:
        stream.close()


def read_all(stream: TLSStream, size: int = 1 << 20) -> tuple[bytes, int]:
    """Read until a clean end; the bytes and the largest single read."""
    buf = memoryview(bytearray(size))
    out, largest = bytearray(), 0
    for _ in range(100_000):
        n = stream.recv_into(buf)
        if n == 0:
            return bytes(out), largest
        largest = max(largest, n)
        out += buf[:n]
    raise AssertionError("no end in sight")


def test_handshake_gives_the_server_certificate(cert_pair: tuple[Path, Path]) -> None:
    with peer(tls_peer(cert_pair, answer_close)) as p, stream_to(p.port) as s:
        assert fingerprint(s.peer_certificate()) == certificate_fingerprint(cert_pair[0])
        s.unwrap()
    assert p.error is None


def test_many_records_then_a_clean_end(cert_pair: tuple[Path, Path]) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)

    def body(tls: ssl.SSLSocket) -> None:
        tls.sendall(data)
        tls.unwrap()  # close_notify, then the client's

    with peer(tls_peer(cert_pair, body)) as p, stream_to(p.port) as s:
        got, largest = read_all(s)
        assert got == data
        assert largest <= RECORD  # one record per call, as SSLSocket gives
        assert s.recv_into(bytearray(10)) == 0  # and the end stays an end
        s.unwrap()
    assert p.error is None


def test_a_cut_stream_is_not_a_clean_end(cert_pair: tuple[Path, Path]) -> None:
    """TCP closed without close_notify: an SSLEOFError, never a short file taken as whole."""

    def body(tls: ssl.SSLSocket) -> None:
        tls.sendall(b"x" * 100_000)
        tls.shutdown(socket.SHUT_RDWR)  # a FIN and no close_notify

    with peer(tls_peer(cert_pair, body)) as p, stream_to(p.port) as s:
        buf = bytearray(1 << 20)
        got = 0
        with pytest.raises(ssl.SSLEOFError):
            for _ in range(1000):
                n = s.recv_into(buf)
                assert n > 0
                got += n
        assert got == 100_000
    assert p.error is None


def test_sendall_large_and_small(cert_pair: tuple[Path, Path]) -> None:
    big = os.urandom(2 * 1024 * 1024 + 3)
    received = bytearray()

    def body(tls: ssl.SSLSocket) -> None:
        while chunk := tls.recv(1 << 20):
            received.extend(chunk)
        tls.unwrap()

    with peer(tls_peer(cert_pair, body)) as p, stream_to(p.port) as s:
        s.sendall(big)
        s.sendall(b"end")
        s.sendall(memoryview(b"..view"))
        s.unwrap()
    assert p.error is None
    assert bytes(received) == big + b"end..view"


def test_pending_counts_what_was_received_and_not_read(cert_pair: tuple[Path, Path]) -> None:
    go = threading.Event()

    def body(tls: ssl.SSLSocket) -> None:
        tls.sendall(b"0123456789")
        go.wait(TIMEOUT)
        tls.sendall(b"abc")
        answer_close(tls)

    with peer(tls_peer(cert_pair, body)) as p, stream_to(p.port) as s:
        buf = bytearray(4)
        assert s.recv_into(buf) == 4 and buf == b"0123"
        assert s.pending() == 6
        assert s.recv_into(buf) == 4 and s.recv_into(buf) == 2
        assert s.pending() == 0
        go.set()
        assert s.recv_into(buf, 3) == 3 and buf[:3] == b"abc"
        s.unwrap()
    assert p.error is None


def test_unwrap_waits_no_longer_than_the_timeout(cert_pair: tuple[Path, Path]) -> None:
    """A server that never answers close_notify cannot hold the client."""
    hold = threading.Event()

    def body(tls: ssl.SSLSocket) -> None:
        hold.wait(TIMEOUT)

    with peer(tls_peer(cert_pair, body)) as p, stream_to(p.port) as s:
        s.settimeout(0.3)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            s.unwrap()
        assert time.monotonic() - started < 2.0
        hold.set()
    assert p.error is None


def test_socket_calls_reach_the_socket(cert_pair: tuple[Path, Path]) -> None:
    seen = bytearray()

    def body(tls: ssl.SSLSocket) -> None:
        with contextlib.suppress(OSError):
            seen.extend(tls.recv(10))

    with peer(tls_peer(cert_pair, body)) as p, stream_to(p.port) as s:
        assert s.fileno() == s.sock.fileno() >= 0
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert s.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        s.settimeout(1.5)
        assert s.sock.gettimeout() == 1.5
        s.shutdown(socket.SHUT_WR)  # a FIN and no close_notify: the server sees an error
    assert p.error is None
    assert seen == b""


# --- open_client_tls: what each failure of the handshake is called ---------------------
# (TLS against a plaintext server: tests/integration/test_transfers.py)


def _open(port: int, tmp_path: Path, timeout: float = TIMEOUT) -> TLSStream:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        stream, _ = open_client_tls(
            sock, "127.0.0.1", port, None, None, KnownHosts(tmp_path / "known_hosts"), True
        )
    except BaseException:
        sock.close()
        raise
    return stream


def test_open_pins_a_new_server(cert_pair: tuple[Path, Path], tmp_path: Path) -> None:
    with peer(tls_peer(cert_pair, lambda tls: tls.recv(1))) as p:
        stream = _open(p.port, tmp_path)
        stream.close()
    assert p.error is None
    fp = certificate_fingerprint(cert_pair[0])
    assert KnownHosts(tmp_path / "known_hosts").check("127.0.0.1", p.port, fp)


def test_open_a_server_that_closes_at_once(tmp_path: Path) -> None:
    with peer(lambda conn: None) as p, pytest.raises(ConnectError) as info:
        _open(p.port, tmp_path)
    assert "closed the connection during the TLS handshake" in str(info.value)
    assert "it may be full" in str(info.value)


def test_open_a_server_that_never_answers(tmp_path: Path) -> None:
    hold = threading.Event()

    def handler(conn: socket.socket) -> None:
        hold.wait(TIMEOUT)

    with peer(handler) as p:
        try:
            with pytest.raises(TimeoutExpired) as info:
                _open(p.port, tmp_path, timeout=0.3)
        finally:
            hold.set()
    assert "timed out in the TLS handshake" in str(info.value)
