"""Random conversations: legal and illegal raw frames, in any order, on one TLS connection.

Whatever a client sends, the server only ever answers with well-formed frames that
decode to messages a server may send, or closes; it never hangs; and it goes on serving
a well-behaved client afterwards.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpft.client import Session
from tcpft.errors import ErrorCode
from tcpft.messages import (
    MESSAGE_TYPES,
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
    ListEntries,
    ListRequest,
    Login,
    LoginOk,
    Message,
    Put,
    PutReady,
    Welcome,
)

from ..conftest import ALICE, ServerThread
from .rawclient import RawConn, frame, raw_frame

StartServer = Callable[..., ServerThread]

SERVER_SENDS = (Welcome, LoginOk, ListEntries, ListEnd, FileHeader, Data, Done, PutReady, Ack)
#: Examples per run; TCPFT_RANDOM_EXAMPLES=400 for a longer hunt.
EXAMPLES = int(os.environ.get("TCPFT_RANDOM_EXAMPLES", "30"))
UNDEFINED_TYPES = [t for t in range(256) if t not in MESSAGE_TYPES]

names = st.sampled_from(["hello.txt", "data.bin", "sub/inner.txt", "nope", "../x", "sub", ""])
digests = st.sampled_from([b"", os.urandom(32), b"\0" * 32])

valid_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, st.integers(0, 3), st.text(max_size=10)),
    st.just(Login(*ALICE)),
    st.builds(Login, st.sampled_from(["alice", "bob", "eve"]), st.text(max_size=12)),
    st.builds(ListRequest, names, st.booleans()),
    st.builds(Get, names),
    st.builds(Ack, st.booleans()),
    st.builds(
        Put,
        st.sampled_from(["r1.bin", "r2.bin", "sub/r3.bin", "../r4"]),
        st.integers(0, 64),
        st.integers(0, 2**40),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(Data, st.binary(min_size=1, max_size=64)),
    st.builds(Done, st.binary(min_size=32, max_size=32)),
    st.just(Cancel()),
    st.just(Bye()),
    st.builds(Error, st.integers(0, 40), st.text(max_size=20)),
    # Messages only a server may send.
    st.just(Welcome(1, "fake")),
    st.just(LoginOk("alice", True)),
    st.just(ListEnd()),
    st.just(FileHeader("hello.txt", 13, 0)),
    st.just(PutReady()),
)


def _get_payload(path: str, offset: int, digest: bytes) -> bytes:
    """A GET built by hand, so offsets without a digest can be sent too."""
    raw = path.encode()
    return struct.pack("!H", len(raw)) + raw + struct.pack("!QH", offset, len(digest)) + digest


resume_gets = st.builds(
    lambda p, o, d: raw_frame(Get.TYPE, _get_payload(p, o, d)),
    names,
    st.sampled_from([0, 1, 4 * 1024 * 1024]),
    digests,
)


# Mostly what a real client says after login, so the deeper states get reached.
client_frames = st.one_of(
    st.builds(ListRequest, names, st.booleans()),
    st.builds(Get, st.sampled_from(["hello.txt", "data.bin", "sub/inner.txt", "nope"])),
    st.builds(Ack, st.booleans()),
    st.builds(Put, st.sampled_from(["r1.bin", "sub/r2.bin"]), st.integers(0, 8), st.just(0)),
    st.builds(Data, st.binary(min_size=1, max_size=8)),
    st.builds(Done, st.binary(min_size=32, max_size=32)),
    st.just(Cancel()),
    st.just(Bye()),
).map(frame)


@st.composite
def chunks(draw: st.DrawFn) -> bytes:
    kinds = ["valid"] * 3 + ["garbage type", "random payload", "oversize", "truncated", "raw"]
    kind = draw(st.sampled_from(kinds))
    if kind == "valid":
        if draw(st.integers(0, 9)) == 0:
            return draw(resume_gets)
        return frame(draw(valid_messages))
    if kind == "garbage type":
        return raw_frame(draw(st.sampled_from(UNDEFINED_TYPES)), draw(st.binary(max_size=32)))
    if kind == "random payload":
        return raw_frame(draw(st.sampled_from(sorted(MESSAGE_TYPES))), draw(st.binary(max_size=48)))
    if kind == "oversize":
        length = draw(st.sampled_from([4097, 65537, 1 << 20 | 1, 1 << 30, 0xFFFFFFFF]))
        return raw_frame(draw(st.sampled_from(sorted(MESSAGE_TYPES))), b"", length=length)
    if kind == "truncated":
        whole = frame(draw(valid_messages))
        return whole[: draw(st.integers(1, max(1, len(whole) - 1)))]
    return draw(st.binary(min_size=1, max_size=40))


def _check_reply(msg: Message | None, seen: set[str]) -> None:
    if msg is None:
        return
    seen.add(type(msg).__name__)
    if isinstance(msg, Error):
        assert msg.code in {int(c) for c in ErrorCode}, msg
        return
    assert isinstance(msg, SERVER_SENDS), f"the server sent a client message: {msg!r}"


@pytest.mark.timeout(120)
def test_random_frame_sequences(start_server: StartServer, login: Callable[..., Session]) -> None:
    srv = start_server(penalty_threshold=10_000, login_failure_delay=0.01, idle_timeout=30)
    port = srv.port
    stats = {"examples": 0, "logged in": 0}
    seen: set[str] = set()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        st.one_of(
            st.lists(chunks(), min_size=1, max_size=10),
            st.lists(st.one_of(client_frames, chunks()), min_size=1, max_size=10),
        ),
        st.booleans(),
        st.sampled_from([True, True, False]),
    )
    def conversation(sequence: list[bytes], read_between: bool, logged_in: bool) -> None:
        stats["examples"] += 1
        with RawConn(port) as conn:
            if logged_in:  # half the time, start from READY to reach the deeper states
                conn.hello()
                assert isinstance(conn.login(*ALICE), LoginOk)
                conn.read_listing()
                stats["logged in"] += 1
            for data in sequence:
                try:
                    conn.send(data)
                except OSError:
                    break  # the server has closed on us: fine
                if read_between:
                    with contextlib.suppress(TimeoutError):
                        _check_reply(conn.read_message(0.05), seen)
            # Take the replies until the server falls quiet (or closes) ...
            with contextlib.suppress(TimeoutError):
                while (msg := conn.read_message(0.15)) is not None:
                    _check_reply(msg, seen)
            # ... then end our side (FIN): the server must finish and close, promptly.
            # (asyncio's TLS answers a FIN by closing at once: no half-close in TLS.)
            conn.half_close()
            start = time.monotonic()
            try:
                for msg in conn.read_until_closed(8.0):
                    _check_reply(msg, seen)
            except TimeoutError:
                pytest.fail(f"the server hung after {sequence!r}")
            assert time.monotonic() - start < 8.0
        # A well-behaved client is still served.
        with login(srv) as s:
            assert {e.path for e in s.list()} >= {"hello.txt", "data.bin", "sub"}

    conversation()
    print(stats, sorted(seen))
    assert stats["examples"] == EXAMPLES
    assert {"Error", "FileHeader"} <= seen, seen  # the deep states were reached
    deadline = time.monotonic() + 10
    while srv.call(lambda: srv.server.connection_count) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.call(lambda: srv.server.connection_count) == 0
    assert srv.call(lambda: srv.server._unauthenticated) == 0


@pytest.mark.timeout(10)
def test_struct_of_random_payload_helper() -> None:
    """The raw helpers build what they say (a lie about the length included)."""
    assert raw_frame(0x42, b"ab") == b"\x42\x00\x00\x00\x02ab"
    assert raw_frame(0x01, b"", length=1 << 30) == struct.pack("!BI", 1, 1 << 30)
