"""The digest algorithm follows the protocol version, against a real server over TLS.

Version 3 digests with BLAKE3; a peer of version 1 or 2 on either side gets SHA-256,
for whole files, resume prefixes and the server's digest cache alike.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import tcpft.client
import tcpft.server
from tcpft.client import Session, TransferResult
from tcpft.errors import ErrorCode
from tcpft.integrity import BLAKE3, SHA256
from tcpft.limits import RESUME_BLOCK_SIZE
from tcpft.messages import Ack, Data, Done, Put, PutReady
from tcpft.names import PARTIAL_SUFFIX

from ..adversarial.rawclient import expect_error, frame, logged_in
from ..conftest import ALICE, Env, ServerThread, b3

Login_ = Callable[..., Session]
StartServer = Callable[..., ServerThread]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _round_trip(env: Env, s: Session) -> tuple[TransferResult, TransferResult]:
    down = s.download("data.bin", env.client / "down.bin")
    (env.client / "up.bin").write_bytes(os.urandom(700_000))
    up = s.upload(env.client / "up.bin", "up.bin")
    assert (env.client / "down.bin").read_bytes() == (env.root / "data.bin").read_bytes()
    assert (env.root / "up.bin").read_bytes() == (env.client / "up.bin").read_bytes()
    return down, up


@pytest.mark.timeout(30)
def test_version_3_and_later_digests_with_blake3(
    env: Env, server: ServerThread, login: Login_
) -> None:
    with login(server) as s:
        assert (s.conn.version, s.algorithm) == (4, BLAKE3)
        down, up = _round_trip(env, s)
    assert (down.algorithm, down.digest) == (BLAKE3, b3(env.root / "data.bin"))
    assert (up.algorithm, up.digest) == (BLAKE3, b3(env.client / "up.bin"))
    assert down.checksum == "blake3:" + down.digest


@pytest.mark.timeout(30)
@pytest.mark.parametrize("side", ["server", "client"])
def test_a_version_2_peer_gets_sha256(
    env: Env,
    start_server: StartServer,
    login: Login_,
    monkeypatch: pytest.MonkeyPatch,
    side: str,
) -> None:
    if side == "server":  # a server of the release before BLAKE3
        monkeypatch.setattr(tcpft.server, "_VERSION", 2)
    else:
        monkeypatch.setattr(tcpft.client, "PROTOCOL_VERSION", 2)
    srv = start_server()
    with login(srv) as s:
        assert (s.conn.version, s.algorithm) == (2, SHA256)
        down, up = _round_trip(env, s)
        # Pipelining is still on in version 2, with SHA-256 digests.
        jobs = [("hello.txt", env.client / "h1"), ("data.bin", env.client / "d1")]
        outcomes = list(s.download_many(jobs))
    assert (down.algorithm, down.digest) == (SHA256, _sha256(env.root / "data.bin"))
    assert (up.algorithm, up.digest) == (SHA256, _sha256(env.client / "up.bin"))
    results = [o for _, o in outcomes]
    assert all(isinstance(r, TransferResult) and r.algorithm == SHA256 for r in results)


@pytest.mark.timeout(60)
def test_the_server_caches_each_algorithm_apart(
    env: Env, server: ServerThread, login: Login_, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version 3 resume fills the cache with BLAKE3 block digests; a version 2 resume
    of the same file must still be answered with SHA-256 ones, and both resume."""
    content = os.urandom(2 * RESUME_BLOCK_SIZE + 1000)
    (env.root / "big.bin").write_bytes(content)
    results = {}
    for version in (3, 2, 3):
        monkeypatch.setattr(tcpft.client, "PROTOCOL_VERSION", version)
        target = env.client / f"big-{version}.bin"
        target.with_name(target.name + PARTIAL_SUFFIX).write_bytes(content[: RESUME_BLOCK_SIZE + 5])
        with login(server) as s:
            result = s.download("big.bin", target, resume=True)
        assert target.read_bytes() == content
        assert result.resumed_from == RESUME_BLOCK_SIZE, version
        results[version] = result
        target.unlink()
    assert results[3].digest == b3(content) and results[3].algorithm == BLAKE3
    assert results[2].digest == hashlib.sha256(content).hexdigest()
    assert results[2].algorithm == SHA256


@pytest.mark.timeout(30)
def test_a_sha256_digest_in_a_version_3_upload_is_refused(env: Env, server: ServerThread) -> None:
    content = os.urandom(100_000)
    with logged_in(server.port, ALICE, version=3) as conn:
        conn.send(frame(Put("wrong.bin", len(content), 0)))
        assert isinstance(conn.read_message(), PutReady)
        conn.send(frame(Data(content)) + frame(Done(hashlib.sha256(content).digest())))
        expect_error(conn, ErrorCode.DIGEST_MISMATCH)
        conn.send(frame(Put("right.bin", len(content), 0)))
        assert isinstance(conn.read_message(), PutReady)
        conn.send(frame(Data(content)) + frame(Done(bytes.fromhex(b3(content)))))
        ack = conn.read_message()
        assert isinstance(ack, Ack) and ack.ok, ack
    assert not (env.root / "wrong.bin").exists()
    assert (env.root / "right.bin").read_bytes() == content
