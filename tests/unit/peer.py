"""A one-connection server on 127.0.0.1 in a thread, for the TLS tests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

TIMEOUT = 5.0

Handler = Callable[[socket.socket], object]


class Peer:
    """Accept one connection and run ``handler`` on it; keep its result or its error."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.result: object = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                self.result = self.handler(conn)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


@contextmanager
def peer(handler: Handler) -> Iterator[Peer]:
    """Run a :class:`Peer` for the block; it must be finished at the end of it."""
    p = Peer(handler)
    p.thread.start()
    try:
        yield p
    finally:
        p.thread.join(TIMEOUT * 2)
        p.listener.close()
        assert not p.thread.is_alive()
