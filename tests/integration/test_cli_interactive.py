"""``tcpft client HOST PORT``, the founding sequence, driven through a terminal (pexpect)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pexpect
import pytest

from ..conftest import ALICE, Env, ServerThread

pytestmark = pytest.mark.timeout(60)

FILE_PROMPT = r"file \(empty to quit\): "
TRUST_PROMPT = r"Trust this server\? \[y/N\] "


@pytest.fixture
def client(server: ServerThread, env: Env) -> Iterator[pexpect.spawn]:
    """``tcpft client 127.0.0.1 PORT`` on a pseudo-terminal, in ``env.client``."""
    child_env = dict(os.environ)
    child_env.pop("TCPFT_PASSWORD", None)
    child_env.update(
        TCPFT_CONFIG_DIR=str(env.client.parent / "config"),
        TCPFT_STATE_DIR=str(env.client.parent / "cli-state"),
        TERM="xterm",
    )
    child = pexpect.spawn(
        sys.executable,
        ["-m", "tcpft", "client", "127.0.0.1", str(server.port)],
        env=child_env,
        cwd=str(env.client),
        timeout=20,
        encoding="utf-8",
        dimensions=(50, 160),
    )
    try:
        yield child
    finally:
        if child.isalive():
            child.terminate(force=True)
        child.close()


def log_in(child: pexpect.spawn, user: str, password: str, trust: str = "y") -> None:
    """User name, then (like SSH) the new server's fingerprint, then the password."""
    child.expect("user: ")
    child.sendline(user)
    child.expect(TRUST_PROMPT)
    child.sendline(trust)
    if trust == "y":
        child.expect("password: ")
        child.sendline(password)


def test_founding_sequence(client: pexpect.spawn, server: ServerThread, env: Env) -> None:
    client.expect("user: ")
    client.sendline(ALICE[0])
    assert server.fingerprint is not None
    client.expect_exact(server.fingerprint)
    client.expect(TRUST_PROMPT)
    client.sendline("y")
    client.expect("password: ")  # only once the server is trusted
    client.sendline(ALICE[1])
    for name in ("data.bin", "hello.txt", "sub/"):  # the listing, sorted by name
        client.expect_exact(name)
    client.expect(FILE_PROMPT)

    client.sendline("no-such-file")
    client.expect_exact("tcpft: error: no such file: no-such-file")
    for name in ("data.bin", "hello.txt", "sub/"):  # the listing again
        client.expect_exact(name)
    client.expect(FILE_PROMPT)

    client.sendline("data.bin")
    client.expect(r"received data\.bin: 3\.0 MiB in [\d.]+ s \([^)]+/s\), blake3 verified")
    client.expect(pexpect.EOF)
    client.close()
    assert client.exitstatus == 0
    assert (env.client / "data.bin").read_bytes() == (env.root / "data.bin").read_bytes()
    assert (env.client.parent / "config" / "known_hosts").read_text().split()[-1] == (
        server.fingerprint
    )


def test_wrong_password(client: pexpect.spawn) -> None:
    log_in(client, ALICE[0], "not-the-password")
    client.expect_exact("tcpft: error: login failed")
    client.expect(pexpect.EOF)
    client.close()
    assert client.exitstatus == 4


def test_refusing_the_server(client: pexpect.spawn, env: Env) -> None:
    log_in(client, *ALICE, trust="n")  # refused before any password is asked
    client.expect_exact("is not a known host")
    client.expect(pexpect.EOF)
    client.close()
    assert client.exitstatus == 5
    assert not (env.client.parent / "config" / "known_hosts").exists()


def test_existing_file_not_overwritten_then_quit(client: pexpect.spawn, env: Env) -> None:
    (env.client / "hello.txt").write_text("mine\n")
    log_in(client, *ALICE)
    client.expect(FILE_PROMPT)
    client.sendline("hello.txt")
    client.expect(r"overwrite\? \[y/N\] ")
    client.sendline("")
    client.expect(FILE_PROMPT)
    client.sendline("")
    client.expect(pexpect.EOF)
    client.close()
    assert client.exitstatus == 0
    assert (env.client / "hello.txt").read_text() == "mine\n"


def test_partial_file_is_resumed(client: pexpect.spawn, env: Env) -> None:
    data = os.urandom(9 * 1024 * 1024)
    (env.root / "big.bin").write_bytes(data)
    (env.client / "big.bin.tcpft-part").write_bytes(data[: 5 * 1024 * 1024])
    log_in(client, *ALICE)
    client.expect(FILE_PROMPT)
    client.sendline("big.bin")
    client.expect(r"resume\? \[Y/n\] ")
    client.sendline("")
    client.expect(r"received big\.bin: 9\.0 MiB in .*resumed at 4\.0 MiB\), blake3 verified")
    client.expect(pexpect.EOF)
    client.close()
    assert client.exitstatus == 0
    assert (env.client / "big.bin").read_bytes() == data
    assert not (env.client / "big.bin.tcpft-part").exists()


def test_end_of_input_at_the_password_prompt(client: pexpect.spawn) -> None:
    client.expect("user: ")
    client.sendline(ALICE[0])
    client.expect(TRUST_PROMPT)
    client.sendline("y")
    client.expect("password: ")
    client.sendeof()  # Ctrl-D
    client.expect_exact("tcpft: error: no password given (end of input)")
    client.expect(pexpect.EOF)
    client.close()
    assert client.exitstatus == 2
    assert "Traceback" not in (client.before or "")


def test_end_of_input_at_user_add(env: Env) -> None:
    users = env.client.parent / "users"
    child = pexpect.spawn(
        sys.executable,
        ["-m", "tcpft", "user", "add", "carol", "--users", str(users)],
        cwd=str(env.client),
        timeout=20,
        encoding="utf-8",
    )
    try:
        child.expect("password for carol: ")
        child.sendeof()
        child.expect_exact("tcpft: error: no password given (end of input)")
        child.expect(pexpect.EOF)
        assert "Traceback" not in (child.before or "")
    finally:
        child.close()
    assert child.exitstatus == 2
    assert not users.exists()
