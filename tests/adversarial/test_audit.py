"""The audit trail: one line per login and per transfer, parseable, never a password."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tcpft.client import Session
from tcpft.errors import AuthFailed, ConnectError, InvalidName

from ..conftest import ALICE, BOB, Env, ServerThread, b3
from .rawclient import reset_socket

StartServer = Callable[..., ServerThread]

MIB = 1024 * 1024
WRONG = "wrong-secret-Xyzzy-42"
INJECTED_USER = 'evil" addr=10.9.9.9\nlogin ok user=root addr=10.9.9.9'
FAIL2BAN = re.compile(r"login failed .* addr=127\.0\.0\.1")
FAIL2BAN_HOST = re.compile(r"login failed .* addr=(\S+)")  # <HOST> as fail2ban captures it


def _audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tcpft.audit"]


def _fields(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)}


@pytest.mark.timeout(60)
def test_audit_lines_for_logins_and_transfers(
    start_server: StartServer,
    login: Callable[..., Session],
    env: Env,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: the password must be nowhere
    json_path = tmp_path / "audit.jsonl"
    srv = start_server(audit_json=json_path, penalty_threshold=100)
    with pytest.raises(AuthFailed):
        login(srv, ("alice", WRONG))
    with pytest.raises(AuthFailed):
        login(srv, ("mallory", WRONG))
    with pytest.raises((AuthFailed, ConnectError)):
        login(srv, (INJECTED_USER, WRONG))
    upload = env.client / "up.bin"
    upload.write_bytes(os.urandom(100_000))
    with login(srv) as s:
        got = s.download("hello.txt", env.client)
        put = s.upload(upload, "up.bin")
        with pytest.raises(InvalidName):
            s.download("no-such-file", env.client / "x")
    with login(srv, BOB) as s:
        s.list()
    srv.wait_idle()
    srv.stop()

    lines = _audit_lines(caplog)
    text = "\n".join(r.getMessage() for r in caplog.records) + json_path.read_text()
    for secret in (ALICE[1], BOB[1], WRONG):
        assert secret not in text, f"a password appears in the logs: {secret}"
        assert secret not in caplog.text

    failed = [line for line in lines if line.startswith("login failed")]
    assert len(failed) == 3, lines
    assert all(FAIL2BAN.search(line) for line in failed), failed
    # fail2ban's <HOST> is the real address even with an address in the user name.
    assert all(FAIL2BAN_HOST.search(line).group(1) == "127.0.0.1" for line in failed)  # type: ignore[union-attr]
    assert all("\n" not in line and "\r" not in line for line in lines)
    assert {_fields(line)["user"] for line in failed} >= {"alice", "mallory"}

    ok = [_fields(line) for line in lines if line.startswith("login ok")]
    assert {(f["user"], f["addr"]) for f in ok} == {("alice", "127.0.0.1"), ("bob", "127.0.0.1")}

    gets = [_fields(line) for line in lines if line.startswith("transfer get")]
    good = [f for f in gets if f.get("result") == "ok"]
    assert len(good) == 1, gets
    digest = "blake3:" + b3(b"hello, world\n")
    assert good[0] == {
        "user": "alice", "addr": "127.0.0.1", "path": "hello.txt", "bytes": "13",
        "digest": digest, "result": "ok",
    }  # fmt: skip
    assert got.checksum == digest
    assert any(f.get("path") == "no-such-file" and f["result"] != "ok" for f in gets), gets

    puts = [_fields(line) for line in lines if line.startswith("transfer put")]
    assert puts == [
        {
            "user": "alice", "addr": "127.0.0.1", "path": "up.bin", "bytes": "100000",
            "digest": put.checksum, "result": "ok",
        }
    ]  # fmt: skip

    records = [json.loads(line) for line in json_path.read_text().splitlines()]
    events = [r["event"] for r in records]
    assert events.count("login failed") == 3
    assert events.count("login ok") == 2
    assert {"transfer get", "transfer put"} <= set(events)
    for r in records:
        assert isinstance(r["time"], float) and r["addr"] == "127.0.0.1"
    put_record = next(r for r in records if r["event"] == "transfer put")
    assert put_record["bytes"] == 100_000 and put_record["digest"] == put.checksum
    assert any(r.get("user") == INJECTED_USER for r in records)  # kept intact, as data


@pytest.mark.timeout(30)
def test_penalty_refusals_are_audited(
    start_server: StartServer, login: Callable[..., Session], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tcpft.audit")
    srv = start_server(penalty_threshold=1, penalty_base=30.0)
    with pytest.raises(AuthFailed):
        login(srv, ("alice", WRONG))
    with pytest.raises(ConnectError):
        login(srv)
    refused = [line for line in _audit_lines(caplog) if line.startswith("login refused")]
    assert refused and "addr=127.0.0.1" in refused[0] and ALICE[1] not in refused[0]


def _cut_transfer(srv: ServerThread, env: Env, login: Callable[..., Session], kind: str) -> None:
    """Start a transfer of 8 MiB and reset the connection from the client in the middle."""

    class Cut(Exception):
        pass

    def progress(n: int, total: int) -> None:
        if n >= 2 * MIB:
            raise Cut

    s = login(srv)
    try:
        with pytest.raises(Cut):
            if kind == "get":
                s.download("big.bin", env.client / "got.bin", progress=progress)
            else:
                s.upload(env.client / "big.bin", "big-up.bin", progress=progress)
    finally:
        if kind == "get":
            reset_socket(s.sock)
        else:  # a FIN, not a reset: the server reads what arrived, then sees the cut
            s.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            s.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["get", "put"])
def test_a_transfer_cut_midway_is_still_audited(
    start_server: StartServer,
    login: Callable[..., Session],
    env: Env,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    caplog.set_level(logging.INFO, logger="tcpft.audit")
    data = os.urandom(8 * MIB)
    (env.root / "big.bin").write_bytes(data)
    (env.client / "big.bin").write_bytes(data)
    srv = start_server(limit_rate=4 * MIB)
    _cut_transfer(srv, env, login, kind)
    srv.wait_idle()
    lines = [line for line in _audit_lines(caplog) if line.startswith(f"transfer {kind}")]
    assert lines, f"no audit line for the cut {kind}"
    fields = _fields(lines[0])
    assert fields["user"] == "alice" and fields["result"] != "ok"
    assert int(fields["bytes"]) > 0


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_an_audit_file_that_cannot_be_written_does_not_stop_the_server(
    start_server: StartServer,
    login: Callable[..., Session],
    env: Env,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A full disk under the JSON audit file: logins and transfers go on, the loss is
    logged once, and the logger's lines are still written."""
    caplog.set_level(logging.INFO, logger="tcpft.audit")
    srv = start_server(audit_json=Path("/dev/full"))  # every write: ENOSPC
    for _ in range(2):
        with login(srv) as s:
            assert s.download("hello.txt", env.client, force=True).size == 13
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot write the audit file" in errors[0].getMessage()
    assert sum("transfer get" in r.getMessage() for r in caplog.records) == 2
