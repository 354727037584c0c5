"""Streamed PUTs (protocol version 4) from a hand-made client: bad ones fail alone or
end the session as the spec says, and the server never loses or corrupts a file."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from tcpft.errors import ErrorCode
from tcpft.frames import HEADER
from tcpft.limits import MAX_DATA_PAYLOAD
from tcpft.messages import Ack, Bye, Data, Done, Error, ListRequest, Put
from tcpft.names import PARTIAL_SUFFIX

from ..conftest import ALICE, BOB, Env, ServerThread
from .rawclient import frame, logged_in

StartServer = Callable[..., ServerThread]


def _streamed(path: str, content: bytes, digest: bytes | None = None, **flags: bool) -> bytes:
    """A streamed PUT with its DATA and DONE, as one client write."""
    put = Put(path, len(content), 1_700_000_000_000_000_000, stream=True, **flags)
    step = MAX_DATA_PAYLOAD
    data = b"".join(frame(Data(content[i : i + step])) for i in range(0, len(content), step))
    return frame(put) + data + frame(Done(digest or blake3.blake3(content).digest()))


def _wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _partials(where: Path) -> list[str]:
    return [p.name for p in where.rglob("*" + PARTIAL_SUFFIX)]


@pytest.mark.timeout(30)
def test_verdicts_come_in_order_and_a_bad_digest_stores_nothing(
    env: Env, server: ServerThread
) -> None:
    with logged_in(server.port, ALICE, version=4) as conn:
        conn.send(
            _streamed("a.bin", b"first")
            + _streamed("b.bin", b"second", digest=bytes(32))
            + _streamed("c.bin", b"third")
        )
        verdicts = [conn.read_message() for _ in range(3)]
        conn.send(frame(ListRequest()))
        listed = conn.read_listing()
        conn.send(frame(Bye()))
        assert conn.read_until_closed() == []
    assert verdicts[0] == Ack(True) and verdicts[2] == Ack(True)
    assert isinstance(verdicts[1], Error) and verdicts[1].code == ErrorCode.DIGEST_MISMATCH
    assert "a.bin" in listed and "c.bin" in listed and "b.bin" not in listed
    assert (env.root / "a.bin").read_bytes() == b"first"
    assert (env.root / "c.bin").read_bytes() == b"third"
    assert not (env.root / "b.bin").exists() and _partials(env.root) == []


@pytest.mark.timeout(30)
def test_a_refused_streamed_put_has_its_data_thrown_away(env: Env, server: ServerThread) -> None:
    """The refusal (an existing name) comes before the client's DATA is read: the
    server must read past 3 MiB of it, DONE included, and carry on."""
    (env.root / "taken.bin").write_bytes(b"keep me")
    big = os.urandom(3 * 1024 * 1024)
    with logged_in(server.port, ALICE, version=4) as conn:
        conn.send(_streamed("taken.bin", big) + _streamed("free.bin", b"fine"))
        refusal, verdict = conn.read_message(), conn.read_message()
        conn.send(frame(ListRequest()))
        assert "free.bin" in conn.read_listing()
    assert isinstance(refusal, Error) and refusal.code == ErrorCode.ALREADY_EXISTS, refusal
    assert verdict == Ack(True)
    assert (env.root / "taken.bin").read_bytes() == b"keep me"
    assert (env.root / "free.bin").read_bytes() == b"fine"


@pytest.mark.timeout(30)
def test_uploads_sent_whole_are_stored_when_the_client_leaves_without_verdicts(
    env: Env, server: ServerThread
) -> None:
    contents = {f"gone{i}.bin": os.urandom(50_000 + i) for i in range(5)}
    with logged_in(server.port, ALICE, version=4) as conn:
        conn.send(b"".join(_streamed(name, data) for name, data in contents.items()))
        conn.half_close()  # gone, without reading a verdict
        for name, data in contents.items():
            _wait_for(env.root / name)
            assert (env.root / name).read_bytes() == data
    assert _partials(env.root) == []
    with logged_in(server.port, ALICE, version=4) as conn:  # the server is still there
        conn.send(_streamed("after.bin", b"ok"))
        assert conn.read_message() == Ack(True)


@pytest.mark.timeout(30)
def test_a_cut_in_the_middle_of_a_streamed_file_stores_nothing(
    env: Env, server: ServerThread
) -> None:
    content = os.urandom(200_000)
    whole = _streamed("cut.bin", content)
    with logged_in(server.port, ALICE, version=4) as conn:
        conn.send(_streamed("before.bin", b"stored") + whole[: len(whole) // 2])
        assert conn.read_message() == Ack(True)
        conn.reset()
    time.sleep(0.3)
    assert not (env.root / "cut.bin").exists()
    assert (env.root / "before.bin").read_bytes() == b"stored"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_streamed_put_before_version_4_is_a_protocol_error(
    env: Env, server: ServerThread, version: int
) -> None:
    with logged_in(server.port, ALICE, version=version) as conn:
        conn.send(_streamed("early.bin", b"x"))
        msgs = conn.read_until_closed()
    assert [m.code for m in msgs if isinstance(m, Error)] == [ErrorCode.PROTOCOL_ERROR]
    assert not (env.root / "early.bin").exists()


@pytest.mark.timeout(30)
def test_stream_and_resume_together_is_a_protocol_error(env: Env, server: ServerThread) -> None:
    payload = bytearray(Put("both.bin", 1, 0, stream=True).encode_payload())
    payload[-1] = 0x06  # stream + resume: no encoder makes it
    with logged_in(server.port, ALICE, version=4) as conn:
        conn.send(HEADER.pack(Put.TYPE, len(payload)) + bytes(payload))
        msgs = conn.read_until_closed()
    assert [m.code for m in msgs if isinstance(m, Error)] == [ErrorCode.PROTOCOL_ERROR]
    assert not (env.root / "both.bin").exists()


@pytest.mark.timeout(30)
def test_a_read_only_account_is_refused_and_the_session_goes_on(
    env: Env, server: ServerThread
) -> None:
    with logged_in(server.port, BOB, version=4) as conn:
        conn.send(_streamed("no1.bin", b"x" * 1000) + _streamed("no2.bin", b""))
        first, second = conn.read_message(), conn.read_message()
        conn.send(frame(ListRequest()))
        assert "hello.txt" in conn.read_listing()
    for msg in (first, second):
        assert isinstance(msg, Error) and msg.code == ErrorCode.PERMISSION_DENIED, msg
    assert not (env.root / "no1.bin").exists() and not (env.root / "no2.bin").exists()


@pytest.mark.timeout(30)
def test_shutdown_sends_the_verdicts_owed_before_it_says_so(
    env: Env, start_server: StartServer
) -> None:
    """The server stops while streamed uploads arrive: every upload it stored has had
    its verdict sent, in order, before the ERROR that says the server is shutting
    down, and none of the others is stored."""
    srv = start_server()
    contents = {f"late{i}.bin": os.urandom(300_000 + i) for i in range(6)}
    with logged_in(srv.port, ALICE, version=4) as conn:
        conn.send(b"".join(_streamed(name, data) for name, data in contents.items()))
        srv.stop()
        msgs = conn.read_until_closed()
    acks = 0
    while acks < len(msgs) and msgs[acks] == Ack(True):
        acks += 1
    assert len(msgs) == acks + 1, msgs
    assert isinstance(msgs[-1], Error) and msgs[-1].code == ErrorCode.SHUTTING_DOWN, msgs
    stored = [name for name in contents if (env.root / name).exists()]
    assert stored == list(contents)[:acks]
    for name in stored:
        assert (env.root / name).read_bytes() == contents[name]


@pytest.mark.timeout(30)
def test_two_streamed_names_that_share_a_partial_file_keep_their_own_bytes(
    env: Env, server: ServerThread
) -> None:
    """A 250-byte name's partial is named after its SHA-256, the partial of the hex name
    as well. Sent back to back, the second must not write into the first's partial
    while the first is committed (the first was once stored with the second's bytes)."""
    long_name = "L" * 250
    hex_name = hashlib.sha256(long_name.encode()).hexdigest()
    a, b = b"A" * (3 * MAX_DATA_PAYLOAD), b"b" * (3 * MAX_DATA_PAYLOAD)
    with logged_in(server.port, ALICE, version=4) as conn:
        conn.send(_streamed(long_name, a) + _streamed(hex_name, b))
        verdicts = [conn.read_message(), conn.read_message()]
    assert verdicts[0] == Ack(True)
    assert (env.root / long_name).read_bytes() == a
    if verdicts[1] == Ack(True):
        assert (env.root / hex_name).read_bytes() == b
    else:
        assert isinstance(verdicts[1], Error) and verdicts[1].code == ErrorCode.ALREADY_EXISTS
        assert not (env.root / hex_name).exists()
