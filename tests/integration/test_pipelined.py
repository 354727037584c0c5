"""Pipelined downloads (protocol version 2 and later) against a real server over TLS."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import tcpft.server
from tcpft.aio import aconnect
from tcpft.client import Session, TransferResult, connect
from tcpft.errors import (
    AlreadyExists,
    InvalidName,
    RemoteProtocolError,
    ShuttingDown,
    TcpftError,
)
from tcpft.messages import Data, FileHeader, Get, Message
from tcpft.names import PARTIAL_SUFFIX, download_partial
from tcpft.protocol import State

from ..conftest import ALICE, Env, ServerThread
from .fake_server import FakeServer

Login_ = Callable[..., Session]


def _files(env: Env, count: int, size: int = 3000) -> list[str]:
    (env.root / "many").mkdir()
    names = []
    for i in range(count):
        name = f"many/f{i:04d}.bin"
        (env.root / name).write_bytes(os.urandom(size + i))
        names.append(name)
    return names


def _same(env: Env, remote: str, local: Path) -> bool:
    return (
        hashlib.sha256(local.read_bytes()).digest()
        == hashlib.sha256((env.root / remote).read_bytes()).digest()
    )


def _leftovers(where: Path) -> list[str]:
    return [p.name for p in where.rglob("*" + PARTIAL_SUFFIX)]


@pytest.mark.timeout(60)
def test_many_files_arrive_in_order_and_intact(
    env: Env, server: ServerThread, login: Login_
) -> None:
    names = [*_files(env, 300), "data.bin", "hello.txt"]
    with login(server) as s:
        assert s.conn.version == 4 and s.algorithm == "blake3"
        outcomes = list(s.download_many((n, env.client / n.replace("/", "_")) for n in names))
        assert s.conn.state is State.READY
    assert [r for r, _ in outcomes] == names
    for remote, result in outcomes:
        assert isinstance(result, TransferResult), result
        assert result.local == env.client / remote.replace("/", "_")
        assert _same(env, remote, result.local)
    assert _leftovers(env.client) == []


@pytest.mark.timeout(60)
def test_a_failed_file_is_reported_in_its_turn_and_the_rest_arrive(
    env: Env, server: ServerThread, login: Login_
) -> None:
    names = _files(env, 20)
    (env.client / "f0007.bin").write_text("mine\n")  # this one exists locally
    jobs = [(n, env.client) for n in names[:5]] + [("many/missing", env.client)]
    jobs += [(n, env.client) for n in names[5:]]
    with login(server) as s:
        outcomes = list(s.download_many(jobs))
        assert s.conn.state is State.READY
        # The session goes on as usual.
        assert s.download("hello.txt", env.client).size == 13
    assert [r for r, _ in outcomes] == [r for r, _ in jobs]
    errors = {r: type(o) for r, o in outcomes if isinstance(o, TcpftError)}
    assert errors == {"many/missing": InvalidName, "many/f0007.bin": AlreadyExists}
    missing = next(o for r, o in outcomes if r == "many/missing")
    assert {e.path for e in missing.listing} >= {"hello.txt", "many"}  # type: ignore[union-attr]
    assert (env.client / "f0007.bin").read_text() == "mine\n"
    for remote, result in outcomes:
        if isinstance(result, TransferResult):
            assert _same(env, remote, result.local)
    assert _leftovers(env.client) == []


@pytest.mark.timeout(60)
def test_a_target_that_appears_during_its_download_fails_that_file_alone(
    env: Env, server: ServerThread, login: Login_
) -> None:
    names = _files(env, 6)
    intruder = env.client / "f0002.bin"

    def progress_for(remote: str) -> Callable[[int, int], None] | None:
        if remote != names[2]:
            return None
        return lambda pos, size: intruder.write_text("mine\n") if pos == size else None

    with login(server) as s:
        jobs = ((n, env.client) for n in names)
        outcomes = list(s.download_many(jobs, progress_for=progress_for))
        assert s.conn.state is State.READY
        assert s.download("hello.txt", env.client).size == 13  # the session goes on
    errors = {r: type(o) for r, o in outcomes if isinstance(o, TcpftError)}
    assert errors == {names[2]: AlreadyExists}
    assert intruder.read_text() == "mine\n"  # never overwritten
    assert _same(env, names[2], env.client / ("f0002.bin" + PARTIAL_SUFFIX))  # kept, verified
    for remote, result in outcomes:
        if isinstance(result, TransferResult):
            assert _same(env, remote, result.local)
    assert len([o for _, o in outcomes if isinstance(o, TransferResult)]) == 5


@pytest.mark.timeout(60)
def test_stopping_early_finishes_what_was_requested(
    env: Env, server: ServerThread, login: Login_
) -> None:
    names = _files(env, 40)
    with login(server) as s:
        outcomes = s.download_many(((n, env.client) for n in names), ahead=4)
        for _ in range(3):
            next(outcomes)
        outcomes.close()
        assert s.conn.state is State.READY
        assert [e.path for e in s.list("many")][:2] == names[:2]
    got = sorted(p.name for p in env.client.iterdir())
    # The 3 taken, and those already requested: at most 4 more.
    assert 3 <= len(got) <= 3 + 4
    assert got == [n.rsplit("/", 1)[1] for n in names[: len(got)]]
    assert _leftovers(env.client) == []


@pytest.mark.timeout(60)
def test_tree_download_is_pipelined_and_complete(
    env: Env, server: ServerThread, login: Login_
) -> None:
    names = _files(env, 100)
    with login(server) as s:
        results = s.download_tree("many", env.client)
    assert len(results) == 100
    for remote in names:
        assert _same(env, remote, env.client / remote)


@pytest.mark.timeout(60)
def test_a_version_1_server_is_served_one_request_at_a_time(
    env: Env,
    start_server: Callable[..., ServerThread],
    login: Login_,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tcpft.server, "_VERSION", 1)  # a server of the first release
    srv = start_server()
    names = _files(env, 30)
    with login(srv) as s:
        assert s.conn.version == 1
        outcomes = list(s.download_many((n, env.client) for n in [*names, "nope"]))
        assert s.conn.state is State.READY
    assert all(isinstance(o, TransferResult) for _, o in outcomes[:-1])
    assert isinstance(outcomes[-1][1], InvalidName)
    for remote in names:
        assert _same(env, remote, env.client / remote.rsplit("/", 1)[1])


@pytest.mark.timeout(60)
def test_a_cut_during_a_pipeline_keeps_only_the_started_partial(
    env: Env, server: ServerThread, login: Login_
) -> None:
    (env.root / "big.bin").write_bytes(os.urandom(24 * 1024 * 1024))
    names = ["hello.txt", "big.bin", *_files(env, 6)]
    # In its own thread, so that the client goes on reading while the server stops.
    stopper = threading.Thread(target=lambda: server.stop(grace=0.0), daemon=True)

    def progress_for(remote: str) -> Callable[[int, int], None] | None:
        def progress(done: int, total: int) -> None:
            if done > 0 and stopper.ident is None:
                stopper.start()

        return progress if remote == "big.bin" else None

    with login(server) as s:
        outcomes = s.download_many(((n, env.client) for n in names), progress_for=progress_for)
        first = next(outcomes)
        assert isinstance(first[1], TransferResult)
        with pytest.raises(ShuttingDown):
            next(outcomes)  # fatal: raised, not yielded
        assert s.conn.state is State.CLOSED
    stopper.join(15)
    # The cut file keeps its partial for a resume; the GETs ahead leave nothing behind.
    assert _leftovers(env.client) == ["big.bin" + PARTIAL_SUFFIX]
    assert sorted(p.name for p in env.client.iterdir()) == [
        "big.bin" + PARTIAL_SUFFIX,
        "hello.txt",
    ]


@pytest.mark.timeout(60)
def test_async_download_many(env: Env, server: ServerThread) -> None:
    names = _files(env, 10)

    async def main() -> list[str]:
        async with await aconnect(
            "127.0.0.1", server.port, user=ALICE[0], password=ALICE[1],
            known_hosts=env.known_hosts, timeout=10.0,
        ) as s:  # fmt: skip
            outcomes = await s.download_many((n, env.client) for n in names)
        return [r for r, o in outcomes if isinstance(o, TransferResult)]

    assert asyncio.run(main()) == names


@pytest.mark.timeout(60)
def test_pipelined_downloads_resume_their_partials(
    env: Env, server: ServerThread, login: Login_
) -> None:
    names = _files(env, 6)
    data = os.urandom(9 * 1024 * 1024)
    (env.root / "many" / "r.bin").write_bytes(data)
    (env.client / ("r.bin" + PARTIAL_SUFFIX)).write_bytes(data[: 5 * 1024 * 1024])
    jobs = [(n, env.client) for n in [*names[:3], "many/r.bin", *names[3:]]]
    with login(server) as s:
        outcomes = dict(s.download_many(jobs, resume=True))
    resumed = outcomes["many/r.bin"]
    assert isinstance(resumed, TransferResult)
    assert (resumed.resumed_from, resumed.transferred) == (4 * 1024 * 1024, 5 * 1024 * 1024)
    assert (env.client / "r.bin").read_bytes() == data
    assert all(
        isinstance(o, TransferResult) and o.resumed_from == 0
        for r, o in outcomes.items()
        if r != "many/r.bin"
    )
    assert _leftovers(env.client) == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "answer",
    [
        lambda get: FileHeader("b.txt", 3, 0),  # another file than the one asked for
        lambda get: FileHeader(get.path, 9 * 1024 * 1024, 0, 4 * 1024 * 1024),  # unasked offset
    ],
    ids=["other name", "other offset"],
)
def test_an_answer_to_another_request_is_refused(
    tmp_path: Path, answer: Callable[[Get], FileHeader]
) -> None:
    def reply(get: Get) -> list[Message]:
        header = answer(get)
        return [header, Data(b"B" * min(header.size - header.offset, 1000))]

    fake = FakeServer(reply)
    s = connect("127.0.0.1", fake.port, user="u", password="p", plaintext=True, timeout=5)
    with s, pytest.raises(RemoteProtocolError, match=r"answered the GET of a\.txt"):
        list(s.download_many([("a.txt", tmp_path), ("c.txt", tmp_path)]))
    fake.join()
    assert list(tmp_path.iterdir()) == []  # no file, no partial


@pytest.mark.timeout(60)
def test_two_files_of_one_name_sent_to_one_folder_keep_the_first(
    env: Env, server: ServerThread, login: Login_
) -> None:
    """a/x.txt and b/x.txt into one folder: the second is refused before its GET, and
    the first arrives whole (it once ended up holding the second's bytes)."""
    for d, text in (("a", "from a, the longer one\n"), ("b", "from b\n")):
        (env.root / d).mkdir()
        (env.root / d / "x.txt").write_text(text)
    dest = env.client / "dest"
    with login(server) as s:
        outcomes = dict(s.download_many([("a/x.txt", f"{dest}/"), ("b/x.txt", f"{dest}/")]))
        assert s.conn.state is State.READY
    assert isinstance(outcomes["a/x.txt"], TransferResult)
    assert isinstance(outcomes["b/x.txt"], AlreadyExists)
    assert (dest / "x.txt").read_text() == "from a, the longer one\n"
    assert _leftovers(dest) == []


@pytest.mark.timeout(60)
def test_a_name_too_long_for_a_partial_suffix_downloads_and_resumes(
    env: Env, server: ServerThread, login: Login_
) -> None:
    name = "n" * 250  # NAME.tcpft-part would pass 255 bytes
    content = os.urandom(9 * 1024 * 1024)
    (env.root / name).write_bytes(content)
    with login(server) as s:
        first = s.download(name, env.client)
        assert (env.client / name).read_bytes() == content and first.resumed_from == 0
        (env.client / name).unlink()
        partial = download_partial(env.client / name)
        assert len(partial.name) <= 255
        partial.write_bytes(content[: 5 * 1024 * 1024])  # as a cut left it
        again = s.download(name, env.client, resume=True)
    assert again.resumed_from == 4 * 1024 * 1024
    assert (env.client / name).read_bytes() == content
    assert not partial.exists()
