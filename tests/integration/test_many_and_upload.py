"""Several requests per session, trees, globs, uploads and their resume, over real TLS."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tcpft.aio import aconnect
from tcpft.client import Session, Skipped, TransferResult, connect
from tcpft.errors import (
    AlreadyExists,
    ConnectError,
    InvalidName,
    LocalFileError,
    PermissionDenied,
    RemoteProtocolError,
    TooLarge,
)
from tcpft.messages import (
    PROTOCOL_VERSION,
    Entry,
    Hello,
    ListEnd,
    ListEntries,
    ListRequest,
    Login,
    LoginOk,
    Welcome,
)
from tcpft.protocol import NEED_DATA, Connection, Role

from ..conftest import ALICE, BOB, Env, ServerThread, b3

Login_ = Callable[..., Session]
MiB = 1024 * 1024


def test_many_requests_in_one_session(env: Env, server: ServerThread, login: Login_) -> None:
    with login(server) as s:
        for name in ("hello.txt", "data.bin", "sub/inner.txt"):
            s.download(name, env.client)
        assert [e.path for e in s.list("sub")] == ["sub/inner.txt"]
        s.download("hello.txt", env.client / "again.txt")
    assert (env.client / "inner.txt").read_text() == "inner\n"
    assert (env.client / "again.txt").read_text() == "hello, world\n"


@pytest.mark.timeout(120)
def test_tree_of_1000_files_arrives_complete(env: Env, server: ServerThread, login: Login_) -> None:
    tree = env.root / "tree"
    for i in range(1000):
        d = tree / f"d{i % 10}" / f"e{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_bytes(f"file {i}\n".encode() * (i % 7 + 1))
    os.utime(tree / "d3", ns=(1_500_000_000_000_000_000,) * 2)
    with login(server) as s:
        results = s.download_tree("tree", env.client)
    assert len(results) == 1000
    got = sorted(p.relative_to(env.client) for p in (env.client / "tree").rglob("*") if p.is_file())
    want = sorted(p.relative_to(env.root) for p in tree.rglob("*") if p.is_file())
    assert got == want
    for rel in want[::97]:
        assert (env.client / rel).read_bytes() == (env.root / rel).read_bytes()
    assert (env.client / "tree" / "d3").stat().st_mtime_ns == 1_500_000_000_000_000_000


def _small_tree(root: Path, n: int = 6) -> list[str]:
    for i in range(n):
        (root / "t" / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / "t" / f"d{i % 2}" / f"f{i}.bin").write_bytes(os.urandom(1000 + i))
    return sorted(f"t/d{i % 2}/f{i}.bin" for i in range(n))


def test_a_tree_download_goes_on_past_a_file_that_fails_alone(
    env: Env, server: ServerThread, login: Login_
) -> None:
    names = _small_tree(env.root)
    (env.client / "t" / "d0").mkdir(parents=True)
    (env.client / "t" / "d0" / "f2.bin").write_text("mine")  # exists: refused alone
    gone = names[-1]
    with login(server) as s:
        outcomes = {}
        for remote, outcome in s.download_tree_each("t", env.client, ahead=0):
            outcomes[remote] = outcome
            if len(outcomes) == 1:
                (env.root / gone).unlink()  # listed, then gone before its GET
        assert isinstance(outcomes.pop("t/d0/f2.bin"), AlreadyExists)
        assert isinstance(outcomes.pop(gone), InvalidName)
        assert all(isinstance(o, TransferResult) for o in outcomes.values()), outcomes
        assert len(outcomes) == len(names) - 2
        assert s.download("hello.txt", env.client).size == 13  # the session goes on
    assert (env.client / "t" / "d0" / "f2.bin").read_text() == "mine"


def test_a_tree_download_cut_short_is_finished_by_a_resume(
    env: Env, server: ServerThread, login: Login_
) -> None:
    names = _small_tree(env.root)
    with login(server) as s:
        s.download_tree("t", env.client)
    (env.client / names[1]).unlink()  # not reached by the first run
    with login(server) as s:
        outcomes = dict(s.download_tree_each("t", env.client, resume=True))
    assert isinstance(outcomes.pop(names[1]), TransferResult)
    assert sorted(outcomes) == sorted(n for n in names if n != names[1])
    assert all(isinstance(o, Skipped) for o in outcomes.values()), outcomes
    for name in names:
        assert (env.client / name).read_bytes() == (env.root / name).read_bytes()


def test_a_tree_upload_cut_short_is_finished_by_a_resume(
    env: Env, server: ServerThread, login: Login_
) -> None:
    names = _small_tree(env.client)
    with login(server) as s:
        fresh = dict(s.upload_tree_each(env.client / "t", resume=True))  # nothing there yet
        assert all(isinstance(o, TransferResult) for o in fresh.values()), fresh
        (env.root / names[2]).unlink()
        again = dict(s.upload_tree_each(env.client / "t", resume=True))
        plain = dict(s.upload_tree_each(env.client / "t"))  # without resume: each exists
    assert isinstance(again.pop(names[2]), TransferResult)
    assert all(isinstance(o, Skipped) for o in again.values()), again
    assert all(isinstance(o, AlreadyExists) for o in plain.values()), plain
    for name in names:
        assert (env.root / name).read_bytes() == (env.client / name).read_bytes()


def test_a_tree_upload_with_resume_goes_on_when_the_tree_is_too_large_to_list(
    env: Env, start_server: Callable[..., ServerThread], login: Login_
) -> None:
    """The resume's listing is refused (over max_list_entries): nothing is skipped, and
    each file already there is refused alone, as without resume."""
    names = _small_tree(env.client, 4)
    srv = start_server(max_list_entries=2)
    with login(srv) as s:
        first = dict(s.upload_tree_each(env.client / "t", resume=True))
        assert all(isinstance(o, TransferResult) for o in first.values()), first
        (env.root / names[0]).unlink()
        again = dict(s.upload_tree_each(env.client / "t", resume=True))
    assert isinstance(again.pop(names[0]), TransferResult)
    assert all(isinstance(o, AlreadyExists) for o in again.values()), again
    assert (env.root / names[0]).read_bytes() == (env.client / names[0]).read_bytes()


def test_glob_matches_names(env: Env, server: ServerThread, login: Login_) -> None:
    (env.root / "a.iso").write_text("a")
    (env.root / "b.iso").write_text("b")
    with login(server) as s:
        assert [e.path for e in s.glob("*.iso")] == ["a.iso", "b.iso"]
        assert [e.path for e in s.glob("sub/*.txt")] == ["sub/inner.txt"]
        assert s.glob("*.nothing") == []


def test_upload_by_read_only_user_is_refused(env: Env, server: ServerThread, login: Login_) -> None:
    local = env.client / "up.txt"
    local.write_text("x")
    with login(server, BOB) as s:
        with pytest.raises(PermissionDenied, match="read-only"):
            s.upload(local)
        s.download("hello.txt", env.client)  # the session goes on
    assert not (env.root / "up.txt").exists()


def test_upload_then_no_overwrite_without_force(
    env: Env, server: ServerThread, login: Login_
) -> None:
    local = env.client / "up.bin"
    local.write_bytes(os.urandom(2 * MiB + 5))
    with login(server) as s:
        r = s.upload(local, "incoming/up.bin")
        assert r.digest == b3(local)
        with pytest.raises(AlreadyExists):
            s.upload(local, "incoming/up.bin")
        local.write_bytes(b"new content")
        s.upload(local, "incoming/up.bin", force=True)
    assert (env.root / "incoming" / "up.bin").read_bytes() == b"new content"


def test_upload_over_the_size_limit_is_refused(
    env: Env, start_server: Callable[..., ServerThread], login: Login_
) -> None:
    srv = start_server(max_upload_size=1000)
    local = env.client / "big.bin"
    local.write_bytes(b"x" * 1001)
    with login(srv) as s, pytest.raises(TooLarge):
        s.upload(local)
    assert not (env.root / "big.bin").exists()


def test_upload_tree(env: Env, server: ServerThread, login: Login_) -> None:
    src = env.client / "photos"
    (src / "2024").mkdir(parents=True)
    (src / "a.jpg").write_bytes(b"a" * 100)
    (src / "2024" / "b.jpg").write_bytes(b"b" * 200)
    with login(server) as s:
        results = s.upload_tree(src)
    assert sorted(r.remote for r in results) == ["photos/2024/b.jpg", "photos/a.jpg"]
    assert (env.root / "photos" / "2024" / "b.jpg").read_bytes() == b"b" * 200


@pytest.mark.timeout(60)
def test_upload_cut_then_resumed_is_byte_identical(
    env: Env, start_server: Callable[..., ServerThread], login: Login_
) -> None:
    srv = start_server()
    local = env.client / "cut.bin"
    local.write_bytes(os.urandom(20 * MiB))
    s = login(srv)

    def cut(done: int, total: int) -> None:
        if done >= 10 * MiB:
            s.sock.shutdown(socket.SHUT_RDWR)  # the network drops

    with pytest.raises(ConnectError):
        s.upload(local, progress=cut)
    s.close()
    assert not (env.root / "cut.bin").exists()
    for _ in range(100):  # the server notices the cut and keeps the partial
        if srv.call(lambda: not srv.server._uploads):
            break
        threading.Event().wait(0.05)
    with login(srv) as s2:
        r = s2.upload(local, resume=True)
    assert r.resumed_from == 8 * MiB  # the BLAKE3 prefix digests (version 3) agreed
    assert r.transferred == 12 * MiB
    assert r.algorithm == "blake3" and r.digest == b3(local) == b3(env.root / "cut.bin")
    assert not any(p.name.endswith(".tcpft-part") for p in env.root.iterdir())


def test_server_caches_hashes_of_unchanged_files(
    env: Env, server: ServerThread, login: Login_
) -> None:
    with login(server) as s:
        first = s.download("data.bin", env.client / "1")
        assert server.call(lambda: len(server.server.hashes)) == 1
        second = s.download("data.bin", env.client / "2")
    assert first.digest == second.digest == b3(env.root / "data.bin")


def test_digests_are_kept_across_a_restart(
    env: Env, start_server: Callable[..., ServerThread], login: Login_
) -> None:
    first = start_server()
    with login(first) as s:
        s.download("data.bin", env.client / "1")
    first.stop()
    assert (env.state / "digests").exists()

    again = start_server()  # same state directory

    def cached() -> bytes | None:
        with again.server.storage.open_read("data.bin") as handle:
            return again.server.hashes.digest(handle.identity, "blake3")

    assert again.call(cached) == bytes.fromhex(b3(env.root / "data.bin"))
    os.utime(env.root / "data.bin")  # a new mtime and ctime: the saved digest is not used
    assert again.call(cached) is None
    with login(again) as s:
        assert s.download("data.bin", env.client / "2").digest == b3(env.root / "data.bin")


# --- a malicious server ------------------------------------------------------------


@pytest.fixture
def evil_server() -> Iterator[tuple[int, list[Entry]]]:
    """A plaintext test double that logs anyone in and lists hostile names."""
    entries: list[Entry] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    stop = threading.Event()

    def serve() -> None:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        with sock:
            sock.settimeout(10)
            conn = Connection(Role.SERVER)

            def next_msg() -> object:
                while True:
                    ev = conn.next_event()
                    if ev is not NEED_DATA:
                        return ev
                    conn.receive_data(sock.recv(65536))

            try:
                assert isinstance(next_msg(), Hello)
                sock.sendall(conn.send(Welcome(PROTOCOL_VERSION, "evil")))
                assert isinstance(next_msg(), Login)
                sock.sendall(conn.send(LoginOk("x", False)))
                sock.sendall(conn.send(ListEnd()))
                while not stop.is_set():
                    if isinstance(next_msg(), ListRequest):
                        sock.sendall(conn.send(ListEntries(tuple(entries))))
                        sock.sendall(conn.send(ListEnd()))
            except Exception:
                return

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield listener.getsockname()[1], entries
    stop.set()
    listener.close()
    t.join(5)


@pytest.mark.parametrize(
    "hostile",
    ["d/../../escaped", "d/../../../tmp/escaped", "/etc/escaped", "d/\x1b[2J\x1b]0;pwn\x07"],
)
def test_malicious_names_cannot_escape_the_destination(
    tmp_path: Path, evil_server: tuple[int, list[Entry]], hostile: str
) -> None:
    port, entries = evil_server
    entries.append(Entry(hostile, False, 5, 0))
    dest = tmp_path / "dest"
    dest.mkdir()
    s = connect("127.0.0.1", port, user="u", password="p", plaintext=True, timeout=5)
    with s, pytest.raises(RemoteProtocolError) as info:
        s.download_tree("d", dest)
    assert "\x1b" not in str(info.value)
    assert not (tmp_path / "escaped").exists()
    assert [p for p in tmp_path.rglob("*") if "escaped" in p.name] == []


@pytest.mark.timeout(60)
def test_rate_limits_on_the_server_and_on_the_client(
    env: Env, start_server: Callable[..., ServerThread], login: Login_
) -> None:
    # 8 MiB at 4 MiB/s with a 1 MiB burst: at least 1.75 s each way (a lower bound only).
    (env.root / "slow.bin").write_bytes(os.urandom(8 * MiB))
    srv = start_server(limit_rate=4 * MiB)
    with login(srv) as s:
        got = s.download("slow.bin", env.client)
    assert got.seconds >= 1.5
    with login(srv, limit_rate=4 * MiB) as s:
        sent = s.upload(env.client / "slow.bin", "back.bin")
    assert sent.seconds >= 1.5
    assert (env.root / "back.bin").read_bytes() == (env.root / "slow.bin").read_bytes()


@pytest.mark.timeout(60)
def test_a_client_rate_limit_slows_its_downloads(
    env: Env, server: ServerThread, login: Login_
) -> None:
    (env.root / "slow.bin").write_bytes(os.urandom(8 * MiB))
    with login(server, limit_rate=4 * MiB) as s:
        got = s.download("slow.bin", env.client)
    assert got.seconds >= 1.5  # 8 MiB at 4 MiB/s with a 1 MiB burst: 1.75 s at least
    assert (env.client / "slow.bin").read_bytes() == (env.root / "slow.bin").read_bytes()


@pytest.mark.timeout(60)
def test_a_slow_server_rate_never_leaves_the_client_waiting_for_a_frame(
    env: Env, start_server: Callable[..., ServerThread], login: Login_
) -> None:
    """At 64 KiB/s, a 64 KiB frame followed by its wait left the client a second
    without a byte; paced in quarter-second pieces, a 0.6 s read timeout holds."""
    content = os.urandom(MiB + 192 * 1024)  # the 1 MiB burst, then 3 s at 64 KiB/s
    (env.root / "slow.bin").write_bytes(content)
    srv = start_server(limit_rate=64 * 1024, chunk_size=64 * 1024)
    with login(srv, timeout=0.6) as s:
        s.download("slow.bin", env.client)
    assert (env.client / "slow.bin").read_bytes() == content


@pytest.mark.timeout(60)
def test_a_slow_client_rate_never_leaves_the_server_waiting_past_its_stall_timeout(
    env: Env, start_server: Callable[..., ServerThread], login: Login_
) -> None:
    """An upload at 256 KiB/s sent 1 MiB chunks, each followed by a 4 s wait, past the
    server's stall timeout; in quarter-second pieces it goes through."""
    src = env.client / "slow.bin"
    src.write_bytes(os.urandom(2 * MiB + 512 * 1024))  # the 1 MiB burst, then 6 s
    srv = start_server(stall_timeout=1.5)
    with login(srv, limit_rate=256 * 1024) as s:
        s.upload(src)
    assert (env.root / "slow.bin").read_bytes() == src.read_bytes()


@pytest.mark.timeout(20)
def test_uploading_a_fifo_is_refused_without_hanging(
    env: Env, server: ServerThread, login: Login_
) -> None:
    fifo = env.client / "pipe"
    os.mkfifo(fifo)
    with login(server) as s:
        with pytest.raises(LocalFileError, match="not a regular file"):
            s.upload(fifo)
        s.download("hello.txt", env.client)  # the session goes on
    assert not (env.root / "pipe").exists()


def test_async_tree_and_glob(env: Env, server: ServerThread) -> None:
    async def main() -> tuple[list[str], int, int]:
        async with await aconnect(
            "127.0.0.1", server.port, user=ALICE[0], password=ALICE[1],
            known_hosts=env.known_hosts,
        ) as s:  # fmt: skip
            found = [e.path for e in await s.glob("*.txt")]
            down = await s.download_tree("sub", env.client)
            up = await s.upload_tree(env.client / "sub", "copy")
            return found, len(down), len(up)

    assert asyncio.run(main()) == (["hello.txt"], 1, 1)
    assert (env.root / "copy" / "inner.txt").read_text() == "inner\n"
