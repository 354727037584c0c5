"""Streamed uploads (protocol version 4) through the real client and server, over TLS.

``Session.upload_many`` sends small files without waiting for each verdict; these
tests check that every file lands intact, that each outcome belongs to its own file,
and that refusals, local errors, early stops and older servers leave the session
usable.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import tcpft.server
from tcpft.aio import aconnect
from tcpft.client import Session, TransferResult
from tcpft.errors import (
    AlreadyExists,
    FileChanged,
    LocalFileError,
    PermissionDenied,
    TcpftError,
)
from tcpft.limits import RESUME_BLOCK_SIZE
from tcpft.names import PARTIAL_SUFFIX
from tcpft.protocol import State

from ..conftest import ALICE, BOB, Env, ServerThread, b3

Login_ = Callable[..., Session]
StartServer = Callable[..., ServerThread]


def _make(env: Env, count: int, size: int = 3000) -> list[Path]:
    src = env.client / "src"
    src.mkdir(exist_ok=True)
    paths = []
    for i in range(count):
        path = src / f"f{i:03d}.bin"
        path.write_bytes(os.urandom(size + i))
        paths.append(path)
    return paths


def _partials(where: Path) -> list[str]:
    return [p.name for p in where.rglob("*" + PARTIAL_SUFFIX)]


@pytest.mark.timeout(60)
def test_small_files_are_streamed_and_land_intact(
    env: Env, server: ServerThread, login: Login_
) -> None:
    paths = _make(env, 60)
    sent_streamed = 0
    with login(server) as s:
        assert s.conn.version == 4
        (env.root / "up").mkdir()
        outcomes = []
        for outcome in s.upload_many((p, f"up/{p.name}") for p in paths):
            outcomes.append(outcome)
            sent_streamed = max(sent_streamed, s.conn.verdicts_owed)
        assert s.conn.state is State.READY and s.conn.verdicts_owed == 0
        assert [e.path for e in s.list("up")] == [f"up/{p.name}" for p in paths]
    assert sent_streamed > 0, "no verdict was ever owed: nothing was streamed"
    assert [remote for remote, _ in outcomes] == [f"up/{p.name}" for p in paths]
    for path, (_, result) in zip(paths, outcomes, strict=True):
        assert isinstance(result, TransferResult), result
        assert (result.local, result.size, result.resumed_from) == (path, path.stat().st_size, 0)
        assert result.digest == b3(path)
        stored = env.root / "up" / path.name
        assert stored.read_bytes() == path.read_bytes()
        assert stored.stat().st_mtime_ns == path.stat().st_mtime_ns
    assert _partials(env.root) == []


@pytest.mark.timeout(60)
def test_small_and_large_files_mix(env: Env, server: ServerThread, login: Login_) -> None:
    """A file of 4 MiB or more goes with PUT_READY (it could resume), an empty one is
    streamed as PUT and DONE; order is kept."""
    small = _make(env, 5)
    large = env.client / "large.bin"
    large.write_bytes(os.urandom(RESUME_BLOCK_SIZE + 10))
    empty = env.client / "empty.bin"
    empty.write_bytes(b"")
    jobs = [(small[0], None), (small[1], None), (large, None), (small[2], None)]
    jobs += [(empty, None), (small[3], None), (small[4], None)]
    with login(server) as s:
        outcomes = list(s.upload_many(jobs))
    assert [r for r, _ in outcomes] == [p.name for p, _ in jobs]
    for path, _ in jobs:
        assert (env.root / path.name).read_bytes() == path.read_bytes()
    assert all(isinstance(r, TransferResult) for _, r in outcomes)


@pytest.mark.timeout(60)
def test_a_refusal_fails_that_file_alone(env: Env, server: ServerThread, login: Login_) -> None:
    paths = _make(env, 20)
    (env.root / paths[7].name).write_bytes(b"already here")
    (env.root / paths[15].name).write_bytes(b"already here")
    with login(server) as s:
        outcomes = dict(s.upload_many((p, None) for p in paths))
        assert s.conn.state is State.READY
        assert len(s.list()) > 20  # the session goes on
    for i, path in enumerate(paths):
        result = outcomes[path.name]
        if i in (7, 15):
            assert isinstance(result, AlreadyExists), result
            assert (env.root / path.name).read_bytes() == b"already here"
        else:
            assert isinstance(result, TransferResult), (i, result)
            assert (env.root / path.name).read_bytes() == path.read_bytes()
    assert _partials(env.root) == []


@pytest.mark.timeout(60)
def test_force_overwrites_and_a_name_twice_keeps_the_last(
    env: Env, server: ServerThread, login: Login_
) -> None:
    first, second = _make(env, 2)
    (env.root / "same.bin").write_bytes(b"old")
    with login(server) as s:
        outcomes = list(s.upload_many([(first, "same.bin"), (second, "same.bin")], force=True))
    assert all(isinstance(r, TransferResult) for _, r in outcomes), outcomes
    assert (env.root / "same.bin").read_bytes() == second.read_bytes()


@pytest.mark.timeout(60)
def test_a_read_only_account_is_refused_file_by_file(
    env: Env, server: ServerThread, login: Login_
) -> None:
    paths = _make(env, 12)
    with login(server, BOB) as s:
        outcomes = list(s.upload_many((p, None) for p in paths))
        assert s.conn.state is State.READY and s.conn.verdicts_owed == 0
        s.download("hello.txt", env.client / "h.txt")
    assert [type(r) for _, r in outcomes] == [PermissionDenied] * len(paths)
    assert not any((env.root / p.name).exists() for p in paths)
    assert (env.client / "h.txt").read_text() == "hello, world\n"


@pytest.mark.timeout(60)
def test_a_missing_local_file_is_its_own_outcome(
    env: Env, server: ServerThread, login: Login_
) -> None:
    paths = _make(env, 6)
    paths[2].unlink()
    with login(server) as s:
        outcomes = list(s.upload_many((p, None) for p in paths))
    assert [r for r, _ in outcomes] == [p.name for p in paths]
    assert isinstance(outcomes[2][1], LocalFileError)
    assert sum(isinstance(r, TransferResult) for _, r in outcomes) == 5


@pytest.mark.timeout(60)
def test_stopping_early_waits_for_the_verdicts_owed(
    env: Env, server: ServerThread, login: Login_
) -> None:
    paths = _make(env, 30)
    with login(server) as s:
        gen = s.upload_many((p, None) for p in paths)
        first = next(gen)
        gen.close()
        assert s.conn.state is State.READY and s.conn.verdicts_owed == 0
        stored = {e.path for e in s.list()}
    assert isinstance(first[1], TransferResult)
    sent = [p for p in paths if p.name in stored]
    assert paths[0] in sent and len(sent) < len(paths)
    for path in sent:
        assert (env.root / path.name).read_bytes() == path.read_bytes()


@pytest.mark.timeout(60)
def test_a_version_3_server_gets_one_upload_at_a_time(
    env: Env, start_server: StartServer, login: Login_, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tcpft.server, "_VERSION", 3)
    srv = start_server()
    paths = _make(env, 10)
    (env.root / paths[4].name).write_bytes(b"x")
    with login(srv) as s:
        assert s.conn.version == 3
        outcomes = list(s.upload_many((p, None) for p in paths))
    assert isinstance(outcomes[4][1], AlreadyExists)
    for i, path in enumerate(paths):
        if i != 4:
            assert (env.root / path.name).read_bytes() == path.read_bytes()


@pytest.mark.timeout(60)
def test_upload_tree_streams_and_stops_at_the_first_failure(
    env: Env, server: ServerThread, login: Login_
) -> None:
    tree = env.client / "tree"
    for i in range(40):
        (tree / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 4}" / f"f{i:02d}.txt").write_bytes(os.urandom(100 + i))
    with login(server) as s:
        results = s.upload_tree(tree)
        assert len(results) == 40
        (env.root / "again").mkdir()
        (env.root / "again" / "d0").mkdir()
        (env.root / "again" / "d0" / "f04.txt").write_bytes(b"in the way")
        with pytest.raises(AlreadyExists):
            s.upload_tree(tree, "again")
        assert s.conn.state is State.READY and s.conn.verdicts_owed == 0
    for path in tree.rglob("*.txt"):
        assert (env.root / "tree" / path.relative_to(tree)).read_bytes() == path.read_bytes()
    assert (env.root / "again" / "d0" / "f04.txt").read_bytes() == b"in the way"


@pytest.mark.timeout(60)
def test_every_streamed_upload_is_audited_with_its_verdict(
    env: Env, start_server: StartServer, login: Login_, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tcpft.audit")
    srv = start_server()
    paths = _make(env, 10)
    (env.root / paths[3].name).write_bytes(b"x")
    with login(srv) as s:
        outcomes = dict(s.upload_many((p, None) for p in paths))
    srv.wait_idle()
    lines = [r.getMessage() for r in caplog.records if r.name == "tcpft.audit"]
    puts = [line for line in lines if line.startswith("transfer put")]
    assert len(puts) == 9, puts  # the refused one never started
    for path in paths:
        if isinstance(outcomes[path.name], TcpftError):
            continue
        (line,) = [x for x in puts if f"path={path.name}" in x]
        assert "result=ok" in line and f"blake3:{b3(path)}" in line, line


@pytest.mark.timeout(60)
def test_async_upload_many(env: Env, server: ServerThread) -> None:
    paths = _make(env, 10)

    async def main() -> list[str]:
        async with await aconnect(
            "127.0.0.1", server.port, user=ALICE[0], password=ALICE[1],
            known_hosts=env.known_hosts, timeout=10.0,
        ) as s:  # fmt: skip
            outcomes = await s.upload_many((p, f"a-{p.name}") for p in paths)
        return [r for r, o in outcomes if isinstance(o, TransferResult)]

    assert asyncio.run(main()) == [f"a-{p.name}" for p in paths]
    for path in paths:
        assert (env.root / f"a-{path.name}").read_bytes() == path.read_bytes()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [5000, 2 * 1024 * 1024 + 7], ids=["one-write", "chunked"])
def test_a_file_that_changes_while_sent_fails_alone(
    env: Env, server: ServerThread, login: Login_, size: int
) -> None:
    """The file grows after it was opened: that upload is cancelled (with verdicts owed
    on the files before it), nothing is stored under its name, and the rest go on."""
    paths = _make(env, 6)
    victim = paths[3]
    victim.write_bytes(os.urandom(size))

    def progress_for(remote: str) -> Callable[[int, int], None] | None:
        if remote != victim.name:
            return None

        def grow(done: int, total: int) -> None:
            with victim.open("ab") as fh:
                fh.write(b"more")

        return grow

    with login(server) as s:
        outcomes = dict(s.upload_many(((p, None) for p in paths), progress_for=progress_for))
        assert s.conn.state is State.READY and s.conn.verdicts_owed == 0
    assert isinstance(outcomes[victim.name], FileChanged), outcomes[victim.name]
    assert not (env.root / victim.name).exists() and _partials(env.root) == []
    for path in paths:
        if path is not victim:
            assert (env.root / path.name).read_bytes() == path.read_bytes()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "size", [2 * 1024 * 1024 + 7, RESUME_BLOCK_SIZE + 7], ids=["streamed", "whole"]
)
def test_a_local_read_error_mid_file_fails_that_file_alone(
    env: Env, server: ServerThread, login: Login_, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """The disk fails under the client while it sends a file (EIO, which this machine
    cannot make on demand, so ``os.pread`` fails for that one file past its first MiB):
    the upload is cancelled, the file fails alone and the session goes on."""
    paths = _make(env, 4)
    victim = paths[1]
    victim.write_bytes(os.urandom(size))
    inode = victim.stat().st_ino
    real_pread = os.pread

    def failing_pread(fd: int, n: int, pos: int) -> bytes:
        if pos >= 1024 * 1024 and os.fstat(fd).st_ino == inode:
            raise OSError(errno.EIO, "Input/output error")
        return real_pread(fd, n, pos)

    monkeypatch.setattr(os, "pread", failing_pread)
    with login(server) as s:
        outcomes = dict(s.upload_many((p, None) for p in paths))
        assert s.conn.state is State.READY and s.conn.verdicts_owed == 0
        with pytest.raises(LocalFileError, match="Input/output error"):
            s.upload(victim, "again.bin")
        assert s.conn.state is State.READY
        assert {e.path for e in s.list()} >= {p.name for p in paths if p is not victim}
    assert isinstance(outcomes[victim.name], LocalFileError), outcomes[victim.name]
    assert not (env.root / victim.name).exists() and not (env.root / "again.bin").exists()
    assert _partials(env.root) == []
    for path in paths:
        if path is not victim:
            assert (env.root / path.name).read_bytes() == path.read_bytes()
