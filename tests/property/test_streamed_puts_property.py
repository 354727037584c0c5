"""Streamed PUTs, property-tested: two cores, bytes delivered in random pieces at
random moments, uploads of random sizes, random verdicts (ACK, ACK false, non-fatal
ERROR), random refusals mid-upload ended by DONE or CANCEL, and verdicts sent at
random points. Whatever the timing, every upload gets exactly one verdict on each
side, the client pins each on the right upload, and both sides end in READY with
nothing owed."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpft.errors import ErrorCode, is_fatal
from tcpft.limits import MAX_PUTS_AHEAD
from tcpft.messages import (
    Ack,
    Bye,
    Cancel,
    Data,
    Done,
    Error,
    Hello,
    ListEnd,
    Login,
    LoginOk,
    Message,
    Put,
    Welcome,
)
from tcpft.protocol import CLOSED, NEED_DATA, STREAMING_VERSION, Role, State

from .sides import Side

C, S = Role.CLIENT, Role.SERVER
DIGEST = bytes(32)


@dataclass(frozen=True)
class Job:
    chunks: tuple[bytes, ...]
    verdict: str  # "ack", "nack" or "error": what the server says once it has it all
    refuse_at: int | None  # refused after the PUT and that many DATA, if still going
    end: str  # how the client ends a refused upload: "done" or "cancel"

    @property
    def size(self) -> int:
        return sum(map(len, self.chunks))


def verdict_of(index: int, job: Job) -> Message:
    if job.verdict == "ack":
        return Ack(True)
    if job.verdict == "nack":
        return Ack(False)
    return Error.of(ErrorCode.DIGEST_MISMATCH, f"verdict {index}")


def refusal_of(index: int) -> Error:
    return Error.of(ErrorCode.NO_SPACE, f"refused {index}")


class Session:
    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.c, self.s = Side(C), Side(S)
        # Client.
        self.sent = 0  # streamed PUTs sent
        self.pos = 0  # DATA sent of the upload in progress
        self.owed: list[int] = []  # uploads ended with DONE, verdict not heard (FIFO)
        self.heard: dict[int, Message] = {}  # the verdict the client pins on each upload
        self.heard_order: list[int] = []
        # Server.
        self.started = 0  # streamed PUTs received
        self.got = 0  # DATA received of the upload in progress
        self.pending: list[int] = []  # uploads fully received, verdict not sent (FIFO)
        self.said: dict[int, Message] = {}  # the verdict the server sent on each upload
        self.said_order: list[int] = []
        self.c_say(Hello(STREAMING_VERSION, "c"))
        self.s_react()
        self.c_react()
        self.c_say(Login("u", "p"))
        self.s_react()
        self.c_react()
        assert self.c.conn.state is State.READY
        assert self.c.conn.version == self.s.conn.version == STREAMING_VERSION

    # --- plumbing --------------------------------------------------------------------

    def c_say(self, msg: Message) -> None:
        self.s.inbox += self.c.conn.send(msg)

    def s_say(self, msg: Message) -> None:
        self.c.inbox += self.s.conn.send(msg)

    def check(self) -> None:
        assert self.c.conn.verdicts_owed == len(self.owed) <= MAX_PUTS_AHEAD
        assert self.s.conn.verdicts_owed == len(self.pending) <= MAX_PUTS_AHEAD

    # --- client ----------------------------------------------------------------------

    def c_step(self) -> bool:
        """The client sends its next message, if it has one it may send; whether it did."""
        conn = self.c.conn
        job = self.jobs[self.sent - 1] if self.sent else None
        if conn.state is State.READY:
            if self.sent == len(self.jobs) or not conn.may_stream_put():
                assert self.sent == len(self.jobs) or len(self.owed) == MAX_PUTS_AHEAD
                return False
            job = self.jobs[self.sent]
            self.c_say(Put(f"f{self.sent}", job.size, 1, stream=True))
            self.sent += 1
            self.pos = 0
        elif conn.state is State.UPLOADING:
            assert job is not None
            if self.pos < len(job.chunks):
                self.c_say(Data(job.chunks[self.pos]))
                self.pos += 1
            else:
                assert conn.remaining == 0
                self.c_say(Done(DIGEST))
                self.owed.append(self.sent - 1)
                assert self.c.conn.state is State.READY
        elif conn.state is State.UPLOAD_REFUSED:
            assert job is not None
            self.c_say(Done(DIGEST) if job.end == "done" else Cancel())
        else:
            assert conn.state is State.CANCEL_WAIT, conn.state
            return False
        self.check()
        return True

    def c_react(self, n: int | None = None) -> None:
        conn = self.c.conn
        self.c.take(len(self.c.inbox) if n is None else n)
        while True:
            before, state = conn.verdicts_owed, conn.state
            msg = conn.next_event()
            if msg is NEED_DATA:
                break
            assert isinstance(msg, Message)
            if isinstance(msg, (Welcome, LoginOk, ListEnd)):
                continue
            if isinstance(msg, Error):
                assert not is_fatal(msg.code), msg
            assert isinstance(msg, (Ack, Error)), msg
            if before:  # a verdict on the oldest upload owed
                assert conn.verdicts_owed == before - 1
                assert conn.state is state  # a verdict does not move the state
                self.pin(self.owed.pop(0), msg)
            elif state is State.CANCEL_WAIT:  # the confirmation of a CANCEL
                assert msg == Ack(True)  # (the refusal it answers came before)
                assert conn.state is State.READY
            else:  # a refusal of the upload in progress
                assert isinstance(msg, Error) and state is State.UPLOADING, (msg, state)
                assert conn.state is State.UPLOAD_REFUSED
                self.pin(self.sent - 1, msg)
            self.check()

    def pin(self, index: int, msg: Message) -> None:
        assert index not in self.heard, f"upload {index} got a second verdict {msg}"
        self.heard[index] = msg
        self.heard_order.append(index)

    # --- server ----------------------------------------------------------------------

    def s_react(self, n: int | None = None) -> None:
        conn = self.s.conn
        self.s.take(len(self.s.inbox) if n is None else n)
        while (msg := conn.next_event()) is not NEED_DATA:
            if isinstance(msg, Hello):
                self.s_say(Welcome(STREAMING_VERSION, "s"))
            elif isinstance(msg, Login):
                self.s_say(LoginOk("u"))
                self.s_say(ListEnd())
            elif isinstance(msg, Put):
                assert msg.stream and msg.path == f"f{self.started}"
                assert conn.state is State.UPLOADING and conn.remaining == msg.size
                self.started += 1
                self.got = 0
                self.maybe_refuse()
            elif isinstance(msg, Data):
                if conn.state is State.UPLOADING:
                    self.got += 1
                    self.maybe_refuse()
                else:
                    assert conn.state is State.UPLOAD_REFUSED
            elif isinstance(msg, Done):
                assert conn.state is State.READY
                if conn.verdicts_owed > len(self.pending):  # a whole upload: verdict due
                    self.pending.append(self.started - 1)
            elif isinstance(msg, Cancel):
                assert conn.state is State.CANCEL_WAIT
                self.s_say(Ack(True))
            else:
                raise AssertionError(msg)
            self.check()

    def maybe_refuse(self) -> None:
        index = self.started - 1
        job = self.jobs[index]
        if job.refuse_at is None or min(job.refuse_at, len(job.chunks)) != self.got:
            return
        self.s_verdicts(len(self.pending))  # the older verdicts go first
        refusal = refusal_of(index)
        self.c.inbox += self.s.conn.send_error(ErrorCode(refusal.code), refusal.text)
        assert self.s.conn.state is State.UPLOAD_REFUSED
        self.said_verdict(index, refusal)

    def s_verdicts(self, n: int) -> None:
        """The server sends up to ``n`` of the verdicts it owes."""
        for _ in range(min(n, len(self.pending))):
            index = self.pending.pop(0)
            verdict = verdict_of(index, self.jobs[index])
            if isinstance(verdict, Error):
                self.c.inbox += self.s.conn.send_error(ErrorCode(verdict.code), verdict.text)
            else:
                self.s_say(verdict)
            self.said_verdict(index, verdict)
            self.check()

    def said_verdict(self, index: int, msg: Message) -> None:
        assert index not in self.said
        self.said[index] = msg
        self.said_order.append(index)

    def settled(self) -> bool:
        return (
            len(self.heard) == len(self.jobs)
            and self.c.conn.state is self.s.conn.state is State.READY
            and not self.c.inbox
            and not self.s.inbox
            and not self.pending
        )


job_st = st.builds(
    Job,
    chunks=st.lists(st.binary(min_size=1, max_size=6), max_size=3).map(tuple),
    verdict=st.sampled_from(["ack", "nack", "error"]),
    refuse_at=st.one_of(st.none(), st.none(), st.integers(0, 3)),
    end=st.sampled_from(["done", "cancel"]),
)


@pytest.mark.timeout(60)
@settings(max_examples=200, deadline=None)
@given(
    jobs=st.lists(job_st, min_size=1, max_size=14),
    moves=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 80)), max_size=250),
    burst=st.integers(1, 12),
    hold=st.integers(0, MAX_PUTS_AHEAD),
    refusals=st.booleans(),
)
def test_every_streamed_upload_gets_its_own_verdict_whatever_the_timing(
    jobs: list[Job], moves: list[tuple[int, int]], burst: int, hold: int, refusals: bool
) -> None:
    if not refusals:  # (a refusal makes the server send every verdict it holds)
        jobs = [replace(job, refuse_at=None) for job in jobs]
    sess = Session(jobs)
    for action, n in moves:
        if action == 0:
            sess.c_step()
        elif action == 1:
            sess.s_react(n)
        elif action == 2:
            sess.c_react(n)
        else:
            sess.s_verdicts(n % (MAX_PUTS_AHEAD + 1))
    # Then let everything settle: the client sends up to ``burst`` messages a turn, the
    # server reads them all and keeps ``hold`` verdicts back while the client goes on.
    for _ in range(10 * len(jobs) + 10):
        progress = [sess.c_step() for _ in range(burst)]
        sess.s_react()
        sess.s_verdicts(len(sess.pending) - hold if any(progress) else MAX_PUTS_AHEAD)
        sess.c_react()
        if sess.settled():
            break
    everything = list(range(len(jobs)))
    assert sess.said_order == everything  # verdicts sent in order, one each
    assert sess.heard_order == everything  # and heard in order, one each
    assert sess.heard == sess.said  # each pinned on the upload it was sent for
    for side in (sess.c, sess.s):
        assert side.conn.state is State.READY
        assert side.conn.verdicts_owed == 0
    # With every verdict in, the conversation ends cleanly.
    sess.c_say(Bye())
    sess.s.take(len(sess.s.inbox))
    assert sess.s.conn.next_event() == Bye()
    sess.s.conn.receive_data(b"")
    assert sess.s.conn.next_event() is CLOSED
