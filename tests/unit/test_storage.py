"""Unit tests of tcpft.storage on real files in tmp_path."""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tcpft.storage
from tcpft.errors import (
    AlreadyExists,
    IntegrityError,
    InvalidName,
    NoSpace,
    TooLarge,
    UsageError,
)
from tcpft.limits import MAX_NAME_BYTES
from tcpft.messages import entry_wire_size
from tcpft.names import partial_name
from tcpft.native import DIRECT_IO_ALIGN, aligned_buffer, is_aligned, set_direct_io
from tcpft.storage import (
    DIRECT_IO_MIN_SIZE,
    DIRECT_IO_MIN_WRITE,
    WRITEBACK_STEP,
    Entry,
    ReadHandle,
    ServedDirectory,
    UploadHandle,
)

MTIME = 1_600_000_000_123_456_789


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


@pytest.fixture
def served(root: Path) -> Iterator[ServedDirectory]:
    with ServedDirectory(root) as served:
        yield served


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    return secret


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _read_all(handle: ReadHandle) -> bytes:
    chunks = []
    while chunk := os.read(handle.fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _upload(served: ServedDirectory, path: str, data: bytes, **kw: object) -> UploadHandle:
    handle = served.open_upload(
        path,
        len(data),
        MTIME,
        force=bool(kw.get("force", False)),
        resume=bool(kw.get("resume", False)),
        max_size=None,
        reserve_bytes=0,
    )
    return handle


# --- the root --------------------------------------------------------------------


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        ServedDirectory(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError):
        ServedDirectory(tmp_path / "file")


def test_close_is_idempotent(root: Path) -> None:
    served = ServedDirectory(root)
    served.close()
    served.close()


# --- list ------------------------------------------------------------------------


def _tree(root: Path) -> None:
    (root / "b.txt").write_bytes(b"12345")
    (root / "a.txt").write_bytes(b"")
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "x.md").write_bytes(b"xx")
    (root / "docs" / "deep" / "y").write_bytes(b"y")
    (root / "empty").mkdir()


def test_list_root(root: Path, served: ServedDirectory) -> None:
    _tree(root)
    os.utime(root / "b.txt", ns=(MTIME, MTIME))
    entries = served.list()
    assert [e.path for e in entries] == ["a.txt", "b.txt", "docs", "empty"]
    b = entries[1]
    assert b == Entry("b.txt", False, 5, MTIME)
    assert entries[2].is_dir and entries[2].size == 0


@pytest.mark.timeout(60)
def test_listings_at_once_in_threads_each_see_every_entry_once(
    root: Path, served: ServedDirectory
) -> None:
    """The server lists in worker threads. Each listing reads the root through a
    descriptor of its own: one shared with the others (a dup) shares the read
    position too, and a listing then saw some entries twice and others not at all."""
    for i in range(2000):
        (root / f"file-{i:04d}.bin").write_bytes(b"")
    want = sorted(f"file-{i:04d}.bin" for i in range(2000))
    wrong: list[int] = []

    def lister() -> None:
        for _ in range(40):
            paths = [e.path for e in served.list()]
            if paths != want:
                wrong.append(len(paths))

    threads = [threading.Thread(target=lister) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not any(t.is_alive() for t in threads)
    assert wrong == []


def test_list_subdirectory_gives_wire_paths_from_the_root(
    root: Path, served: ServedDirectory
) -> None:
    _tree(root)
    assert [e.path for e in served.list("docs")] == ["docs/deep", "docs/x.md"]
    assert served.list("empty") == []


def test_list_recursive_sorted(root: Path, served: ServedDirectory) -> None:
    _tree(root)
    paths = [e.path for e in served.list(recursive=True)]
    assert paths == ["a.txt", "b.txt", "docs", "docs/deep", "docs/deep/y", "docs/x.md", "empty"]
    assert [e.path for e in served.list("docs", recursive=True)] == [
        "docs/deep",
        "docs/deep/y",
        "docs/x.md",
    ]


def test_list_skips_symlinks_fifos_partials_and_bad_names(
    root: Path, served: ServedDirectory, outside: Path
) -> None:
    (root / "ok").write_text("ok")
    (root / "link").symlink_to(outside)
    (root / "dirlink").symlink_to(outside.parent, target_is_directory=True)
    (root / "inner-link").symlink_to("ok")
    os.mkfifo(root / "fifo")
    (root / partial_name("ok")).write_text("half")
    (root / "esc\x1b[31m").write_text("x")
    (root / "nl\nname").write_text("x")
    os.mkdir(root / "sub")
    (root / "sub" / "ok2").write_text("x")
    (root / "sub" / "up").symlink_to("..")
    (root / "sub" / partial_name("ok2")).write_text("x")
    os.close(os.open(os.fsencode(root) + b"/bad-\xff-utf8", os.O_CREAT | os.O_WRONLY, 0o600))
    assert [e.path for e in served.list(recursive=True)] == ["ok", "sub", "sub/ok2"]


def test_list_limit(root: Path, served: ServedDirectory) -> None:
    for i in range(5):
        (root / f"f{i}").write_text("x")
    assert len(served.list(limit=5)) == 5
    with pytest.raises(TooLarge, match="exceeds 4 entries"):
        served.list(limit=4)
    (root / "d").mkdir()
    (root / "d" / "g").write_text("x")
    assert len(served.list(recursive=True, limit=7)) == 7
    with pytest.raises(TooLarge):
        served.list(recursive=True, limit=6)


def test_list_byte_limit(root: Path, served: ServedDirectory) -> None:
    """Long names fill a listing sooner than many entries: it is bounded in bytes too."""
    for i in range(10):
        (root / (f"{i}" + "n" * 200)).write_text("x")
    each = entry_wire_size(served.list()[0])
    assert len(served.list(byte_limit=10 * each)) == 10
    with pytest.raises(TooLarge, match=f"exceeds {10 * each - 1} bytes"):
        served.list(byte_limit=10 * each - 1)


@pytest.mark.parametrize("path", ["missing", "..", "/", "/etc", "a/../b", "b.txt", "link"])
def test_list_refuses(root: Path, served: ServedDirectory, outside: Path, path: str) -> None:
    _tree(root)
    (root / "link").symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(InvalidName):
        served.list(path)


def test_errors_do_not_reveal_the_root(root: Path, served: ServedDirectory) -> None:
    for call in (
        lambda: served.list("nope"),
        lambda: served.open_read("nope/x"),
        lambda: served.open_read("nope"),
    ):
        with pytest.raises(InvalidName) as info:
            call()
        assert str(root) not in info.value.message
        assert "nope" in info.value.message


# --- open_read -------------------------------------------------------------------


def test_open_read_good_file(root: Path, served: ServedDirectory) -> None:
    (root / "d").mkdir()
    (root / "d" / "f.bin").write_bytes(b"hello world")
    os.utime(root / "d" / "f.bin", ns=(MTIME, MTIME))
    with served.open_read("d/f.bin") as handle:
        assert handle.size == 11
        assert handle.mtime_ns == MTIME
        st = os.stat(root / "d" / "f.bin")
        assert handle.identity == (st.st_dev, st.st_ino, 11, MTIME, st.st_ctime_ns)
        assert os.get_blocking(handle.fd)  # O_NONBLOCK was cleared
        assert _read_all(handle) == b"hello world"
        assert not handle.changed()
    assert handle.fd == -1
    handle.close()  # idempotent


@pytest.mark.parametrize(
    "path",
    ["..", "../secret.txt", "a/../../secret.txt", "/etc/passwd", "..\\secret.txt", "", "d/"],
)
def test_open_read_refuses_bad_names(served: ServedDirectory, path: str) -> None:
    with pytest.raises(InvalidName):
        served.open_read(path)


def test_open_read_refuses_symlink_to_outside(
    root: Path, served: ServedDirectory, outside: Path
) -> None:
    (root / "link").symlink_to(outside)
    with pytest.raises(InvalidName, match="not a regular file"):
        served.open_read("link")


def test_open_read_refuses_symlink_inside_the_root_too(root: Path, served: ServedDirectory) -> None:
    (root / "real").write_text("x")
    (root / "alias").symlink_to("real")
    with pytest.raises(InvalidName):
        served.open_read("alias")


def test_open_read_refuses_symlinked_directory_component(
    root: Path, served: ServedDirectory, outside: Path
) -> None:
    (root / "real").mkdir()
    (root / "real" / "f").write_text("x")
    (root / "alias").symlink_to("real", target_is_directory=True)
    (root / "out").symlink_to(outside.parent, target_is_directory=True)
    served.open_read("real/f").close()
    with pytest.raises(InvalidName, match="not a directory: alias"):
        served.open_read("alias/f")
    with pytest.raises(InvalidName, match="not a directory: out"):
        served.open_read("out/secret.txt")


def test_directory_swapped_for_symlink_is_refused(
    root: Path, served: ServedDirectory, outside: Path
) -> None:
    (root / "d").mkdir()
    (root / "d" / "secret.txt").write_text("inside")
    served.open_read("d/secret.txt").close()
    # An attacker with access to the tree swaps the directory for a symlink.
    os.rename(root / "d", root / "d-old")
    (root / "d").symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(InvalidName, match="not a directory"):
        served.open_read("d/secret.txt")
    with pytest.raises(InvalidName):
        served.list("d")
    with pytest.raises(InvalidName):
        served.open_upload("d/new", 1, MTIME, force=True, resume=False, max_size=None)
    assert not (outside.parent / "new").exists()


def test_handle_opened_before_a_swap_keeps_reading_the_original(
    root: Path, served: ServedDirectory, outside: Path
) -> None:
    (root / "d").mkdir()
    (root / "d" / "f").write_text("original")
    with served.open_read("d/f") as handle:
        os.rename(root / "d", root / "d-old")
        (root / "d").symlink_to(outside.parent, target_is_directory=True)
        assert _read_all(handle) == b"original"


@pytest.mark.timeout(10)
def test_open_read_refuses_fifo_without_hanging(root: Path, served: ServedDirectory) -> None:
    os.mkfifo(root / "fifo")
    with pytest.raises(InvalidName, match="not a regular file"):
        served.open_read("fifo")


def test_open_read_refuses_directory(root: Path, served: ServedDirectory) -> None:
    (root / "d").mkdir()
    with pytest.raises(InvalidName, match="not a regular file"):
        served.open_read("d")


def test_open_read_refuses_missing_file(root: Path, served: ServedDirectory) -> None:
    with pytest.raises(InvalidName, match="no such file: nope"):
        served.open_read("nope")
    with pytest.raises(InvalidName, match="no such directory: nodir"):
        served.open_read("nodir/nope")


def test_open_read_refuses_partial_file(root: Path, served: ServedDirectory) -> None:
    (root / partial_name("f")).write_text("half")
    with pytest.raises(InvalidName):
        served.open_read(partial_name("f"))


def test_read_handle_changed_after_append(root: Path, served: ServedDirectory) -> None:
    (root / "f").write_bytes(b"abc")
    with served.open_read("f") as handle:
        assert not handle.changed()
        with open(root / "f", "ab") as f:
            f.write(b"more")
        assert handle.changed()


def test_read_handle_changed_after_mtime_change(root: Path, served: ServedDirectory) -> None:
    (root / "f").write_bytes(b"abc")
    with served.open_read("f") as handle:
        os.utime(root / "f", ns=(MTIME, MTIME))
        assert handle.changed()


def test_read_handle_changed_after_rewrite_with_mtime_set_back(
    root: Path, served: ServedDirectory
) -> None:
    (root / "f").write_bytes(b"abc")
    before = (root / "f").stat()
    with served.open_read("f") as handle:
        time.sleep(0.01)  # so the ctime moves on a coarse clock
        (root / "f").write_bytes(b"xyz")
        os.utime(root / "f", ns=(before.st_atime_ns, before.st_mtime_ns))
        assert (root / "f").stat().st_mtime_ns == before.st_mtime_ns
        assert handle.changed()


# --- uploads ---------------------------------------------------------------------


def test_fresh_upload_commit(root: Path, served: ServedDirectory) -> None:
    (root / "d").mkdir()
    data = b"x" * 100_000 + b"end"
    fds = _open_fds()
    handle = _upload(served, "d/new.bin", data)
    assert handle.offset == 0
    partial = root / "d" / partial_name("new.bin")
    assert partial.exists()
    assert stat.S_IMODE(partial.stat().st_mode) == 0o600
    handle.write(data[:10])
    handle.write(memoryview(data)[10:])
    handle.commit()
    assert (root / "d" / "new.bin").read_bytes() == data
    assert os.stat(root / "d" / "new.bin").st_mtime_ns == MTIME
    assert stat.S_IMODE(os.stat(root / "d" / "new.bin").st_mode) == 0o644
    assert not partial.exists()
    assert [e.path for e in served.list("d")] == ["d/new.bin"]
    handle.abort(keep=False)  # harmless after commit
    assert (root / "d" / "new.bin").exists()
    assert _open_fds() == fds


def test_upload_existing_without_force(root: Path, served: ServedDirectory) -> None:
    (root / "f").write_text("old")
    with pytest.raises(AlreadyExists):
        _upload(served, "f", b"new")
    assert (root / "f").read_text() == "old"


def test_upload_with_force_overwrites(root: Path, served: ServedDirectory) -> None:
    (root / "f").write_text("old content")
    handle = _upload(served, "f", b"new", force=True)
    handle.write(b"new")
    handle.commit()
    assert (root / "f").read_bytes() == b"new"


def test_target_appearing_during_upload_is_not_overwritten(
    root: Path, served: ServedDirectory
) -> None:
    handle = _upload(served, "f", b"mine")
    handle.write(b"mine")
    (root / "f").write_text("theirs")
    with pytest.raises(AlreadyExists):
        handle.commit()
    assert (root / "f").read_text() == "theirs"
    assert not (root / partial_name("f")).exists()  # it would only take space
    handle.abort(keep=False)  # closed by commit already: harmless


def test_commit_checks_the_size(root: Path, served: ServedDirectory) -> None:
    handle = _upload(served, "f", b"four")
    handle.write(b"abc")
    with pytest.raises(IntegrityError):
        handle.commit()
    assert not (root / "f").exists()
    assert not (root / partial_name("f")).exists()


def test_resume_keeps_the_partial(root: Path, served: ServedDirectory) -> None:
    data = b"0123456789"
    handle = _upload(served, "f", data)
    handle.write(data[:4])
    handle.abort(keep=True)
    assert (root / partial_name("f")).read_bytes() == b"0123"

    handle = _upload(served, "f", data, resume=True)
    assert handle.offset == 4
    fd = handle.open_partial_for_read()
    try:
        assert os.read(fd, 100) == b"0123"
    finally:
        os.close(fd)
    handle.write(data[4:])
    handle.commit()
    assert (root / "f").read_bytes() == data


def test_without_resume_the_partial_starts_empty(root: Path, served: ServedDirectory) -> None:
    (root / partial_name("f")).write_bytes(b"stale")
    with _upload(served, "f", b"abc") as handle:
        assert handle.offset == 0
        assert (root / partial_name("f")).stat().st_size == 0
        handle.write(b"abc")
        handle.commit()
    assert (root / "f").read_bytes() == b"abc"


def test_resume_with_a_partial_longer_than_the_file_restarts(
    root: Path, served: ServedDirectory
) -> None:
    (root / partial_name("f")).write_bytes(b"much too long")
    with _upload(served, "f", b"abc", resume=True) as handle:
        assert handle.offset == 0


def test_truncate_restarts_from_the_offset(root: Path, served: ServedDirectory) -> None:
    (root / partial_name("f")).write_bytes(b"XXXX")
    with _upload(served, "f", b"abcdef", resume=True) as handle:
        assert handle.offset == 4
        handle.truncate(0)
        assert handle.offset == 0
        handle.write(b"abcdef")
        handle.commit()
    assert (root / "f").read_bytes() == b"abcdef"


def test_abort_keep_and_remove(root: Path, served: ServedDirectory) -> None:
    partial = root / partial_name("f")
    handle = _upload(served, "f", b"abc")
    handle.write(b"a")
    handle.abort(keep=True)
    assert partial.read_bytes() == b"a"
    handle.abort(keep=False)  # already closed: idempotent, keeps it
    assert partial.exists()

    handle = _upload(served, "f", b"abc")
    handle.abort(keep=False)
    assert not partial.exists()
    assert not (root / "f").exists()
    handle.abort(keep=False)


def test_leaving_with_without_commit_removes_the_partial(
    root: Path, served: ServedDirectory
) -> None:
    fds = _open_fds()
    with _upload(served, "f", b"abc") as handle:
        handle.write(b"ab")
    assert os.listdir(root) == []
    assert _open_fds() == fds


def test_upload_too_large(root: Path, served: ServedDirectory) -> None:
    served.open_upload("ok", 10, MTIME, force=False, resume=False, max_size=10).abort(keep=False)
    with pytest.raises(TooLarge):
        served.open_upload("big", 11, MTIME, force=False, resume=False, max_size=10)
    assert os.listdir(root) == []


def test_upload_no_space(root: Path, served: ServedDirectory) -> None:
    with pytest.raises(NoSpace):
        served.open_upload(
            "f", 10, MTIME, force=False, resume=False, max_size=None, reserve_bytes=2**62
        )
    with pytest.raises(NoSpace):
        served.open_upload("f", 2**62, MTIME, force=False, resume=False, max_size=None)
    assert os.listdir(root) == []


def test_upload_creates_missing_parents_but_not_through_files_or_links(
    root: Path, served: ServedDirectory, tmp_path: Path
) -> None:
    handle = _upload(served, "new/deeper/f", b"x")
    handle.write(b"x")
    handle.commit()
    assert (root / "new" / "deeper" / "f").read_bytes() == b"x"
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    with pytest.raises(InvalidName, match="not a directory"):
        _upload(served, "escape/f", b"x")
    assert list(outside.iterdir()) == []
    (root / "file").write_text("x")
    with pytest.raises(InvalidName, match="not a directory"):
        _upload(served, "file/f", b"x")


def test_upload_refuses_non_regular_target(root: Path, served: ServedDirectory) -> None:
    (root / "d").mkdir()
    os.mkfifo(root / "fifo")
    (root / "link").symlink_to("d")
    for name in ("d", "fifo", "link"):
        with pytest.raises(InvalidName, match="not a regular file"):
            _upload(served, name, b"x", force=True)


@pytest.mark.timeout(10)
def test_upload_refuses_planted_partial(root: Path, served: ServedDirectory, outside: Path) -> None:
    (root / partial_name("a")).symlink_to(outside)
    os.mkfifo(root / partial_name("b"))
    for name in ("a", "b"):
        with pytest.raises(InvalidName, match="partial"):
            _upload(served, name, b"x", resume=True)
    assert outside.read_text() == "top secret"


@pytest.mark.parametrize("path", ["", "..", "../evil", "/tmp/evil", "a\\b", "x/", ".f.tcpft-part"])
def test_upload_refuses_bad_names(served: ServedDirectory, path: str) -> None:
    with pytest.raises(InvalidName):
        _upload(served, path, b"x")


def test_upload_of_a_longest_name(root: Path, served: ServedDirectory) -> None:
    name = "é" * (MAX_NAME_BYTES // 2)
    with _upload(served, name, b"x") as handle:
        handle.write(b"x")
        handle.commit()
    assert (root / name).read_bytes() == b"x"


def test_no_descriptor_leaks_on_refusals(
    root: Path, served: ServedDirectory, outside: Path
) -> None:
    _tree(root)
    (root / "link").symlink_to(outside)
    os.mkfifo(root / "fifo")
    (root / partial_name("p")).symlink_to(outside)
    fds = _open_fds()
    for path in ("link", "fifo", "docs", "missing", "docs/missing", "link/x", "b.txt/x"):
        with pytest.raises(InvalidName):
            served.open_read(path)
    for path in ("b.txt", "docs", "link", "fifo", "p", "b.txt/x", "link/x"):
        with pytest.raises((InvalidName, AlreadyExists)):
            _upload(served, path, b"x")
    with pytest.raises(TooLarge):
        served.list(recursive=True, limit=2)
    with pytest.raises(NoSpace):
        served.open_upload("n", 1, 0, force=False, resume=False, max_size=None, reserve_bytes=2**62)
    assert _open_fds() == fds


def test_handles_survive_closing_the_served_directory(root: Path) -> None:
    (root / "f").write_text("abc")
    served = ServedDirectory(root)
    reader = served.open_read("f")
    upload = _upload(served, "g", b"1")
    served.close()
    assert _read_all(reader) == b"abc"
    reader.close()
    upload.write(b"1")
    upload.commit()
    assert (root / "g").read_text() == "1"


def test_target_becoming_a_directory_during_upload(root: Path, served: ServedDirectory) -> None:
    handle = _upload(served, "f", b"x", force=True)
    handle.write(b"x")
    (root / "f").mkdir()
    with pytest.raises(InvalidName, match="not a regular file"):
        handle.commit()
    assert (root / "f").is_dir()


def test_an_upload_starts_writeback_of_each_step_as_it_goes(
    served: ServedDirectory, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that the fsync of the commit finds little left to write (see native.py)."""
    started: list[tuple[int, int]] = []
    real = tcpft.storage.start_writeback

    def record(fd: int, offset: int, length: int) -> None:
        started.append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(tcpft.storage, "start_writeback", record)
    step = WRITEBACK_STEP
    data = os.urandom(2 * step + step // 2)
    chunk = 256 * 1024
    handle = _upload(served, "big.bin", data)
    with handle:
        for i in range(0, len(data), chunk):
            handle.write(data[i : i + chunk])
        handle.commit()
    assert started == [(0, step), (step, step)]  # the rest is left to the fsync
    assert (root / "big.bin").read_bytes() == data


def test_a_resumed_upload_starts_writeback_from_its_offset(
    served: ServedDirectory, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(tcpft.storage, "start_writeback", lambda fd, o, n: started.append((o, n)))
    step = WRITEBACK_STEP
    handle = _upload(served, "r.bin", b"x" * (3 * step))
    with handle:
        handle.truncate(step // 2)  # as after a resume whose prefix was kept
        handle.write(b"y" * (step - 1))
        assert started == []
        handle.write(b"y" * 3)
        assert started == [(step // 2, step + 2)]


# --- direct I/O for aligned upload writes ------------------------------------------------


def _direct(handle: UploadHandle) -> bool:
    return bool(fcntl.fcntl(handle.fd, fcntl.F_GETFL) & os.O_DIRECT)


@pytest.fixture
def direct_io(root: Path) -> None:
    """Skip where the test directory's file system has no direct I/O."""
    probe = root / "probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if not set_direct_io(fd, True):
            pytest.skip("no direct I/O on this file system")
        buf = aligned_buffer(DIRECT_IO_ALIGN)
        try:
            os.write(fd, buf)
        except OSError:
            pytest.skip("this file system takes O_DIRECT but refuses the writes")
    finally:
        os.close(fd)
        probe.unlink()


def _filled(size: int) -> memoryview:
    buf = aligned_buffer(size)
    buf.write(os.urandom(size))
    return memoryview(buf)


@pytest.mark.usefixtures("direct_io")
def test_aligned_upload_writes_use_direct_io_and_the_rest_the_page_cache(
    served: ServedDirectory, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(tcpft.storage, "start_writeback", lambda fd, o, n: started.append((o, n)))
    chunk = _filled(DIRECT_IO_MIN_SIZE)
    data = bytes(chunk) * 2 + b"tail"
    handle = _upload(served, "d.bin", data)
    with handle:
        handle.write(chunk)
        assert _direct(handle)
        handle.write(chunk)
        handle.write(b"tail")  # read-only memory, 4 bytes: through the page cache
        assert not _direct(handle)
        handle.commit()
    assert started == []  # what went direct needs no writeback
    assert (root / "d.bin").read_bytes() == data


@pytest.mark.usefixtures("direct_io")
def test_small_uploads_stay_in_the_page_cache(served: ServedDirectory, root: Path) -> None:
    chunk = _filled(DIRECT_IO_MIN_WRITE)
    data = bytes(chunk) * ((DIRECT_IO_MIN_SIZE - 1) // len(chunk))
    handle = _upload(served, "s.bin", data)
    with handle:
        for _ in range(len(data) // len(chunk)):
            handle.write(chunk)
            assert not _direct(handle)
        handle.commit()
    assert (root / "s.bin").read_bytes() == data


def _big_upload(served: ServedDirectory, name: str, rest: bytes) -> UploadHandle:
    """An upload of DIRECT_IO_MIN_SIZE + len(rest) bytes, its first part already written."""
    filler = _filled(DIRECT_IO_MIN_SIZE)
    handle = served.open_upload(
        name, len(filler) + len(rest), MTIME, force=False, resume=False, max_size=None
    )
    handle.write(filler)
    return handle


@pytest.mark.usefixtures("direct_io")
def test_the_aligned_head_of_a_write_goes_direct_its_tail_not(
    served: ServedDirectory, root: Path
) -> None:
    view = _filled(DIRECT_IO_MIN_WRITE + 5)
    rest = bytes(view) * 2
    with _big_upload(served, "t.bin", rest) as handle:
        handle.write(view)  # DIRECT_IO_MIN_WRITE bytes direct, then 5 through the cache
        assert not _direct(handle)
        handle.write(view)  # the file offset is no longer aligned: all through the cache
        assert not _direct(handle)
        handle.commit()
    assert (root / "t.bin").read_bytes()[DIRECT_IO_MIN_SIZE:] == rest


@pytest.mark.usefixtures("direct_io")
@pytest.mark.parametrize(
    "why",
    ["memory not aligned", "offset not aligned", "too small", "read-only memory"],
)
def test_writes_direct_io_cannot_take_go_through_the_page_cache(
    served: ServedDirectory, root: Path, why: str
) -> None:
    big = _filled(2 * DIRECT_IO_MIN_WRITE + DIRECT_IO_ALIGN)
    least = DIRECT_IO_MIN_WRITE
    first, second = {
        "memory not aligned": (big[1 : least + 1], big[:least]),
        "offset not aligned": (big[:100], big[:least]),
        "too small": (big[:DIRECT_IO_ALIGN], big[: least - DIRECT_IO_ALIGN]),
        "read-only memory": (big[:least].toreadonly(), big[:least]),
    }[why]
    rest = bytes(first) + bytes(second)
    with _big_upload(served, "u.bin", rest) as handle:
        handle.write(first)
        assert not _direct(handle)
        handle.write(second)
        assert _direct(handle) == (why in ("memory not aligned", "read-only memory"))
        handle.commit()
    assert (root / "u.bin").read_bytes()[DIRECT_IO_MIN_SIZE:] == rest


@pytest.mark.usefixtures("direct_io")
def test_a_resumed_upload_writes_direct_from_its_aligned_offset(
    served: ServedDirectory, root: Path
) -> None:
    chunk = _filled(DIRECT_IO_MIN_SIZE)
    kept = os.urandom(3 * DIRECT_IO_MIN_WRITE)
    handle = _upload(served, "r.bin", kept[: 2 * DIRECT_IO_MIN_WRITE] + bytes(chunk))
    with handle:
        handle.write(kept)
        handle.truncate(2 * DIRECT_IO_MIN_WRITE)  # as a resume keeps an aligned prefix
        handle.write(chunk)
        assert _direct(handle)
        handle.commit()
    assert (root / "r.bin").read_bytes() == kept[: 2 * DIRECT_IO_MIN_WRITE] + bytes(chunk)


def test_aligned_buffers() -> None:
    buf = aligned_buffer(3 * DIRECT_IO_ALIGN)
    assert len(buf) == 3 * DIRECT_IO_ALIGN and bytes(buf[:8]) == bytes(8)
    view = memoryview(buf)
    assert is_aligned(view) and is_aligned(view[DIRECT_IO_ALIGN:])
    assert not is_aligned(view[1:])
    assert not is_aligned(view.toreadonly())
    assert not is_aligned(memoryview(b"bytes are read-only"))
    assert not is_aligned(view[:0])


def test_two_uploads_never_share_a_partial_file(root: Path, served: ServedDirectory) -> None:
    """A long name's partial is named after its SHA-256, which is also the partial of
    that hex name: while one upload writes into it, the other is refused (it once
    wrote into the same file, and the first was committed with its bytes)."""
    long_name = "L" * 250
    hex_name = hashlib.sha256(long_name.encode()).hexdigest()
    assert partial_name(long_name) == partial_name(hex_name)
    first = served.open_upload(long_name, 3, MTIME, force=False, resume=False, max_size=None)
    with pytest.raises(AlreadyExists, match="in progress"):
        served.open_upload(hex_name, 3, MTIME, force=False, resume=False, max_size=None)
    first.write(b"abc")
    first.commit()
    assert (root / long_name).read_bytes() == b"abc"
    second = served.open_upload(hex_name, 3, MTIME, force=False, resume=False, max_size=None)
    second.write(b"xyz")
    second.commit()
    assert (root / hex_name).read_bytes() == b"xyz"
    assert (root / long_name).read_bytes() == b"abc"


@pytest.mark.parametrize("path", ["a.bin.tcpft-part/x", ".x.tcpft-part/deeper/y"])
def test_a_partial_name_is_never_a_directory_on_the_way(
    root: Path, served: ServedDirectory, path: str
) -> None:
    """Partial names are hidden from listings; a directory of such a name, made by
    an upload, was reachable all the same, and blocked later uploads of the file."""
    with pytest.raises(InvalidName):
        served.open_upload(path, 1, MTIME, force=False, resume=False, max_size=None)
    assert list(root.iterdir()) == []
    (root / path).parent.mkdir(parents=True)
    (root / path).write_bytes(b"x")
    with pytest.raises(InvalidName):
        served.open_read(path)
    with pytest.raises(InvalidName):
        served.list(str(Path(path).parent))


@pytest.mark.parametrize("max_size", [None, 10])
def test_a_refused_upload_makes_no_directory(
    root: Path, served: ServedDirectory, max_size: int | None
) -> None:
    with pytest.raises((NoSpace, TooLarge)):
        served.open_upload("new/deeper/f.bin", 2**62, MTIME, force=False, resume=False,
                           max_size=max_size)  # fmt: skip
    assert list(root.iterdir()) == []
