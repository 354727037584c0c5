"""Hostile file names and hostile files: traversal, symlinks, special files, and a file
that changes while it is being sent."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tcpft.client import Session
from tcpft.errors import ErrorCode, FileChanged, IntegrityError
from tcpft.limits import MAX_DATA_PAYLOAD
from tcpft.messages import (
    Ack,
    Data,
    Done,
    Error,
    FileHeader,
    Get,
    ListEnd,
    ListEntries,
    ListRequest,
    Put,
    PutReady,
)
from tcpft.storage import UploadHandle

from ..conftest import ALICE, Env, ServerThread
from .rawclient import RawConn, expect_error, frame, logged_in, raw_frame

StartServer = Callable[..., ServerThread]

MIB = 1024 * 1024
ROOT_LISTING = {"hello.txt", "data.bin", "sub"}


@pytest.fixture
def hostile_root(env: Env) -> Iterator[Env]:
    """The served root, plus symlinks, special files, a partial file and a secret outside."""
    root = env.root
    (root.parent / "secret.txt").write_text("top secret\n")
    os.symlink("hello.txt", root / "link_file")
    os.symlink("sub", root / "link_dir")
    os.symlink(root, root / "abs_dir")
    os.symlink("/etc/passwd", root / "escape")
    os.symlink("/dev/null", root / "devnull")
    os.symlink("../secret.txt", root / "up")
    os.symlink("../hello.txt", root / "sub" / "back")
    os.symlink("loop", root / "loop")
    os.mkfifo(root / "pipe")
    (root / ".data.bin.tcpft-part").write_bytes(b"half an upload")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        unix.bind(str(root / "sock"))
    except OSError:
        unix.close()
        unix = None  # type: ignore[assignment]
    with contextlib.suppress(OSError):  # root in most containers, but maybe not allowed
        os.mknod(root / "chardev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    try:
        yield env
    finally:
        if unix is not None:
            unix.close()


def _refused(conn: RawConn, path: str) -> Error:
    """GET ``path``: expect INVALID_NAME then the root listing, promptly."""
    start = time.monotonic()
    conn.send(frame(Get(path)))
    err = expect_error(conn, ErrorCode.INVALID_NAME, timeout=3.0)
    listed = set(conn.read_listing())
    assert listed == ROOT_LISTING, listed
    assert time.monotonic() - start < 2.0, f"{path!r} took {time.monotonic() - start:.2f} s"
    return err


TRAVERSAL = [
    "..",
    "../secret.txt",
    "sub/../../secret.txt",
    "sub/..",
    "sub/../hello.txt",
    ".",
    "./hello.txt",
    "sub/./inner.txt",
    "sub//inner.txt",
    "hello.txt/",
    "/etc/passwd",
    "//etc/passwd",
    "/",
    "..\\secret.txt",
    "sub\\..\\..\\secret.txt",
    "....//secret.txt",
    "%2e%2e/secret.txt",
    "..%2fsecret.txt",
    "\u2024\u2024/secret.txt",  # ONE DOT LEADER: only looks like a dot
    "\uff0e\uff0e/secret.txt",  # FULLWIDTH FULL STOP
]

WEIRD = [
    "",
    "hello.txt\x00",
    "\x00",
    "hello\x00.txt",
    "hello.txt\n",
    "\x1b[31mhello.txt",
    "hello.txt\x7f",
    "hello\u0085.txt",  # C1 control
    "a" * 256,  # a component over 255 bytes
    "é" * 128,  # 256 bytes of UTF-8 in 128 characters
    "a/" * 2048 + "b",  # a path over 4096 bytes
    "no-such-file",
    ".data.bin.tcpft-part",  # a partial upload is never served
    "sub",  # a directory
]

LINKS_AND_SPECIALS = [
    "link_file",
    "link_dir/inner.txt",
    "abs_dir/hello.txt",
    "escape",
    "devnull",
    "up",
    "sub/back",
    "loop",
    "pipe",
    "sock",
    "chardev",
]


@pytest.mark.timeout(60)
def test_bad_names_are_refused_and_the_listing_follows(
    start_server: StartServer, hostile_root: Env
) -> None:
    srv = start_server()
    with logged_in(srv.port, ALICE) as conn:
        for path in TRAVERSAL + WEIRD + LINKS_AND_SPECIALS:
            _refused(conn, path)
        # The session is still in order afterwards.
        conn.send(frame(Get("hello.txt")))
        header = conn.read_message()
        assert isinstance(header, FileHeader) and header.size == 13


@pytest.mark.timeout(30)
def test_special_files_really_exist_and_are_refused(
    start_server: StartServer, hostile_root: Env
) -> None:
    """The fixture's FIFO, socket and device are real (else the test above proves less)."""
    root = hostile_root.root
    kinds = {
        "pipe": stat.S_ISFIFO,
        "sock": stat.S_ISSOCK,
        "chardev": stat.S_ISCHR,
        "devnull": stat.S_ISLNK,
    }
    present = [n for n, is_kind in kinds.items() if os.path.lexists(root / n)]
    for name in present:
        assert kinds[name](os.lstat(root / name).st_mode), name
    if "chardev" not in present:
        pytest.skip("cannot create a device node here (mknod not permitted)")
    srv = start_server()
    with logged_in(srv.port, ALICE) as conn:
        for name in present:
            err = _refused(conn, name)
            assert "regular file" in err.text or "symbolic" in err.text or "open" in err.text


@pytest.mark.timeout(30)
def test_a_255_byte_name_is_still_served(start_server: StartServer, env: Env) -> None:
    name = "n" * 255
    (env.root / name).write_text("long name\n")
    srv = start_server()
    with logged_in(srv.port, ALICE) as conn:
        conn.send(frame(Get(name)))
        header = conn.read_message()
        assert isinstance(header, FileHeader), header
        data = conn.read_message()
        assert isinstance(data, Data) and data.data == b"long name\n"


@pytest.mark.timeout(30)
def test_listing_shows_no_links_specials_or_partials(
    start_server: StartServer, hostile_root: Env
) -> None:
    srv = start_server()
    with logged_in(srv.port, ALICE) as conn:
        conn.send(frame(ListRequest("", recursive=True)))
        listed = set(conn.read_listing())
    assert listed == ROOT_LISTING | {"sub/inner.txt"}


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "path", ["..", "../", "link_dir", "abs_dir", "escape", "pipe", "sub/../..", "/", "x\x00"]
)
def test_listing_bad_directories_is_refused(
    start_server: StartServer, hostile_root: Env, path: str
) -> None:
    srv = start_server()
    with logged_in(srv.port, ALICE) as conn:
        conn.send(frame(ListRequest(path)))
        expect_error(conn, ErrorCode.INVALID_NAME)
        conn.send(frame(ListRequest()))  # the session goes on
        assert set(conn.read_listing()) == ROOT_LISTING


INVALID_UTF8 = {
    "ff fe": b"\xff\xfe",
    "encoded surrogate": b"\xed\xa0\x80",
    "overlong dots": b"\xc0\xae\xc0\xae/secret.txt",
    "overlong slash": b"..\xc0\xafsecret.txt",
    "truncated sequence": b"hello\xe2\x82",
    "latin-1": "caf\xe9".encode("latin-1"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("raw", INVALID_UTF8.values(), ids=INVALID_UTF8.keys())
def test_invalid_utf8_name_is_a_protocol_error(
    start_server: StartServer, hostile_root: Env, raw: bytes
) -> None:
    srv = start_server()
    with logged_in(srv.port, ALICE) as conn:
        payload = struct.pack("!H", len(raw)) + raw + struct.pack("!QH", 0, 0)
        conn.send(raw_frame(Get.TYPE, payload))
        expect_error(conn, ErrorCode.PROTOCOL_ERROR)
        assert conn.read_message() is None


UPLOAD_NAMES = [
    "../evil.txt",
    "/tmp/evil.txt",
    "link_dir/evil.txt",
    "abs_dir/evil.txt",
    "link_file",
    "escape",
    "devnull",
    "pipe",
    "sock",
    "sub",
    ".evil.txt.tcpft-part",
    "evil\x00.txt",
    "a" * 256,
]


@pytest.mark.timeout(60)
def test_uploads_to_bad_names_are_refused_and_nothing_is_written(
    start_server: StartServer, hostile_root: Env
) -> None:
    root = hostile_root.root
    srv = start_server()
    before = {p: p.lstat().st_mtime_ns for p in root.parent.rglob("*")}
    hello = (root / "hello.txt").read_bytes()
    with logged_in(srv.port, ALICE) as conn:
        for name in UPLOAD_NAMES:
            conn.send(frame(Put(name, 4, 0, force=True)))
            msg = conn.read_message(3.0)
            assert isinstance(msg, Error), f"{name!r}: {msg!r}"
            assert msg.code in (ErrorCode.INVALID_NAME, ErrorCode.ALREADY_EXISTS), (name, msg)
        conn.send(frame(ListRequest()))
        assert set(conn.read_listing()) == ROOT_LISTING
    after = {p: p.lstat().st_mtime_ns for p in root.parent.rglob("*")}
    assert after == before
    assert (root / "hello.txt").read_bytes() == hello
    assert not (root.parent / "evil.txt").exists()


@pytest.mark.timeout(30)
def test_fifo_opened_by_nobody_does_not_hang_a_download(
    start_server: StartServer, hostile_root: Env, login: Callable[..., Session]
) -> None:
    srv = start_server()
    with login(srv) as s:
        start = time.monotonic()
        with pytest.raises(Exception, match=r"regular file|cannot open|not"):
            s.download("pipe", hostile_root.client)
        assert time.monotonic() - start < 2.0
        assert s.download("hello.txt", hostile_root.client).size == 13
    assert not (hostile_root.client / "pipe").exists()


# --- a file that changes while it is being sent -----------------------------------------


def _change(path: Path, how: str) -> None:
    if how == "append":
        with path.open("ab") as f:
            f.write(b"more")
    elif how == "truncate":
        os.truncate(path, MIB)
    else:  # rewrite bytes already sent, same size
        with path.open("r+b") as f:
            f.write(b"\xff" * 4096)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["append", "truncate", "rewrite"])
def test_file_changing_during_download_is_detected(
    start_server: StartServer, login: Callable[..., Session], env: Env, how: str
) -> None:
    big = env.root / "moving.bin"
    big.write_bytes(os.urandom(12 * MIB))
    time.sleep(0.05)  # so a rewrite gets a visibly different mtime
    srv = start_server(limit_rate=12 * MIB)  # about a second for the whole file
    changed: list[int] = []

    def progress(done: int, total: int) -> None:
        if done > 0 and not changed:
            _change(big, how)
            changed.append(done)

    target = env.client / "moving.bin"
    with login(srv) as s:
        with pytest.raises((FileChanged, IntegrityError)):
            s.download("moving.bin", target, progress=progress)
        assert changed
        assert not target.exists()
        assert not target.with_name("moving.bin.tcpft-part").exists()
        assert s.download("hello.txt", env.client).size == 13  # the session goes on


def _rewrite_keeping_mtime(path: Path) -> None:
    """Rewrite the first bytes in place, then set the mtime back (as ``cp -p`` can)."""
    before = path.stat()
    with path.open("r+b") as f:
        f.write(b"\xff" * 4096)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_size == before.st_size


@pytest.mark.timeout(60)
def test_download_of_a_file_rewritten_with_its_mtime_set_back_is_refused(
    start_server: StartServer, login: Callable[..., Session], env: Env
) -> None:
    """Size and mtime are those of the start; only the ctime says the bytes changed.

    The bytes rewritten were already sent, so the server's digest is that of what the
    client got: without the ctime, a mix of two versions would be "verified".
    """
    big = env.root / "moving.bin"
    big.write_bytes(os.urandom(12 * MIB))
    srv = start_server(limit_rate=12 * MIB)
    changed: list[int] = []

    def progress(done: int, total: int) -> None:
        if done > 0 and not changed:
            _rewrite_keeping_mtime(big)
            changed.append(done)

    target = env.client / "moving.bin"
    with login(srv) as s:
        with pytest.raises(FileChanged):
            s.download("moving.bin", target, progress=progress)
        assert changed and not target.exists()


@pytest.mark.timeout(60)
def test_upload_of_a_file_rewritten_with_its_mtime_set_back_is_cancelled(
    start_server: StartServer, login: Callable[..., Session], env: Env
) -> None:
    src = env.client / "moving.bin"
    src.write_bytes(os.urandom(12 * MIB))
    srv = start_server()
    changed: list[int] = []

    def progress(done: int, total: int) -> None:
        if done > 0 and not changed:
            _rewrite_keeping_mtime(src)
            changed.append(done)

    with login(srv) as s:
        with pytest.raises(FileChanged):
            s.upload(src, "moving.bin", progress=progress)
        assert changed and not (env.root / "moving.bin").exists()
        assert s.download("hello.txt", env.client).size == 13  # the session goes on


def _upload_by_hand(
    port: int, name: str, content: bytes, frames: list[bytes], cuts: list[int], pause: float
) -> None:
    """PUT ``content`` as ``name``; send ``frames`` and DONE cut at ``cuts``; expect ACK ok."""
    wire = b"".join(frames) + frame(Done(hashlib.sha256(content).digest()))
    with logged_in(port, ALICE) as conn:
        conn.send(frame(Put(name, len(content), 0)))
        assert isinstance(conn.read_message(), PutReady)
        for a, b in itertools.pairwise([0, *cuts, len(wire)]):
            conn.send(wire[a:b])
            time.sleep(pause)
        ack = conn.read_message()
        assert isinstance(ack, Ack) and ack.ok, ack


@pytest.mark.timeout(30)
@pytest.mark.parametrize("pause", [0.0, 0.02])
def test_upload_frames_cut_anywhere_arrive_intact(
    start_server: StartServer, env: Env, pause: float
) -> None:
    """DATA headers and payloads cut at odd places, and several frames in one send:
    the server's fast path for DATA must reassemble them exactly."""
    srv = start_server()
    content = os.urandom(300_000)
    frames = [frame(Data(p)) for p in (content[:1], content[1:70_000], content[70_000:])]
    in_done = len(b"".join(frames)) + 2  # inside the DONE frame's header
    cuts = [2, 5, 6, 7, 1000, 70_004, 70_009, 70_011, in_done]
    _upload_by_hand(srv.port, "cut.bin", content, frames, cuts, pause)
    assert (env.root / "cut.bin").read_bytes() == content


@pytest.mark.timeout(30)
def test_data_frames_larger_than_the_buffers_arrive_intact(
    start_server: StartServer, env: Env
) -> None:
    """Frames of the largest size, cut across the server's buffer boundaries: the
    server receives a payload larger than its buffer in pieces, which must join up."""
    srv = start_server()
    size = MAX_DATA_PAYLOAD
    content = os.urandom(3 * size + 5)
    frames = [frame(Data(content[i : i + size])) for i in range(0, len(content), size)]
    half = size // 2
    cuts = [3, 5 + half - 1, 5 + half + 7, 5 + size + 2, 3 * size]
    _upload_by_hand(srv.port, "pieces.bin", content, frames, cuts, 0.02)
    assert (env.root / "pieces.bin").read_bytes() == content


@pytest.mark.timeout(30)
def test_small_data_frames_are_gathered_into_one_write_per_buffer(
    start_server: StartServer, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consecutive DATA frames fill one receive buffer before the worker writes it:
    an upload costs the server a hand-off per buffer, not per frame."""
    writes: list[int] = []
    write = UploadHandle.write

    def counted(self: UploadHandle, data: bytes | memoryview) -> None:
        writes.append(len(data))
        write(self, data)

    monkeypatch.setattr(UploadHandle, "write", counted)
    srv = start_server()
    content = os.urandom(3 * MIB)
    step = 32 * 1024  # 96 frames, with an empty one in the middle
    frames = [frame(Data(content[i : i + step])) for i in range(0, len(content), step)]
    frames.insert(40, frame(Data(b"")))
    _upload_by_hand(srv.port, "gathered.bin", content, frames, [], 0.0)
    assert (env.root / "gathered.bin").read_bytes() == content
    assert writes == [2 * MIB, MIB]  # the large buffers of 2 MiB, the last one short


@pytest.mark.timeout(30)
def test_a_stall_after_gathered_frames_keeps_them_for_a_resume(
    start_server: StartServer, env: Env
) -> None:
    """Frames gathered into a buffer that is not full yet still reach the partial file
    when the client stops sending."""
    srv = start_server(stall_timeout=1.0)
    with logged_in(srv.port, ALICE) as conn:
        conn.send(frame(Put("gathered-stall.bin", 100_000, 0)))
        assert isinstance(conn.read_message(), PutReady)
        conn.send(b"".join(frame(Data(bytes([i]) * 1000)) for i in range(10)))
        conn.send(frame(Data(b"z" * 500))[:300])  # and the start of one more
        expect_error(conn, ErrorCode.IDLE_TIMEOUT, timeout=5.0)
    partial = env.root / ".gathered-stall.bin.tcpft-part"
    want = b"".join(bytes([i]) * 1000 for i in range(10))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        not partial.exists() or partial.stat().st_size != len(want)
    ):
        time.sleep(0.05)
    assert partial.read_bytes() == want


@pytest.mark.timeout(30)
def test_empty_data_frames_in_an_upload_are_harmless(start_server: StartServer, env: Env) -> None:
    # Senders must not send them, receivers accept them (docs/PROTOCOL.md). One right
    # after the last bytes once took the place of the final chunk: DIGEST_MISMATCH.
    srv = start_server()
    content = b"abc" * 1000
    frames = [frame(Data(p)) for p in (b"", content[:10], b"", content[10:], b"")]
    _upload_by_hand(srv.port, "empty-frames.bin", content, frames, [], 0.0)
    assert (env.root / "empty-frames.bin").read_bytes() == content


@pytest.mark.timeout(60)
def test_only_a_few_uploads_at_once_get_the_large_buffers(
    start_server: StartServer, env: Env
) -> None:
    """Each upload holds two receive buffers: the large ones go to the first 8 uploads
    at once, the rest get the smaller size, so that memory stays bounded."""
    srv = start_server()
    server = srv.server
    conns: list[RawConn] = []
    try:
        for i in range(10):
            conn = logged_in(srv.port, ALICE)
            conns.append(conn)
            conn.send(frame(Put(f"held{i}.bin", 2 * MAX_DATA_PAYLOAD, 0)))
            assert isinstance(conn.read_message(), PutReady)
            # Half a frame: the session waits inside its payload, buffers allocated.
            conn.send(raw_frame(Data.TYPE, b"x" * 1000, length=MAX_DATA_PAYLOAD))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and srv.call(lambda: len(server._uploads)) < 10:
            time.sleep(0.02)
        assert srv.call(lambda: len(server._uploads)) == 10
        assert srv.call(lambda: server._large_buffer_uploads) == 8
    finally:
        for conn in conns:
            conn.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and srv.call(lambda: len(server._uploads)):
        time.sleep(0.02)
    assert srv.call(lambda: (len(server._uploads), server._large_buffer_uploads)) == (0, 0)


@pytest.mark.timeout(30)
def test_upload_cut_inside_a_data_payload_keeps_only_whole_frames(
    start_server: StartServer, env: Env
) -> None:
    # (A frame larger than the server's buffer is written piece by piece, so a cut
    # there keeps its whole pieces; a resume checks whatever was kept.)
    srv = start_server()
    with logged_in(srv.port, ALICE) as conn:
        conn.send(frame(Put("half.bin", 1000, 0)))
        assert isinstance(conn.read_message(), PutReady)
        conn.send(frame(Data(b"a" * 100)) + frame(Data(b"b" * 400))[:205])
        time.sleep(0.2)
    partial = env.root / ".half.bin.tcpft-part"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and partial.exists() and partial.stat().st_size != 100:
        time.sleep(0.05)
    assert partial.read_bytes() == b"a" * 100  # kept for a resume, without the cut frame
    assert not (env.root / "half.bin").exists()


@pytest.mark.timeout(30)
def test_put_then_data_for_a_refused_upload_is_not_stored(
    start_server: StartServer, env: Env
) -> None:
    """BOB is read-only: a PUT is refused, and DATA sent regardless is a protocol error."""
    srv = start_server()
    with logged_in(srv.port, ("bob", "bob-password-2")) as conn:
        conn.send(frame(Put("bob.txt", 4, 0)))
        expect_error(conn, ErrorCode.PERMISSION_DENIED)
        conn.send(frame(Data(b"evil")))
        expect_error(conn, ErrorCode.PROTOCOL_ERROR)
    assert not (env.root / "bob.txt").exists()
    assert not list(env.root.glob(".bob.txt*"))


@pytest.mark.timeout(30)
def test_listing_frames_are_well_formed(start_server: StartServer, env: Env) -> None:
    for i in range(300):
        (env.root / f"f{i:03d}-{'x' * 200}").write_text("")
    srv = start_server()
    with logged_in(srv.port, ALICE) as conn:
        conn.send(frame(ListRequest()))
        total = 0
        while True:
            msg = conn.read_message()
            if isinstance(msg, ListEnd):
                break
            assert isinstance(msg, ListEntries)
            total += len(msg.entries)
        assert total == 303
        conn.send(frame(Put("ok.bin", 0, 0)))
        assert isinstance(conn.read_message(), PutReady)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("pieces", [1, 3], ids=["one frame", "three frames"])
def test_upload_whose_digest_does_not_match_is_refused_and_the_session_goes_on(
    start_server: StartServer, env: Env, pieces: int
) -> None:
    srv = start_server()
    content = os.urandom(300_000)
    step = -(-len(content) // pieces)
    wire = b"".join(frame(Data(content[i : i + step])) for i in range(0, len(content), step))
    with logged_in(srv.port, ALICE) as conn:
        conn.send(frame(Put("bad.bin", len(content), 0)))
        assert isinstance(conn.read_message(), PutReady)
        conn.send(wire + frame(Done(hashlib.sha256(content + b"x").digest())))
        expect_error(conn, ErrorCode.DIGEST_MISMATCH)
        conn.send(frame(ListRequest()))  # READY again
        assert "hello.txt" in conn.read_listing()
    assert not (env.root / "bad.bin").exists()
    assert not list(env.root.glob(".bad.bin*")), "the refused partial should be removed"
