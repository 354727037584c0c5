"""The frame layer: a 5-byte header, then the payload.

::

    +---------+-------------------+---------------------+
    | type u8 | length u32 (BE)   | payload (length B)  |
    +---------+-------------------+---------------------+

The decoder asks its owner, per frame type, how long a payload may be right now
(``None``: that type is not allowed at all). It checks the announced length against
that limit as soon as the header is in, before it buffers a single payload byte, so
a peer cannot make us allocate more than the limit of the current state.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from .errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from .limits import FRAME_HEADER_SIZE

HEADER = struct.Struct("!BI")
assert HEADER.size == FRAME_HEADER_SIZE

_MAX_U32 = 0xFFFFFFFF

#: Given a frame type, the largest payload allowed now, or None if the type is not allowed.
LimitFor = Callable[[int], "int | None"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: its type byte and its payload."""

    type: int
    payload: bytes


def frame_header(frame_type: int, length: int) -> bytes:
    """Encode a frame header.

    Raises:
        LocalProtocolError: the type is not a byte or the length does not fit in u32.
    """
    if not 0 <= frame_type <= 0xFF or not 0 <= length <= _MAX_U32:
        raise LocalProtocolError(f"cannot frame type {frame_type} with length {length}")
    return HEADER.pack(frame_type, length)


def encode_frame(frame_type: int, payload: bytes) -> bytes:
    """Encode a whole frame (header + payload)."""
    return frame_header(frame_type, len(payload)) + payload


class FrameDecoder:
    """Incremental frame decoder: feed bytes in any pieces, take whole frames out."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf)

    @property
    def wanted(self) -> int:
        """Bytes still missing to complete the frame being received (at least 1).

        Only meaningful after :meth:`next_frame` returned None: by then the header
        (if complete) has passed the limit check.
        """
        buf = self._buf
        if len(buf) < FRAME_HEADER_SIZE:
            return FRAME_HEADER_SIZE - len(buf)
        length: int = HEADER.unpack_from(buf)[1]
        return max(FRAME_HEADER_SIZE + length - len(buf), 1)

    def next_frame(self, limit_for: LimitFor) -> Frame | None:
        """Return the next complete frame, or None if more bytes are needed.

        Raises:
            RemoteProtocolError: the frame type is not allowed now.
            FrameTooLarge: the announced length exceeds the limit for that type now.
        """
        buf = self._buf
        if len(buf) < FRAME_HEADER_SIZE:
            return None
        frame_type, length = HEADER.unpack_from(buf)
        limit = limit_for(frame_type)
        if limit is None:
            raise RemoteProtocolError(f"unexpected frame type 0x{frame_type:02x}")
        if length > limit:
            raise FrameTooLarge(
                f"frame type 0x{frame_type:02x} announces {length} bytes, limit is {limit}"
            )
        end = FRAME_HEADER_SIZE + length
        if len(buf) < end:
            return None
        with memoryview(buf) as view:
            payload = bytes(view[FRAME_HEADER_SIZE:end])  # one copy, not two
        del buf[:end]
        return Frame(frame_type, payload)
