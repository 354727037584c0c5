"""GETs sent ahead (protocol version 2) by a hand-made client: the limits hold."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tcpft.errors import ErrorCode
from tcpft.limits import MAX_GETS_AHEAD
from tcpft.messages import (
    Ack,
    Bye,
    Data,
    Done,
    Error,
    FileHeader,
    Get,
    ListEnd,
    ListEntries,
    Message,
    Put,
)

from ..conftest import ALICE, ServerThread
from .rawclient import RawConn, frame, logged_in

StartServer = Callable[..., ServerThread]


def _read_file(conn: RawConn) -> bytes:
    """FILE, DATA..., DONE of one download; the content."""
    header = conn.read_message()
    assert isinstance(header, FileHeader), header
    got = b""
    while True:
        msg = conn.read_message()
        if isinstance(msg, Done):
            return got
        assert isinstance(msg, Data), msg
        got += msg.data


def _last_error(msgs: list[Message]) -> Error:
    errors = [m for m in msgs if isinstance(m, Error)]
    assert errors, msgs
    return errors[-1]


@pytest.mark.timeout(30)
def test_the_most_gets_ahead_are_all_answered_in_order(start_server: StartServer) -> None:
    srv = start_server()
    names = [f"f{i}.txt" for i in range(MAX_GETS_AHEAD + 1)]
    for i, name in enumerate(names):
        (srv.config.root / name).write_text(f"file {i}\n")
    with logged_in(srv.port, ALICE, version=2) as conn:
        conn.send(b"".join(frame(Get(n)) for n in names))  # one current + 8 ahead
        for i in range(len(names)):
            assert _read_file(conn) == f"file {i}\n".encode()
            conn.send(frame(Ack(True)))
        conn.send(frame(Bye()))
        assert conn.read_until_closed(5.0) == []


@pytest.mark.timeout(30)
def test_one_get_too_many_ahead_is_a_protocol_error(start_server: StartServer) -> None:
    srv = start_server()
    with logged_in(srv.port, ALICE, version=2) as conn:
        conn.send(b"".join(frame(Get("hello.txt")) for _ in range(MAX_GETS_AHEAD + 2)))
        msgs = conn.read_until_closed(5.0)
    assert _last_error(msgs).code == ErrorCode.PROTOCOL_ERROR


@pytest.mark.timeout(30)
def test_a_get_ahead_in_a_version_1_session_is_a_protocol_error(
    start_server: StartServer,
) -> None:
    srv = start_server()
    with logged_in(srv.port, ALICE, version=1) as conn:
        conn.send(frame(Get("hello.txt")) + frame(Get("hello.txt")))
        msgs = conn.read_until_closed(5.0)
    assert _last_error(msgs).code == ErrorCode.PROTOCOL_ERROR
    assert "version 2" in _last_error(msgs).text


@pytest.mark.timeout(30)
def test_a_get_during_an_upload_is_a_protocol_error(start_server: StartServer) -> None:
    srv = start_server()
    with logged_in(srv.port, ALICE, version=2) as conn:
        conn.send(frame(Put("up.bin", 10, 0)) + frame(Get("hello.txt")))
        msgs = conn.read_until_closed(5.0)
    assert _last_error(msgs).code == ErrorCode.PROTOCOL_ERROR
    assert not (srv.config.root / "up.bin").exists()


@pytest.mark.timeout(30)
def test_a_refused_name_ahead_gets_the_listing_then_the_rest(start_server: StartServer) -> None:
    srv = start_server()
    with logged_in(srv.port, ALICE, version=2) as conn:
        conn.send(frame(Get("hello.txt")) + frame(Get("nope")) + frame(Get("sub/inner.txt")))
        assert _read_file(conn) == b"hello, world\n"
        conn.send(frame(Ack(True)))
        err = conn.read_message()
        assert isinstance(err, Error) and err.code == ErrorCode.INVALID_NAME
        while not isinstance(msg := conn.read_message(), ListEnd):
            assert isinstance(msg, ListEntries)
        assert _read_file(conn) == b"inner\n"
        conn.send(frame(Ack(True)) + frame(Bye()))
        assert conn.read_until_closed(5.0) == []


@pytest.mark.timeout(30)
def test_a_client_that_queues_gets_and_vanishes_is_forgotten(start_server: StartServer) -> None:
    srv = start_server()
    (srv.config.root / "big.bin").write_bytes(b"\0" * (32 * 1024 * 1024))
    for _ in range(5):
        conn = logged_in(srv.port, ALICE, version=2)
        conn.send(b"".join(frame(Get("big.bin")) for _ in range(MAX_GETS_AHEAD + 1)))
        conn.reset()  # RST without reading anything
    deadline = time.monotonic() + 10
    while srv.call(lambda: srv.server.connection_count) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.call(lambda: srv.server.connection_count) == 0
