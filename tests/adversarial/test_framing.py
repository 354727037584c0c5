"""Framing attacks: oversize headers, unknown, repeated and out-of-order messages,
malformed payloads, and the wrong protocol on either port."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable

import pytest

from tcpft.client import Session
from tcpft.errors import ConnectError, ErrorCode
from tcpft.messages import (
    MAGIC,
    Ack,
    Bye,
    Cancel,
    Data,
    Done,
    Error,
    FileHeader,
    Get,
    Hello,
    ListEnd,
    ListRequest,
    Login,
    LoginOk,
    Put,
    PutReady,
    Welcome,
)

from ..conftest import ALICE, ServerThread
from .rawclient import RawConn, client_hello, expect_error, frame, logged_in, raw_frame

StartServer = Callable[..., ServerThread]

GIB = 1 << 30
PROMPT = 1.0  # seconds within which a broken peer must be answered
FAST = 0.5  # the wrong protocol on a port: "well under a second"


def _rejected(conn: RawConn, data: bytes, code: int) -> float:
    """Send ``data``; expect ERROR ``code`` then the close, promptly; return the time."""
    start = time.monotonic()
    conn.send(data)
    expect_error(conn, code, timeout=PROMPT)
    assert conn.read_message(PROMPT) is None, "the connection should be closed"
    took = time.monotonic() - start
    assert took < PROMPT, f"took {took:.2f} s"
    return took


# --- oversize frames --------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("stage", "frame_type"),
    [("first frame", Hello.TYPE), ("after HELLO", Login.TYPE), ("error frame", Error.TYPE)],
    ids=["HELLO", "LOGIN", "ERROR"],
)
def test_one_gib_header_before_login_is_rejected_without_its_payload(
    start_server: StartServer, stage: str, frame_type: int
) -> None:
    srv = start_server()
    with RawConn(srv.port) as conn:
        if stage == "after HELLO":
            conn.hello()
        # Only the 5-byte header: the server must not wait for a gigabyte.
        _rejected(conn, raw_frame(frame_type, b"", length=GIB), ErrorCode.FRAME_TOO_LARGE)


@pytest.mark.timeout(30)
def test_just_over_4_kib_before_login_is_rejected(start_server: StartServer) -> None:
    srv = start_server()
    with RawConn(srv.port) as conn:
        _rejected(conn, raw_frame(Hello.TYPE, b"", length=4097), ErrorCode.FRAME_TOO_LARGE)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "frame_type", [Get.TYPE, ListRequest.TYPE, Put.TYPE], ids=["GET", "LIST", "PUT"]
)
def test_one_gib_control_frame_after_login_is_rejected(
    start_server: StartServer, frame_type: int
) -> None:
    srv = start_server()
    with logged_in(srv.port, ALICE) as conn:
        _rejected(conn, raw_frame(frame_type, b"", length=GIB), ErrorCode.FRAME_TOO_LARGE)


@pytest.mark.timeout(30)
def test_control_frame_just_over_64_kib_after_login_is_rejected(start_server: StartServer) -> None:
    srv = start_server()
    with logged_in(srv.port, ALICE) as conn:
        _rejected(conn, raw_frame(Get.TYPE, b"", length=65537), ErrorCode.FRAME_TOO_LARGE)


@pytest.mark.timeout(30)
def test_one_gib_data_frame_during_an_upload_is_rejected(start_server: StartServer) -> None:
    srv = start_server()
    with logged_in(srv.port, ALICE) as conn:
        conn.send(frame(Put("up.bin", 10 * GIB, 0)))
        ready = conn.read_message()
        assert isinstance(ready, PutReady), ready
        _rejected(conn, raw_frame(Data.TYPE, b"", length=GIB), ErrorCode.FRAME_TOO_LARGE)


# --- unknown, repeated, out of order ----------------------------------------------------

HELLO = frame(Hello(1, "x"))
LOGIN = frame(Login(*ALICE))

BEFORE_LOGIN: dict[str, bytes] = {
    "unknown type 0x42": raw_frame(0x42, b""),
    "type 0x00": raw_frame(0x00, b""),
    "type 0xff": raw_frame(0xFF, b"abc"),
    "LOGIN before HELLO": LOGIN,
    "GET before HELLO": frame(Get("hello.txt")),
    "WELCOME from a client": frame(Welcome(1, "x")),
    "HELLO twice": HELLO + HELLO,
    "GET before LOGIN": HELLO + frame(Get("hello.txt")),
    "LIST before LOGIN": HELLO + frame(ListRequest()),
    "BYE before LOGIN": HELLO + frame(Bye()),
    "LOGIN_OK from a client": HELLO + frame(LoginOk("alice", True)),
    "DATA before LOGIN": HELLO + frame(Data(b"x")),
    "HELLO with bad magic": raw_frame(Hello.TYPE, b"XXXX" + struct.pack("!HH", 1, 0)),
    "HELLO truncated": raw_frame(Hello.TYPE, MAGIC + b"\x00"),
    "HELLO with trailing bytes": raw_frame(Hello.TYPE, frame(Hello(1, ""))[5:] + b"!"),
    "LOGIN truncated": HELLO + raw_frame(Login.TYPE, struct.pack("!H", 50) + b"ali"),
    "LOGIN user not UTF-8": HELLO + raw_frame(Login.TYPE, b"\x00\x02\xff\xfe\x00\x01p"),
    "empty HELLO": raw_frame(Hello.TYPE, b""),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("data", BEFORE_LOGIN.values(), ids=BEFORE_LOGIN.keys())
def test_protocol_violation_before_login_ends_the_connection(
    start_server: StartServer, data: bytes
) -> None:
    srv = start_server()
    with RawConn(srv.port) as conn:
        # Prefix replies (WELCOME) may come first; then ERROR PROTOCOL_ERROR and the close.
        conn.send(data)
        msgs = conn.read_until_closed(PROMPT * 2)
    errors = [m for m in msgs if isinstance(m, Error)]
    assert errors and errors[-1].code == ErrorCode.PROTOCOL_ERROR, msgs
    assert all(isinstance(m, Welcome | Error) for m in msgs), msgs


AFTER_LOGIN: dict[str, bytes] = {
    "unknown type 0x42": raw_frame(0x42, b"hi"),
    "HELLO again": HELLO,
    "LOGIN again": LOGIN,
    "ACK in READY": frame(Ack(True)),
    "DONE in READY": frame(Done(b"\0" * 32)),
    "DATA in READY": frame(Data(b"stray")),
    "CANCEL in READY": frame(Cancel()),
    "FILE from a client": frame(FileHeader("x", 1, 0)),
    "LIST_END from a client": frame(ListEnd()),
    "PUT_READY from a client": frame(PutReady()),
    "GET offset without digest": raw_frame(
        Get.TYPE, struct.pack("!H", 9) + b"hello.txt" + struct.pack("!QH", 4096, 0)
    ),
    "GET digest of 5 bytes": raw_frame(
        Get.TYPE, struct.pack("!H", 9) + b"hello.txt" + struct.pack("!QH", 0, 5) + b"12345"
    ),
    "LIST flag = 2": raw_frame(ListRequest.TYPE, struct.pack("!HB", 0, 2)),
    "PUT unknown flags": raw_frame(
        Put.TYPE, struct.pack("!H", 1) + b"x" + struct.pack("!QqB", 1, 0, 0x80)
    ),
    "GET then DATA": frame(Get("hello.txt")) + frame(Data(b"x")),
    "DONE short of the announced bytes": frame(Put("short.bin", 10, 0)) + frame(Done(b"\0" * 32)),
    "DATA past the announced size": frame(Put("over.bin", 3, 0)) + frame(Data(b"four")),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("data", AFTER_LOGIN.values(), ids=AFTER_LOGIN.keys())
def test_protocol_violation_after_login_ends_the_connection(
    start_server: StartServer, data: bytes
) -> None:
    srv = start_server()
    with logged_in(srv.port, ALICE) as conn:
        conn.send(data)
        msgs = conn.read_until_closed(PROMPT * 3)
    errors = [m for m in msgs if isinstance(m, Error)]
    assert errors and errors[-1].code == ErrorCode.PROTOCOL_ERROR, msgs
    assert not (srv.config.root / "short.bin").exists()
    assert not (srv.config.root / "over.bin").exists()


# --- the wrong protocol on the port -----------------------------------------------------

GARBAGE: dict[str, bytes] = {
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "tcpft plaintext HELLO": frame(Hello(1, "plain")),
    "random": os.urandom(600),
    "zeros": b"\0" * 600,
    "ssh banner": b"SSH-2.0-OpenSSH_9.6\r\n",
    "sslv2 hello": b"\x80\x2b\x01\x03\x01"
    + struct.pack("!HHH", 18, 0, 16)
    + bytes.fromhex("c02b00002f000035000005000004000a0000ff")[:18]
    + os.urandom(16),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("data", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_on_the_tls_port_fails_fast(start_server: StartServer, data: bytes) -> None:
    srv = start_server()
    with RawConn(srv.port, tls=False) as conn:
        start = time.monotonic()
        conn.send_raw(data)
        took = conn.wait_closed(5.0)
        assert conn.eof
    assert took < FAST, f"closed after {took:.2f} s"
    assert time.monotonic() - start < FAST


@pytest.mark.timeout(30)
def test_plaintext_client_against_tls_server_fails_fast(
    start_server: StartServer, login: Callable[..., Session]
) -> None:
    srv = start_server()
    start = time.monotonic()
    with pytest.raises(ConnectError):
        login(srv, plaintext=True)
    assert time.monotonic() - start < FAST


@pytest.mark.timeout(30)
def test_tls_client_hello_to_plaintext_server_fails_fast(start_server: StartServer) -> None:
    srv = start_server(plaintext=True)
    with RawConn(srv.port, tls=False) as conn:
        start = time.monotonic()
        conn.send_raw(client_hello())
        msgs = conn.read_until_closed(5.0)
        took = time.monotonic() - start
    assert took < FAST, f"closed after {took:.2f} s"
    assert [m.code for m in msgs if isinstance(m, Error)] == [ErrorCode.PROTOCOL_ERROR], msgs


@pytest.mark.timeout(30)
def test_tls_client_against_plaintext_server_fails_fast(
    start_server: StartServer, login: Callable[..., Session]
) -> None:
    srv = start_server(plaintext=True)
    start = time.monotonic()
    with pytest.raises(ConnectError):
        login(srv, plaintext=False)
    assert time.monotonic() - start < FAST
