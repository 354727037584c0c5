"""Transfers end to end over real TLS on 127.0.0.1: integrity, concurrency, cuts, trust."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import tcpft
from tcpft.aio import aconnect
from tcpft.client import Session, connect
from tcpft.errors import (
    AlreadyExists,
    ConnectError,
    ConnectionBroken,
    FingerprintMismatch,
    InvalidName,
    LocalFileError,
    TLSVerifyError,
    TooLarge,
    UsageError,
)
from tcpft.messages import (
    Ack,
    Data,
    Done,
    FileHeader,
)
from tcpft.names import partial_name
from tcpft.protocol import State
from tcpft.tls import KnownHosts

from ..conftest import ALICE, Env, ServerThread, b3
from .fake_server import FakeServer

Login = Callable[..., Session]


def _write_random(path: Path, size: int) -> None:
    with path.open("wb") as fh:
        left = size
        while left:
            n = min(left, 4 << 20)
            fh.write(os.urandom(n))
            left -= n


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_200_mb_file_arrives_byte_identical(env: Env, server: ServerThread, login: Login) -> None:
    _write_random(env.root / "big.bin", 200 * 1024 * 1024 + 7)
    with login(server) as s:
        result = s.download("big.bin", env.client)
    assert result.size == 200 * 1024 * 1024 + 7
    assert result.digest == b3(env.root / "big.bin") == b3(env.client / "big.bin")
    assert not (env.client / "big.bin.tcpft-part").exists()


def test_done_flag_ack_and_both_sides_close(env: Env, server: ServerThread, login: Login) -> None:
    s = login(server)
    s.download("hello.txt", env.client)
    # The DONE flag was received and the ACK sent: the conversation is back at READY.
    assert s.conn.state is State.READY
    assert server.call(lambda: server.server.connection_count) == 1
    s.close()
    assert s.conn.state is State.CLOSED
    for _ in range(100):
        if server.call(lambda: server.server.connection_count) == 0:
            break
        threading.Event().wait(0.05)
    assert server.call(lambda: server.server.connection_count) == 0
    assert (env.client / "hello.txt").read_text() == "hello, world\n"


def test_modification_time_is_kept(env: Env, server: ServerThread, login: Login) -> None:
    os.utime(env.root / "hello.txt", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    with login(server) as s:
        s.download("hello.txt", env.client)
    assert (env.client / "hello.txt").stat().st_mtime_ns == 1_600_000_000_000_000_000


@pytest.mark.timeout(60)
def test_twenty_clients_at_once(env: Env, server: ServerThread, login: Login) -> None:
    expected = b3(env.root / "data.bin")
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            dest = env.client / str(i)
            dest.mkdir()
            with login(server) as s:
                r = s.download("data.bin", dest)
            assert r.digest == expected == b3(dest / "data.bin")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not errors, errors
    assert all(b3(env.client / str(i) / "data.bin") == expected for i in range(20))


def test_existing_file_is_not_overwritten_without_force(
    env: Env, server: ServerThread, login: Login
) -> None:
    (env.client / "hello.txt").write_text("mine")
    with login(server) as s:
        with pytest.raises(AlreadyExists):
            s.download("hello.txt", env.client)
        assert (env.client / "hello.txt").read_text() == "mine"
        s.download("hello.txt", env.client, force=True)
    assert (env.client / "hello.txt").read_text() == "hello, world\n"


def test_cut_connection_leaves_no_file_under_the_final_name_then_resumes(
    env: Env, start_server: Callable[..., ServerThread], login: Login
) -> None:
    _write_random(env.root / "cut.bin", 20 * 1024 * 1024)
    srv = start_server(chunk_size=256 * 1024)
    s = login(srv)

    def cut(done: int, total: int) -> None:
        if done >= 9 * 1024 * 1024:
            s.sock.close()  # the network drops

    with pytest.raises(ConnectError, match=r"kept in .*cut\.bin\.tcpft-part.* --resume"):
        s.download("cut.bin", env.client, progress=cut)
    s.close()
    assert not (env.client / "cut.bin").exists()
    partial = env.client / "cut.bin.tcpft-part"
    assert partial.stat().st_size >= 8 * 1024 * 1024
    with login(srv) as s2:
        result = s2.download("cut.bin", env.client, resume=True)
    assert result.resumed_from == 8 * 1024 * 1024
    assert result.transferred == 12 * 1024 * 1024
    assert b3(env.client / "cut.bin") == b3(env.root / "cut.bin")
    assert not partial.exists()


def test_a_cut_upload_says_how_to_continue(env: Env, server: ServerThread, login: Login) -> None:
    src = env.client / "up.bin"
    _write_random(src, 20 * 1024 * 1024)
    s = login(server)

    raw = getattr(s.sock, "sock", s.sock)  # under TLS, the TCP socket

    def cut(done: int, total: int) -> None:
        if done >= 9 * 1024 * 1024:
            raw.shutdown(socket.SHUT_RDWR)  # the network drops

    with pytest.raises(ConnectError, match=r"server keeps what arrived of up\.bin.* --resume"):
        s.upload(src, progress=cut)
    s.close()


class _Stop(Exception):
    """Raised from a progress callback to abandon a transfer half-way."""


def _stop_half_way(done: int, total: int) -> None:
    if 0 < done < total:
        raise _Stop


def test_a_download_into_a_partial_linked_to_the_published_file_leaves_that_file_alone(
    env: Env, start_server: Callable[..., ServerThread], login: Login
) -> None:
    """A publish cut between link and unlink leaves the partial as a second link to the
    file just published; a forced download abandoned half-way must not truncate it."""
    _write_random(env.root / "big.bin", 12 * 1024 * 1024)
    published = env.client / "big.bin"
    published.write_bytes(b"verified earlier")
    os.link(published, env.client / "big.bin.tcpft-part")
    srv = start_server(chunk_size=256 * 1024, limit_rate=24 * 1024 * 1024)
    with login(srv) as s, pytest.raises(_Stop):
        s.download("big.bin", env.client, force=True, progress=_stop_half_way)
    assert published.read_bytes() == b"verified earlier"
    with login(srv) as s:
        s.download("big.bin", env.client, force=True, resume=True)
    assert b3(published) == b3(env.root / "big.bin")


def test_an_upload_into_a_partial_linked_to_the_published_file_leaves_that_file_alone(
    env: Env, server: ServerThread, login: Login
) -> None:
    published = env.root / "pub.bin"
    published.write_bytes(b"stored earlier")
    os.link(published, env.root / partial_name("pub.bin"))
    src = env.client / "pub.bin"
    _write_random(src, 12 * 1024 * 1024)
    with login(server) as s, pytest.raises(_Stop):
        s.upload(src, force=True, progress=_stop_half_way)
    assert published.read_bytes() == b"stored earlier"
    assert published.stat().st_nlink == 1
    with login(server) as s:
        s.upload(src, force=True, resume=True)
    assert b3(published) == b3(src)


def test_a_forced_download_never_replaces_a_fifo(
    env: Env, server: ServerThread, login: Login
) -> None:
    """--force replaces a file or a link; a FIFO or a device node is not renamed over."""
    target = env.client / "hello.txt"
    os.mkfifo(target)
    with login(server) as s:
        with pytest.raises(LocalFileError, match="not a regular file"):
            s.download("hello.txt", target, force=True)
        assert s.download("hello.txt", env.client / "other.txt").size == 13  # goes on
    assert stat.S_ISFIFO(os.lstat(target).st_mode)
    assert not target.with_name("hello.txt.tcpft-part").exists()


def test_an_upload_whose_name_was_taken_meanwhile_leaves_no_partial(
    env: Env, server: ServerThread, login: Login
) -> None:
    """Refused at its commit, a complete upload's partial would only take space."""
    src = env.client / "late.bin"
    _write_random(src, 12 * 1024 * 1024)
    taken: list[bool] = []

    def take_the_name(done: int, total: int) -> None:
        if done and not taken:
            (env.root / "late.bin").write_text("theirs")
            taken.append(True)

    with login(server) as s:
        with pytest.raises(AlreadyExists):
            s.upload(src, progress=take_the_name)
        assert s.download("hello.txt", env.client).size == 13  # the session goes on
    assert (env.root / "late.bin").read_text() == "theirs"
    assert not (env.root / partial_name("late.bin")).exists()


@pytest.mark.parametrize("size", [0, 1, 256 * 1024 - 1, 256 * 1024, 256 * 1024 + 1])
def test_sizes_around_the_one_write_path(
    env: Env, server: ServerThread, login: Login, size: int
) -> None:
    """Up to 256 KiB a file goes out as FILE, DATA and DONE in one write; above, streamed."""
    _write_random(env.root / "s.bin", size)
    with login(server) as s:
        for _ in range(2):  # the second time, the server has the digest cached
            result = s.download("s.bin", env.client, force=True)
            assert result.size == result.transferred == size
            assert (env.client / "s.bin").read_bytes() == (env.root / "s.bin").read_bytes()
            assert result.digest == b3(env.root / "s.bin")


def test_downloaded_file_gets_the_usual_mode(env: Env, server: ServerThread, login: Login) -> None:
    """The partial file is private (0600); the finished file follows the umask, as cp's."""
    umask = os.umask(0o027)
    try:
        with login(server) as s:
            s.download("hello.txt", env.client)
    finally:
        os.umask(umask)
    assert (env.client / "hello.txt").stat().st_mode & 0o777 == 0o640


def test_resume_with_a_small_rest(env: Env, server: ServerThread, login: Login) -> None:
    _write_random(env.root / "r.bin", 4 * 1024 * 1024 + 1000)
    content = (env.root / "r.bin").read_bytes()
    (env.client / "r.bin.tcpft-part").write_bytes(content[: 4 * 1024 * 1024 + 10])
    with login(server) as s:
        result = s.download("r.bin", env.client, resume=True)
    assert (result.resumed_from, result.transferred) == (4 * 1024 * 1024, 1000)
    assert (env.client / "r.bin").read_bytes() == content


def test_resume_of_a_changed_file_starts_over(env: Env, server: ServerThread, login: Login) -> None:
    _write_random(env.root / "v.bin", 9 * 1024 * 1024)
    # A partial copy of an older version of the file.
    (env.client / "v.bin.tcpft-part").write_bytes(os.urandom(8 * 1024 * 1024))
    with login(server) as s:
        result = s.download("v.bin", env.client, resume=True)
    assert result.resumed_from == 0
    assert result.transferred == 9 * 1024 * 1024
    assert b3(env.client / "v.bin") == b3(env.root / "v.bin")


def test_changed_server_fingerprint_is_refused(
    env: Env, server: ServerThread, login: Login
) -> None:
    login(server).close()  # pinned on first use
    assert KnownHosts(env.known_hosts).lookup("127.0.0.1", server.port) == server.fingerprint
    KnownHosts(env.known_hosts).add("127.0.0.1", server.port, "SHA256:" + "A" * 43)
    with pytest.raises(FingerprintMismatch) as info:
        login(server)
    assert str(env.known_hosts) in str(info.value)


def test_unknown_server_refused_when_not_trusted(server: ServerThread, login: Login) -> None:
    with pytest.raises(TLSVerifyError, match="not a known host"):
        login(server, trust_new=False)


def test_pinned_fingerprint_argument(server: ServerThread, login: Login) -> None:
    assert server.fingerprint is not None
    with login(server, fingerprint=server.fingerprint, trust_new=False) as s:
        assert s.server_fingerprint == server.fingerprint
    with pytest.raises(FingerprintMismatch):
        login(server, fingerprint="SHA256:" + "B" * 43)


def test_plaintext_needs_both_sides(
    env: Env, start_server: Callable[..., ServerThread], server: ServerThread, login: Login
) -> None:
    plain = start_server(plaintext=True)
    with login(plain) as s:
        s.download("hello.txt", env.client)
    assert (env.client / "hello.txt").exists()
    with pytest.raises(ConnectError, match="plaintext"):
        login(plain, plaintext=False)
    with pytest.raises(ConnectError):
        login(server, plaintext=True)


def test_async_client(env: Env, server: ServerThread) -> None:
    async def main() -> list[str]:
        async with await aconnect(
            "127.0.0.1", server.port, user=ALICE[0], password=ALICE[1],
            known_hosts=env.known_hosts,
        ) as s:  # fmt: skip
            names = [e.path for e in await s.list("sub")]
            await s.download("sub/inner.txt", env.client)
            return names

    assert asyncio.run(main()) == ["sub/inner.txt"]
    assert (env.client / "inner.txt").read_text() == "inner\n"


def test_public_api_is_importable() -> None:
    assert callable(tcpft.connect) and callable(tcpft.aconnect)
    assert tcpft.Server is not None
    assert issubclass(tcpft.errors.AuthFailed, tcpft.TcpftError)


def test_server_cut_mid_download_is_not_a_clean_end(
    env: Env, start_server: Callable[..., ServerThread], login: Login
) -> None:
    _write_random(env.root / "slow.bin", 8 * 1024 * 1024)
    srv = start_server(limit_rate=4 * 1024 * 1024, chunk_size=256 * 1024)
    s = login(srv)
    stopped = threading.Event()

    def stop_server(done: int, total: int) -> None:
        if done > 2 * 1024 * 1024 and not stopped.is_set():
            stopped.set()
            threading.Thread(target=srv.stop, kwargs={"grace": 0}).start()

    with pytest.raises((ConnectionBroken, ConnectError)):
        s.download("slow.bin", env.client, progress=stop_server)
    s.close()
    assert not (env.client / "slow.bin").exists()


def _evict_from_page_cache(path: Path) -> bool:
    """Drop ``path`` from the page cache; False when this system keeps it there."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        try:  # what the server does first: a read that must not wait for the disk
            os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
        except BlockingIOError:
            return True
        return False
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="no RWF_NOWAIT reads here")
@pytest.mark.parametrize("plaintext", [False, True], ids=["tls", "plaintext"])
def test_a_file_not_in_the_page_cache_is_read_in_a_worker(
    env: Env, start_server: Callable[..., ServerThread], login: Login, plaintext: bool
) -> None:
    # Blocks in the page cache are read and hashed on the event loop; the others
    # go to a worker thread so that the loop never waits for the disk.
    _write_random(env.root / "cold.bin", 5 * 1024 * 1024 + 3)
    if not _evict_from_page_cache(env.root / "cold.bin"):
        pytest.skip("this file system keeps the file in the page cache")
    server = start_server(plaintext=plaintext)
    with login(server) as s:
        result = s.download("cold.bin", env.client)
    assert result.digest == b3(env.root / "cold.bin") == b3(env.client / "cold.bin")


def test_plaintext_repeat_download_uses_the_cached_digest(
    env: Env, start_server: Callable[..., ServerThread], login: Login
) -> None:
    plain = start_server(plaintext=True, chunk_size=256 * 1024)
    with login(plain) as s:
        first = s.download("data.bin", env.client / "1")
        assert plain.call(lambda: len(plain.server.hashes)) == 1
        second = s.download("data.bin", env.client / "2")  # sent with os.sendfile
    assert first.digest == second.digest == b3(env.root / "data.bin")
    assert (env.client / "2").read_bytes() == (env.root / "data.bin").read_bytes()


def test_destination_with_a_trailing_slash_is_a_folder(
    env: Env, server: ServerThread, login: Login
) -> None:
    with login(server) as s:
        result = s.download("hello.txt", f"{env.client}/new/folder/")
    assert result.local == env.client / "new" / "folder" / "hello.txt"
    assert result.local.read_text() == "hello, world\n"


@pytest.mark.timeout(30)
def test_the_client_accepts_empty_data_frames(env: Env) -> None:
    """Senders must not send empty DATA frames and receivers accept them
    (docs/PROTOCOL.md): a server of another make that sends some, even one right
    after the last bytes, still delivers the file."""
    content = os.urandom(100_000)
    fake = FakeServer(
        lambda get: [
            FileHeader(get.path, len(content), 0),
            Data(b""),
            Data(content[:1000]),
            Data(b""),
            Data(content[1000:]),
            Data(b""),
            Done(hashlib.sha256(content).digest()),  # version 2: SHA-256
        ]
    )
    with connect("127.0.0.1", fake.port, user="x", password="y", plaintext=True, timeout=10) as s:
        result = s.download("f.bin", env.client)
    fake.join()
    assert result.size == len(content)
    assert (env.client / "f.bin").read_bytes() == content
    assert isinstance(fake.received[0], Ack) and fake.received[0].ok


@pytest.mark.parametrize("host", ["a" * 300, "a..b"])
def test_a_host_name_that_cannot_be_encoded_is_a_usage_error(host: str, env: Env) -> None:
    with pytest.raises(UsageError, match="not a valid host name"):
        connect(host, 1, user="u", password="p", known_hosts=env.known_hosts)


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan"), float("inf"), 1e10])
def test_a_timeout_out_of_range_is_a_usage_error(timeout: float, env: Env) -> None:
    with pytest.raises(UsageError, match="timeout"):
        connect(
            "127.0.0.1", 1, user="u", password="p", known_hosts=env.known_hosts, timeout=timeout
        )


def test_a_root_too_large_to_list_leaves_the_session_usable(
    env: Env, start_server: Callable[..., ServerThread], login: Login
) -> None:
    """The listing sent after login is refused (more entries than max_list_entries):
    logging in still works, and so do requests."""
    srv = start_server(max_list_entries=2)
    with login(srv) as s:
        assert s.listing == [] and isinstance(s.listing_error, TooLarge)
        with pytest.raises(InvalidName) as info:
            s.download("nope", env.client)
        assert info.value.listing == []  # type: ignore[attr-defined]
        assert s.download("hello.txt", env.client).size == 13

    async def main() -> object:
        async with await aconnect(
            "127.0.0.1", srv.port, user=ALICE[0], password=ALICE[1],
            known_hosts=env.known_hosts,
        ) as a:  # fmt: skip
            return a.listing_error

    assert isinstance(asyncio.run(main()), TooLarge)
