"""The sans-I/O protocol core: two Connections wired together by passing bytes, no sockets."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tcpft.errors import (
    ConnectionBroken,
    ErrorCode,
    FrameTooLarge,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from tcpft.frames import encode_frame, frame_header
from tcpft.limits import (
    MAX_CONTROL_PAYLOAD,
    MAX_DATA_PAYLOAD,
    MAX_PRELOGIN_PAYLOAD,
    RESUME_BLOCK_SIZE,
)
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
)
from tcpft.protocol import (
    CLEAN_EOF_STATES,
    CLOSED,
    ERROR_NEXT,
    NEED_DATA,
    TRANSITIONS,
    Connection,
    Event,
    Role,
    State,
    next_state,
    payload_limit,
)

RB = RESUME_BLOCK_SIZE

C, S = Role.CLIENT, Role.SERVER
CONTENT = b"0123456789"
SHA = hashlib.sha256(CONTENT).digest()
D_AA = b"\xaa" * 32


def frame_of(msg: Message) -> bytes:
    return encode_frame(msg.TYPE, msg.encode_payload())


@dataclass(frozen=True)
class Step:
    """One thing one side sends: a message, a DATA header + payload, or an ERROR."""

    sender: Role
    msg: Message
    after: State
    via_data_header: bool = False
    via_send_error: bool = False

    def perform(self, conn: Connection) -> bytes:
        if self.via_data_header:
            assert isinstance(self.msg, Data)
            return conn.send_data_header(len(self.msg.data)) + self.msg.data
        if self.via_send_error:
            assert isinstance(self.msg, Error)
            return conn.send_error(ErrorCode(self.msg.code), self.msg.text)
        return conn.send(self.msg)


class Pair:
    """A client and a server Connection; each send is delivered to the other at once."""

    def __init__(self) -> None:
        self.c = Connection(C)
        self.s = Connection(S)
        self.wire: dict[Role, bytearray] = {C: bytearray(), S: bytearray()}

    def side(self, role: Role) -> Connection:
        return self.c if role is C else self.s

    def step(self, step: Step) -> None:
        a, b = self.side(step.sender), self.side(step.sender.peer)
        data = step.perform(a)
        self.wire[step.sender] += data
        assert a.state is step.after, (step, a.state)
        b.receive_data(data)
        assert b.next_event() == step.msg
        assert b.next_event() is NEED_DATA
        assert b.state is step.after, (step, b.state)

    def tx(self, sender: Role, msg: Message, after: State) -> None:
        self.step(Step(sender, msg, after))

    def run(self, steps: list[Step]) -> None:
        for s in steps:
            self.step(s)


def st(sender: Role, msg: Message, after: State, **kw: bool) -> Step:
    return Step(sender, msg, after, **kw)


LISTING = ListEntries((Entry("a.txt", False, 10, 1), Entry("sub", True, 0, 2)))
LOGIN_STEPS = [
    st(C, Hello(1, "test-client"), State.WELCOME),
    st(S, Welcome(1, "test-server"), State.AUTH),
    st(C, Login("alice", "pw"), State.AUTH_WAIT),
    st(S, LoginOk("alice", True), State.LISTING),
    st(S, LISTING, State.LISTING),
    st(S, ListEnd(), State.READY),
]

FOUNDING: list[Step] = [
    *LOGIN_STEPS,
    st(C, Get("missing"), State.GET_WAIT),
    st(S, Error.of(ErrorCode.INVALID_NAME, "no such file"), State.LISTING, via_send_error=True),
    st(S, LISTING, State.LISTING),
    st(S, ListEnd(), State.READY),
    st(C, Get("a.txt"), State.GET_WAIT),
    st(S, FileHeader("a.txt", 10, 1, 0), State.DOWNLOADING),
    st(S, Data(CONTENT[:6]), State.DOWNLOADING, via_data_header=True),
    st(S, Data(CONTENT[6:]), State.DOWNLOADING),
    st(S, Done(SHA), State.DOWNLOAD_ACK),
    st(C, Ack(True), State.READY),
    st(C, Bye(), State.CLOSED),
]


def ready_pair() -> Pair:
    pair = Pair()
    pair.run(LOGIN_STEPS)
    return pair


# --- the founding conversation -------------------------------------------------------


def test_founding_conversation_states_on_both_sides() -> None:
    pair = Pair()
    assert pair.c.state is State.HELLO and pair.s.state is State.HELLO
    pair.run(FOUNDING[:6])
    pair.step(FOUNDING[6])
    pair.step(FOUNDING[7])  # ERROR INVALID_NAME: the listing is sent again
    assert pair.c.state is State.LISTING
    pair.run(FOUNDING[8:10])
    assert pair.c.state is State.READY
    pair.run(FOUNDING[10:12])
    assert pair.c.remaining == pair.s.remaining == 10
    pair.step(FOUNDING[12])  # DATA via send_data_header + payload
    assert pair.c.remaining == pair.s.remaining == 4
    pair.step(FOUNDING[13])
    assert pair.c.remaining == pair.s.remaining == 0
    pair.run(FOUNDING[14:])
    assert pair.c.state is pair.s.state is State.CLOSED
    # The client closes after BYE: a clean end for the server.
    pair.s.receive_data(b"")
    assert pair.s.next_event() is CLOSED
    assert pair.s.state is State.CLOSED


def test_founding_first_bytes_are_fixed() -> None:
    pair = Pair()
    pair.step(FOUNDING[0])
    assert bytes(pair.wire[C]) == bytes.fromhex(
        "01 00000013 54435046 0001 000b" + b"test-client".hex()
    )


def _own_steps(conn: Connection, role: Role, script: list[Step], i: int) -> int:
    while i < len(script) and script[i].sender is role:
        script[i].perform(conn)
        assert conn.state is script[i].after
        i += 1
    return i


def replay(role: Role, script: list[Step], stream: bytes, chunk: int | None) -> list[Event]:
    """Play ``role`` against the recorded bytes of its peer, fed in pieces of ``chunk``."""
    conn = Connection(role)
    events: list[Event] = []
    i = _own_steps(conn, role, script, 0)
    if chunk is None:
        pieces = [stream]
    else:
        pieces = [stream[k : k + chunk] for k in range(0, len(stream), chunk)]
    for piece in [*pieces, b""]:
        conn.receive_data(piece)
        while (ev := conn.next_event()) is not NEED_DATA:
            events.append(ev)
            if ev is CLOSED:
                break
            assert ev == script[i].msg
            assert conn.state is script[i].after
            i = _own_steps(conn, role, script, i + 1)
    assert i == len(script)
    assert conn.state is State.CLOSED
    return events


@pytest.mark.parametrize("role", [C, S])
def test_founding_conversation_in_any_chunking_gives_same_events(role: Role) -> None:
    pair = Pair()
    pair.run(FOUNDING)
    stream = bytes(pair.wire[role.peer])
    whole = replay(role, FOUNDING, stream, None)
    assert whole == [s.msg for s in FOUNDING if s.sender is role.peer] + [CLOSED]
    assert replay(role, FOUNDING, stream, 1) == whole
    for chunk in (2, 3, 5, 7, 64):
        assert replay(role, FOUNDING, stream, chunk) == whole


def test_messages_with_trailing_partial_frame() -> None:
    pair = ready_pair()
    data = pair.c.send(Get("a.txt"))
    nxt = frame_header(0x0C, 1)  # the start of something that is not complete
    pair.s.receive_data(data + nxt[:3])
    assert pair.s.next_event() == Get("a.txt")
    assert pair.s.next_event() is NEED_DATA
    assert pair.s.state is State.GET_WAIT


# --- errors --------------------------------------------------------------------------


def test_login_retry_after_auth_failed() -> None:
    pair = Pair()
    pair.run(LOGIN_STEPS[:3])
    pair.tx(S, Error.of(ErrorCode.AUTH_FAILED, "login failed"), State.AUTH)
    pair.tx(C, Login("alice", "right"), State.AUTH_WAIT)
    pair.tx(S, Error.of(ErrorCode.AUTH_FAILED, "login failed"), State.AUTH)
    pair.run(LOGIN_STEPS[2:])
    assert pair.c.state is State.READY


@pytest.mark.parametrize(
    ("prefix", "code"),
    [
        (3, ErrorCode.PENALIZED),  # in AUTH_WAIT
        (3, ErrorCode.PROTOCOL_ERROR),
        (1, ErrorCode.UNSUPPORTED_VERSION),  # in WELCOME
        (0, ErrorCode.TOO_MANY_CONNECTIONS),  # before HELLO
        (6, ErrorCode.SHUTTING_DOWN),  # in READY
        (6, ErrorCode.IDLE_TIMEOUT),
        (7, ErrorCode.INTERNAL_ERROR),  # in GET_WAIT
        (7, 999),  # unknown code: fatal
    ],
)
def test_fatal_error_closes_both_sides(prefix: int, code: int) -> None:
    pair = Pair()
    pair.run(FOUNDING[:prefix])
    pair.tx(S, Error(code, "bye"), State.CLOSED)
    with pytest.raises(LocalProtocolError):
        pair.c.send(ListRequest())
    pair.c.receive_data(b"")
    assert pair.c.next_event() is CLOSED


def test_non_fatal_error_where_no_recovery_is_defined_closes() -> None:
    pair = ready_pair()
    assert State.READY not in ERROR_NEXT
    pair.tx(S, Error.of(ErrorCode.INVALID_NAME, "?"), State.CLOSED)


@pytest.mark.parametrize("prefix", [0, 6, 10])
def test_error_from_the_client_is_fatal(prefix: int) -> None:
    pair = Pair()
    steps = [*FOUNDING[:prefix]]
    if prefix == 10:  # READY -> GET -> FILE: the client is downloading
        steps = [*FOUNDING[:6], FOUNDING[10], FOUNDING[11]]
    pair.run(steps)
    pair.step(st(C, Error.of(ErrorCode.INVALID_NAME, "nope"), State.CLOSED, via_send_error=True))


def test_server_errors_in_each_recoverable_state() -> None:
    for state, after in ERROR_NEXT.items():
        pair = pair_in(state)
        pair.tx(S, Error.of(ErrorCode.NO_SPACE, "x"), after)


# --- upload --------------------------------------------------------------------------


def test_upload_flow() -> None:
    pair = ready_pair()
    pair.tx(C, Put("up.bin", 10, 5, force=True), State.PUT_WAIT)
    pair.tx(S, PutReady(), State.UPLOADING)
    assert pair.c.remaining == pair.s.remaining == 10
    pair.step(st(C, Data(CONTENT[:3]), State.UPLOADING, via_data_header=True))
    pair.tx(C, Data(CONTENT[3:]), State.UPLOADING)
    assert pair.c.remaining == pair.s.remaining == 0
    pair.tx(C, Done(SHA), State.UPLOAD_ACK)
    pair.tx(S, Ack(True), State.READY)
    pair.tx(C, Bye(), State.CLOSED)


def test_upload_resume_offset() -> None:
    pair = ready_pair()
    pair.tx(C, Put("up.bin", RB + 6, 5, resume=True), State.PUT_WAIT)
    pair.tx(S, PutReady(RB, D_AA), State.UPLOADING)
    assert pair.c.remaining == pair.s.remaining == 6
    with pytest.raises(LocalProtocolError):
        pair.c.send(Data(CONTENT))  # 10 > 6 still due
    assert pair.c.remaining == 6
    pair.tx(C, Data(CONTENT[4:]), State.UPLOADING)
    pair.tx(C, Done(SHA), State.UPLOAD_ACK)
    pair.tx(S, Ack(False), State.READY)


def test_upload_resume_offset_equal_to_size() -> None:
    pair = ready_pair()
    pair.tx(C, Put("up.bin", RB, 5, resume=True), State.PUT_WAIT)
    pair.tx(S, PutReady(RB, D_AA), State.UPLOADING)
    assert pair.c.remaining == 0
    pair.tx(C, Done(SHA), State.UPLOAD_ACK)


@pytest.mark.parametrize(
    ("size", "resume", "offset"),
    [
        (RB - 1, True, RB),  # past the size
        (2 * RB, False, RB),  # a resume the PUT did not ask for
        (2 * RB, True, RB + 1),  # not a multiple of the block
        (10, True, 5),
    ],
)
def test_put_ready_offset_rules(size: int, resume: bool, offset: int) -> None:
    pair = ready_pair()
    pair.tx(C, Put("up.bin", size, 5, resume=resume), State.PUT_WAIT)
    with pytest.raises(LocalProtocolError):
        pair.s.send(PutReady(offset, D_AA))
    assert pair.s.state is State.PUT_WAIT
    pair.c.receive_data(frame_of(PutReady(offset, D_AA)))
    with pytest.raises(RemoteProtocolError):
        pair.c.next_event()
    assert pair.c.state is State.CLOSED


def test_upload_cancel() -> None:
    pair = ready_pair()
    pair.tx(C, Put("up.bin", 10, 5), State.PUT_WAIT)
    pair.tx(S, PutReady(), State.UPLOADING)
    pair.tx(C, Data(CONTENT[:4]), State.UPLOADING)
    pair.tx(C, Cancel(), State.CANCEL_WAIT)
    with pytest.raises(LocalProtocolError):
        pair.c.send(Put("up.bin", 3, 5))  # not before the server confirmed the CANCEL
    pair.tx(S, Ack(True), State.READY)
    # The next transfer counts afresh.
    pair.tx(C, Put("up.bin", 3, 5), State.PUT_WAIT)
    pair.tx(S, PutReady(), State.UPLOADING)
    assert pair.c.remaining == pair.s.remaining == 3


def test_upload_refused_put() -> None:
    pair = ready_pair()
    pair.tx(C, Put("up.bin", 10, 5), State.PUT_WAIT)
    pair.tx(S, Error.of(ErrorCode.PERMISSION_DENIED, "read-only"), State.READY)


@pytest.mark.parametrize("end", [Cancel(), Done(SHA)])
def test_server_error_during_upload_then_client_finishes(end: Message) -> None:
    pair = ready_pair()
    pair.tx(C, Put("up.bin", 10, 5), State.PUT_WAIT)
    pair.tx(S, PutReady(), State.UPLOADING)
    pair.tx(C, Data(CONTENT[:2]), State.UPLOADING)
    pair.tx(S, Error.of(ErrorCode.NO_SPACE, "disk full"), State.UPLOAD_REFUSED)
    # DATA in flight is still accepted (and not counted) ...
    pair.tx(C, Data(CONTENT[2:5]), State.UPLOAD_REFUSED)
    pair.step(st(C, Data(CONTENT * 3), State.UPLOAD_REFUSED, via_data_header=True))
    # ... and DONE may come with bytes missing: the server discards the upload anyway.
    if isinstance(end, Cancel):
        pair.tx(C, end, State.CANCEL_WAIT)
        pair.tx(S, Ack(True), State.READY)
    else:
        pair.tx(C, end, State.READY)  # the server answers nothing to this DONE
    pair.tx(C, ListRequest(), State.LISTING)


def test_server_error_crossing_client_done() -> None:
    # The server refuses while the client's last DATA and DONE are on the wire.
    pair = ready_pair()
    pair.tx(C, Put("up.bin", 10, 5), State.PUT_WAIT)
    pair.tx(S, PutReady(), State.UPLOADING)
    to_server = pair.c.send(Data(CONTENT)) + pair.c.send(Done(SHA))
    to_client = pair.s.send(Error.of(ErrorCode.NO_SPACE, "disk full"))
    assert pair.c.state is State.UPLOAD_ACK
    assert pair.s.state is State.UPLOAD_REFUSED
    pair.s.receive_data(to_server)
    assert pair.s.next_event() == Data(CONTENT)
    assert pair.s.next_event() == Done(SHA)
    pair.c.receive_data(to_client)
    assert isinstance(pair.c.next_event(), Error)
    assert pair.c.state is pair.s.state is State.READY


def test_server_error_crossing_client_cancel() -> None:
    # The client cancels of its own accord while the server's refusal is on the wire.
    pair = ready_pair()
    pair.tx(C, Put("up.bin", 10, 5), State.PUT_WAIT)
    pair.tx(S, PutReady(), State.UPLOADING)
    to_server = pair.c.send(Cancel())
    to_client = pair.s.send(Error.of(ErrorCode.NO_SPACE, "disk full"))
    assert pair.c.state is State.CANCEL_WAIT
    assert pair.s.state is State.UPLOAD_REFUSED
    pair.s.receive_data(to_server)
    assert pair.s.next_event() == Cancel()
    assert pair.s.state is State.CANCEL_WAIT
    pair.c.receive_data(to_client)
    assert isinstance(pair.c.next_event(), Error)
    assert pair.c.state is State.CANCEL_WAIT  # the late ERROR is not an answer to anything
    pair.tx(S, Ack(True), State.READY)
    pair.tx(C, ListRequest(), State.LISTING)


# --- byte counting -------------------------------------------------------------------


def downloading_pair(size: int = 10, offset: int = 0) -> Pair:
    pair = ready_pair()
    pair.tx(C, Get("a.txt"), State.GET_WAIT)
    pair.tx(S, FileHeader("a.txt", size, 1, offset), State.DOWNLOADING)
    return pair


def uploading_pair(size: int = 10) -> Pair:
    pair = ready_pair()
    pair.tx(C, Put("up.bin", size, 1), State.PUT_WAIT)
    pair.tx(S, PutReady(), State.UPLOADING)
    return pair


def test_download_with_offset_counts_the_rest() -> None:
    pair = downloading_pair(10, 7)
    assert pair.c.remaining == pair.s.remaining == 3
    with pytest.raises(LocalProtocolError):
        pair.s.send(Data(b"abcd"))
    pair.tx(S, Data(b"abc"), State.DOWNLOADING)
    pair.tx(S, Done(SHA), State.DOWNLOAD_ACK)


def test_data_beyond_size_raises_local_when_sending() -> None:
    pair = downloading_pair()
    pair.tx(S, Data(CONTENT[:8]), State.DOWNLOADING)
    with pytest.raises(LocalProtocolError):
        pair.s.send(Data(b"abc"))
    with pytest.raises(LocalProtocolError):
        pair.s.send_data_header(3)
    assert pair.s.state is State.DOWNLOADING
    assert pair.s.remaining == 2
    pair.tx(S, Data(b"ab"), State.DOWNLOADING)


def test_data_beyond_size_raises_remote_when_receiving() -> None:
    pair = downloading_pair()
    pair.c.receive_data(frame_of(Data(CONTENT + b"!")))
    with pytest.raises(RemoteProtocolError):
        pair.c.next_event()
    assert pair.c.state is State.CLOSED


def test_upload_data_beyond_size() -> None:
    pair = uploading_pair(4)
    with pytest.raises(LocalProtocolError):
        pair.c.send(Data(b"12345"))
    assert pair.c.state is State.UPLOADING
    pair.s.receive_data(frame_of(Data(b"12345")))
    with pytest.raises(RemoteProtocolError):
        pair.s.next_event()
    assert pair.s.state is State.CLOSED


def test_done_with_bytes_missing_raises() -> None:
    pair = downloading_pair()
    pair.tx(S, Data(CONTENT[:9]), State.DOWNLOADING)
    with pytest.raises(LocalProtocolError):
        pair.s.send(Done(SHA))
    assert pair.s.state is State.DOWNLOADING
    pair.c.receive_data(frame_of(Done(SHA)))
    with pytest.raises(RemoteProtocolError):
        pair.c.next_event()
    assert pair.c.state is State.CLOSED


def test_upload_done_with_bytes_missing_raises() -> None:
    pair = uploading_pair(4)
    with pytest.raises(LocalProtocolError):
        pair.c.send(Done(SHA))
    pair.s.receive_data(frame_of(Done(SHA)))
    with pytest.raises(RemoteProtocolError):
        pair.s.next_event()
    assert pair.s.state is State.CLOSED


def test_empty_file_download() -> None:
    pair = downloading_pair(0)
    assert pair.c.remaining == 0
    pair.tx(S, Done(hashlib.sha256(b"").digest()), State.DOWNLOAD_ACK)
    pair.tx(C, Ack(), State.READY)


def test_illegal_data_send_leaves_byte_count_unchanged() -> None:
    pair = downloading_pair()
    with pytest.raises(LocalProtocolError):
        pair.c.send(Data(b"abc"))  # the client may not send DATA while downloading
    with pytest.raises(LocalProtocolError):
        pair.c.send_data_header(3)
    assert pair.c.state is State.DOWNLOADING
    assert pair.c.remaining == 10


# --- illegal sends and receives, state by state --------------------------------------

PATHS: dict[State, list[Step]] = {
    State.HELLO: [],
    State.WELCOME: LOGIN_STEPS[:1],
    State.AUTH: LOGIN_STEPS[:2],
    State.AUTH_WAIT: LOGIN_STEPS[:3],
    State.LISTING: LOGIN_STEPS[:4],
    State.READY: LOGIN_STEPS,
    State.GET_WAIT: [*LOGIN_STEPS, st(C, Get("a"), State.GET_WAIT)],
    State.DOWNLOADING: [
        *LOGIN_STEPS,
        st(C, Get("a"), State.GET_WAIT),
        st(S, FileHeader("a", 10, 1), State.DOWNLOADING),
    ],
    State.DOWNLOAD_ACK: [
        *LOGIN_STEPS,
        st(C, Get("a"), State.GET_WAIT),
        st(S, FileHeader("a", 10, 1), State.DOWNLOADING),
        st(S, Data(CONTENT), State.DOWNLOADING),
        st(S, Done(SHA), State.DOWNLOAD_ACK),
    ],
    State.PUT_WAIT: [*LOGIN_STEPS, st(C, Put("u", 10, 1), State.PUT_WAIT)],
    State.UPLOADING: [
        *LOGIN_STEPS,
        st(C, Put("u", 10, 1), State.PUT_WAIT),
        st(S, PutReady(), State.UPLOADING),
    ],
    State.UPLOAD_REFUSED: [
        *LOGIN_STEPS,
        st(C, Put("u", 10, 1), State.PUT_WAIT),
        st(S, PutReady(), State.UPLOADING),
        st(S, Error.of(ErrorCode.NO_SPACE, "full"), State.UPLOAD_REFUSED),
    ],
    State.UPLOAD_ACK: [
        *LOGIN_STEPS,
        st(C, Put("u", 10, 1), State.PUT_WAIT),
        st(S, PutReady(), State.UPLOADING),
        st(C, Data(CONTENT), State.UPLOADING),
        st(C, Done(SHA), State.UPLOAD_ACK),
    ],
    State.CANCEL_WAIT: [
        *LOGIN_STEPS,
        st(C, Put("u", 10, 1), State.PUT_WAIT),
        st(S, PutReady(), State.UPLOADING),
        st(C, Cancel(), State.CANCEL_WAIT),
    ],
    State.CLOSED: [*LOGIN_STEPS, st(C, Bye(), State.CLOSED)],
}


def pair_in(state: State) -> Pair:
    pair = Pair()
    pair.run(PATHS[state])
    assert pair.c.state is pair.s.state is state
    return pair


def test_every_state_has_a_path() -> None:
    assert set(PATHS) == set(State)


# Small messages of every type; DATA of 1 byte and offsets of 0 fit every count.
POOL: list[Message] = [
    Hello(),
    Welcome(),
    Login("u", "p"),
    LoginOk("u"),
    ListRequest(),
    LISTING,
    ListEnd(),
    Get("a"),
    FileHeader("a", 10, 1),
    Data(b"x"),
    Done(SHA),
    Ack(),
    Put("u", 10, 1),
    PutReady(),
    Cancel(),
    Bye(),
]


def legal(state: State, sender: Role, msg: Message) -> bool:
    return (state, sender, type(msg)) in TRANSITIONS


CASES = [(state, role, msg) for state in State for role in Role for msg in POOL]


@pytest.mark.parametrize(
    ("state", "role", "msg"),
    [c for c in CASES if not legal(*c)],
    ids=lambda x: getattr(x, "name", None) or type(x).__name__,
)
def test_illegal_send_raises_local_and_keeps_state(state: State, role: Role, msg: Message) -> None:
    pair = pair_in(state)
    conn = pair.side(role)
    remaining = conn.remaining
    with pytest.raises(LocalProtocolError):
        conn.send(msg)
    assert conn.state is state
    assert conn.remaining == remaining


@pytest.mark.parametrize(
    ("state", "role", "msg"),
    [c for c in CASES if not legal(*c)],
    ids=lambda x: getattr(x, "name", None) or type(x).__name__,
)
def test_illegal_receive_raises_remote_and_closes(state: State, role: Role, msg: Message) -> None:
    pair = pair_in(state)
    receiver = pair.side(role.peer)
    receiver.receive_data(frame_of(msg))
    with pytest.raises(RemoteProtocolError):
        receiver.next_event()
    assert receiver.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        receiver.send(Bye())


@pytest.mark.parametrize(
    ("state", "role", "msg"),
    [c for c in CASES if legal(*c)],
    ids=lambda x: getattr(x, "name", None) or type(x).__name__,
)
def test_legal_message_moves_both_sides_per_table(state: State, role: Role, msg: Message) -> None:
    pair = pair_in(state)
    if isinstance(msg, Done) and state in (State.DOWNLOADING, State.UPLOADING):
        pair.tx(role, Data(CONTENT), state)  # DONE needs every announced byte first
    pair.tx(role, msg, TRANSITIONS[(state, role, type(msg))])


def test_illegal_receive_from_the_header_alone() -> None:
    pair = ready_pair()
    pair.c.receive_data(frame_header(Get.TYPE, 10))  # a server never sends GET
    with pytest.raises(RemoteProtocolError):
        pair.c.next_event()
    assert pair.c.state is State.CLOSED


def test_malformed_payload_closes() -> None:
    pair = ready_pair()
    pair.s.receive_data(encode_frame(Get.TYPE, b"\x00\x05ab"))
    with pytest.raises(RemoteProtocolError):
        pair.s.next_event()
    assert pair.s.state is State.CLOSED


def test_unknown_frame_type_closes() -> None:
    pair = ready_pair()
    pair.s.receive_data(encode_frame(0x55, b""))
    with pytest.raises(RemoteProtocolError):
        pair.s.next_event()
    assert pair.s.state is State.CLOSED


def test_next_state_after_closed() -> None:
    with pytest.raises(ProtocolError):
        next_state(State.CLOSED, S, Error(1, ""))
    with pytest.raises(ProtocolError):
        next_state(State.CLOSED, C, Bye())


def test_transition_table_is_consistent() -> None:
    reachable = {State.HELLO} | set(TRANSITIONS.values()) | set(ERROR_NEXT.values())
    assert reachable == set(State)
    for state in State:
        if state is not State.CLOSED:
            assert any(s is state for s, _, _ in TRANSITIONS) or state in ERROR_NEXT
    assert not any(s is State.CLOSED for s, _, _ in TRANSITIONS)
    # Exactly one side may speak (apart from ERROR) in every state but UPLOADING.
    for state in State:
        speakers = {r for s, r, _ in TRANSITIONS if s is state}
        assert len(speakers) <= 1, state


# --- EOF -----------------------------------------------------------------------------


def test_clean_eof_in_ready() -> None:
    pair = ready_pair()
    pair.c.receive_data(b"")
    assert pair.c.next_event() is CLOSED
    assert pair.c.state is State.CLOSED
    assert pair.c.next_event() is CLOSED


def test_message_then_eof_delivers_message_first() -> None:
    pair = ready_pair()
    pair.s.receive_data(pair.c.send(Bye()))
    pair.s.receive_data(b"")
    assert pair.s.next_event() == Bye()
    assert pair.s.next_event() is CLOSED


@pytest.mark.parametrize(
    "state",
    [s for s in State if s not in CLEAN_EOF_STATES],
)
def test_eof_in_the_middle_is_broken(state: State) -> None:
    for role in Role:
        conn = pair_in(state).side(role)
        conn.receive_data(b"")
        with pytest.raises(ConnectionBroken):
            conn.next_event()
        assert conn.state is State.CLOSED


def test_eof_during_downloading() -> None:
    pair = downloading_pair()
    pair.tx(S, Data(b"abc"), State.DOWNLOADING)
    pair.c.receive_data(b"")
    with pytest.raises(ConnectionBroken):
        pair.c.next_event()
    assert pair.c.state is State.CLOSED


@pytest.mark.parametrize("cut", [1, 4, 5, 6])
def test_eof_with_partial_frame_is_broken(cut: int) -> None:
    pair = ready_pair()
    pair.s.receive_data(pair.c.send(Get("abc"))[:cut])
    pair.s.receive_data(memoryview(b""))
    with pytest.raises(ConnectionBroken):
        pair.s.next_event()
    assert pair.s.state is State.CLOSED


def test_send_error_after_closed() -> None:
    pair = ready_pair()
    pair.s.receive_data(encode_frame(0x55, b""))
    with pytest.raises(RemoteProtocolError):
        pair.s.next_event()
    assert pair.s.state is State.CLOSED
    data = pair.s.send_error(ErrorCode.PROTOCOL_ERROR, "unexpected frame type 0x55")
    assert pair.s.state is State.CLOSED
    assert data[:1] == b"\x7f"
    assert data == frame_of(Error(1, "unexpected frame type 0x55"))
    pair.c.receive_data(data)
    assert pair.c.next_event() == Error(1, "unexpected frame type 0x55")
    assert pair.c.state is State.CLOSED


def test_send_after_closed_raises() -> None:
    pair = pair_in(State.CLOSED)
    for conn in (pair.c, pair.s):
        with pytest.raises(LocalProtocolError):
            conn.send(Error(1, "x"))
        with pytest.raises(LocalProtocolError):
            conn.send(Bye())


# --- frame size limits ---------------------------------------------------------------


def _login_of_payload(n: int) -> Login:
    msg = Login("u", "p" * (n - 2 - 1 - 2))
    assert len(msg.encode_payload()) == n
    return msg


def test_prelogin_limit_at_4096_accepted() -> None:
    pair = pair_in(State.AUTH)
    pair.s.receive_data(frame_of(_login_of_payload(MAX_PRELOGIN_PAYLOAD)))
    assert isinstance(pair.s.next_event(), Login)


def test_prelogin_limit_4097_rejected_from_header() -> None:
    pair = pair_in(State.AUTH)
    pair.s.receive_data(frame_header(Login.TYPE, MAX_PRELOGIN_PAYLOAD + 1))
    with pytest.raises(FrameTooLarge):
        pair.s.next_event()
    assert pair.s.state is State.CLOSED


def test_prelogin_hello_over_limit_rejected_from_header() -> None:
    conn = Connection(S)
    conn.receive_data(frame_header(Hello.TYPE, MAX_PRELOGIN_PAYLOAD + 1))
    with pytest.raises(FrameTooLarge):
        conn.next_event()


def test_control_limit_after_login() -> None:
    pair = ready_pair()
    path = "p" * (MAX_CONTROL_PAYLOAD - 2 - 8 - 2)
    get = Get(path)
    assert len(get.encode_payload()) == MAX_CONTROL_PAYLOAD
    pair.s.receive_data(frame_of(get))
    assert pair.s.next_event() == get

    pair = ready_pair()
    pair.s.receive_data(frame_header(Get.TYPE, MAX_CONTROL_PAYLOAD + 1))
    with pytest.raises(FrameTooLarge):
        pair.s.next_event()
    assert pair.s.state is State.CLOSED


def test_error_limit_follows_state() -> None:
    assert payload_limit(State.AUTH_WAIT, S, Error.TYPE) == MAX_PRELOGIN_PAYLOAD
    assert payload_limit(State.READY, S, Error.TYPE) == MAX_CONTROL_PAYLOAD
    assert payload_limit(State.READY, C, Error.TYPE) == MAX_CONTROL_PAYLOAD
    assert payload_limit(State.CLOSED, S, Error.TYPE) is None


@pytest.mark.parametrize("make", [downloading_pair, uploading_pair])
def test_data_limit(make: Callable[[int], Pair]) -> None:
    pair = make(4 * MAX_DATA_PAYLOAD)
    sender = S if make is downloading_pair else C
    receiver = pair.side(sender.peer)
    receiver.receive_data(frame_of(Data(b"\x00" * MAX_DATA_PAYLOAD)))
    assert receiver.next_event() == Data(b"\x00" * MAX_DATA_PAYLOAD)
    receiver.receive_data(frame_header(Data.TYPE, MAX_DATA_PAYLOAD + 1))
    with pytest.raises(FrameTooLarge):
        receiver.next_event()
    assert receiver.state is State.CLOSED


def test_list_entries_gets_the_data_limit() -> None:
    pair = pair_in(State.LISTING)
    pair.c.receive_data(frame_header(ListEntries.TYPE, MAX_CONTROL_PAYLOAD + 1))
    assert pair.c.next_event() is NEED_DATA  # allowed: waits for the payload
    pair = pair_in(State.LISTING)
    pair.c.receive_data(frame_header(ListEntries.TYPE, MAX_DATA_PAYLOAD + 1))
    with pytest.raises(FrameTooLarge):
        pair.c.next_event()


@pytest.mark.parametrize("length", [0, MAX_DATA_PAYLOAD + 1, -1])
def test_send_data_header_length_bounds(length: int) -> None:
    pair = downloading_pair(4 * MAX_DATA_PAYLOAD)
    with pytest.raises(LocalProtocolError):
        pair.s.send_data_header(length)
    assert pair.s.state is State.DOWNLOADING
    assert pair.s.remaining == 4 * MAX_DATA_PAYLOAD


def test_send_data_header_at_limit() -> None:
    pair = downloading_pair(4 * MAX_DATA_PAYLOAD)
    header = pair.s.send_data_header(MAX_DATA_PAYLOAD)
    assert header == bytes.fromhex("0a 00100000")
    assert pair.s.remaining == 3 * MAX_DATA_PAYLOAD


def test_send_data_header_in_wrong_state() -> None:
    pair = ready_pair()
    with pytest.raises(LocalProtocolError):
        pair.s.send_data_header(1)
    assert pair.s.state is State.READY


def test_send_refuses_a_frame_the_peer_must_reject() -> None:
    pair = downloading_pair(4 * MAX_DATA_PAYLOAD)
    with pytest.raises(LocalProtocolError):
        pair.s.send(Data(b"\x00" * (MAX_DATA_PAYLOAD + 1)))
    assert pair.s.state is State.DOWNLOADING
    assert pair.s.remaining == 4 * MAX_DATA_PAYLOAD
    pair.tx(S, Data(b"\x00" * MAX_DATA_PAYLOAD), State.DOWNLOADING)

    pair = pair_in(State.AUTH)
    with pytest.raises(LocalProtocolError):
        pair.c.send(_login_of_payload(MAX_PRELOGIN_PAYLOAD + 1))
    assert pair.c.state is State.AUTH
    pair.tx(C, _login_of_payload(MAX_PRELOGIN_PAYLOAD), State.AUTH_WAIT)

    pair = ready_pair()
    with pytest.raises(LocalProtocolError):
        pair.c.send(Get("p" * (MAX_CONTROL_PAYLOAD - 2 - 8 - 2 + 1)))
    assert pair.c.state is State.READY
