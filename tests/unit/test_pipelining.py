"""Pipelined GETs (protocol version 2) in the sans-I/O core: queued on both sides."""

from __future__ import annotations

import hashlib

import pytest

from tcpft.errors import ErrorCode, FrameTooLarge, LocalProtocolError, RemoteProtocolError
from tcpft.frames import encode_frame, frame_header
from tcpft.limits import MAX_CONTROL_PAYLOAD, MAX_GETS_AHEAD
from tcpft.messages import (
    Ack,
    Data,
    Done,
    Entry,
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
    Welcome,
)
from tcpft.protocol import NEED_DATA, Connection, Role, State, payload_limit

C, S = Role.CLIENT, Role.SERVER
CONTENT = b"0123456789"
SHA = hashlib.sha256(CONTENT).digest()
LISTING = ListEntries((Entry("a", False, 10, 1),))


def frame_of(msg: Message) -> bytes:
    return encode_frame(msg.TYPE, msg.encode_payload())


class Wire:
    """A client and a server core; bytes are delivered only when asked."""

    def __init__(self, version: int) -> None:
        self.c = Connection(C)
        self.s = Connection(S)
        self.say(C, Hello(version, "c"))
        assert self.hear(S) == Hello(version, "c")
        self.say(S, Welcome(version, "s"))
        self.hear(C)
        self.exchange(C, Login("u", "p"))
        self.exchange(S, LoginOk("u"))
        self.exchange(S, ListEnd())
        assert self.c.state is self.s.state is State.READY
        assert self.c.version == self.s.version == version

    def side(self, role: Role) -> Connection:
        return self.c if role is C else self.s

    def say(self, role: Role, msg: Message) -> None:
        self.side(role.peer).receive_data(self.side(role).send(msg))

    def hear(self, role: Role) -> object:
        return self.side(role).next_event()

    def exchange(self, role: Role, msg: Message) -> None:
        self.say(role, msg)
        assert self.hear(role.peer) == msg

    def serve(self, name: str = "a") -> None:
        """The server sends one whole file and the client acknowledges it."""
        self.exchange(S, FileHeader(name, 10, 1))
        self.exchange(S, Data(CONTENT))
        self.exchange(S, Done(SHA))
        assert self.c.state is self.s.state is State.DOWNLOAD_ACK
        self.say(C, Ack(True))
        assert self.hear(S) == Ack(True)


def test_gets_ahead_start_in_order_when_each_download_ends() -> None:
    w = Wire(2)
    w.say(C, Get("a"))
    assert w.c.may_send_get_ahead()
    w.say(C, Get("b"))
    w.say(C, Get("c"))
    assert w.c.gets_ahead == 2 and w.c.state is State.GET_WAIT
    assert w.hear(S) == Get("a")  # b and c wait in the server's queue
    assert w.hear(S) is NEED_DATA
    assert w.s.gets_ahead == 2
    for name in ("b", "c"):
        w.serve()
        assert w.c.state is w.s.state is State.GET_WAIT  # the next GET has started
        assert w.hear(S) == Get(name)
        assert w.hear(S) is NEED_DATA
    w.serve()
    assert w.c.state is w.s.state is State.READY
    assert w.c.gets_ahead == w.s.gets_ahead == 0
    assert not w.c.may_send_get_ahead()


def test_gets_ahead_can_be_sent_in_every_download_state() -> None:
    w = Wire(2)
    w.say(C, Get("a"))
    assert w.hear(S) == Get("a")
    w.exchange(S, FileHeader("a", 10, 1))
    w.say(C, Get("b"))  # DOWNLOADING
    w.exchange(S, Data(CONTENT))
    w.exchange(S, Done(SHA))
    w.say(C, Get("c"))  # DOWNLOAD_ACK
    w.say(C, Ack(True))
    assert w.hear(S) == Ack(True)
    assert w.hear(S) == Get("b")
    w.serve()
    assert w.hear(S) == Get("c")


def test_a_refused_get_sends_the_listing_then_the_next_get_starts() -> None:
    w = Wire(2)
    w.say(C, Get("missing"))
    w.say(C, Get("a"))
    assert w.hear(S) == Get("missing")
    assert w.hear(S) is NEED_DATA  # GET a is in the server's queue
    w.side(C).receive_data(w.s.send_error(ErrorCode.INVALID_NAME, "no such file"))
    assert isinstance(w.hear(C), Error)
    assert w.c.state is w.s.state is State.LISTING
    w.say(C, Get("b"))  # still allowed: the LISTING answers a GET
    w.exchange(S, LISTING)
    w.exchange(S, ListEnd())
    assert w.c.state is w.s.state is State.GET_WAIT  # GET a has started on both sides
    assert w.hear(S) == Get("a")
    w.serve()
    assert w.hear(S) == Get("b")


@pytest.mark.parametrize("ok", [True, False])
def test_failed_or_rejected_download_goes_on_with_the_queue(ok: bool) -> None:
    w = Wire(2)
    w.say(C, Get("a"))
    w.say(C, Get("b"))
    assert w.hear(S) == Get("a")
    assert w.hear(S) is NEED_DATA
    if ok:  # the file changed on the server mid-way: a non-fatal ERROR
        w.exchange(S, FileHeader("a", 10, 1))
        w.side(C).receive_data(w.s.send_error(ErrorCode.FILE_CHANGED, "changed"))
        assert isinstance(w.hear(C), Error)
    else:  # the client's digest did not match
        w.exchange(S, FileHeader("a", 10, 1))
        w.exchange(S, Data(CONTENT))
        w.exchange(S, Done(SHA))
        w.say(C, Ack(False))
        assert w.hear(S) == Ack(False)
    assert w.c.state is w.s.state is State.GET_WAIT
    assert w.hear(S) == Get("b")


def test_a_fatal_error_drops_the_queue() -> None:
    w = Wire(2)
    w.say(C, Get("a"))
    w.say(C, Get("b"))
    w.hear(S)
    w.side(C).receive_data(w.s.send_error(ErrorCode.SHUTTING_DOWN, "bye"))
    assert isinstance(w.hear(C), Error)
    assert w.c.state is w.s.state is State.CLOSED
    assert w.c.gets_ahead == w.s.gets_ahead == 0


def test_at_most_max_gets_ahead() -> None:
    w = Wire(2)
    w.say(C, Get("a"))
    for i in range(MAX_GETS_AHEAD):
        w.say(C, Get(f"f{i}"))
    assert not w.c.may_send_get_ahead()
    with pytest.raises(LocalProtocolError, match="GETs sent ahead"):
        w.c.send(Get("one too many"))
    assert w.c.state is State.GET_WAIT and w.c.gets_ahead == MAX_GETS_AHEAD
    # A server that receives one more closes with a protocol error.
    assert w.hear(S) == Get("a")
    assert w.hear(S) is NEED_DATA
    w.s.receive_data(frame_of(Get("x")))
    with pytest.raises(RemoteProtocolError, match="GETs sent ahead"):
        w.hear(S)
    assert w.s.state is State.CLOSED


def test_version_1_does_not_pipeline() -> None:
    w = Wire(1)
    w.say(C, Get("a"))
    assert not w.c.may_send_get_ahead()
    with pytest.raises(LocalProtocolError, match="version 2"):
        w.c.send(Get("b"))
    assert w.c.state is State.GET_WAIT and w.c.gets_ahead == 0
    assert w.hear(S) == Get("a")
    w.s.receive_data(frame_of(Get("b")))
    with pytest.raises(RemoteProtocolError, match="version 2"):
        w.hear(S)
    assert w.s.state is State.CLOSED


def test_no_get_ahead_outside_a_download() -> None:
    w = Wire(2)
    w.say(C, ListRequest())
    assert w.hear(S) == ListRequest()
    assert w.c.state is State.LISTING and not w.c.may_send_get_ahead()
    with pytest.raises(LocalProtocolError):
        w.c.send(Get("a"))  # a LISTING that answers LIST is not part of a download
    w.s.receive_data(frame_of(Get("a")))
    with pytest.raises(RemoteProtocolError):
        w.hear(S)


def test_no_get_ahead_during_an_upload() -> None:
    w = Wire(2)
    w.say(C, Put("u", 10, 1))
    assert w.hear(S) == Put("u", 10, 1)
    with pytest.raises(LocalProtocolError):
        w.c.send(Get("a"))


def test_nothing_but_get_and_ack_while_gets_are_queued() -> None:
    w = Wire(2)
    w.say(C, Get("a"))
    w.say(C, Get("b"))
    w.hear(S)
    w.exchange(S, FileHeader("a", 10, 1))
    w.exchange(S, Data(CONTENT))
    w.exchange(S, Done(SHA))
    w.say(C, Ack(True))
    for msg in (ListRequest(), Put("u", 1, 1), Ack(True)):
        with pytest.raises(LocalProtocolError):
            w.c.send(msg)  # GET_WAIT for b: the server speaks next


def test_a_get_ahead_is_bounded_by_the_control_frame_limit() -> None:
    for state in (State.GET_WAIT, State.DOWNLOADING, State.DOWNLOAD_ACK, State.LISTING):
        assert payload_limit(state, C, Get.TYPE) == MAX_CONTROL_PAYLOAD
        assert payload_limit(state, S, Get.TYPE) is None  # a server never sends GET
    w = Wire(2)
    w.say(C, Get("a"))
    assert w.hear(S) == Get("a")
    w.s.receive_data(frame_header(Get.TYPE, MAX_CONTROL_PAYLOAD + 1))
    with pytest.raises(FrameTooLarge):
        w.hear(S)
    assert w.s.state is State.CLOSED
