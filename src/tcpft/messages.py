"""The messages of the protocol: one frozen dataclass per frame type.

Versions 1, 2 and 3 have the same frames: version 2 lets the client pipeline GETs
(see :mod:`tcpft.protocol`), and version 3 makes every digest BLAKE3 in place of
SHA-256 (see :mod:`tcpft.integrity`).

Field encodings (all integers big-endian, see docs/PROTOCOL.md "Field types"):

- ``u8 u16 u32 u64``: unsigned integers; ``i64``: signed (two's complement)
- ``str``: u16 byte length, then that many bytes of UTF-8 (strictly decoded)
- ``bin``: u16 byte length, then the bytes
- ``raw``: the rest of the payload (DATA only)

A payload must be consumed exactly: missing or trailing bytes are a protocol error.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .limits import DIGEST_SIZE, MAX_ERROR_TEXT_BYTES, MAX_SOFTWARE_BYTES

MAGIC = b"TCPF"
#: The highest protocol version this code speaks, and the lowest.
PROTOCOL_VERSION = 4
MIN_PROTOCOL_VERSION = 1

_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_I64 = struct.Struct("!q")


class _Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise RemoteProtocolError("payload ends in the middle of a field")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def _int(self, st: struct.Struct) -> int:
        value: int = st.unpack(self._take(st.size))[0]
        return value

    def u8(self) -> int:
        return self._int(_U8)

    def u16(self) -> int:
        return self._int(_U16)

    def u32(self) -> int:
        return self._int(_U32)

    def u64(self) -> int:
        return self._int(_U64)

    def i64(self) -> int:
        return self._int(_I64)

    def flag(self) -> bool:
        value = self.u8()
        if value > 1:
            raise RemoteProtocolError(f"boolean field holds {value}")
        return value == 1

    def bin(self) -> bytes:
        return self._take(self.u16())

    def str(self) -> str:
        raw = self.bin()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("text field is not valid UTF-8") from None

    def fixed(self, n: int) -> bytes:
        return self._take(n)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise RemoteProtocolError(f"{len(self._data) - self._pos} trailing bytes in payload")


class _Writer:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def _int(self, st: struct.Struct, value: int) -> None:
        try:
            self.parts.append(st.pack(value))
        except struct.error:
            raise LocalProtocolError(f"integer {value} does not fit its field") from None

    def u8(self, v: int) -> None:
        self._int(_U8, v)

    def u16(self, v: int) -> None:
        self._int(_U16, v)

    def u32(self, v: int) -> None:
        self._int(_U32, v)

    def u64(self, v: int) -> None:
        self._int(_U64, v)

    def i64(self, v: int) -> None:
        self._int(_I64, v)

    def flag(self, v: bool) -> None:
        self._int(_U8, 1 if v else 0)

    def bin(self, v: bytes) -> None:
        self.u16(len(v))
        self.parts.append(bytes(v))

    def str(self, v: str) -> None:
        try:
            self.bin(v.encode("utf-8"))
        except UnicodeEncodeError:
            raise LocalProtocolError("text is not encodable as UTF-8") from None

    def fixed(self, v: bytes, n: int) -> None:
        if len(v) != n:
            raise LocalProtocolError(f"field needs exactly {n} bytes, got {len(v)}")
        self.parts.append(bytes(v))

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


def _clip(text: str, limit: int) -> str:
    """Shorten ``text`` to at most ``limit`` UTF-8 bytes without splitting a character."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


def _digest_or_empty(value: bytes, what: str, local: bool) -> None:
    if len(value) not in (0, DIGEST_SIZE):
        err = LocalProtocolError if local else RemoteProtocolError
        raise err(f"{what} must be empty or {DIGEST_SIZE} bytes, not {len(value)}")


class Message:
    """Base of all messages. ``TYPE`` is the frame type byte."""

    __slots__ = ()
    TYPE: ClassVar[int]

    def encode_payload(self) -> bytes:
        """The payload bytes of this message (without the frame header)."""
        w = _Writer()
        self._write(w)
        return w.getvalue()

    def _write(self, w: _Writer) -> None:
        """Write the fields; messages without fields write nothing."""

    @classmethod
    def decode_payload(cls, payload: bytes) -> Message:
        """Parse a payload of this type.

        Raises:
            RemoteProtocolError: the payload is malformed.
        """
        r = _Reader(payload)
        msg = cls._read(r)
        r.end()
        return msg

    @classmethod
    def _read(cls, r: _Reader) -> Message:
        return cls()


def _write_greeting(w: _Writer, version: int, software: str) -> None:
    w.fixed(MAGIC, 4)
    w.u16(version)
    w.str(_clip(software, MAX_SOFTWARE_BYTES))


def _read_greeting(r: _Reader, peer: str) -> tuple[int, str]:
    if r.fixed(4) != MAGIC:
        raise RemoteProtocolError(f"bad magic: the peer is not a tcpft {peer}")
    return r.u16(), r.str()


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """Client -> server, first frame: magic, highest version spoken, software name."""

    TYPE: ClassVar[int] = 0x01
    version: int = PROTOCOL_VERSION
    software: str = ""

    def _write(self, w: _Writer) -> None:
        _write_greeting(w, self.version, self.software)

    @classmethod
    def _read(cls, r: _Reader) -> Hello:
        return cls(*_read_greeting(r, "client"))


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """Server -> client: the version chosen; the server now waits for LOGIN."""

    TYPE: ClassVar[int] = 0x02
    version: int = PROTOCOL_VERSION
    software: str = ""

    def _write(self, w: _Writer) -> None:
        _write_greeting(w, self.version, self.software)

    @classmethod
    def _read(cls, r: _Reader) -> Welcome:
        return cls(*_read_greeting(r, "server"))


@dataclass(frozen=True, slots=True, repr=False)
class Login(Message):
    """Client -> server: credentials. The password never appears in ``repr``."""

    TYPE: ClassVar[int] = 0x03
    user: str
    password: str

    def __repr__(self) -> str:
        return f"Login(user={self.user!r}, password='******')"

    def _write(self, w: _Writer) -> None:
        w.str(self.user)
        w.str(self.password)

    @classmethod
    def _read(cls, r: _Reader) -> Login:
        return cls(r.str(), r.str())


@dataclass(frozen=True, slots=True)
class LoginOk(Message):
    """Server -> client: logged in; a listing of the root follows."""

    TYPE: ClassVar[int] = 0x04
    user: str
    can_write: bool = False

    def _write(self, w: _Writer) -> None:
        w.str(self.user)
        w.flag(self.can_write)

    @classmethod
    def _read(cls, r: _Reader) -> LoginOk:
        return cls(r.str(), r.flag())


@dataclass(frozen=True, slots=True)
class ListRequest(Message):
    """Client -> server: list a directory ("" is the root)."""

    TYPE: ClassVar[int] = 0x05
    path: str = ""
    recursive: bool = False

    def _write(self, w: _Writer) -> None:
        w.str(self.path)
        w.flag(self.recursive)

    @classmethod
    def _read(cls, r: _Reader) -> ListRequest:
        return cls(r.str(), r.flag())


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed file or directory. ``path`` is relative to the served root."""

    path: str
    is_dir: bool
    size: int
    mtime_ns: int


_ENTRY_FIXED = 1 + 8 + 8 + 2  # kind, size, mtime_ns, path length


@dataclass(frozen=True, slots=True)
class ListEntries(Message):
    """Server -> client: some entries of a listing (there may be several)."""

    TYPE: ClassVar[int] = 0x06
    entries: tuple[Entry, ...] = ()

    def _write(self, w: _Writer) -> None:
        w.u32(len(self.entries))
        for e in self.entries:
            w.u8(1 if e.is_dir else 0)
            w.u64(e.size)
            w.i64(e.mtime_ns)
            w.str(e.path)

    @classmethod
    def _read(cls, r: _Reader) -> ListEntries:
        count = r.u32()
        entries = []
        for _ in range(count):
            kind = r.u8()
            if kind > 1:
                raise RemoteProtocolError(f"unknown entry kind {kind}")
            size, mtime_ns = r.u64(), r.i64()
            entries.append(Entry(r.str(), kind == 1, size, mtime_ns))
        return cls(tuple(entries))


@dataclass(frozen=True, slots=True)
class ListEnd(Message):
    """Server -> client: the listing is complete."""

    TYPE: ClassVar[int] = 0x07


@dataclass(frozen=True, slots=True)
class Get(Message):
    """Client -> server: send this file, from ``offset`` if the prefix digest matches."""

    TYPE: ClassVar[int] = 0x08
    path: str
    offset: int = 0
    prefix_digest: bytes = b""

    def _write(self, w: _Writer) -> None:
        _digest_or_empty(self.prefix_digest, "prefix digest", local=True)
        if self.offset and not self.prefix_digest:
            raise LocalProtocolError("GET with an offset needs a prefix digest")
        w.str(self.path)
        w.u64(self.offset)
        w.bin(self.prefix_digest)

    @classmethod
    def _read(cls, r: _Reader) -> Get:
        msg = cls(r.str(), r.u64(), r.bin())
        _digest_or_empty(msg.prefix_digest, "prefix digest", local=False)
        if msg.offset and not msg.prefix_digest:
            raise RemoteProtocolError("GET with an offset needs a prefix digest")
        return msg


@dataclass(frozen=True, slots=True)
class FileHeader(Message):
    """Server -> client: the file follows as DATA from ``offset`` up to ``size``."""

    TYPE: ClassVar[int] = 0x09
    path: str
    size: int
    mtime_ns: int
    offset: int = 0

    def _write(self, w: _Writer) -> None:
        if not 0 <= self.offset <= self.size:
            raise LocalProtocolError("FILE offset is past its size")
        w.str(self.path)
        w.u64(self.size)
        w.i64(self.mtime_ns)
        w.u64(self.offset)

    @classmethod
    def _read(cls, r: _Reader) -> FileHeader:
        msg = cls(r.str(), r.u64(), r.i64(), r.u64())
        if msg.offset > msg.size:
            raise RemoteProtocolError("FILE offset is past its size")
        return msg


@dataclass(frozen=True, slots=True, repr=False)
class Data(Message):
    """Either direction: a chunk of file content (the whole payload)."""

    TYPE: ClassVar[int] = 0x0A
    data: bytes

    def __repr__(self) -> str:
        return f"Data(<{len(self.data)} bytes>)"

    def encode_payload(self) -> bytes:
        return bytes(self.data)

    @classmethod
    def decode_payload(cls, payload: bytes) -> Data:
        return cls(payload)


@dataclass(frozen=True, slots=True)
class Done(Message):
    """Either direction: end of a file's DATA, with the digest of the whole file.

    The digest is BLAKE3 from protocol version 3, SHA-256 before.
    """

    TYPE: ClassVar[int] = 0x0B
    digest: bytes

    def _write(self, w: _Writer) -> None:
        w.fixed(self.digest, DIGEST_SIZE)

    @classmethod
    def _read(cls, r: _Reader) -> Done:
        return cls(r.fixed(DIGEST_SIZE))


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """Either direction: the receiver's verdict on a transfer (size and digest checked)."""

    TYPE: ClassVar[int] = 0x0C
    ok: bool = True

    def _write(self, w: _Writer) -> None:
        w.flag(self.ok)

    @classmethod
    def _read(cls, r: _Reader) -> Ack:
        return cls(r.flag())


@dataclass(frozen=True, slots=True)
class Put(Message):
    """Client -> server: I want to upload ``size`` bytes to ``path``.

    With ``stream`` (protocol version 4) the client sends the DATA from offset 0 and
    the DONE at once, without waiting for PUT_READY, and the server's verdict comes
    later (docs/PROTOCOL.md, "Streamed PUTs").
    """

    TYPE: ClassVar[int] = 0x0D
    path: str
    size: int
    mtime_ns: int
    force: bool = False
    resume: bool = False
    stream: bool = False

    def _write(self, w: _Writer) -> None:
        if self.stream and self.resume:
            raise LocalProtocolError("a streamed PUT cannot resume")
        w.str(self.path)
        w.u64(self.size)
        w.i64(self.mtime_ns)
        w.u8((1 if self.force else 0) | (2 if self.resume else 0) | (4 if self.stream else 0))

    @classmethod
    def _read(cls, r: _Reader) -> Put:
        path, size, mtime_ns, flags = r.str(), r.u64(), r.i64(), r.u8()
        if flags & ~7:
            raise RemoteProtocolError(f"unknown PUT flags 0x{flags:02x}")
        if flags & 6 == 6:
            raise RemoteProtocolError("a streamed PUT cannot resume")
        return cls(path, size, mtime_ns, bool(flags & 1), bool(flags & 2), bool(flags & 4))


@dataclass(frozen=True, slots=True)
class PutReady(Message):
    """Server -> client: send DATA from ``offset``; the digest covers the kept prefix."""

    TYPE: ClassVar[int] = 0x0E
    offset: int = 0
    prefix_digest: bytes = b""

    def _write(self, w: _Writer) -> None:
        _digest_or_empty(self.prefix_digest, "prefix digest", local=True)
        if self.offset and not self.prefix_digest:
            raise LocalProtocolError("PUT_READY with an offset needs a prefix digest")
        w.u64(self.offset)
        w.bin(self.prefix_digest)

    @classmethod
    def _read(cls, r: _Reader) -> PutReady:
        msg = cls(r.u64(), r.bin())
        _digest_or_empty(msg.prefix_digest, "prefix digest", local=False)
        if msg.offset and not msg.prefix_digest:
            raise RemoteProtocolError("PUT_READY with an offset needs a prefix digest")
        return msg


@dataclass(frozen=True, slots=True)
class Cancel(Message):
    """Client -> server: abandon the upload in progress (the partial is discarded)."""

    TYPE: ClassVar[int] = 0x0F


@dataclass(frozen=True, slots=True)
class Bye(Message):
    """Client -> server: the session is over; both sides close."""

    TYPE: ClassVar[int] = 0x10


@dataclass(frozen=True, slots=True)
class Error(Message):
    """Either direction: a failure with a code (errors.ErrorCode) and a readable text."""

    TYPE: ClassVar[int] = 0x7F
    code: int
    text: str = ""

    def _write(self, w: _Writer) -> None:
        w.u16(self.code)
        w.str(_clip(self.text, MAX_ERROR_TEXT_BYTES))

    @classmethod
    def _read(cls, r: _Reader) -> Error:
        return cls(r.u16(), r.str())

    @classmethod
    def of(cls, code: ErrorCode, text: str) -> Error:
        """An ERROR for ``code`` with ``text``."""
        return cls(int(code), text)


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        Login,
        LoginOk,
        ListRequest,
        ListEntries,
        ListEnd,
        Get,
        FileHeader,
        Data,
        Done,
        Ack,
        Put,
        PutReady,
        Cancel,
        Bye,
        Error,
    )
}


def decode_message(frame_type: int, payload: bytes) -> Message:
    """Decode a frame's payload into its message.

    Raises:
        RemoteProtocolError: unknown type or malformed payload.
    """
    cls = MESSAGE_TYPES.get(frame_type)
    if cls is None:
        raise RemoteProtocolError(f"unknown frame type 0x{frame_type:02x}")
    return cls.decode_payload(payload)


def entry_wire_size(entry: Entry) -> int:
    """Bytes one entry takes in a LIST_ENTRIES payload."""
    return _ENTRY_FIXED + len(entry.path.encode("utf-8"))


def batch_entries(entries: Iterable[Entry], max_payload: int) -> Iterator[ListEntries]:
    """Split entries into LIST_ENTRIES messages whose payloads fit ``max_payload``."""
    batch: list[Entry] = []
    size = 4
    for e in entries:
        n = entry_wire_size(e)
        if batch and size + n > max_payload:
            yield ListEntries(tuple(batch))
            batch, size = [], 4
        batch.append(e)
        size += n
    if batch:
        yield ListEntries(tuple(batch))
