"""FrameDecoder.wanted / Connection.bytes_wanted: how much the driver should read next."""

from __future__ import annotations

from tcpft.frames import FrameDecoder, encode_frame
from tcpft.messages import Hello
from tcpft.protocol import NEED_DATA, Connection, Role


def test_wanted_counts_header_then_payload() -> None:
    d = FrameDecoder()
    assert d.wanted == 5
    frame = encode_frame(0x0A, b"x" * 100)
    d.feed(frame[:3])
    assert d.wanted == 2
    d.feed(frame[3:10])
    assert d.wanted == 95
    d.feed(frame[10:])
    assert d.next_frame(lambda t: 1000) is not None
    assert d.wanted == 5


def test_bytes_wanted_after_need_data() -> None:
    server = Connection(Role.SERVER)
    frame = Connection(Role.CLIENT).send(Hello(1, "x"))
    server.receive_data(frame[:6])
    assert server.next_event() is NEED_DATA
    assert server.bytes_wanted == len(frame) - 6
    server.receive_data(frame[6:])
    assert isinstance(server.next_event(), Hello)
