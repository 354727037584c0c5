"""Pipelined GETs, property-tested: two cores, bytes delivered in random pieces at
random moments, a random mix of good and refused names, rejected digests and window
sizes. Whatever the timing, the server answers exactly the GETs sent, in order, and
both sides end in READY with nothing queued."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

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
    Hello,
    ListEnd,
    Login,
    LoginOk,
    Message,
    Welcome,
)
from tcpft.protocol import CLOSED, Role, State

from .sides import Side

C, S = Role.CLIENT, Role.SERVER


class Session:
    def __init__(self, jobs: list[tuple[str, bool]], ahead: int) -> None:
        self.c, self.s = Side(C), Side(S)
        self.jobs, self.ahead = jobs, ahead
        self.sent = 0  # GETs the client has sent
        self.finished: list[str] = []  # answers the client has seen, in order
        self.answered: list[str] = []  # GETs the server has answered, in order
        self.contents: dict[str, bytes] = {}
        self.c_say(Hello(2, "c"))
        self.s_react()
        self.c_react()
        self.c_say(Login("u", "p"))
        self.s_react()
        self.c_react()
        assert self.c.conn.state is State.READY and self.c.conn.version == 2

    def c_say(self, msg: Message) -> None:
        self.s.inbox += self.c.conn.send(msg)

    def s_say(self, msg: Message) -> None:
        self.c.inbox += self.s.conn.send(msg)

    def c_send_get(self) -> bool:
        """Send the next GET if the client may (at once, or ahead); whether it did."""
        conn = self.c.conn
        if self.sent == len(self.jobs):
            return False
        outstanding = self.sent - len(self.finished)
        if outstanding == 0 and conn.state is State.READY:
            pass
        elif not (outstanding <= self.ahead and conn.may_send_get_ahead()):
            return False
        self.c_say(Get(self.jobs[self.sent][0]))
        self.sent += 1
        return True

    def s_react(self, n: int | None = None) -> None:
        self.s.take(len(self.s.inbox) if n is None else n)
        for msg in self.s.events():
            if isinstance(msg, Hello):
                self.s_say(Welcome(2, "s"))
            elif isinstance(msg, Login):
                self.s_say(LoginOk("u"))
                self.s_say(ListEnd())
            elif isinstance(msg, Get):
                self.answered.append(msg.path)
                if msg.path.startswith("bad"):
                    self.c.inbox += self.s.conn.send_error(ErrorCode.INVALID_NAME, "no")
                    self.s_say(ListEnd())
                else:
                    body = msg.path.encode()
                    self.s_say(FileHeader(msg.path, len(body), 1))
                    self.s_say(Data(body))
                    self.s_say(Done(hashlib.sha256(body).digest()))
            else:
                assert isinstance(msg, Ack), msg

    def c_react(self, n: int | None = None) -> None:
        self.c.take(len(self.c.inbox) if n is None else n)
        for msg in self.c.events():
            if isinstance(msg, (Welcome, LoginOk, FileHeader)):
                continue
            if isinstance(msg, Data):
                name = self.jobs[len(self.finished)][0]
                self.contents[name] = self.contents.get(name, b"") + msg.data
            elif isinstance(msg, Done):
                name, ok = self.jobs[len(self.finished)]
                self.finished.append(name)
                self.c_say(Ack(ok))
            elif isinstance(msg, Error):
                assert msg.code == ErrorCode.INVALID_NAME
            elif isinstance(msg, ListEnd) and self.sent > len(self.finished):
                self.finished.append(self.jobs[len(self.finished)][0])  # the refused one


jobs_st = st.lists(
    st.tuples(st.sampled_from(["good", "bad"]), st.booleans()), min_size=1, max_size=12
).map(lambda xs: [(f"{kind}{i}", ok) for i, (kind, ok) in enumerate(xs)])


@settings(max_examples=300, deadline=None)
@given(
    jobs=jobs_st,
    ahead=st.integers(0, MAX_GETS_AHEAD),
    moves=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 200)), max_size=200),
)
def test_any_timing_gives_the_same_answers_in_order(
    jobs: list[tuple[str, bool]], ahead: int, moves: list[tuple[int, int]]
) -> None:
    sess = Session(jobs, ahead)
    for action, n in moves:
        if action == 0:
            sess.c_send_get()
        elif action == 1:
            sess.s_react(n)
        else:
            sess.c_react(n)
    for _ in range(10 * len(jobs) + 10):  # then let everything settle
        sess.c_send_get()
        sess.s_react()
        sess.c_react()
        if len(sess.finished) == len(jobs) and not sess.s.inbox and not sess.c.inbox:
            break
    names = [name for name, _ in jobs]
    assert sess.answered == names
    assert sess.finished == names
    for name in names:
        assert sess.contents.get(name, b"") == (b"" if name.startswith("bad") else name.encode())
    for side in (sess.c, sess.s):
        assert side.conn.state is State.READY
        assert side.conn.gets_ahead == 0
    sess.c_say(Bye())
    sess.s.take(len(sess.s.inbox))
    assert sess.s.conn.next_event() == Bye()
    sess.s.conn.receive_data(b"")
    assert sess.s.conn.next_event() is CLOSED
