"""Streamed PUTs (protocol version 4) in the sans-I/O core: verdicts owed on both sides."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tcpft.errors import (
    ConnectionBroken,
    ErrorCode,
    FrameTooLarge,
    LocalProtocolError,
    RemoteProtocolError,
)
from tcpft.frames import encode_frame, frame_header
from tcpft.limits import MAX_CONTROL_PAYLOAD, MAX_PUTS_AHEAD, RESUME_BLOCK_SIZE
from tcpft.messages import (
    Ack,
    Bye,
    Cancel,
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
    PutReady,
    Welcome,
    decode_message,
)
from tcpft.protocol import (
    CLOSED,
    NEED_DATA,
    STREAMING_VERSION,
    VERDICT_STATES,
    Connection,
    Role,
    State,
    payload_limit,
)

C, S = Role.CLIENT, Role.SERVER
CONTENT = b"0123456789"
DIGEST = bytes(range(32))  # the core does not check digests
LISTING = ListEntries((Entry("a", False, 10, 1),))


def frame_of(msg: Message) -> bytes:
    return encode_frame(msg.TYPE, msg.encode_payload())


def sput(path: str, size: int, *, force: bool = False) -> Put:
    """A streamed PUT."""
    return Put(path, size, 1, force=force, stream=True)


class Wire:
    """A client and a server core; each side reads what it was sent only when asked."""

    def __init__(self, version: int = STREAMING_VERSION) -> None:
        self.c = Connection(C)
        self.s = Connection(S)
        self.exchange(C, Hello(version, "c"))
        self.exchange(S, Welcome(version, "s"))
        self.exchange(C, Login("u", "p"))
        self.exchange(S, LoginOk("u"))
        self.exchange(S, ListEnd())
        self.both(State.READY, 0)
        assert self.c.version == self.s.version == version

    def side(self, role: Role) -> Connection:
        return self.c if role is C else self.s

    def say(self, role: Role, msg: Message) -> None:
        self.side(role.peer).receive_data(self.side(role).send(msg))

    def error(self, role: Role, code: ErrorCode, text: str = "no") -> None:
        self.side(role.peer).receive_data(self.side(role).send_error(code, text))

    def raw(self, role: Role, msg: Message) -> None:
        """Deliver ``msg`` to ``role``'s peer without asking ``role``'s core."""
        self.side(role.peer).receive_data(frame_of(msg))

    def hear(self, role: Role) -> object:
        return self.side(role).next_event()

    def exchange(self, role: Role, msg: Message) -> None:
        self.say(role, msg)
        assert self.hear(role.peer) == msg

    def upload(self, name: str, chunks: tuple[bytes, ...] = (CONTENT,)) -> None:
        """One whole streamed upload, read by the server too; no verdict yet."""
        self.exchange(C, sput(name, sum(map(len, chunks))))
        for chunk in chunks:
            self.exchange(C, Data(chunk))
        self.exchange(C, Done(DIGEST))

    def both(self, state: State, owed: int) -> None:
        assert (self.c.state, self.c.verdicts_owed) == (state, owed)
        assert (self.s.state, self.s.verdicts_owed) == (state, owed)


# --- the frame ---------------------------------------------------------------------


@pytest.mark.parametrize(("force", "flags"), [(False, 0x04), (True, 0x05)])
def test_streamed_put_frame_layout(force: bool, flags: int) -> None:
    msg = Put("f", 3, 7, force=force, stream=True)
    expected = bytes.fromhex("0d 00000014 0001 66 0000000000000003 0000000000000007") + bytes(
        [flags]
    )
    assert frame_of(msg) == expected
    assert decode_message(Put.TYPE, expected[5:]) == msg
    w = Wire()
    assert w.c.send(msg) == expected  # what the core sends is the same frame


def test_streamed_put_cannot_resume() -> None:
    with pytest.raises(LocalProtocolError):
        Put("f", 3, 7, resume=True, stream=True).encode_payload()
    w = Wire()
    with pytest.raises(LocalProtocolError):
        w.c.send(Put("f", 3, 7, resume=True, stream=True))
    assert w.c.state is State.READY
    for flags in ("06", "07"):
        with pytest.raises(RemoteProtocolError):
            decode_message(
                Put.TYPE, bytes.fromhex("0001 66 0000000000000003 0000000000000000" + flags)
            )
    w.s.receive_data(bytes.fromhex("0d 00000014 0001 66 0000000000000003 0000000000000007 06"))
    with pytest.raises(RemoteProtocolError):
        w.hear(S)
    assert w.s.state is State.CLOSED


# --- rules 1 and 2: straight to UPLOADING, straight back to READY ----------------------


def test_streamed_put_goes_straight_to_uploading() -> None:
    w = Wire()
    assert w.c.may_stream_put()
    w.say(C, sput("u", 10))
    assert w.c.state is State.UPLOADING and w.c.remaining == 10
    w.say(C, Data(CONTENT[:4]))  # no PUT_READY awaited: DATA goes out at once
    assert w.c.remaining == 6
    assert w.hear(S) == sput("u", 10)
    assert w.s.state is State.UPLOADING and w.s.remaining == 10
    with pytest.raises(LocalProtocolError):
        w.s.send(PutReady(0))  # never sent for a streamed PUT
    assert w.hear(S) == Data(CONTENT[:4])
    assert w.s.remaining == 6
    w.raw(S, PutReady(0))
    with pytest.raises(RemoteProtocolError):
        w.hear(C)
    assert w.side(C).state is State.CLOSED


def test_done_of_a_streamed_upload_returns_to_ready_with_a_verdict_owed() -> None:
    w = Wire()
    w.exchange(C, sput("u", 10))
    w.exchange(C, Data(CONTENT))
    w.say(C, Done(DIGEST))
    assert w.c.state is State.READY and w.c.verdicts_owed == 1  # not UPLOAD_ACK
    assert w.s.state is State.UPLOADING and w.s.verdicts_owed == 0
    assert w.hear(S) == Done(DIGEST)
    w.both(State.READY, 1)
    assert w.c.may_stream_put()
    w.exchange(S, Ack(True))
    w.both(State.READY, 0)


def test_three_streamed_uploads_with_late_verdicts() -> None:
    w = Wire()
    for i, chunks in enumerate([(CONTENT,), (b"ab", b"cd", b"e"), ()]):
        w.upload(f"u{i}", chunks)
        w.both(State.READY, i + 1)
    verdicts: list[Message] = [
        Ack(True),
        Ack(False),
        Error.of(ErrorCode.DIGEST_MISMATCH, "bad digest"),  # non-fatal
    ]
    for left, verdict in zip((2, 1, 0), verdicts, strict=True):
        w.exchange(S, verdict)
        w.both(State.READY, left)  # a verdict never moves the state


def test_a_verdict_arrives_in_the_middle_of_the_next_upload() -> None:
    w = Wire()
    w.upload("u0")
    w.exchange(C, sput("u1", 10))
    w.exchange(C, Data(CONTENT[:3]))
    w.both(State.UPLOADING, 1)
    w.exchange(S, Ack(False))  # the verdict on u0
    w.both(State.UPLOADING, 0)
    assert w.c.remaining == w.s.remaining == 7  # the upload in progress is untouched
    w.exchange(C, Data(CONTENT[3:]))
    w.exchange(C, Done(DIGEST))
    w.both(State.READY, 1)  # u1's verdict
    w.upload("u2")
    w.both(State.READY, 2)
    w.exchange(S, Ack(True))
    w.exchange(S, Ack(True))
    w.both(State.READY, 0)


def test_verdicts_interleaved_with_uploads() -> None:
    w = Wire()
    w.upload("u0")
    w.upload("u1")
    w.exchange(C, sput("u2", 10))
    w.exchange(C, Data(CONTENT[:5]))
    w.both(State.UPLOADING, 2)
    w.exchange(S, Ack(True))  # u0, while the client is in the middle of u2
    w.both(State.UPLOADING, 1)
    w.exchange(S, Error.of(ErrorCode.IO_ERROR, "disk"))  # u1: a verdict, not a refusal
    w.both(State.UPLOADING, 0)
    assert w.c.remaining == w.s.remaining == 5
    w.exchange(C, Data(CONTENT[5:]))
    w.exchange(C, Done(DIGEST))
    w.both(State.READY, 1)
    w.exchange(S, Ack(True))  # u2
    w.both(State.READY, 0)


def test_a_non_fatal_error_with_no_verdict_owed_in_ready_is_not_a_verdict() -> None:
    w = Wire()
    w.upload("u0")
    w.exchange(S, Error.of(ErrorCode.IO_ERROR, "disk"))  # the verdict: READY stays
    w.both(State.READY, 0)
    w.error(S, ErrorCode.IO_ERROR)  # nothing owed: READY has no way out by ERROR
    assert isinstance(w.hear(C), Error)
    assert w.c.state is w.s.state is State.CLOSED


def test_no_verdict_without_an_upload_owed() -> None:
    w = Wire()
    with pytest.raises(LocalProtocolError):
        w.s.send(Ack(True))
    w.exchange(C, sput("u", 10))
    with pytest.raises(LocalProtocolError):
        w.s.send(Ack(True))  # UPLOADING, nothing owed: ACK is not a verdict
    assert w.s.state is State.UPLOADING
    w.raw(S, Ack(True))
    with pytest.raises(RemoteProtocolError):
        w.hear(C)
    assert w.c.state is State.CLOSED


def test_verdicts_are_control_frames_in_every_verdict_state() -> None:
    assert {State.READY, State.UPLOADING, State.UPLOAD_REFUSED} == VERDICT_STATES
    for state in VERDICT_STATES:
        assert payload_limit(state, S, Ack.TYPE) == MAX_CONTROL_PAYLOAD
        assert payload_limit(state, C, Ack.TYPE) is None
    w = Wire()
    w.upload("u0")
    w.c.receive_data(frame_header(Ack.TYPE, MAX_CONTROL_PAYLOAD + 1))
    with pytest.raises(FrameTooLarge):
        w.hear(C)  # refused from the header alone
    assert w.c.state is State.CLOSED and w.c.verdicts_owed == 0


# --- rule 3: server messages while verdicts are owed --------------------------------


def test_a_fatal_error_while_verdicts_are_owed_closes_everything() -> None:
    w = Wire()
    w.upload("u0")
    w.upload("u1")
    w.error(S, ErrorCode.SHUTTING_DOWN, "bye")
    assert w.s.state is State.CLOSED and w.s.verdicts_owed == 0
    assert isinstance(w.hear(C), Error)
    w.both(State.CLOSED, 0)
    w.c.receive_data(b"")
    assert w.hear(C) is CLOSED  # then a close is clean


FORBIDDEN_FROM_SERVER: list[Message] = [
    PutReady(0),
    FileHeader("a", 10, 1),
    LISTING,
    ListEnd(),
    Data(b"x"),
    Done(DIGEST),
    LoginOk("u"),
]


@pytest.mark.parametrize("msg", FORBIDDEN_FROM_SERVER, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("uploading", [False, True], ids=["ready", "uploading"])
def test_server_sends_nothing_but_verdicts_while_they_are_owed(
    msg: Message, uploading: bool
) -> None:
    w = Wire()
    w.upload("u0")
    if uploading:
        w.exchange(C, sput("u1", 10))
        w.exchange(C, Data(b"abc"))
    state = w.s.state
    with pytest.raises(LocalProtocolError):
        w.s.send(msg)
    assert (w.s.state, w.s.verdicts_owed) == (state, 1)
    w.raw(S, msg)
    with pytest.raises(RemoteProtocolError):
        w.hear(C)
    assert w.c.state is State.CLOSED and w.c.verdicts_owed == 0


def test_the_server_names_the_owed_verdict_when_it_refuses_to_send() -> None:
    w = Wire()
    w.upload("u0")
    w.exchange(C, sput("u1", 10))
    with pytest.raises(LocalProtocolError, match="verdict"):
        w.s.send(PutReady(0))


# --- rule 4: client messages while verdicts are owed --------------------------------

FORBIDDEN_FROM_CLIENT: list[Message] = [
    ListRequest(),
    Get("a"),
    Put("p", 10, 1),
    Put("p", 10, 1, force=True),
    Bye(),
]


@pytest.mark.parametrize("msg", FORBIDDEN_FROM_CLIENT, ids=repr)
def test_client_sends_only_streamed_puts_while_verdicts_are_owed(msg: Message) -> None:
    w = Wire()
    w.say(C, msg)  # allowed with nothing owed...
    w = Wire()
    w.upload("u0")
    with pytest.raises(LocalProtocolError, match="verdict"):
        w.c.send(msg)  # ...but not with a verdict owed
    w.both(State.READY, 1)
    w.raw(C, msg)
    with pytest.raises(RemoteProtocolError):
        w.hear(S)
    assert w.s.state is State.CLOSED and w.s.verdicts_owed == 0
    # Once the verdict is in, it may be sent again.
    w = Wire()
    w.upload("u0")
    w.exchange(S, Ack(True))
    w.exchange(C, msg)


def test_no_cancel_while_verdicts_are_owed() -> None:
    w = Wire()
    w.exchange(C, sput("u0", 10))
    w.exchange(C, Cancel())  # allowed with nothing owed
    assert w.c.state is w.s.state is State.CANCEL_WAIT
    w = Wire()
    w.upload("u0")
    w.exchange(C, sput("u1", 10))
    w.exchange(C, Data(b"abc"))
    with pytest.raises(LocalProtocolError, match="verdict"):
        w.c.send(Cancel())
    w.both(State.UPLOADING, 1)
    w.raw(C, Cancel())
    with pytest.raises(RemoteProtocolError):
        w.hear(S)
    assert w.s.state is State.CLOSED and w.s.verdicts_owed == 0


def test_client_may_send_a_fatal_error_while_verdicts_are_owed() -> None:
    w = Wire()
    w.upload("u0")
    w.upload("u1")
    w.error(C, ErrorCode.PROTOCOL_ERROR, "giving up")
    assert w.c.state is State.CLOSED and w.c.verdicts_owed == 0
    assert isinstance(w.hear(S), Error)
    w.both(State.CLOSED, 0)


def test_client_may_send_data_and_done_of_the_next_upload_while_verdicts_are_owed() -> None:
    w = Wire()
    w.upload("u0")
    w.upload("u1", (b"a", b"b"))
    w.upload("u2", ())
    w.both(State.READY, 3)


# --- rule 5: at most MAX_PUTS_AHEAD verdicts owed -----------------------------------


def test_at_most_max_puts_ahead_verdicts_owed() -> None:
    assert MAX_PUTS_AHEAD == 8
    w = Wire()
    for i in range(MAX_PUTS_AHEAD):
        assert w.c.may_stream_put()
        w.upload(f"u{i}", ())
    w.both(State.READY, MAX_PUTS_AHEAD)
    assert not w.c.may_stream_put()
    with pytest.raises(LocalProtocolError, match="verdict"):
        w.c.send(sput("one too many", 0))
    w.both(State.READY, MAX_PUTS_AHEAD)
    w.exchange(S, Ack(True))  # one verdict in: room for one more
    assert w.c.may_stream_put()
    w.upload("u8", ())
    w.both(State.READY, MAX_PUTS_AHEAD)
    assert not w.c.may_stream_put()
    w.raw(C, sput("u9", 0))  # a server that receives one too many closes
    with pytest.raises(RemoteProtocolError, match="verdict"):
        w.hear(S)
    assert w.s.state is State.CLOSED and w.s.verdicts_owed == 0


def test_may_stream_put() -> None:
    assert not Connection(C).may_stream_put()  # before WELCOME
    assert not Wire(3).c.may_stream_put()
    w = Wire()
    assert w.c.may_stream_put()
    w.say(C, sput("u", 10))
    assert not w.c.may_stream_put()  # UPLOADING
    w = Wire()
    w.say(C, Put("u", 10, 1))
    assert not w.c.may_stream_put()  # PUT_WAIT
    w = Wire()
    w.say(C, Get("a"))
    assert not w.c.may_stream_put()  # GET_WAIT


# --- rule 1: versions and states ------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3])
def test_versions_before_4_refuse_streamed_puts(version: int) -> None:
    w = Wire(version)
    assert not w.c.may_stream_put()
    with pytest.raises(LocalProtocolError, match="version 4"):
        w.c.send(sput("u", 10))
    assert w.c.state is State.READY and w.c.remaining == 0
    w.raw(C, sput("u", 10))
    with pytest.raises(RemoteProtocolError, match="version 4"):
        w.hear(S)
    assert w.s.state is State.CLOSED
    w = Wire(version)
    w.exchange(C, Put("u", 10, 1))  # a plain PUT is fine
    assert w.s.state is State.PUT_WAIT


def _uploading(w: Wire) -> None:
    w.exchange(C, sput("a", 10))


def _put_wait(w: Wire) -> None:
    w.exchange(C, Put("a", 10, 1))


def _get_wait(w: Wire) -> None:
    w.exchange(C, Get("a"))


def _listing(w: Wire) -> None:
    w.exchange(C, ListRequest())


def _upload_refused(w: Wire) -> None:
    w.exchange(C, sput("a", 10))
    w.error(S, ErrorCode.NO_SPACE)
    assert isinstance(w.hear(C), Error)


def _cancel_wait(w: Wire) -> None:
    w.exchange(C, sput("a", 10))
    w.exchange(C, Cancel())


def _upload_ack(w: Wire) -> None:
    w.exchange(C, Put("a", 10, 1))
    w.exchange(S, PutReady(0))
    w.exchange(C, Data(CONTENT))
    w.exchange(C, Done(DIGEST))


def _download_ack(w: Wire) -> None:
    w.exchange(C, Get("a"))
    w.exchange(S, FileHeader("a", 10, 1))
    w.exchange(S, Data(CONTENT))
    w.exchange(S, Done(DIGEST))


@pytest.mark.parametrize(
    ("setup", "state"),
    [
        (_uploading, State.UPLOADING),
        (_put_wait, State.PUT_WAIT),
        (_get_wait, State.GET_WAIT),
        (_listing, State.LISTING),
        (_upload_refused, State.UPLOAD_REFUSED),
        (_cancel_wait, State.CANCEL_WAIT),
        (_upload_ack, State.UPLOAD_ACK),
        (_download_ack, State.DOWNLOAD_ACK),
    ],
    ids=lambda x: x.value if isinstance(x, State) else "",
)
def test_a_streamed_put_only_in_ready(setup: Callable[[Wire], None], state: State) -> None:
    w = Wire()
    setup(w)
    assert w.c.state is w.s.state is state
    assert not w.c.may_stream_put()
    with pytest.raises(LocalProtocolError):
        w.c.send(sput("u", 10))
    assert w.c.state is state
    w.raw(C, sput("u", 10))
    with pytest.raises(RemoteProtocolError):
        w.hear(S)
    assert w.s.state is State.CLOSED


# --- byte counts ----------------------------------------------------------------------


def test_zero_size_streamed_upload() -> None:
    w = Wire()
    w.exchange(C, sput("empty", 0))
    w.both(State.UPLOADING, 0)
    assert w.c.remaining == w.s.remaining == 0
    with pytest.raises(LocalProtocolError):
        w.c.send(Data(b"x"))
    with pytest.raises(LocalProtocolError):
        w.c.send_data_header(1)
    w.exchange(C, Done(DIGEST))  # at once
    w.both(State.READY, 1)
    w.exchange(S, Ack(True))
    w.both(State.READY, 0)


def test_done_before_all_bytes_is_an_error() -> None:
    w = Wire()
    w.exchange(C, sput("u", 10))
    w.exchange(C, Data(CONTENT[:9]))
    with pytest.raises(LocalProtocolError, match="missing"):
        w.c.send(Done(DIGEST))
    assert w.c.state is State.UPLOADING and w.c.verdicts_owed == 0
    w.raw(C, Done(DIGEST))
    with pytest.raises(RemoteProtocolError, match="missing"):
        w.hear(S)
    assert w.s.state is State.CLOSED and w.s.verdicts_owed == 0


def test_data_past_the_size_is_an_error() -> None:
    w = Wire()
    w.exchange(C, sput("u", 10))
    w.exchange(C, Data(CONTENT[:6]))
    with pytest.raises(LocalProtocolError, match="exceeds"):
        w.c.send(Data(CONTENT[:5]))
    assert w.c.state is State.UPLOADING and w.c.remaining == 4
    w.raw(C, Data(CONTENT[:5]))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        w.hear(S)
    assert w.s.state is State.CLOSED


def test_byte_counts_restart_for_each_streamed_upload() -> None:
    w = Wire()
    w.upload("u0", (b"abc",))
    w.exchange(C, sput("u1", 5))
    assert w.c.remaining == w.s.remaining == 5
    with pytest.raises(LocalProtocolError):
        w.c.send(Data(b"123456"))
    w.exchange(C, Data(b"12345"))
    w.exchange(C, Done(DIGEST))
    w.both(State.READY, 2)


# --- rule 9: the DATA header fast path ------------------------------------------------


def test_data_header_fast_path_in_a_streamed_upload() -> None:
    w = Wire()
    w.upload("u0")  # a verdict owed: the next upload still uses the fast path
    w.exchange(C, sput("u1", 10))
    header = w.c.send_data_header(4)
    assert header == frame_header(Data.TYPE, 4)
    assert w.c.remaining == 6 and w.c.state is State.UPLOADING
    assert w.s.receive_data_header(header) == 4
    assert w.s.remaining == 6 and w.s.state is State.UPLOADING
    with pytest.raises(LocalProtocolError):
        w.c.send_data_header(7)  # past the size
    assert w.s.receive_data_header(w.c.send_data_header(6)) == 6
    w.exchange(C, Done(DIGEST))
    w.both(State.READY, 2)
    with pytest.raises(LocalProtocolError):
        w.c.send_data_header(1)  # READY: no upload in progress
    with pytest.raises(RemoteProtocolError):
        w.s.receive_data_header(frame_header(Data.TYPE, 1))
    assert w.side(S).state is State.CLOSED


def test_data_header_past_the_size_of_a_streamed_upload_is_refused() -> None:
    w = Wire()
    w.exchange(C, sput("u", 10))
    with pytest.raises(RemoteProtocolError):
        w.s.receive_data_header(frame_header(Data.TYPE, 11))
    assert w.s.state is State.CLOSED


def test_other_frames_go_through_the_decoder_in_a_streamed_upload() -> None:
    w = Wire()
    w.upload("u0")
    w.exchange(C, sput("u1", 10))
    frame = w.s.send(Ack(True))  # the verdict on u0, read by the fast path reader
    assert w.c.receive_data_header(frame[:5]) is None
    w.c.receive_data(frame[5:])
    assert w.hear(C) == Ack(True)
    w.both(State.UPLOADING, 0)


# --- rule 6: refusals ------------------------------------------------------------------


@pytest.mark.parametrize("end", ["done", "cancel"])
def test_a_refusal_with_no_verdict_owed(end: str) -> None:
    w = Wire()
    w.exchange(C, sput("u", 10))
    w.exchange(C, Data(CONTENT[:3]))
    w.error(S, ErrorCode.NO_SPACE)
    assert isinstance(w.hear(C), Error)
    w.both(State.UPLOAD_REFUSED, 0)
    w.exchange(C, Data(CONTENT[3:5]))  # may still come; not counted
    if end == "done":
        w.exchange(C, Done(DIGEST))  # with bytes missing: the upload is over anyway
        w.both(State.READY, 0)  # the ERROR was the verdict: none owed
    else:
        w.exchange(C, Cancel())
        w.both(State.CANCEL_WAIT, 0)
        w.exchange(S, Ack(True))
        w.both(State.READY, 0)
    # The next upload streams normally and its verdict is owed.
    w.upload("next")
    w.both(State.READY, 1)
    w.exchange(S, Ack(True))
    w.both(State.READY, 0)
    # ...and a CLOSE now is clean on both sides.
    w.c.receive_data(b"")
    w.s.receive_data(b"")
    assert w.hear(C) is CLOSED and w.hear(S) is CLOSED


@pytest.mark.parametrize("server_reads_first", [True, False])
@pytest.mark.parametrize("server_had_data", [True, False])
def test_a_refusal_crossing_the_done(server_reads_first: bool, server_had_data: bool) -> None:
    w = Wire()
    w.say(C, sput("u", 10))
    w.say(C, Data(CONTENT))
    assert w.hear(S) == sput("u", 10)
    if server_had_data:
        assert w.hear(S) == Data(CONTENT)
    w.say(C, Done(DIGEST))  # sent, not read yet
    assert (w.c.state, w.c.verdicts_owed) == (State.READY, 1)
    w.error(S, ErrorCode.NO_SPACE, "refused")  # the server refuses: UPLOAD_REFUSED
    assert (w.s.state, w.s.verdicts_owed) == (State.UPLOAD_REFUSED, 0)
    if server_reads_first:
        while (ev := w.hear(S)) is not NEED_DATA:
            assert isinstance(ev, (Data, Done))
        assert (w.s.state, w.s.verdicts_owed) == (State.READY, 0)  # no verdict owed
        assert w.hear(C) == Error.of(ErrorCode.NO_SPACE, "refused")
    else:
        assert w.hear(C) == Error.of(ErrorCode.NO_SPACE, "refused")  # taken as the verdict
        assert (w.c.state, w.c.verdicts_owed) == (State.READY, 0)
        while (ev := w.hear(S)) is not NEED_DATA:
            assert isinstance(ev, (Data, Done))
    w.both(State.READY, 0)
    w.upload("next")
    w.both(State.READY, 1)
    w.exchange(S, Ack(True))
    w.both(State.READY, 0)


@pytest.mark.parametrize("server_reads_first", [True, False])
def test_a_refusal_crossing_the_done_and_the_next_put(server_reads_first: bool) -> None:
    """The client already streams the next upload when the refusal of one arrives."""
    w = Wire()
    w.upload("u0")  # owed: u0
    w.say(C, sput("u1", 10))
    w.say(C, Data(CONTENT[:4]))
    assert w.hear(S) == sput("u1", 10)
    w.say(C, Data(CONTENT[4:]))
    w.say(C, Done(DIGEST))  # owed (client): u0, u1
    w.say(C, sput("u2", 3))
    w.say(C, Data(b"abc"))
    assert (w.c.state, w.c.verdicts_owed) == (State.UPLOADING, 2)
    w.say(S, Ack(True))  # the verdict on u0 ...
    w.error(S, ErrorCode.NO_SPACE, "refused u1")  # ... then u1 refused mid-way
    assert (w.s.state, w.s.verdicts_owed) == (State.UPLOAD_REFUSED, 0)
    if server_reads_first:
        while w.hear(S) is not NEED_DATA:
            pass
        assert (w.s.state, w.s.verdicts_owed) == (State.UPLOADING, 0)
        assert w.hear(C) == Ack(True)
        assert w.hear(C) == Error.of(ErrorCode.NO_SPACE, "refused u1")
    else:
        assert w.hear(C) == Ack(True)
        assert w.hear(C) == Error.of(ErrorCode.NO_SPACE, "refused u1")
        assert (w.c.state, w.c.verdicts_owed) == (State.UPLOADING, 0)  # not refused
        while w.hear(S) is not NEED_DATA:
            pass
    w.both(State.UPLOADING, 0)
    assert w.c.remaining == w.s.remaining == 0
    w.exchange(C, Done(DIGEST))
    w.both(State.READY, 1)  # u2's verdict
    w.exchange(S, Ack(True))
    w.both(State.READY, 0)


@pytest.mark.parametrize("server_reads_first", [True, False])
def test_a_refusal_crossing_a_cancel(server_reads_first: bool) -> None:
    w = Wire()
    w.exchange(C, sput("u", 10))
    w.say(C, Cancel())
    w.error(S, ErrorCode.NO_SPACE)
    if server_reads_first:
        assert w.hear(S) == Cancel()
        assert isinstance(w.hear(C), Error)
    else:
        assert isinstance(w.hear(C), Error)
        assert w.hear(S) == Cancel()
    w.both(State.CANCEL_WAIT, 0)
    w.exchange(S, Ack(True))
    w.both(State.READY, 0)


def test_cancel_of_a_streamed_upload() -> None:
    w = Wire()
    w.exchange(C, sput("u", 10))
    w.exchange(C, Data(CONTENT[:2]))
    w.exchange(C, Cancel())
    w.both(State.CANCEL_WAIT, 0)
    w.exchange(S, Ack(True))  # the confirmation, not a verdict
    w.both(State.READY, 0)
    assert w.c.may_stream_put()
    # Nothing of the cancelled stream lingers: a plain PUT ends in UPLOAD_ACK.
    w.exchange(C, Put("p", 10, 1))
    w.exchange(S, PutReady(0))
    w.exchange(C, Data(CONTENT))
    w.exchange(C, Done(DIGEST))
    w.both(State.UPLOAD_ACK, 0)


# --- rule 7: the end of the stream ----------------------------------------------------


@pytest.mark.parametrize("closer", [C, S], ids=["client-closes", "server-closes"])
def test_a_close_with_a_verdict_owed_is_a_cut(closer: Role) -> None:
    w = Wire()
    w.upload("u0")
    w.both(State.READY, 1)
    reader = w.side(closer.peer)
    reader.receive_data(b"")
    with pytest.raises(ConnectionBroken):
        reader.next_event()
    assert reader.state is State.CLOSED and reader.verdicts_owed == 0


@pytest.mark.parametrize("closer", [C, S], ids=["client-closes", "server-closes"])
def test_a_close_once_every_verdict_is_in_is_clean(closer: Role) -> None:
    w = Wire()
    w.upload("u0")
    w.upload("u1")
    w.exchange(S, Ack(True))
    w.exchange(S, Ack(False))
    w.both(State.READY, 0)
    reader = w.side(closer.peer)
    reader.receive_data(b"")
    assert reader.next_event() is CLOSED


@pytest.mark.parametrize("closer", [C, S], ids=["client-closes", "server-closes"])
def test_a_close_in_the_middle_of_a_streamed_upload_is_a_cut(closer: Role) -> None:
    w = Wire()
    w.exchange(C, sput("u", 10))
    w.exchange(C, Data(CONTENT[:4]))
    reader = w.side(closer.peer)
    reader.receive_data(b"")
    with pytest.raises(ConnectionBroken):
        reader.next_event()
    assert reader.state is State.CLOSED


def test_a_close_after_a_partial_frame_is_a_cut() -> None:
    w = Wire()
    w.upload("u0")
    w.exchange(S, Ack(True))
    w.s.receive_data(frame_of(sput("u1", 0))[:7])
    w.s.receive_data(b"")
    with pytest.raises(ConnectionBroken):
        w.hear(S)


def test_the_server_reads_every_done_before_the_close() -> None:
    """Bytes still buffered are read first: the DONE makes a verdict owed, so a close
    right after it is a cut even though the state is READY."""
    w = Wire()
    w.exchange(C, sput("u", 10))
    w.exchange(C, Data(CONTENT))
    w.say(C, Done(DIGEST))
    w.s.receive_data(b"")
    assert w.hear(S) == Done(DIGEST)
    with pytest.raises(ConnectionBroken):
        w.hear(S)


# --- rule 8: the plain PUT ------------------------------------------------------------


def test_a_plain_put_still_works_in_version_4() -> None:
    w = Wire()
    w.exchange(C, Put("p", 10, 1))
    w.both(State.PUT_WAIT, 0)
    with pytest.raises(LocalProtocolError):
        w.c.send(Data(b"x"))  # PUT_READY first
    w.exchange(S, PutReady(0))
    w.both(State.UPLOADING, 0)
    assert w.c.remaining == w.s.remaining == 10
    w.exchange(C, Data(CONTENT))
    w.exchange(C, Done(DIGEST))
    w.both(State.UPLOAD_ACK, 0)  # not READY: the verdict comes now
    with pytest.raises(LocalProtocolError):
        w.c.send(sput("u", 1))
    w.exchange(S, Ack(True))
    w.both(State.READY, 0)


def test_a_plain_put_resumes_in_version_4() -> None:
    w = Wire()
    w.exchange(C, Put("p", RESUME_BLOCK_SIZE + 4, 1, resume=True))
    w.exchange(S, PutReady(RESUME_BLOCK_SIZE, DIGEST))
    assert w.c.remaining == w.s.remaining == 4
    w.exchange(C, Data(CONTENT[6:]))
    w.exchange(C, Done(DIGEST))
    w.exchange(S, Error.of(ErrorCode.DIGEST_MISMATCH, "bad"))  # failed verification
    w.both(State.READY, 0)


def test_plain_and_streamed_puts_mixed() -> None:
    w = Wire()
    w.upload("s0")
    w.exchange(S, Ack(True))
    w.exchange(C, Put("p0", 10, 1))
    w.exchange(S, PutReady(0))
    w.exchange(C, Data(CONTENT))
    w.exchange(C, Done(DIGEST))
    w.both(State.UPLOAD_ACK, 0)
    w.exchange(S, Ack(False))
    w.both(State.READY, 0)
    w.upload("s1")
    w.both(State.READY, 1)
    w.exchange(S, Ack(True))
    w.exchange(C, Put("p1", 10, 1))
    w.error(S, ErrorCode.ALREADY_EXISTS)  # refused in PUT_WAIT
    assert isinstance(w.hear(C), Error)
    w.both(State.READY, 0)
    w.upload("s2")
    w.both(State.READY, 1)


def test_a_refused_then_ended_stream_leaves_no_trace() -> None:
    w = Wire()
    w.exchange(C, sput("u", 10))
    w.error(S, ErrorCode.NO_SPACE)
    assert isinstance(w.hear(C), Error)
    w.exchange(C, Done(DIGEST))
    w.both(State.READY, 0)
    w.exchange(C, Put("p", 10, 1))
    w.exchange(S, PutReady(0))
    w.exchange(C, Data(CONTENT))
    w.exchange(C, Done(DIGEST))
    w.both(State.UPLOAD_ACK, 0)


# --- rule 10: pipelined GETs in version 4 ---------------------------------------------


def _serve(w: Wire, name: str) -> None:
    w.exchange(S, FileHeader(name, 10, 1))
    w.exchange(S, Data(CONTENT))
    w.exchange(S, Done(DIGEST))
    w.say(C, Ack(True))
    assert w.hear(S) == Ack(True)


def test_pipelined_gets_in_version_4() -> None:
    w = Wire()
    w.upload("u0")
    w.exchange(S, Ack(True))
    w.say(C, Get("a"))
    assert w.c.may_send_get_ahead() and not w.c.may_stream_put()
    w.say(C, Get("b"))
    w.say(C, Get("c"))
    assert w.c.gets_ahead == 2
    assert w.hear(S) == Get("a")
    assert w.hear(S) is NEED_DATA
    assert w.s.gets_ahead == 2
    for served, name in (("a", "b"), ("b", "c")):
        _serve(w, served)
        assert w.c.state is w.s.state is State.GET_WAIT  # the next GET has started
        assert w.hear(S) == Get(name)
    _serve(w, "c")
    w.both(State.READY, 0)
    assert w.c.gets_ahead == w.s.gets_ahead == 0
    w.upload("u1")
    w.both(State.READY, 1)


def test_a_refused_get_then_the_queue_in_version_4() -> None:
    w = Wire()
    w.say(C, Get("missing"))
    w.say(C, Get("a"))
    assert w.hear(S) == Get("missing")
    assert w.hear(S) is NEED_DATA  # GET a is in the server's queue
    w.error(S, ErrorCode.INVALID_NAME)
    assert isinstance(w.hear(C), Error)
    w.exchange(S, LISTING)
    w.exchange(S, ListEnd())
    assert w.c.state is w.s.state is State.GET_WAIT
    assert w.hear(S) == Get("a")
    _serve(w, "a")
    w.both(State.READY, 0)
