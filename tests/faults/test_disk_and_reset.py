"""Full disks on either side, and an upload cut by a connection reset."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tcpft.client import Session, TransferResult
from tcpft.errors import ConnectError, ErrorCode, LocalFileError, NoSpace
from tcpft.messages import Data, Done, Put, PutReady

from ..adversarial.rawclient import expect_error, frame, logged_in, reset_socket
from ..conftest import ALICE, Env, ServerThread

StartServer = Callable[..., ServerThread]

MIB = 1024 * 1024


def _abort_all(srv: ServerThread) -> Callable[[], None]:
    """A function that resets every session's connection (run it on the server loop)."""

    def abort() -> None:
        for session in srv.server._sessions.values():
            session.writer.transport.abort()

    return abort


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str, options: str = "") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path``; skips the test if it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(path)],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10, check=False)


def _wait_no_sessions(srv: ServerThread, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while srv.call(lambda: srv.server.connection_count):
        assert time.monotonic() < deadline, "the server kept the session"
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_download_into_a_full_disk(
    start_server: StartServer, login: Callable[..., Session], env: Env
) -> None:
    (env.root / "big.bin").write_bytes(os.urandom(8 * MIB))
    srv = start_server()
    with tiny_tmpfs(env.client / "tiny", "2m") as tiny:
        keep = tiny / "keep.txt"
        keep.write_bytes(b"precious\n" * 100)
        before = keep.stat()
        s = login(srv)
        try:
            with pytest.raises(LocalFileError, match="space"):
                s.download("big.bin", tiny / "big.bin")
        finally:
            s.close()
        assert not (tiny / "big.bin").exists()
        assert keep.read_bytes() == b"precious\n" * 100
        assert keep.stat().st_mtime_ns == before.st_mtime_ns
        _wait_no_sessions(srv)
        # The partial (kept for a resume, or not: the client's choice) may fill the disk.
        (tiny / "big.bin.tcpft-part").unlink(missing_ok=True)
        # The server is fine, and so is a download that fits.
        with login(srv) as s2:
            s2.download("hello.txt", tiny / "hello.txt")
        assert (tiny / "hello.txt").read_text() == "hello, world\n"


@pytest.mark.timeout(60)
def test_server_disk_fills_during_an_upload(
    start_server: StartServer, login: Callable[..., Session], env: Env
) -> None:
    """Two uploads both pass the free-space check; the slower one meets ENOSPC."""
    with tiny_tmpfs(env.root.parent / "served-tiny", "5m") as root:
        srv = start_server(root=root, upload_reserve=0)
        fast, slow = env.client / "fast.bin", env.client / "slow.bin"
        fast.write_bytes(os.urandom(3 * MIB))
        slow.write_bytes(os.urandom(3 * MIB))
        outcome: list[TransferResult | BaseException] = []
        started = threading.Event()

        def slow_upload() -> None:
            try:
                with login(srv, limit_rate=2 * MIB) as s:
                    outcome.append(s.upload(slow, progress=lambda n, t: started.set()))
            except BaseException as exc:
                outcome.append(exc)
                started.set()

        worker = threading.Thread(target=slow_upload)
        worker.start()
        try:
            assert started.wait(10)
            with login(srv) as s:
                s.upload(fast)
            worker.join(30)
        finally:
            worker.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], NoSpace), outcome
        assert (root / "fast.bin").read_bytes() == fast.read_bytes()
        assert not (root / "slow.bin").exists()
        assert not list(root.glob(".slow.bin*")), "the failed partial should be removed"
        _wait_no_sessions(srv)


@pytest.mark.timeout(60)
def test_small_upload_meets_a_full_disk(start_server: StartServer, env: Env) -> None:
    """The disk fills between PUT_READY and the only DATA frame: NO_SPACE, no file left."""
    with tiny_tmpfs(env.root.parent / "served-small", "1m") as root:
        srv = start_server(root=root, upload_reserve=0)
        content = os.urandom(200 * 1024)
        with logged_in(srv.port, ALICE) as conn:
            conn.send(frame(Put("small.bin", len(content), 0)))
            assert isinstance(conn.read_message(), PutReady)
            fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT)
            with contextlib.suppress(OSError):  # the free-space check is passed: now fill
                while True:
                    os.write(fd, bytes(64 * 1024))
            os.close(fd)
            conn.send(frame(Data(content)) + frame(Done(hashlib.sha256(content).digest())))
            expect_error(conn, ErrorCode.NO_SPACE)
        assert not (root / "small.bin").exists()
        assert not list(root.glob(".small.bin*")), "the failed partial should be removed"
        _wait_no_sessions(srv)


@pytest.mark.timeout(60)
def test_upload_into_a_new_directory_with_no_inode_left(
    start_server: StartServer, env: Env
) -> None:
    """The directory cannot be made for want of an inode: NO_SPACE, not a bad name."""
    with tiny_tmpfs(env.root.parent / "served-inodes", "1m", ",nr_inodes=16") as root:
        srv = start_server(root=root, upload_reserve=0)
        with contextlib.suppress(OSError):
            for i in range(100):  # use up the inodes
                (root / f"f{i}").touch()
        with logged_in(srv.port, ALICE) as conn:
            conn.send(frame(Put("newdir/x.bin", 10, 0)))
            expect_error(conn, ErrorCode.NO_SPACE)
        assert not (root / "newdir").exists()
        _wait_no_sessions(srv)


@pytest.mark.timeout(60)
def test_upload_cut_by_a_reset_keeps_the_partial_and_resumes(
    start_server: StartServer, login: Callable[..., Session], env: Env
) -> None:
    content = os.urandom(16 * MIB)
    local = env.client / "up.bin"
    local.write_bytes(content)
    srv = start_server()
    partial = env.root / ".up.bin.tcpft-part"

    class Cut(Exception):
        pass

    def progress(n: int, total: int) -> None:
        if n >= 10 * MIB:
            raise Cut

    s = login(srv)
    try:
        with pytest.raises(Cut):
            s.upload(local, progress=progress)
    finally:
        reset_socket(s.sock)  # RST: SO_LINGER 0, no TLS close_notify
        with contextlib.suppress(Exception):
            s.close()
    _wait_no_sessions(srv)
    assert not (env.root / "up.bin").exists()
    assert partial.exists()
    kept = partial.stat().st_size
    assert 4 * MIB <= kept < len(content), kept
    assert content.startswith(partial.read_bytes())

    with login(srv) as s:
        result = s.upload(local, resume=True)
    assert result.resumed_from > 0 and result.resumed_from % (4 * MIB) == 0
    assert result.transferred == len(content) - result.resumed_from
    assert (env.root / "up.bin").read_bytes() == content
    assert not partial.exists()


@pytest.mark.timeout(60)
def test_upload_cut_then_a_different_file_is_not_spliced(
    start_server: StartServer, login: Callable[..., Session], env: Env
) -> None:
    """Resuming with other content under the same name must not reuse the old prefix."""
    first = os.urandom(12 * MIB)
    local = env.client / "up.bin"
    local.write_bytes(first)
    srv = start_server()

    class Cut(Exception):
        pass

    def progress(n: int, total: int) -> None:
        if n >= 9 * MIB:
            raise Cut

    s = login(srv)
    try:
        with pytest.raises(Cut):
            s.upload(local, progress=progress)
    finally:
        reset_socket(s.sock)
        with contextlib.suppress(Exception):
            s.close()
    _wait_no_sessions(srv)
    second = os.urandom(12 * MIB)
    local.write_bytes(second)
    with login(srv) as s:
        result = s.upload(local, resume=True)
    assert result.resumed_from == 0
    assert (env.root / "up.bin").read_bytes() == second


@pytest.mark.timeout(60)
def test_download_resume_after_reset_with_changed_server_file_starts_over(
    start_server: StartServer, login: Callable[..., Session], env: Env
) -> None:
    (env.root / "big.bin").write_bytes(os.urandom(12 * MIB))
    srv = start_server(limit_rate=8 * MIB)

    def progress(n: int, total: int) -> None:
        if n >= 9 * MIB:
            srv.call(_abort_all(srv))

    s = login(srv)
    try:
        with pytest.raises(ConnectError):
            s.download("big.bin", env.client, progress=progress)
    finally:
        s.close()
    assert (env.client / "big.bin.tcpft-part").stat().st_size >= 4 * MIB
    new = os.urandom(12 * MIB)
    (env.root / "big.bin").write_bytes(new)
    with login(srv) as s:
        result = s.download("big.bin", env.client, resume=True)
    assert result.resumed_from == 0
    assert (env.client / "big.bin").read_bytes() == new
