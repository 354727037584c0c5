"""Shared fixtures: a real tcpft server on 127.0.0.1 in a background thread.

Every server listens on port 0 of the loopback interface, uses real TLS with a
certificate made for the test, serves a real directory, and is shut down at the end
of the test that started it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from tcpft.auth import UserStore
from tcpft.client import Session, connect
from tcpft.config import ServerConfig
from tcpft.server import Server
from tcpft.tls import certificate_fingerprint, ensure_server_certificate, server_context

ALICE = ("alice", "alice-password-1")  # may write
BOB = ("bob", "bob-password-2")  # read-only

_STATE_CACHE: dict[str, Any] = {}


def b3(what: bytes | Path) -> str:
    """The BLAKE3 hex digest of some bytes or of a file (read in pieces), straight from
    the library: what a protocol 3 transfer reports."""
    if isinstance(what, bytes):
        return blake3.blake3(what).hexdigest()
    hasher = blake3.blake3()
    with what.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def _users() -> UserStore:
    # Hashing is slow on purpose; make the two accounts once per test session.
    if "users" not in _STATE_CACHE:
        store = UserStore()
        store.add(*ALICE, write=True)
        store.add(*BOB)
        _STATE_CACHE["users"] = store
    store = _STATE_CACHE["users"]
    assert isinstance(store, UserStore)
    return store


class ServerThread:
    """A Server running on its own event loop in a daemon thread."""

    def __init__(self, config: ServerConfig, users: UserStore) -> None:
        self.config = config
        self.users = users
        self.loop = asyncio.new_event_loop()
        ctx = None
        self.fingerprint: str | None = None
        if not config.plaintext:
            cert, key = ensure_server_certificate(config.state_dir)
            ctx = server_context(cert, key)
            self.fingerprint = certificate_fingerprint(cert)
        self.server = Server(config, users, ctx)
        self._ready = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self._ready.set()
        self.loop.run_forever()

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop (for inspecting its state safely)."""

        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout`` seconds) until no connection is left open."""
        deadline = time.monotonic() + timeout
        while self.call(lambda: self.server.connection_count) and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self, grace: float = 1.0) -> None:
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            fut = asyncio.run_coroutine_threadsafe(self.server.shutdown(grace), self.loop)
            fut.result(grace + 10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


@dataclasses.dataclass
class Env:
    """Paths of one test's world: served root, server state, client side."""

    root: Path
    state: Path
    client: Path
    known_hosts: Path


@pytest.fixture
def env(tmp_path: Path) -> Env:
    root = tmp_path / "served"
    root.mkdir()
    (root / "hello.txt").write_text("hello, world\n")
    (root / "data.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_text("inner\n")
    client = tmp_path / "client"
    client.mkdir()
    return Env(root, tmp_path / "state", client, tmp_path / "known_hosts")


@pytest.fixture
def start_server(env: Env) -> Iterator[Callable[..., ServerThread]]:
    """Start a server on 127.0.0.1:0 serving ``env.root``; keyword args override settings."""
    started: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        users = overrides.pop("users", None) or _users()
        settings: dict[str, Any] = {
            "root": env.root,
            "host": "127.0.0.1",
            "port": 0,
            "state_dir": env.state,
            "login_failure_delay": 0.05,
            "shutdown_grace": 1.0,
        }
        settings.update(overrides)
        srv = ServerThread(ServerConfig(**settings), users)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerThread]) -> ServerThread:
    """A default TLS server."""
    return start_server()


@pytest.fixture
def login(env: Env) -> Callable[..., Session]:
    """Connect to a ServerThread as alice (or as given), pinning into env.known_hosts."""

    def do(srv: ServerThread, user: tuple[str, str] = ALICE, **kwargs: Any) -> Session:
        kwargs.setdefault("known_hosts", env.known_hosts)
        kwargs.setdefault("plaintext", srv.config.plaintext)
        kwargs.setdefault("timeout", 10.0)
        return connect("127.0.0.1", srv.port, user=user[0], password=user[1], **kwargs)

    return do
