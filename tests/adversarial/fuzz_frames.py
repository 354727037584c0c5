"""Fuzz the sans-I/O protocol core with mutated frame streams, in both roles.

Run it for a while::

    python -m tests.adversarial.fuzz_frames --seconds 10 [--seed N]

Each case takes a valid conversation (what the *peer* says), mutates it (bit flips,
interesting length values, inserted, deleted, duplicated and spliced ranges, frames
swapped or retyped, truncation), and feeds it in random pieces to a
:class:`tcpft.protocol.Connection`. The local side answers as a correct peer would
(WELCOME after HELLO, the file after GET, ...), so mutations reach the deep states
(downloading, uploading, refused uploads) and not only the first frame.

The only exceptions allowed out of the core are :class:`tcpft.errors.ProtocolError` and
:class:`tcpft.errors.ConnectionBroken`, and after one the connection must be CLOSED.
Anything else (``struct.error``, ``IndexError``, ``UnicodeDecodeError``, an assertion
...) is a crash: the case is printed with its seed so it can be replayed with
``--replay-role ROLE --replay-seed SEED --replay-hex HEX``.
"""

from __future__ import annotations

import argparse
import collections
import random
import struct
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from tcpft.errors import ConnectionBroken, ErrorCode, ProtocolError
from tcpft.frames import HEADER
from tcpft.limits import FRAME_HEADER_SIZE
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
from tcpft.protocol import CLOSED, NEED_DATA, Connection, Role, State

ALLOWED: tuple[type[BaseException], ...] = (ProtocolError, ConnectionBroken)

INTERESTING_LENGTHS = [
    0, 1, 2, 31, 32, 33, 4095, 4096, 4097, 65535, 65536, 65537,
    (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
]  # fmt: skip
INTERESTING_BYTES = [0x00, 0x01, 0x02, 0x7F, 0x80, 0xC0, 0xED, 0xFE, 0xFF]


def _f(msg: Message) -> bytes:
    payload = msg.encode_payload()
    return HEADER.pack(msg.TYPE, len(payload)) + payload


DIGEST = bytes(range(32))
ENTRIES = ListEntries((Entry("a.txt", False, 10, 1), Entry("dir", True, 0, 2)))

#: What a client says, in conversations the local server answers.
CLIENT_STREAMS: list[list[bytes]] = [
    [_f(Hello(1, "fuzz")), _f(Login("alice", "pw")), _f(ListRequest("", True)), _f(Bye())],
    [_f(Hello(1, "fuzz")), _f(Login("alice", "pw")), _f(Get("a.txt")), _f(Ack(True)),
     _f(Get("b/c.txt")), _f(Ack(False)), _f(Bye())],
    [_f(Hello(1, "")), _f(Login("bob", "")), _f(Put("up.bin", 10, 5, True, True)),
     _f(Data(b"0123456789")), _f(Done(DIGEST)), _f(ListRequest("dir"))],
    [_f(Hello(1, "x")), _f(Login("a", "b")), _f(Put("up.bin", 6, 0)), _f(Data(b"abc")),
     _f(Cancel()), _f(Put("up2.bin", 3, 0)), _f(Data(b"abc")), _f(Done(DIGEST))],
    [_f(Hello(1, "x")), _f(Login("a", "b")), _f(Get("a.txt")), _f(Error(int(ErrorCode.IO_ERROR),
                                                                          "disk"))],
    [_f(Hello(2, "future")), _f(Login("a", "b")), _f(Login("a", "c")), _f(Login("a", "d"))],
]  # fmt: skip

#: What a server says, in conversations the local client drives.
SERVER_STREAMS: list[list[bytes]] = [
    [_f(Welcome(1, "srv")), _f(LoginOk("alice", True)), _f(ENTRIES), _f(ListEnd()),
     _f(FileHeader("a.txt", 10, 7)), _f(Data(b"01234")), _f(Data(b"56789")), _f(Done(DIGEST))],
    [_f(Welcome(1, "srv")), _f(LoginOk("alice", True)), _f(ListEnd()), _f(PutReady(0, b"")),
     _f(Ack(True))],
    [_f(Welcome(1, "srv")), _f(Error(int(ErrorCode.AUTH_FAILED), "no")), _f(LoginOk("a")),
     _f(ListEnd()), _f(Error(int(ErrorCode.INVALID_NAME), "bad")), _f(ENTRIES), _f(ListEnd())],
    [_f(Welcome(1, "srv")), _f(LoginOk("a", False)), _f(ListEnd()), _f(PutReady(0)),
     _f(Error(int(ErrorCode.NO_SPACE), "full")), _f(Ack(False))],
    [_f(Welcome(1, "srv")), _f(LoginOk("a", True)), _f(ListEnd()),
     _f(FileHeader("a.txt", 10, 0, 4)), _f(Data(b"456789")), _f(Done(DIGEST)),
     _f(Error(int(ErrorCode.SHUTTING_DOWN), "bye"))],
]  # fmt: skip

CORPUS: dict[Role, list[list[bytes]]] = {Role.SERVER: CLIENT_STREAMS, Role.CLIENT: SERVER_STREAMS}
ALL_FRAMES = [f for streams in CORPUS.values() for s in streams for f in s]


# --- the local side: a correct peer that keeps the conversation going -------------------


def respond(conn: Connection, rng: random.Random) -> None:
    """Send what a correct local side sends next, until it is the peer's turn."""
    for _ in range(16):
        state = conn.state
        if conn.role is Role.SERVER:
            if state is State.WELCOME:
                conn.send(Welcome(1, "fuzz"))
            elif state is State.AUTH_WAIT:
                if rng.random() < 0.7:
                    conn.send(LoginOk("alice", rng.random() < 0.5))
                else:
                    conn.send(Error.of(ErrorCode.AUTH_FAILED, "login failed"))
            elif state is State.LISTING:
                if rng.random() < 0.5:
                    conn.send(ENTRIES)
                conn.send(ListEnd())
            elif state is State.GET_WAIT:
                if rng.random() < 0.8:
                    size = rng.choice([0, 1, 10, 100])
                    conn.send(FileHeader("a.txt", size, 0))
                else:
                    conn.send(Error.of(ErrorCode.INVALID_NAME, "no"))
            elif state is State.DOWNLOADING:
                if conn.remaining:
                    conn.send_data_header(conn.remaining)
                conn.send(Done(DIGEST))
            elif state is State.PUT_WAIT:
                if rng.random() < 0.8:
                    conn.send(PutReady(0))
                else:
                    conn.send(Error.of(ErrorCode.ALREADY_EXISTS, "exists"))
            elif state is State.UPLOAD_ACK:
                conn.send(Ack(rng.random() < 0.8))
            elif state is State.UPLOADING and rng.random() < 0.05:
                conn.send(Error.of(ErrorCode.NO_SPACE, "full"))  # refused mid-way
            else:
                return
        else:
            if state is State.HELLO:
                conn.send(Hello(1, "fuzz"))
            elif state is State.AUTH:
                conn.send(Login("alice", "pw"))
            elif state is State.READY:
                pick = rng.random()
                if pick < 0.4:
                    conn.send(Get("a.txt"))
                elif pick < 0.7:
                    conn.send(Put("up.bin", rng.choice([0, 3, 10]), 0))
                elif pick < 0.95:
                    conn.send(ListRequest(""))
                else:
                    conn.send(Bye())
            elif state is State.DOWNLOAD_ACK:
                conn.send(Ack(True))
            elif state is State.UPLOADING:
                if conn.remaining:
                    conn.send_data_header(conn.remaining)
                if rng.random() < 0.9:
                    conn.send(Done(DIGEST))
                else:
                    conn.send(Cancel())
            elif state is State.UPLOAD_REFUSED:
                conn.send(Cancel())
            else:
                return


# --- mutation --------------------------------------------------------------------------


def _frame_starts(data: bytes) -> list[int]:
    """Offsets where frame headers start, following the announced lengths."""
    starts, pos = [], 0
    while pos + FRAME_HEADER_SIZE <= len(data):
        starts.append(pos)
        pos += FRAME_HEADER_SIZE + HEADER.unpack_from(data, pos)[1]
    return starts


def mutate(frames: list[bytes], rng: random.Random) -> bytes:
    """Apply one to four random mutations to a conversation."""
    frames = list(frames)
    if rng.random() < 0.3 and len(frames) > 1:  # frame-level first
        op = rng.randrange(4)
        i, j = rng.randrange(len(frames)), rng.randrange(len(frames))
        if op == 0:
            frames[i], frames[j] = frames[j], frames[i]
        elif op == 1:
            frames.insert(i, frames[j])
        elif op == 2:
            del frames[i]
        else:
            frames.insert(i, rng.choice(ALL_FRAMES))
    data = bytearray(b"".join(frames))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(10)
        if not data:
            data += rng.randbytes(rng.randint(1, 16))
            continue
        pos = rng.randrange(len(data))
        if op == 0:  # flip a bit
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1:  # an interesting byte
            data[pos] = rng.choice(INTERESTING_BYTES)
        elif op == 2:  # insert random bytes
            data[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3:  # delete a range
            del data[pos : pos + rng.randint(1, 16)]
        elif op == 4:  # duplicate a range
            data[pos:pos] = data[pos : pos + rng.randint(1, 32)]
        elif op == 5:  # splice a known frame in
            data[pos:pos] = rng.choice(ALL_FRAMES)
        elif op in (6, 7):  # an interesting length in some frame header
            starts = _frame_starts(bytes(data)) or [0]
            at = rng.choice(starts) + 1
            if at + 4 <= len(data):
                data[at : at + 4] = struct.pack("!I", rng.choice(INTERESTING_LENGTHS))
        elif op == 8:  # another type byte in some frame header
            starts = _frame_starts(bytes(data)) or [0]
            data[rng.choice(starts)] = rng.randrange(256)
        else:  # truncate
            del data[pos:]
    return bytes(data)


# --- one case --------------------------------------------------------------------------


@dataclass
class Stats:
    cases: int = 0
    messages: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    states: set[str] = field(default_factory=set)

    def __str__(self) -> str:
        top = ", ".join(f"{k}={v}" for k, v in self.outcomes.most_common())
        return (
            f"cases={self.cases} messages={self.messages} states={len(self.states)} outcomes: {top}"
        )


def run_case(role: Role, data: bytes, case_seed: int, stats: Stats | None = None) -> str:
    """Feed ``data`` to a ``role`` Connection; return how it ended.

    Raises:
        AssertionError: an invariant broke.
        Exception: anything else the core let out (a crash).
    """
    rng = random.Random(case_seed)
    conn = Connection(role)
    record: Callable[[], None] = (
        (lambda: stats.states.add(conn.state.value)) if stats is not None else (lambda: None)
    )
    try:
        respond(conn, rng)
        pos, eof_fed = 0, False
        while True:
            if pos < len(data):
                chunk = data[pos : pos + rng.choice([1, 2, 5, 7, 64, len(data)])]
                conn.receive_data(chunk)
                pos += len(chunk)
            elif not eof_fed:
                conn.receive_data(b"")  # the peer closes
                eof_fed = True
            else:
                raise AssertionError("NEED_DATA after the peer closed")
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                if event is CLOSED:
                    assert conn.state is State.CLOSED
                    return "clean close"
                assert isinstance(event, Message)
                if stats is not None:
                    stats.messages += 1
                record()
                if isinstance(event, Error) and conn.state is State.CLOSED:
                    return "fatal error"
                respond(conn, rng)
                record()
                if conn.state is State.CLOSED:
                    return "closed"
    except ALLOWED as exc:
        assert conn.state is State.CLOSED, f"{type(exc).__name__} left state {conn.state}"
        return type(exc).__name__


class FuzzCrash(Exception):
    """The core raised something it must not; holds what is needed to replay it."""

    def __init__(self, role: Role, case_seed: int, data: bytes, exc: BaseException) -> None:
        super().__init__(
            f"{type(exc).__name__}: {exc}\n  role={role.value} case_seed={case_seed}\n"
            f"  data={data.hex()}"
        )
        self.role, self.case_seed, self.data = role, case_seed, data


def run(seconds: float, seed: int, *, log: Callable[[str], None] | None = None) -> Stats:
    """Fuzz for ``seconds``; raise FuzzCrash on the first crash."""
    rng = random.Random(seed)
    stats = Stats()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(200):
            role = rng.choice([Role.SERVER, Role.CLIENT])
            data = mutate(rng.choice(CORPUS[role]), rng)
            case_seed = rng.getrandbits(64)
            try:
                outcome = run_case(role, data, case_seed, stats)
            except Exception as exc:
                raise FuzzCrash(role, case_seed, data, exc) from exc
            stats.cases += 1
            stats.outcomes[outcome] += 1
    if log is not None:
        log(str(stats))
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--replay-role", choices=[r.value for r in Role])
    parser.add_argument("--replay-seed", type=int)
    parser.add_argument("--replay-hex")
    args = parser.parse_args(argv)
    if args.replay_role:
        outcome = run_case(Role(args.replay_role), bytes.fromhex(args.replay_hex), args.replay_seed)
        print(f"replayed: {outcome}")
        return 0
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    print(f"fuzzing the protocol core for {args.seconds} s, seed {seed}")
    try:
        run(args.seconds, seed, log=print)
    except FuzzCrash as crash:
        traceback.print_exception(crash.__cause__ or crash)
        print(f"CRASH (seed {seed}): {crash}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
