"""A raw tcpft peer for adversarial tests: hand-made frames over real TLS.

TLS runs through :class:`ssl.SSLObject` and memory BIOs rather than an
``ssl.SSLSocket``, so a test keeps full control of the TCP socket underneath: it can
half-close it (FIN) while still reading the server's TLS records, reset it (RST), drip
bytes one at a time, or skip TLS altogether and send whatever it likes.

Nothing here validates what it sends: that is the point. What it receives is decoded
strictly (:func:`tcpft.messages.decode_message`), so a malformed reply from the server
raises instead of going unnoticed.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time

from tcpft.frames import HEADER
from tcpft.limits import FRAME_HEADER_SIZE
from tcpft.messages import (
    Error,
    Hello,
    ListEnd,
    ListEntries,
    Login,
    LoginOk,
    Message,
    Welcome,
    decode_message,
)

HOST = "127.0.0.1"
SECOND_ADDRESS = "127.0.0.2"


def frame(msg: Message) -> bytes:
    """The frame bytes of ``msg`` (header + payload), with no state checks."""
    payload = msg.encode_payload()
    return HEADER.pack(msg.TYPE, len(payload)) + payload


def raw_frame(frame_type: int, payload: bytes, length: int | None = None) -> bytes:
    """A frame of any type; ``length`` may lie about the payload's size."""
    return HEADER.pack(frame_type, len(payload) if length is None else length) + payload


def client_context() -> ssl.SSLContext:
    """A client context that trusts anything (these tests attack, they do not verify)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_hello() -> bytes:
    """The bytes of a genuine TLS ClientHello (the first flight of a handshake)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context().wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


class RawConn:
    """One connection to a tcpft server, TLS or not, driven byte by byte.

    Args:
        port: the server's port on 127.0.0.1.
        tls: do a TLS handshake first (``handshake=False`` defers it).
        source: the local address to connect from (e.g. ``127.0.0.2``).
        rcvbuf: SO_RCVBUF to set before connecting (a tiny window for stall tests).
        context: the client SSL context (default: trusts anything).
    """

    def __init__(
        self,
        port: int,
        *,
        tls: bool = True,
        handshake: bool = True,
        source: str | None = None,
        rcvbuf: int | None = None,
        context: ssl.SSLContext | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source is not None:
                self.sock.bind((source, 0))
            self.sock.settimeout(timeout)
            self.sock.connect((HOST, port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            self.sock.close()
            raise
        self.tls = tls
        self.eof = False  # the server closed (FIN, close_notify or RST)
        self.reset_seen = False  # ... with an RST
        self.ragged = False  # ... TLS ended without close_notify
        self._buf = bytearray()
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl: ssl.SSLObject | None = None
        if tls:
            self._ssl = (context or client_context()).wrap_bio(self._in, self._out)
            if handshake:
                self.handshake(timeout)

    # --- TLS plumbing ----------------------------------------------------------------

    def handshake(self, timeout: float = 5.0) -> None:
        """Finish the TLS handshake. Raises ssl.SSLError or ConnectionError on failure."""
        assert self._ssl is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                data = self._sock_recv(deadline)
                if not data:
                    raise ConnectionError("the server closed during the TLS handshake") from None
                self._in.write(data)
                continue
            self._flush()
            return

    @property
    def ssl_object(self) -> ssl.SSLObject:
        assert self._ssl is not None
        return self._ssl

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self.sock.sendall(data)

    def _sock_recv(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the server in time")
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(1 << 20)
        except TimeoutError:
            raise
        except ConnectionResetError:
            self.reset_seen = True
            return b""

    # --- bytes -----------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send application bytes (encrypted when TLS is on)."""
        if self._ssl is None:
            self.sock.sendall(data)
            return
        view = memoryview(data)
        while view:
            n = self._ssl.write(view[: 1 << 16])
            view = view[n:]
            self._flush()

    def send_raw(self, data: bytes) -> None:
        """Send bytes on the TCP socket as they are, bypassing TLS."""
        self.sock.sendall(data)

    def recv(self, timeout: float) -> bytes:
        """Some application bytes, or b"" once the server closed; TimeoutError if none.

        Bytes already taken into the frame buffer by :meth:`read_frame` are not returned.
        """
        if self.eof:
            return b""
        deadline = time.monotonic() + timeout
        if self._ssl is None:
            data = self._sock_recv(deadline)
            if not data:
                self.eof = True
            return data
        while True:
            try:
                data = self._ssl.read(1 << 20)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:  # close_notify
                self.eof = True
                return b""
            except ssl.SSLEOFError:  # TCP closed without close_notify
                self.eof = self.ragged = True
                return b""
            else:
                if data:
                    return data
                self.eof = True
                return b""
            self._flush()
            raw = self._sock_recv(deadline)
            if raw:
                self._in.write(raw)
            else:
                self._in.write_eof()

    def _fill(self, n: int, deadline: float) -> bool:
        """Buffer at least ``n`` bytes; False if the server closed first."""
        while len(self._buf) < n:
            if self.eof:
                return False
            data = self.recv(max(deadline - time.monotonic(), 0.001))
            if not data:
                return False
            self._buf += data
        return True

    # --- frames ----------------------------------------------------------------------

    def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """The next whole frame ``(type, payload)``, or None if the server closed.

        Raises:
            TimeoutError: no whole frame within ``timeout``.
            AssertionError: the server closed in the middle of a frame.
        """
        deadline = time.monotonic() + timeout
        if not self._fill(FRAME_HEADER_SIZE, deadline):
            assert not self._buf, f"server closed mid-header ({bytes(self._buf)!r})"
            return None
        frame_type, length = HEADER.unpack_from(self._buf)
        assert self._fill(FRAME_HEADER_SIZE + length, deadline), (
            f"server closed mid-frame (type 0x{frame_type:02x}, {length} bytes announced)"
        )
        payload = bytes(self._buf[FRAME_HEADER_SIZE : FRAME_HEADER_SIZE + length])
        del self._buf[: FRAME_HEADER_SIZE + length]
        return frame_type, payload

    def read_message(self, timeout: float = 5.0) -> Message | None:
        """The next message (strictly decoded), or None if the server closed."""
        got = self.read_frame(timeout)
        if got is None:
            return None
        return decode_message(*got)

    def read_until_closed(self, timeout: float = 5.0) -> list[Message]:
        """Every message until the server closes; TimeoutError if it does not in time."""
        deadline = time.monotonic() + timeout
        out: list[Message] = []
        while True:
            msg = self.read_message(max(deadline - time.monotonic(), 0.001))
            if msg is None:
                return out
            out.append(msg)

    def wait_closed(self, timeout: float) -> float:
        """Discard data until the server closes; return the seconds it took."""
        start = time.monotonic()
        deadline = start + timeout
        while not self.eof:
            if not self.recv(max(deadline - time.monotonic(), 0.001)):
                break
        self._buf.clear()
        return time.monotonic() - start

    # --- conversation helpers -----------------------------------------------------------

    def hello(self, version: int = 1) -> Welcome:
        self.send(frame(Hello(version, "adversary")))
        msg = self.read_message()
        assert isinstance(msg, Welcome), msg
        return msg

    def login(self, user: str, password: str) -> Message | None:
        """Send LOGIN and return the reply (LOGIN_OK, ERROR, or None if closed)."""
        self.send(frame(Login(user, password)))
        return self.read_message(10.0)

    def read_listing(self) -> list[str]:
        paths: list[str] = []
        while True:
            msg = self.read_message()
            if isinstance(msg, ListEnd):
                return paths
            assert isinstance(msg, ListEntries), msg
            paths.extend(e.path for e in msg.entries)

    # --- ending ----------------------------------------------------------------------

    def half_close(self) -> None:
        """Send FIN (no close_notify): the server reads EOF, we can still read."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        """Close with an RST (SO_LINGER 0)."""
        reset_socket(self.sock)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reset_socket(sock: socket.socket) -> None:
    """Close ``sock`` (plain or TLS) with an RST: SO_LINGER 0, no close_notify."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def logged_in(port: int, user: tuple[str, str], version: int = 1, **kwargs: object) -> RawConn:
    """A RawConn past HELLO (of ``version``) and LOGIN with the first listing read."""
    conn = RawConn(port, **kwargs)  # type: ignore[arg-type]
    try:
        conn.hello(version)
        ok = conn.login(*user)
        assert isinstance(ok, LoginOk), ok
        conn.read_listing()
    except BaseException:
        conn.close()
        raise
    return conn


def expect_error(conn: RawConn, code: int, timeout: float = 5.0) -> Error:
    """Read the next message and check it is an ERROR with ``code``."""
    msg = conn.read_message(timeout)
    assert isinstance(msg, Error), f"expected ERROR {code}, got {msg!r}"
    assert msg.code == code, f"expected ERROR {code}, got {msg.code} ({msg.text})"
    return msg


def second_address_usable() -> bool:
    """Whether 127.0.0.2 can be used as a source address here (Linux loopback: yes)."""
    s = socket.socket()
    try:
        s.bind((SECOND_ADDRESS, 0))
    except OSError:
        return False
    finally:
        s.close()
    return True
