"""A random walk over the protocol state machine, with two Connections wired together.

At each step one side tries to send a message drawn from a pool (often one the table
allows now, sometimes anything). Properties checked:

- the sender either sends it or raises LocalProtocolError, leaving its state and
  byte count unchanged; nothing else is ever raised;
- whatever was sent, the receiver accepts, and both sides agree on the new state,
  which is the one TRANSITIONS (or the ERROR rules) name;
- whatever the sender refused, the receiver refuses too (RemoteProtocolError, state
  CLOSED) when it is put on the wire anyway;
- an end of stream is a clean CLOSED exactly in CLEAN_EOF_STATES, else ConnectionBroken;
- arbitrary bytes make the receiver raise only RemoteProtocolError.
"""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpft.errors import (
    ConnectionBroken,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    is_fatal,
)
from tcpft.frames import encode_frame
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
    Role,
    State,
)

C, S = Role.CLIENT, Role.SERVER
SHA = b"\x5a" * 32

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

small = st.integers(0, 6)


@st.composite
def file_headers(draw: st.DrawFn) -> FileHeader:
    size = draw(small)
    return FileHeader("f", size, 0, draw(st.integers(0, size)))


@st.composite
def put_readies(draw: st.DrawFn) -> PutReady:
    offset = draw(st.integers(0, 8))
    return PutReady(offset, SHA if offset else draw(st.sampled_from([b"", SHA])))


error_codes = st.one_of(st.sampled_from(list(ErrorCode)), st.sampled_from([0, 999, 0xFFFF]))

BY_TYPE: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: st.just(Hello(1, "c")),
    Welcome: st.just(Welcome(1, "s")),
    Login: st.just(Login("u", "p")),
    LoginOk: st.builds(LoginOk, st.just("u"), st.booleans()),
    ListRequest: st.builds(ListRequest, st.sampled_from(["", "d"]), st.booleans()),
    ListEntries: st.just(ListEntries((Entry("a", False, 1, 0),))),
    ListEnd: st.just(ListEnd()),
    Get: st.just(Get("f")),
    FileHeader: file_headers(),
    Data: st.builds(Data, st.binary(min_size=0, max_size=5)),
    Done: st.just(Done(SHA)),
    Ack: st.builds(Ack, st.booleans()),
    Put: st.builds(Put, st.just("f"), small, st.just(0), st.booleans(), st.booleans()),
    PutReady: put_readies(),
    Cancel: st.just(Cancel()),
    Bye: st.just(Bye()),
    Error: st.builds(Error, error_codes, st.just("why")),
}
ANY_TYPE = list(BY_TYPE)


def expected_state(state: State, sender: Role, msg: Message) -> State:
    """The model: the table, and the ERROR rules of docs/PROTOCOL.md 5.2."""
    if isinstance(msg, Error):
        if sender is S and not is_fatal(msg.code) and state in ERROR_NEXT:
            return ERROR_NEXT[state]
        return State.CLOSED
    return TRANSITIONS[(state, sender, type(msg))]


def model_allows(state: State, sender: Role, msg: Message, remaining: int) -> bool | None:
    """Whether the spec lets ``sender`` send ``msg`` now (None: the model cannot tell)."""
    if isinstance(msg, Error):
        return state is not State.CLOSED
    if (state, sender, type(msg)) not in TRANSITIONS:
        return False
    counting = state in (State.DOWNLOADING, State.UPLOADING)
    if isinstance(msg, Data) and counting:
        return len(msg.data) <= remaining
    if isinstance(msg, Done) and counting:
        return remaining == 0
    if isinstance(msg, PutReady):
        return None  # depends on the size announced in PUT
    return True


def legal_types(state: State, sender: Role) -> list[type[Message]]:
    """Message types other than ERROR that ``sender`` may send in ``state``."""
    return [m for (s, r, m) in TRANSITIONS if s is state and r is sender]


# A way into every state, so the walk starts anywhere (not only at HELLO).
_LOGIN: list[tuple[Role, Message]] = [
    (C, Hello(1, "c")),
    (S, Welcome(1, "s")),
    (C, Login("u", "p")),
    (S, LoginOk("u", True)),
    (S, ListEnd()),
]
_UP: list[tuple[Role, Message]] = [*_LOGIN, (C, Put("f", 3, 0)), (S, PutReady())]
PATHS: dict[State, list[tuple[Role, Message]]] = {
    State.HELLO: [],
    State.WELCOME: _LOGIN[:1],
    State.AUTH: _LOGIN[:2],
    State.AUTH_WAIT: _LOGIN[:3],
    State.LISTING: _LOGIN[:4],
    State.READY: _LOGIN,
    State.GET_WAIT: [*_LOGIN, (C, Get("f"))],
    State.DOWNLOADING: [*_LOGIN, (C, Get("f")), (S, FileHeader("f", 3, 0))],
    State.DOWNLOAD_ACK: [*_LOGIN, (C, Get("f")), (S, FileHeader("f", 0, 0)), (S, Done(SHA))],
    State.PUT_WAIT: [*_LOGIN, (C, Put("f", 3, 0))],
    State.UPLOADING: _UP,
    State.UPLOAD_REFUSED: [*_UP, (S, Error(int(ErrorCode.NO_SPACE), "full"))],
    State.UPLOAD_ACK: [*_UP, (C, Data(b"abc")), (C, Done(SHA))],
    State.CANCEL_WAIT: [*_UP, (C, Cancel())],
    State.CLOSED: [*_LOGIN, (C, Bye())],
}


def pair_in(state: State) -> dict[Role, Connection]:
    pair = {C: Connection(C), S: Connection(S)}
    for sender, msg in PATHS[state]:
        pair[sender.peer].receive_data(pair[sender].send(msg))
        assert pair[sender.peer].next_event() == msg
    assert pair[C].state is pair[S].state is state
    return pair


def test_paths_cover_every_state() -> None:
    for state in State:
        pair_in(state)


def check_eof(conn: Connection) -> None:
    probe = copy.deepcopy(conn)
    probe.receive_data(b"")
    clean = probe.state in CLEAN_EOF_STATES  # every frame was delivered whole
    try:
        ev = probe.next_event()
    except ConnectionBroken:
        assert not clean
    else:
        assert clean and ev is CLOSED
    assert probe.state is State.CLOSED


def check_refused_on_the_wire(receiver: Connection, msg: Message) -> None:
    probe = copy.deepcopy(receiver)
    probe.receive_data(encode_frame(msg.TYPE, msg.encode_payload()))
    try:
        ev = probe.next_event()
    except RemoteProtocolError:
        assert probe.state is State.CLOSED
        return
    raise AssertionError(f"receiver accepted {ev!r} that the sender refused")


def walk_step(pair: dict[Role, Connection], data: st.DataObject) -> None:
    state = pair[C].state
    speakers = [r for r in Role if legal_types(state, r)]
    choice = data.draw(st.integers(0, 9), label="choice")
    if choice <= 6 and speakers:  # mostly what the table allows now
        sender = data.draw(st.sampled_from(speakers), label="sender")
        mtype = data.draw(st.sampled_from(legal_types(state, sender)), label="type")
    elif choice == 7:  # an ERROR from either side
        sender = data.draw(st.sampled_from([C, S]), label="sender")
        mtype = Error
    else:  # anything from anyone
        sender = data.draw(st.sampled_from([C, S]), label="sender")
        mtype = data.draw(st.sampled_from(ANY_TYPE), label="type")
    msg = data.draw(BY_TYPE[mtype], label="msg")
    a, b = pair[sender], pair[sender.peer]
    before = (a.state, a.remaining)
    allowed = model_allows(state, sender, msg, a.remaining)
    use_header = isinstance(msg, Data) and bool(msg.data) and data.draw(st.booleans())
    try:
        if use_header:
            assert isinstance(msg, Data)
            wire = a.send_data_header(len(msg.data)) + msg.data
        else:
            wire = a.send(msg)
    except LocalProtocolError:
        assert allowed is not True, f"{sender.value} could not send {msg!r} in {state}"
        assert (a.state, a.remaining) == before
        check_refused_on_the_wire(b, msg)
        return
    assert allowed is not False, f"{sender.value} sent {msg!r} in {state}"
    assert a.state is expected_state(state, sender, msg)
    # Deliver in two pieces to exercise buffering (an empty piece would mean EOF).
    cut = data.draw(st.integers(1, len(wire)), label="cut")
    b.receive_data(wire[:cut])
    if cut < len(wire):
        assert b.next_event() is NEED_DATA
        b.receive_data(wire[cut:])
    assert b.next_event() == msg
    assert b.next_event() is NEED_DATA
    assert b.state is a.state
    assert b.remaining == a.remaining >= 0


@SETTINGS
@given(st.data())
def test_random_walk(data: st.DataObject) -> None:
    pair = pair_in(data.draw(st.sampled_from(list(State)), label="start"))
    steps = data.draw(st.integers(1, 40), label="steps")
    for _ in range(steps):
        walk_step(pair, data)
        if data.draw(st.integers(0, 9), label="probe eof") == 0:
            check_eof(pair[C])
            check_eof(pair[S])
        if pair[C].state is State.CLOSED:
            break


@SETTINGS
@given(st.data(), st.binary(min_size=1, max_size=40))
def test_garbage_raises_only_remote_protocol_error(data: st.DataObject, junk: bytes) -> None:
    pair = pair_in(data.draw(st.sampled_from(list(State)), label="start"))
    for _ in range(data.draw(st.integers(0, 10), label="steps")):
        walk_step(pair, data)
    receiver = pair[data.draw(st.sampled_from([C, S]), label="receiver")]
    receiver.receive_data(junk)
    try:
        for _ in range(len(junk) + 1):
            ev = receiver.next_event()
            if ev is NEED_DATA:
                break
            assert isinstance(ev, Message)
    except RemoteProtocolError:
        assert receiver.state is State.CLOSED
