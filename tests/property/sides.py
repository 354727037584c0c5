"""A client or server core fed by a wire that delivers bytes in pieces of any size."""

from __future__ import annotations

from tcpft.messages import Message
from tcpft.protocol import NEED_DATA, Connection, Role


class Side:
    """A core, and the bytes the peer has sent it that it has not received yet."""

    def __init__(self, role: Role) -> None:
        self.conn = Connection(role)
        self.inbox = bytearray()

    def take(self, n: int) -> None:
        piece, self.inbox[:n] = bytes(self.inbox[:n]), b""
        if piece:  # (empty would mean the end of the stream)
            self.conn.receive_data(piece)

    def events(self) -> list[Message]:
        out = []
        while (ev := self.conn.next_event()) is not NEED_DATA:
            assert isinstance(ev, Message)
            out.append(ev)
        return out
