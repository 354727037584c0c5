"""The frame codec: fixed header bytes, incremental decoding, limits checked from the header."""

from __future__ import annotations

import pytest

from tcpft.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from tcpft.frames import HEADER, Frame, FrameDecoder, encode_frame, frame_header
from tcpft.limits import FRAME_HEADER_SIZE

LIMIT = 16


def limit_16(frame_type: int) -> int | None:
    """Types 0x01..0x0f allowed up to 16 bytes; anything else refused."""
    return LIMIT if 0x01 <= frame_type <= 0x0F else None


def drain(dec: FrameDecoder) -> list[Frame]:
    out = []
    while (frame := dec.next_frame(limit_16)) is not None:
        out.append(frame)
    return out


# --- encoding ------------------------------------------------------------------------


def test_header_size_constant() -> None:
    assert HEADER.size == FRAME_HEADER_SIZE == 5


@pytest.mark.parametrize(
    ("frame_type", "length", "expected"),
    [
        (0x01, 7, "01 00 00 00 07"),
        (0x0A, 0, "0a 00 00 00 00"),
        (0x7F, 0x0102_0304, "7f 01 02 03 04"),
        (0x00, 0x100, "00 00 00 01 00"),
        (0xFF, 0xFFFF_FFFF, "ff ff ff ff ff"),
    ],
)
def test_frame_header_fixed_bytes(frame_type: int, length: int, expected: str) -> None:
    assert frame_header(frame_type, length) == bytes.fromhex(expected)


def test_encode_frame_fixed_bytes() -> None:
    assert encode_frame(0x02, b"abc") == bytes.fromhex("02 00 00 00 03 61 62 63")
    assert encode_frame(0x10, b"") == bytes.fromhex("10 00 00 00 00")


@pytest.mark.parametrize(
    ("frame_type", "length"), [(256, 0), (-1, 0), (1, 2**32), (1, -1), (1000, 2**40)]
)
def test_frame_header_rejects_out_of_range(frame_type: int, length: int) -> None:
    with pytest.raises(LocalProtocolError):
        frame_header(frame_type, length)


# --- decoding ------------------------------------------------------------------------

ONE = bytes.fromhex("01 00 00 00 03 61 62 63")  # type 1, b"abc"
TWO = bytes.fromhex("02 00 00 00 00")  # type 2, empty


def test_decode_whole_frame() -> None:
    dec = FrameDecoder()
    dec.feed(ONE)
    assert dec.next_frame(limit_16) == Frame(0x01, b"abc")
    assert dec.next_frame(limit_16) is None
    assert dec.buffered == 0


def test_decode_empty_buffer_needs_data() -> None:
    dec = FrameDecoder()
    assert dec.next_frame(limit_16) is None
    assert dec.buffered == 0


def test_decode_byte_at_a_time() -> None:
    dec = FrameDecoder()
    for i, b in enumerate(ONE):
        assert dec.next_frame(limit_16) is None
        dec.feed(bytes([b]))
        assert dec.buffered == i + 1
    assert dec.next_frame(limit_16) == Frame(0x01, b"abc")
    assert dec.buffered == 0
    assert dec.next_frame(limit_16) is None


def test_decode_accepts_bytearray_and_memoryview() -> None:
    dec = FrameDecoder()
    dec.feed(bytearray(ONE[:4]))
    dec.feed(memoryview(ONE)[4:])
    frame = dec.next_frame(limit_16)
    assert frame == Frame(0x01, b"abc")
    assert frame is not None and type(frame.payload) is bytes


def test_decode_two_frames_in_one_feed() -> None:
    dec = FrameDecoder()
    dec.feed(ONE + TWO)
    assert drain(dec) == [Frame(0x01, b"abc"), Frame(0x02, b"")]
    assert dec.buffered == 0


def test_trailing_partial_frame_stays_buffered() -> None:
    dec = FrameDecoder()
    dec.feed(ONE + ONE[:6])
    assert drain(dec) == [Frame(0x01, b"abc")]
    assert dec.buffered == 6
    dec.feed(ONE[6:])
    assert drain(dec) == [Frame(0x01, b"abc")]
    assert dec.buffered == 0


def test_trailing_partial_header_stays_buffered() -> None:
    dec = FrameDecoder()
    dec.feed(TWO + ONE[:3])
    assert drain(dec) == [Frame(0x02, b"")]
    assert dec.buffered == 3


def test_payload_bytes_are_not_reinterpreted() -> None:
    # A payload that itself looks like a header must come back verbatim.
    inner = encode_frame(0x03, b"zz")
    dec = FrameDecoder()
    dec.feed(encode_frame(0x01, inner))
    assert drain(dec) == [Frame(0x01, inner)]


# --- limits --------------------------------------------------------------------------


def test_length_at_limit_is_accepted() -> None:
    dec = FrameDecoder()
    dec.feed(encode_frame(0x01, b"x" * LIMIT))
    assert dec.next_frame(limit_16) == Frame(0x01, b"x" * LIMIT)


def test_length_over_limit_raises_from_header_alone() -> None:
    dec = FrameDecoder()
    dec.feed(frame_header(0x01, LIMIT + 1))  # only the 5 header bytes
    assert dec.buffered == FRAME_HEADER_SIZE
    with pytest.raises(FrameTooLarge):
        dec.next_frame(limit_16)


def test_huge_announced_length_raises_without_payload() -> None:
    dec = FrameDecoder()
    dec.feed(bytes.fromhex("01 ff ff ff ff"))
    with pytest.raises(FrameTooLarge):
        dec.next_frame(limit_16)


def test_frame_too_large_is_a_remote_protocol_error() -> None:
    assert issubclass(FrameTooLarge, RemoteProtocolError)


def test_limit_is_asked_per_type() -> None:
    asked: list[int] = []

    def limit(t: int) -> int | None:
        asked.append(t)
        return 0 if t == 0x10 else 100

    dec = FrameDecoder()
    dec.feed(frame_header(0x10, 1))
    with pytest.raises(FrameTooLarge):
        dec.next_frame(limit)
    assert asked == [0x10]

    dec = FrameDecoder()
    dec.feed(frame_header(0x05, 1))
    assert dec.next_frame(limit) is None  # allowed, payload not yet in
    assert asked[-1] == 0x05


@pytest.mark.parametrize("frame_type", [0x00, 0x10, 0x7F, 0xFF])
def test_disallowed_type_raises_from_header_alone(frame_type: int) -> None:
    dec = FrameDecoder()
    dec.feed(frame_header(frame_type, 0))
    with pytest.raises(RemoteProtocolError) as info:
        dec.next_frame(limit_16)
    assert not isinstance(info.value, FrameTooLarge)


def test_disallowed_type_raises_before_length_check() -> None:
    dec = FrameDecoder()
    dec.feed(frame_header(0x20, 2**32 - 1))
    with pytest.raises(RemoteProtocolError) as info:
        dec.next_frame(limit_16)
    assert not isinstance(info.value, FrameTooLarge)


def test_incomplete_header_does_not_ask_for_limit() -> None:
    def boom(t: int) -> int | None:
        raise AssertionError("limit asked before the header is complete")

    dec = FrameDecoder()
    dec.feed(b"\x01\x00\x00\x00")
    assert dec.next_frame(boom) is None
