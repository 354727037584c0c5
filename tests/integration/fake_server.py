"""A plaintext test double of a tcpft server, built on the sans-I/O core.

It logs anyone in, answers the first GET with whatever frames the test chooses (true
or not), and records what the client sends afterwards, until it closes. For testing
how the client takes answers that tcpft's own server never sends.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from tcpft.messages import Get, Hello, ListEnd, Login, LoginOk, Message, Welcome
from tcpft.protocol import CLOSED, NEED_DATA, Connection, Role


class FakeServer:
    """Serves one connection in a daemon thread; ``port`` to connect to, then ``join``."""

    def __init__(self, reply: Callable[[Get], list[Message]], version: int = 2) -> None:
        self.received: list[object] = []  # what the client sent after the reply
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(10)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, args=(reply, version), daemon=True)
        self._thread.start()

    def _serve(self, reply: Callable[[Get], list[Message]], version: int) -> None:
        with self._listener:
            sock, _ = self._listener.accept()
        with sock:
            sock.settimeout(10)
            conn = Connection(Role.SERVER)

            def next_msg() -> object:
                while (ev := conn.next_event()) is NEED_DATA:
                    conn.receive_data(sock.recv(65536))  # b"": the client closed
                return ev

            with contextlib.suppress(Exception):  # the client may well refuse the reply
                assert isinstance(next_msg(), Hello)
                sock.sendall(conn.send(Welcome(version, "fake")))
                assert isinstance(next_msg(), Login)
                sock.sendall(conn.send(LoginOk("x", False)) + conn.send(ListEnd()))
                get = next_msg()
                assert isinstance(get, Get)
                sock.sendall(b"".join(conn.send(msg) for msg in reply(get)))
                while (msg := next_msg()) is not CLOSED:
                    self.received.append(msg)

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
