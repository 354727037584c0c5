"""Property tests of the codec: messages round-trip, decoding never raises the wrong thing,
and the frame decoder does not care how the stream is cut."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tcpft.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from tcpft.frames import Frame, FrameDecoder, encode_frame
from tcpft.limits import DIGEST_SIZE, MAX_ERROR_TEXT_BYTES, MAX_SOFTWARE_BYTES
from tcpft.messages import (
    MESSAGE_TYPES,
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
    decode_message,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any Unicode text without surrogates (those cannot be encoded as UTF-8).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
u16 = st.integers(0, 2**16 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
digest = st.binary(min_size=DIGEST_SIZE, max_size=DIGEST_SIZE)
digest_or_empty = st.one_of(st.just(b""), digest)


@st.composite
def get_messages(draw: st.DrawFn) -> Get:
    d = draw(digest_or_empty)
    offset = draw(u64) if d else 0
    return Get(draw(text), offset, d)


@st.composite
def put_ready_messages(draw: st.DrawFn) -> PutReady:
    d = draw(digest_or_empty)
    return PutReady(draw(u64) if d else 0, d)


@st.composite
def file_headers(draw: st.DrawFn) -> FileHeader:
    size = draw(u64)
    return FileHeader(draw(text), size, draw(i64), draw(st.integers(0, size)))


entries = st.builds(Entry, text, st.booleans(), u64, i64)

MESSAGES: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: st.builds(Hello, u16, text),
    Welcome: st.builds(Welcome, u16, text),
    Login: st.builds(Login, text, text),
    LoginOk: st.builds(LoginOk, text, st.booleans()),
    ListRequest: st.builds(ListRequest, text, st.booleans()),
    ListEntries: st.builds(ListEntries, st.lists(entries, max_size=8).map(tuple)),
    ListEnd: st.just(ListEnd()),
    Get: get_messages(),
    FileHeader: file_headers(),
    Data: st.builds(Data, st.binary(max_size=200)),
    Done: st.builds(Done, digest),
    Ack: st.builds(Ack, st.booleans()),
    Put: st.builds(Put, text, u64, i64, st.booleans(), st.booleans()),
    PutReady: put_ready_messages(),
    Cancel: st.just(Cancel()),
    Bye: st.just(Bye()),
    Error: st.builds(Error, u16, text),
}
any_message = st.one_of(*MESSAGES.values())


def test_every_type_has_a_strategy() -> None:
    assert set(MESSAGES) == set(MESSAGE_TYPES.values())


def _clipped(original: str, decoded: str, limit: int) -> bool:
    raw = original.encode("utf-8")
    if len(raw) <= limit:
        return decoded == original
    return original.startswith(decoded) and limit - 3 <= len(decoded.encode("utf-8")) <= limit


@SETTINGS
@given(any_message)
@example(Hello(1, "é" * 100))
@example(Error(0, "\U0001f600" * 300))
def test_every_message_round_trips(msg: Message) -> None:
    payload = msg.encode_payload()
    decoded = decode_message(msg.TYPE, payload)
    assert type(decoded) is type(msg)
    if isinstance(msg, Hello | Welcome):
        assert isinstance(decoded, Hello | Welcome)
        assert decoded.version == msg.version
        assert _clipped(msg.software, decoded.software, MAX_SOFTWARE_BYTES)
    elif isinstance(msg, Error):
        assert isinstance(decoded, Error)
        assert decoded.code == msg.code
        assert _clipped(msg.text, decoded.text, MAX_ERROR_TEXT_BYTES)
    else:
        assert decoded == msg
    # Encoding is canonical: what was decoded encodes to the same bytes.
    assert decoded.encode_payload() == payload


@SETTINGS
@given(st.integers(0, 255), st.binary(max_size=300))
def test_decode_arbitrary_bytes_raises_only_remote_protocol_error(
    frame_type: int, payload: bytes
) -> None:
    try:
        msg = decode_message(frame_type, payload)
    except RemoteProtocolError:
        return
    assert frame_type == msg.TYPE
    if not isinstance(msg, Hello | Welcome | Error):  # their text is clipped on encoding
        assert msg.encode_payload() == payload  # whatever is accepted is canonical


@SETTINGS
@given(any_message, st.data())
def test_decode_mutated_payload_raises_only_remote_protocol_error(
    msg: Message, data: st.DataObject
) -> None:
    payload = bytearray(msg.encode_payload())
    if payload:
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    tail = data.draw(st.binary(max_size=3))
    with contextlib.suppress(RemoteProtocolError):
        decode_message(msg.TYPE, bytes(payload[:cut]) + tail)


loose = st.one_of(
    st.builds(Get, text, u64, digest_or_empty),
    st.builds(PutReady, u64, digest_or_empty),
    st.builds(FileHeader, text, u64, i64, u64),
    st.builds(Put, text, u64, i64, st.booleans(), st.booleans()),
)


@SETTINGS
@given(loose)
def test_what_encodes_decodes(msg: Message) -> None:
    # The encoder refuses (LocalProtocolError) whatever the decoder would refuse.
    try:
        payload = msg.encode_payload()
    except LocalProtocolError:
        return
    assert decode_message(msg.TYPE, payload) == msg


frames = st.lists(
    st.builds(Frame, st.integers(0, 255), st.binary(max_size=64)), min_size=1, max_size=8
)


def _no_limit(frame_type: int) -> int | None:
    return 2**32


@SETTINGS
@given(frames, st.data())
def test_frame_decoder_ignores_chunking(fs: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(f.type, f.payload) for f in fs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    dec = FrameDecoder()
    out: list[Frame] = []
    for piece in pieces:
        dec.feed(piece)
        while (frame := dec.next_frame(_no_limit)) is not None:
            out.append(frame)
    assert out == fs
    assert dec.buffered == 0


@SETTINGS
@given(frames, st.integers(0, 64))
def test_frame_decoder_limit(fs: list[Frame], limit: int) -> None:
    dec = FrameDecoder()
    for f in fs:
        dec.feed(encode_frame(f.type, f.payload)[:5])  # header only
        if len(f.payload) > limit:
            try:
                dec.next_frame(lambda t: limit)
            except FrameTooLarge:
                return
            raise AssertionError("oversize frame not refused from its header")
        got = dec.next_frame(lambda t: limit)
        if f.payload:
            assert got is None
            dec.feed(f.payload)
            got = dec.next_frame(lambda t: limit)
        assert got == f
        assert dec.buffered == 0
