"""Messages: fixed hex examples computed by hand from the field encodings, and decode errors.

Field encodings (messages.py): integers big-endian; ``str`` and ``bin`` are a u16 length
then the bytes; ``i64`` is two's complement.
"""

from __future__ import annotations

import pytest

from tcpft.errors import LocalProtocolError, RemoteProtocolError
from tcpft.frames import encode_frame
from tcpft.limits import (
    DIGEST_SIZE,
    MAX_CONTROL_PAYLOAD,
    MAX_DATA_PAYLOAD,
    MAX_ERROR_TEXT_BYTES,
    MAX_SOFTWARE_BYTES,
)
from tcpft.messages import (
    MAGIC,
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
    batch_entries,
    decode_message,
    entry_wire_size,
)

D_AA = b"\xaa" * 32
D_BB = b"\xbb" * 32
D_SEQ = bytes(range(32))


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# (message, expected payload hex) -- written by hand, field by field.
EXAMPLES: list[tuple[Message, str]] = [
    # magic "TCPF", version u16, software str
    (Hello(1, "tcpft/1"), "54435046 0001 0007 74637066742f31"),
    (Hello(2, ""), "54435046 0002 0000"),
    (Welcome(1, "srv"), "54435046 0001 0003 737276"),
    # user str, password str
    (Login("al", "pw"), "0002 616c 0002 7077"),
    (Login("é", ""), "0002 c3a9 0000"),
    # user str, can_write u8
    (LoginOk("al", True), "0002 616c 01"),
    (LoginOk("al", False), "0002 616c 00"),
    # path str, recursive u8
    (ListRequest("d", True), "0001 64 01"),
    (ListRequest(), "0000 00"),
    # count u32; each: kind u8, size u64, mtime_ns i64, path str
    (
        ListEntries((Entry("a", False, 5, -1), Entry("dir", True, 0, 2))),
        "00000002"
        " 00 0000000000000005 ffffffffffffffff 0001 61"
        " 01 0000000000000000 0000000000000002 0003 646972",
    ),
    (ListEntries(()), "00000000"),
    (ListEnd(), ""),
    # path str, offset u64, prefix_digest bin
    (Get("f"), "0001 66 0000000000000000 0000"),
    (Get("f", 4 * 1024 * 1024, D_AA), "0001 66 0000000000400000 0020" + "aa" * 32),
    # path str, size u64, mtime_ns i64, offset u64
    (
        FileHeader("f", 10, 1_000_000_000, 4),
        "0001 66 000000000000000a 000000003b9aca00 0000000000000004",
    ),
    (
        FileHeader("x", 2**64 - 1, -(2**63), 0),
        "0001 78 ffffffffffffffff 8000000000000000 0000000000000000",
    ),
    # raw
    (Data(b"\x00\x01\xff"), "0001ff"),
    (Data(b""), ""),
    # sha256: 32 fixed bytes
    (Done(D_SEQ), D_SEQ.hex()),
    # ok u8
    (Ack(True), "01"),
    (Ack(False), "00"),
    # path str, size u64, mtime_ns i64, flags u8 (1 force, 2 resume)
    (Put("f", 3, 0), "0001 66 0000000000000003 0000000000000000 00"),
    (Put("f", 3, 0, force=True), "0001 66 0000000000000003 0000000000000000 01"),
    (Put("f", 3, 0, resume=True), "0001 66 0000000000000003 0000000000000000 02"),
    (Put("f", 3, -2, True, True), "0001 66 0000000000000003 fffffffffffffffe 03"),
    # offset u64, prefix_digest bin
    (PutReady(), "0000000000000000 0000"),
    (PutReady(8 * 1024 * 1024, D_BB), "0000000000800000 0020" + "bb" * 32),
    (Cancel(), ""),
    (Bye(), ""),
    # code u16, text str
    (Error(20, "no"), "0014 0002 6e6f"),
    (Error(0xFFFF, ""), "ffff 0000"),
]


@pytest.mark.parametrize(("msg", "hexpayload"), EXAMPLES, ids=lambda x: repr(x)[:40])
def test_fixed_payload_bytes(msg: Message, hexpayload: str) -> None:
    assert msg.encode_payload() == h(hexpayload)


@pytest.mark.parametrize(("msg", "hexpayload"), EXAMPLES, ids=lambda x: repr(x)[:40])
def test_fixed_payload_decodes_to_message(msg: Message, hexpayload: str) -> None:
    assert decode_message(msg.TYPE, h(hexpayload)) == msg


def test_every_message_type_has_an_example() -> None:
    assert {type(m) for m, _ in EXAMPLES} == set(MESSAGE_TYPES.values())


def test_type_bytes_are_fixed() -> None:
    expected = {
        0x01: Hello, 0x02: Welcome, 0x03: Login, 0x04: LoginOk, 0x05: ListRequest,
        0x06: ListEntries, 0x07: ListEnd, 0x08: Get, 0x09: FileHeader, 0x0A: Data,
        0x0B: Done, 0x0C: Ack, 0x0D: Put, 0x0E: PutReady, 0x0F: Cancel, 0x10: Bye,
        0x7F: Error,
    }  # fmt: skip
    assert expected == MESSAGE_TYPES
    for t, cls in MESSAGE_TYPES.items():
        assert t == cls.TYPE


def test_whole_frame_of_hello() -> None:
    frame = encode_frame(Hello.TYPE, Hello(1, "tcpft/1").encode_payload())
    assert frame == h("01 0000000f 54435046 0001 0007 74637066742f31")


def test_magic_is_tcpf() -> None:
    assert MAGIC == b"TCPF"


# --- decode errors -------------------------------------------------------------------


TRUNCATABLE = [(m, x) for m, x in EXAMPLES if x and not isinstance(m, Data)]


@pytest.mark.parametrize(("msg", "hexpayload"), TRUNCATABLE, ids=lambda x: repr(x)[:40])
def test_truncated_payload_is_refused(msg: Message, hexpayload: str) -> None:
    payload = h(hexpayload)
    for cut in range(len(payload)):
        with pytest.raises(RemoteProtocolError):
            decode_message(msg.TYPE, payload[:cut])


@pytest.mark.parametrize(("msg", "hexpayload"), EXAMPLES, ids=lambda x: repr(x)[:40])
def test_trailing_bytes_are_refused(msg: Message, hexpayload: str) -> None:
    if isinstance(msg, Data):
        assert decode_message(Data.TYPE, h(hexpayload) + b"\x00") == Data(h(hexpayload) + b"\0")
        return
    with pytest.raises(RemoteProtocolError, match="trailing"):
        decode_message(msg.TYPE, h(hexpayload) + b"\x00")


@pytest.mark.parametrize("bad", ["ff", "c3", "c328", "eda080", "f4908080"])
def test_invalid_utf8_in_str_is_refused(bad: str) -> None:
    raw = h(bad)
    payload = len(raw).to_bytes(2, "big") + raw + h("0000")  # user, empty password
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        decode_message(Login.TYPE, payload)


def test_invalid_utf8_in_entry_path_is_refused() -> None:
    payload = h("00000001 00 0000000000000000 0000000000000000 0001 80")
    with pytest.raises(RemoteProtocolError):
        decode_message(ListEntries.TYPE, payload)


@pytest.mark.parametrize(
    ("cls", "payload"),
    [
        (LoginOk, "0002 616c 02"),
        (LoginOk, "0002 616c ff"),
        (ListRequest, "0000 02"),
        (Ack, "02"),
    ],
)
def test_bool_above_one_is_refused(cls: type[Message], payload: str) -> None:
    with pytest.raises(RemoteProtocolError, match="boolean"):
        decode_message(cls.TYPE, h(payload))


@pytest.mark.parametrize("cls", [Hello, Welcome])
@pytest.mark.parametrize("magic", ["54435047", "00000000", "74637066"])
def test_bad_magic_is_refused(cls: type[Message], magic: str) -> None:
    with pytest.raises(RemoteProtocolError, match="magic"):
        decode_message(cls.TYPE, h(magic + "0001 0000"))


def test_entry_kind_two_is_refused() -> None:
    payload = h("00000001 02 0000000000000000 0000000000000000 0001 61")
    with pytest.raises(RemoteProtocolError, match="kind"):
        decode_message(ListEntries.TYPE, payload)


def test_entry_count_larger_than_payload_is_refused() -> None:
    payload = h("ffffffff 00 0000000000000000 0000000000000000 0001 61")
    with pytest.raises(RemoteProtocolError):
        decode_message(ListEntries.TYPE, payload)


@pytest.mark.parametrize("flags", ["08", "80", "ff", "0f"])
def test_put_unknown_flag_bits_are_refused(flags: str) -> None:
    payload = h("0001 66 0000000000000003 0000000000000000" + flags)
    with pytest.raises(RemoteProtocolError, match="flags"):
        decode_message(Put.TYPE, payload)


@pytest.mark.parametrize("flags", ["06", "07"])
def test_put_stream_with_resume_is_refused(flags: str) -> None:
    payload = h("0001 66 0000000000000003 0000000000000000" + flags)
    with pytest.raises(RemoteProtocolError, match="streamed PUT cannot resume"):
        decode_message(Put.TYPE, payload)
    with pytest.raises(LocalProtocolError, match="streamed PUT cannot resume"):
        Put("f", 3, 0, resume=True, stream=True).encode_payload()


def test_put_stream_flag_is_bit_2() -> None:
    msg = Put("f", 3, 0, force=True, stream=True)
    assert msg.encode_payload()[-1] == 0x05
    assert decode_message(Put.TYPE, msg.encode_payload()) == msg


def test_get_offset_without_digest_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="digest"):
        decode_message(Get.TYPE, h("0001 66 0000000000000001 0000"))


def test_put_ready_offset_without_digest_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="digest"):
        decode_message(PutReady.TYPE, h("0000000000400000 0000"))


@pytest.mark.parametrize("n", [1, 31, 33, 64])
def test_get_digest_of_wrong_length_is_refused(n: int) -> None:
    payload = h("0001 66 0000000000400000") + n.to_bytes(2, "big") + b"\xaa" * n
    with pytest.raises(RemoteProtocolError, match="digest"):
        decode_message(Get.TYPE, payload)


def test_put_ready_digest_of_31_bytes_is_refused() -> None:
    payload = h("0000000000400000 001f") + b"\xaa" * 31
    with pytest.raises(RemoteProtocolError, match="digest"):
        decode_message(PutReady.TYPE, payload)


def test_get_offset_zero_with_digest_is_accepted() -> None:
    payload = h("0001 66 0000000000000000 0020") + D_AA
    assert decode_message(Get.TYPE, payload) == Get("f", 0, D_AA)


def test_done_with_31_bytes_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(Done.TYPE, b"\x00" * 31)


def test_file_header_offset_past_size_is_refused() -> None:
    payload = h("0001 66 0000000000000004 0000000000000000 0000000000000005")
    with pytest.raises(RemoteProtocolError, match="offset"):
        decode_message(FileHeader.TYPE, payload)


def test_file_header_offset_equal_to_size_is_accepted() -> None:
    payload = h("0001 66 0000000000000004 0000000000000000 0000000000000004")
    assert decode_message(FileHeader.TYPE, payload) == FileHeader("f", 4, 0, 4)


@pytest.mark.parametrize("t", [0x00, 0x11, 0x7E, 0x80, 0xFF])
def test_unknown_type_is_refused(t: int) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(t, b"")


# --- encode errors (the local side) --------------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [
        Done(b"\x00" * 31),
        Done(b""),
        Get("f", 4, b"\x00" * 31),
        PutReady(4, b"\x00" * 33),
        Error(0x10000, "x"),
        Error(-1, "x"),
        Put("f", -1, 0),
        Put("f", 0, 2**63),
        FileHeader("f", 2**64, 0),
        Hello(0x10000),
        ListEntries((Entry("a", False, -1, 0),)),
        Login("\udc80", "pw"),
        Login("u", "x" * 0x10000),
    ],
    ids=repr,
)
def test_encoding_an_impossible_message_raises_local_error(msg: Message) -> None:
    with pytest.raises(LocalProtocolError):
        msg.encode_payload()


@pytest.mark.parametrize(
    "msg",
    [
        FileHeader("f", 4, 0, 5),
        FileHeader("f", 0, 0, 1),
        FileHeader("f", 4, 0, -1),
        Get("f", 4, b""),
        PutReady(4, b""),
    ],
    ids=repr,
)
def test_encoder_refuses_what_the_decoder_would_refuse(msg: Message) -> None:
    with pytest.raises(LocalProtocolError):
        msg.encode_payload()


# --- repr and clipping ---------------------------------------------------------------


def test_login_repr_hides_password() -> None:
    msg = Login("alice", "s3cret-Pa55")
    assert "s3cret-Pa55" not in repr(msg)
    assert "s3cret" not in str(msg)
    assert "alice" in repr(msg)
    assert "******" in repr(msg)


def test_data_repr_shows_length_not_content() -> None:
    msg = Data(b"secret-content")
    assert "secret" not in repr(msg)
    assert "14" in repr(msg)


def test_error_text_is_clipped_without_splitting_a_character() -> None:
    text = "a" + "é" * 600  # 1 + 1200 bytes
    payload = Error(1, text).encode_payload()
    n = int.from_bytes(payload[2:4], "big")
    assert n <= MAX_ERROR_TEXT_BYTES
    assert n == 1023  # "a" + 511 x "é"; the 512th would end at byte 1025
    decoded = decode_message(Error.TYPE, payload)
    assert isinstance(decoded, Error)
    assert decoded.text == "a" + "é" * 511


def test_error_text_clip_with_four_byte_characters() -> None:
    text = "\U0001f600" * 300  # 1200 bytes
    decoded = decode_message(Error.TYPE, Error(1, text).encode_payload())
    assert isinstance(decoded, Error)
    assert decoded.text == "\U0001f600" * 256  # exactly 1024 bytes


def test_error_text_at_limit_is_kept_whole() -> None:
    text = "x" * MAX_ERROR_TEXT_BYTES
    decoded = decode_message(Error.TYPE, Error(1, text).encode_payload())
    assert isinstance(decoded, Error)
    assert decoded.text == text
    decoded = decode_message(Error.TYPE, Error(1, text + "y").encode_payload())
    assert isinstance(decoded, Error)
    assert decoded.text == text


def test_hello_software_is_clipped() -> None:
    payload = Hello(1, "ü" * 100).encode_payload()
    assert len(payload) == 4 + 2 + 2 + MAX_SOFTWARE_BYTES
    decoded = decode_message(Hello.TYPE, payload)
    assert isinstance(decoded, Hello)
    assert decoded.software == "ü" * 64


# --- listing batches -----------------------------------------------------------------


def _entries(n: int) -> list[Entry]:
    return [
        Entry(f"d{i % 7}/" + "ñ" * (i % 50) + f"f{i}", i % 3 == 0, i * 1000, -i) for i in range(n)
    ]


def test_entry_wire_size_matches_encoding() -> None:
    for e in _entries(60):
        assert len(ListEntries((e,)).encode_payload()) == 4 + entry_wire_size(e)


@pytest.mark.parametrize("limit", [4 + 19 + 200, 300, 1000, 4096, MAX_CONTROL_PAYLOAD])
def test_batch_entries_fits_limit_and_keeps_order(limit: int) -> None:
    entries = _entries(500)
    batches = list(batch_entries(entries, limit))
    assert batches
    for b in batches:
        assert b.entries
        assert len(b.encode_payload()) <= limit
    assert [e for b in batches for e in b.entries] == entries


def test_batch_entries_fills_batches() -> None:
    entries = [Entry("x" * 10, False, 0, 0)] * 10  # 29 bytes each
    batches = list(batch_entries(entries, 4 + 3 * 29))
    assert [len(b.entries) for b in batches] == [3, 3, 3, 1]
    assert len(batches[0].encode_payload()) == 4 + 3 * 29


def test_batch_entries_of_nothing_is_nothing() -> None:
    assert list(batch_entries([], 100)) == []


def test_batch_entries_big_listing_under_data_limit() -> None:
    entries = [Entry("p" * 200 + str(i), False, i, i) for i in range(12000)]
    batches = list(batch_entries(iter(entries), MAX_DATA_PAYLOAD))
    assert len(batches) >= 2
    assert all(len(b.encode_payload()) <= MAX_DATA_PAYLOAD for b in batches)
    assert [e for b in batches for e in b.entries] == entries


def test_digest_size_constant() -> None:
    assert DIGEST_SIZE == 32
