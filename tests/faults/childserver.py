"""A tcpft server in a child process (multiprocessing, spawn), for tests that kill it.

The child runs :class:`tcpft.server.Server` on its own asyncio loop with real TLS: the
certificate lives in ``state_dir``, so a server restarted on the same state directory
presents the same certificate. The parent learns the port through a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tcpft.auth import User, UserStore, hash_password

from ..conftest import ALICE, BOB

_HASHES: dict[str, str] = {}


def picklable_users() -> list[tuple[str, str, bool]]:
    """ALICE (rw) and BOB (r) as picklable (name, hash, can_write), hashed once."""
    if not _HASHES:
        _HASHES[ALICE[0]] = hash_password(ALICE[1])
        _HASHES[BOB[0]] = hash_password(BOB[1])
    return [(ALICE[0], _HASHES[ALICE[0]], True), (BOB[0], _HASHES[BOB[0]], False)]


def _serve(settings: dict[str, Any], users: list[tuple[str, str, bool]], pipe: Connection) -> None:
    """The child's main: start the server, report the port, serve until killed."""
    from tcpft.config import ServerConfig
    from tcpft.server import Server
    from tcpft.tls import ensure_server_certificate, server_context

    async def main() -> None:
        config = ServerConfig(**settings)
        cert, key = ensure_server_certificate(config.state_dir)
        store = UserStore([User(name, h, can_write=w) for name, h, w in users])
        server = Server(config, store, server_context(cert, key))
        await server.start()
        pipe.send(server.port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        serving = asyncio.create_task(server.serve_forever())
        await stop.wait()
        await server.shutdown(1.0)
        serving.cancel()

    asyncio.run(main())


class ChildServer:
    """A server in a spawned child process; ``kill()`` is a SIGKILL."""

    def __init__(self, root: Path, state_dir: Path, **overrides: Any) -> None:
        settings: dict[str, Any] = {
            "root": root,
            "host": "127.0.0.1",
            "port": 0,
            "state_dir": state_dir,
            "login_failure_delay": 0.05,
            "shutdown_grace": 1.0,
        }
        settings.update(overrides)
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_serve, args=(settings, picklable_users(), child))
        self.process.start()
        child.close()
        try:
            if not parent.poll(30):
                raise RuntimeError("the child server did not start in time")
            self.port: int = parent.recv()
        except BaseException:
            self.kill()
            raise
        finally:
            parent.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the server: no goodbye, no cleanup, sockets closed by the kernel."""
        if self.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.process.join(10)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it lingers."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)
        self.kill()

    def __enter__(self) -> ChildServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
