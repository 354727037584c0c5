"""The sans-I/O protocol core: one conversation state machine, used by both roles.

A :class:`Connection` never touches a socket. The driver hands it received bytes
(:meth:`Connection.receive_data`) and takes typed messages out
(:meth:`Connection.next_event`); to send, it asks :meth:`Connection.send` for the bytes
of a message and writes them itself. Both sides track the same conversation state;
every transition is one row of :data:`TRANSITIONS`, and docs/PROTOCOL.md's state table
is that table. A message that has no row for the current state is a protocol error:
:class:`~tcpft.errors.LocalProtocolError` when we try to send it,
:class:`~tcpft.errors.RemoteProtocolError` when the peer did.

The core also counts file bytes: after FILE (or PUT_READY) exactly ``size - offset``
bytes of DATA must come before DONE.

From protocol version 2 the client may pipeline GETs: while a download is under way
it may send up to :data:`~tcpft.limits.MAX_GETS_AHEAD` more GETs. Both sides queue them
and start the next one when the conversation comes back to READY, so the state table
itself stays strictly turn by turn (docs/PROTOCOL.md, "Pipelined GETs").

From protocol version 4 the client may stream PUTs: a PUT with the ``stream`` flag
goes straight to UPLOADING (as if PUT_READY with offset 0 had come), and its DONE
straight back to READY. The server's verdict on it, ACK or a non-fatal ERROR, is
owed: up to :data:`~tcpft.limits.MAX_PUTS_AHEAD` verdicts may be owed at a time,
and the server sends them in order and before anything else (docs/PROTOCOL.md,
"Streamed PUTs").
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Final

from .errors import (
    ConnectionBroken,
    ErrorCode,
    FrameTooLarge,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    is_fatal,
)
from .frames import HEADER, FrameDecoder, frame_header
from .limits import (
    FRAME_HEADER_SIZE,
    MAX_CONTROL_PAYLOAD,
    MAX_DATA_PAYLOAD,
    MAX_GETS_AHEAD,
    MAX_PRELOGIN_PAYLOAD,
    MAX_PUTS_AHEAD,
    RESUME_BLOCK_SIZE,
)
from .messages import (
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
    decode_message,
)


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"

    @property
    def peer(self) -> Role:
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


class State(enum.Enum):
    """States of the conversation. The comment names who speaks next."""

    HELLO = "HELLO"  # client sends HELLO
    WELCOME = "WELCOME"  # server sends WELCOME
    AUTH = "AUTH"  # client sends LOGIN
    AUTH_WAIT = "AUTH_WAIT"  # server judges the LOGIN
    LISTING = "LISTING"  # server sends LIST_ENTRIES... LIST_END
    READY = "READY"  # client sends a request or BYE (or closes)
    GET_WAIT = "GET_WAIT"  # server answers a GET
    DOWNLOADING = "DOWNLOADING"  # server sends DATA... DONE
    DOWNLOAD_ACK = "DOWNLOAD_ACK"  # client sends ACK
    PUT_WAIT = "PUT_WAIT"  # server answers a PUT
    UPLOADING = "UPLOADING"  # client sends DATA... DONE (or CANCEL)
    UPLOAD_REFUSED = "UPLOAD_REFUSED"  # server gave up; client ends with DONE or CANCEL
    UPLOAD_ACK = "UPLOAD_ACK"  # server sends ACK
    CANCEL_WAIT = "CANCEL_WAIT"  # server confirms a CANCEL with ACK
    CLOSED = "CLOSED"  # nothing more may be sent


C, S = Role.CLIENT, Role.SERVER

#: (state, sender, message type) -> next state. ERROR is handled apart (see ERROR_NEXT).
TRANSITIONS: Final[dict[tuple[State, Role, type[Message]], State]] = {
    (State.HELLO, C, Hello): State.WELCOME,
    (State.WELCOME, S, Welcome): State.AUTH,
    (State.AUTH, C, Login): State.AUTH_WAIT,
    (State.AUTH_WAIT, S, LoginOk): State.LISTING,
    (State.LISTING, S, ListEntries): State.LISTING,
    (State.LISTING, S, ListEnd): State.READY,
    (State.READY, C, ListRequest): State.LISTING,
    (State.READY, C, Get): State.GET_WAIT,
    (State.READY, C, Put): State.PUT_WAIT,
    (State.READY, C, Bye): State.CLOSED,
    (State.GET_WAIT, S, FileHeader): State.DOWNLOADING,
    (State.DOWNLOADING, S, Data): State.DOWNLOADING,
    (State.DOWNLOADING, S, Done): State.DOWNLOAD_ACK,
    (State.DOWNLOAD_ACK, C, Ack): State.READY,
    (State.PUT_WAIT, S, PutReady): State.UPLOADING,
    (State.UPLOADING, C, Data): State.UPLOADING,
    (State.UPLOADING, C, Done): State.UPLOAD_ACK,
    (State.UPLOADING, C, Cancel): State.CANCEL_WAIT,
    (State.UPLOAD_REFUSED, C, Data): State.UPLOAD_REFUSED,
    (State.UPLOAD_REFUSED, C, Done): State.READY,
    (State.UPLOAD_REFUSED, C, Cancel): State.CANCEL_WAIT,
    (State.UPLOAD_ACK, S, Ack): State.READY,
    (State.CANCEL_WAIT, S, Ack): State.READY,
}

#: Where a non-fatal ERROR from the server leads. A fatal code, an ERROR from the
#: client, or an ERROR in a state not listed here closes the conversation.
ERROR_NEXT: Final[dict[State, State]] = {
    State.AUTH_WAIT: State.AUTH,  # wrong credentials, attempts remain
    State.LISTING: State.READY,  # the directory cannot be listed
    State.GET_WAIT: State.LISTING,  # bad name: the listing is sent again
    State.DOWNLOADING: State.READY,  # file changed or failed mid-way
    State.PUT_WAIT: State.READY,  # upload refused
    State.UPLOADING: State.UPLOAD_REFUSED,  # failed mid-way; client finishes the stream
    State.UPLOAD_ACK: State.READY,  # upload failed verification
    State.CANCEL_WAIT: State.CANCEL_WAIT,  # sent before the CANCEL arrived; ACK follows
}

#: States before login: the server accepts only small frames.
PRELOGIN_STATES: Final = frozenset({State.HELLO, State.WELCOME, State.AUTH, State.AUTH_WAIT})

#: Protocol version from which the client may send GETs ahead (pipelining).
PIPELINING_VERSION: Final = 2

#: States in which, during a download, the client may send a GET ahead (version 2).
#: LISTING counts only when it answers a refused GET, not a LIST or the login.
PIPELINE_STATES: Final = frozenset(
    {State.GET_WAIT, State.DOWNLOADING, State.DOWNLOAD_ACK, State.LISTING}
)

#: Protocol version from which the client may stream PUTs.
STREAMING_VERSION: Final = 4

#: States in which the server may send the verdict on a streamed upload (version 4):
#: the client may have streamed more PUTs, or be in the middle of the next one.
VERDICT_STATES: Final = frozenset({State.READY, State.UPLOADING, State.UPLOAD_REFUSED})

#: States in which the peer closing the connection is a clean end, not a cut
#: (provided that no upload verdict is owed).
CLEAN_EOF_STATES: Final = frozenset({State.READY, State.CLOSED})

_BULK_TYPES: Final = frozenset({Data.TYPE, ListEntries.TYPE})
_ALLOWED: Final = frozenset((s, r, m.TYPE) for (s, r, m) in TRANSITIONS)


def next_state(state: State, sender: Role, msg: Message) -> State:
    """The state after ``sender`` sends ``msg`` in ``state``; ProtocolError if illegal."""
    if isinstance(msg, Error):
        if state is State.CLOSED:
            raise ProtocolError("ERROR after the conversation closed")
        if sender is S and not is_fatal(msg.code) and state in ERROR_NEXT:
            return ERROR_NEXT[state]
        return State.CLOSED
    try:
        return TRANSITIONS[(state, sender, type(msg))]
    except KeyError:
        name = type(msg).__name__
        raise ProtocolError(f"{sender.value} may not send {name} in state {state.value}") from None


def payload_limit(state: State, sender: Role, frame_type: int) -> int | None:
    """Largest payload of ``frame_type`` that ``sender`` may send in ``state``, or None."""
    if state is State.CLOSED:
        return None
    ahead = frame_type == Get.TYPE and sender is C and state in PIPELINE_STATES
    verdict = frame_type == Ack.TYPE and sender is S and state in VERDICT_STATES
    if (
        frame_type != Error.TYPE
        and (state, sender, frame_type) not in _ALLOWED
        and not (ahead or verdict)
    ):
        return None
    if state in PRELOGIN_STATES:
        return MAX_PRELOGIN_PAYLOAD
    if frame_type in _BULK_TYPES:
        return MAX_DATA_PAYLOAD
    return MAX_CONTROL_PAYLOAD


_LIMITS: Final[dict[tuple[State, Role, int], int | None]] = {
    (state, role, t): payload_limit(state, role, t)
    for state in State
    for role in Role
    for t in range(256)
}


class _Closed:
    """The peer closed the connection cleanly (returned by next_event)."""

    def __repr__(self) -> str:
        return "CLOSED"


class _NeedData:
    """No complete message yet: feed more bytes (returned by next_event)."""

    def __repr__(self) -> str:
        return "NEED_DATA"


CLOSED: Final = _Closed()
NEED_DATA: Final = _NeedData()

Event = Message | _Closed | _NeedData


class Connection:
    """One side of a tcpft conversation, without I/O."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = State.HELLO
        self._decoder = FrameDecoder()
        self._eof = False
        self._remaining = 0  # DATA bytes still due in the current transfer
        self._put_size = 0
        self._put_resume = False  # the PUT waiting for PUT_READY asked to resume
        #: The protocol version chosen in WELCOME (0 until then).
        self.version = 0
        self._ahead: deque[Get] = deque()  # GETs sent ahead, not started yet
        self._in_get = False  # from a GET's start until READY with nothing queued
        self._started: deque[Get] = deque()  # the client's queued GETs, now due (server)
        self._streamed = False  # the upload in progress began with a streamed PUT
        self._owed = 0  # verdicts on streamed uploads not sent (server) or received (client)

    # --- sending -------------------------------------------------------------------

    def send(self, msg: Message) -> bytes:
        """Return the frame bytes for ``msg`` and advance the state.

        Raises:
            LocalProtocolError: ``msg`` may not be sent now.
        """
        payload = msg.encode_payload()
        limit = _LIMITS[(self.state, self.role, msg.TYPE)]
        if limit is not None and len(payload) > limit:
            raise LocalProtocolError(
                f"{type(msg).__name__} of {len(payload)} bytes exceeds the limit of {limit}"
            )
        self._advance(self.role, msg, local=True)
        return frame_header(msg.TYPE, len(payload)) + payload

    def send_error(self, code: ErrorCode, text: str) -> bytes:
        """Return an ERROR frame; unlike :meth:`send`, allowed even once CLOSED.

        A side that has just caught the peer breaking the protocol (so its state is
        already CLOSED) can still say why before it closes.
        """
        msg = Error.of(code, text)
        if self.state is not State.CLOSED:
            self._advance(self.role, msg, local=True)
        return frame_header(Error.TYPE, len(payload := msg.encode_payload())) + payload

    def send_data_header(self, length: int) -> bytes:
        """Header of a DATA frame whose ``length`` payload bytes the caller writes itself.

        Lets a driver send file content without copying it into a frame.

        Raises:
            LocalProtocolError: DATA may not be sent now, or ``length`` is too large.
        """
        if not 0 < length <= MAX_DATA_PAYLOAD:
            raise LocalProtocolError(f"DATA length {length} is outside 1..{MAX_DATA_PAYLOAD}")
        new = _transition(self.state, self.role, Data(b""), local=True)
        self._check_data(self.role, length, local=True)
        self.state = new
        return frame_header(Data.TYPE, length)

    # --- receiving -----------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the peer; empty ``data`` means the peer closed."""
        if data:
            self._decoder.feed(data)
        else:
            self._eof = True

    def receive_data_header(self, header: bytes | bytearray | memoryview) -> int | None:
        """Fast path for bulk data: take a frame header the driver read itself.

        Only when nothing is buffered (:attr:`buffered` is 0). For a DATA header that
        is legal now, the state and byte count advance as if the frame were received,
        and the payload length is returned: the driver must then read exactly that
        many bytes as file content, straight into its own buffer. Any other header is
        fed to the decoder as usual and None is returned: carry on with
        :meth:`next_event`.

        Raises:
            LocalProtocolError: bytes are buffered, or ``header`` is not 5 bytes.
            RemoteProtocolError: DATA is not allowed now, or is too long (CLOSED).
        """
        if self._decoder.buffered or len(header) != FRAME_HEADER_SIZE:
            raise LocalProtocolError("receive_data_header needs an empty buffer and 5 bytes")
        frame_type, length = HEADER.unpack(header)
        if frame_type != Data.TYPE:
            self._decoder.feed(header)
            return None
        try:
            limit = _LIMITS[(self.state, self.role.peer, Data.TYPE)]
            if limit is None:
                raise RemoteProtocolError(f"unexpected DATA in state {self.state.value}")
            if length > limit:
                raise FrameTooLarge(f"DATA announces {length} bytes, limit is {limit}")
            new = _transition(self.state, self.role.peer, Data(b""), local=False)
            self._check_data(self.role.peer, length, local=False)
        except ProtocolError:
            self._close()
            raise
        self.state = new
        return int(length)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return self._decoder.buffered

    @property
    def bytes_wanted(self) -> int:
        """After NEED_DATA: bytes still missing for the frame in progress (at least 1).

        A driver may read that many before calling :meth:`next_event` again, instead
        of waking up the core for every small piece the transport returns.
        """
        return self._decoder.wanted

    def next_event(self) -> Event:
        """The next message from the peer, NEED_DATA, or CLOSED (a clean close).

        A GET that the client sent ahead (version 2) is returned when its turn comes,
        that is once the conversation is back in READY, not when it arrives.

        Raises:
            RemoteProtocolError: the peer broke the protocol (the state becomes CLOSED).
            ConnectionBroken: the peer closed in the middle of an exchange.
        """
        peer = self.role.peer
        try:
            while not self._started:
                frame = self._decoder.next_frame(self._peer_limit)
                if frame is None:
                    return self._at_end_of_buffer()
                msg = decode_message(frame.type, frame.payload)
                if not self._advance(peer, msg, local=False):
                    return msg
        except ProtocolError:
            self._close()
            raise
        return self._started.popleft()  # a GET sent ahead, whose turn it is now

    def _peer_limit(self, frame_type: int) -> int | None:
        return _LIMITS[(self.state, self.role.peer, frame_type)]

    def _at_end_of_buffer(self) -> Event:
        if not self._eof:
            return NEED_DATA
        if self.state in CLEAN_EOF_STATES and not self._decoder.buffered and not self._owed:
            self._close()
            return CLOSED
        where = self.state.value
        self._close()
        raise ConnectionBroken(f"connection closed by the peer during {where}")

    # --- shared --------------------------------------------------------------------

    @property
    def remaining(self) -> int:
        """DATA bytes still due before DONE in the current transfer."""
        return self._remaining

    @property
    def gets_ahead(self) -> int:
        """GETs sent ahead (pipelined) and not started yet."""
        return len(self._ahead)

    @property
    def verdicts_owed(self) -> int:
        """Streamed uploads ended with DONE whose verdict (ACK or ERROR) is still due."""
        return self._owed

    def may_stream_put(self) -> bool:
        """Whether the client may send a streamed PUT now."""
        return (
            self.version >= STREAMING_VERSION
            and self.state is State.READY
            and self._owed < MAX_PUTS_AHEAD
        )

    def may_send_get_ahead(self) -> bool:
        """Whether the client may send a GET now without waiting for READY."""
        return (
            self.version >= PIPELINING_VERSION
            and self._in_get
            and self.state in PIPELINE_STATES
            and len(self._ahead) < MAX_GETS_AHEAD
        )

    def _close(self) -> None:
        self.state = State.CLOSED
        self._ahead.clear()
        self._started.clear()
        self._in_get = False
        self._owed = 0

    def _advance(self, sender: Role, msg: Message, *, local: bool) -> bool:
        """Apply ``msg``; True when it is a GET sent ahead (queued, state unchanged)."""
        if isinstance(msg, Get) and sender is C and self._in_get and self.state in PIPELINE_STATES:
            err = LocalProtocolError if local else RemoteProtocolError
            if self.version < PIPELINING_VERSION:
                raise err(f"GET during a download needs protocol version {PIPELINING_VERSION}")
            if len(self._ahead) >= MAX_GETS_AHEAD:
                raise err(f"more than {MAX_GETS_AHEAD} GETs sent ahead")
            self._ahead.append(msg)
            return True
        if self._owed and self._verdict(sender, msg, local=local):
            return False
        if isinstance(msg, Put) and msg.stream:
            return self._start_stream(msg, local=local)
        new = _transition(self.state, sender, msg, local=local)
        if isinstance(msg, Data):
            self._check_data(sender, len(msg.data), local=local)
        elif (
            isinstance(msg, Done)
            and self.state in (State.DOWNLOADING, State.UPLOADING)
            and self._remaining
        ):
            err = LocalProtocolError if local else RemoteProtocolError
            raise err(f"DONE while {self._remaining} announced bytes are missing")
        if isinstance(msg, Done) and self.state is State.UPLOADING and self._streamed:
            new = State.READY  # the verdict comes later
            self._owed += 1
        if new is not State.UPLOADING and new is not State.UPLOAD_REFUSED:
            self._streamed = False
        if isinstance(msg, FileHeader):
            self._remaining = msg.size - msg.offset
        elif isinstance(msg, Put):
            self._put_size, self._put_resume = msg.size, msg.resume
        elif isinstance(msg, PutReady):
            err = LocalProtocolError if local else RemoteProtocolError
            if msg.offset > self._put_size:
                raise err("PUT_READY offset is past the announced size")
            if msg.offset and (not self._put_resume or msg.offset % RESUME_BLOCK_SIZE):
                raise err(
                    f"PUT_READY offset {msg.offset}: 0 unless the PUT asked to resume, "
                    f"then a multiple of {RESUME_BLOCK_SIZE}"
                )
            self._remaining = self._put_size - msg.offset
        elif isinstance(msg, Welcome):
            self.version = msg.version
        self.state = new
        if new is State.GET_WAIT:
            self._in_get = True
        elif new is State.READY and self._in_get:
            if self._ahead:  # the next GET sent ahead starts now
                get = self._ahead.popleft()
                self.state = State.GET_WAIT
                if self.role is S:
                    self._started.append(get)
            else:
                self._in_get = False
        elif new is State.CLOSED:
            self._close()
        return False

    def _verdict(self, sender: Role, msg: Message, *, local: bool) -> bool:
        """With verdicts owed: True when ``msg`` is one (taken); raise if not allowed."""
        err = LocalProtocolError if local else RemoteProtocolError
        name = type(msg).__name__
        if sender is S:
            if isinstance(msg, Ack) or (isinstance(msg, Error) and not is_fatal(msg.code)):
                if self.state not in VERDICT_STATES:
                    raise err(f"upload verdict in state {self.state.value}")
                self._owed -= 1
                return True
            if not isinstance(msg, Error):  # a fatal ERROR ends everything, verdicts too
                raise err(f"{name} before the {self._owed} upload verdict(s) owed")
            return False
        streamed = isinstance(msg, Put) and msg.stream
        if not (streamed or isinstance(msg, (Data, Done, Error))):
            raise err(f"{name} while {self._owed} upload verdict(s) are owed")
        return False

    def _start_stream(self, msg: Put, *, local: bool) -> bool:
        """A streamed PUT: straight to UPLOADING, all ``size`` bytes due."""
        err = LocalProtocolError if local else RemoteProtocolError
        if self.version < STREAMING_VERSION:
            raise err(f"a streamed PUT needs protocol version {STREAMING_VERSION}")
        if self.state is not State.READY:
            raise err(f"client may not send Put in state {self.state.value}")
        if self._owed >= MAX_PUTS_AHEAD:
            raise err(f"a streamed PUT with {MAX_PUTS_AHEAD} upload verdicts owed")
        self.state = State.UPLOADING
        self._streamed = True
        self._put_size = self._remaining = msg.size
        return False

    def _check_data(self, sender: Role, length: int, *, local: bool) -> None:
        if self.state is State.UPLOAD_REFUSED:
            return  # the server discards these anyway
        if self.state in (State.DOWNLOADING, State.UPLOADING):
            if length > self._remaining:
                err = LocalProtocolError if local else RemoteProtocolError
                raise err(f"DATA of {length} bytes exceeds the {self._remaining} announced")
            self._remaining -= length


def _transition(state: State, sender: Role, msg: Message, *, local: bool) -> State:
    try:
        return next_state(state, sender, msg)
    except ProtocolError as exc:
        raise (LocalProtocolError if local else RemoteProtocolError)(exc.message) from None
