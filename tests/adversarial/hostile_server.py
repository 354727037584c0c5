"""A plaintext tcpft server that says whatever a test scripts, for testing the client.

It logs anyone in, sends the listing the test gives, then answers every message of
the client with the frames the test's ``respond`` returns (raw bytes: nothing it
sends is checked against the protocol, that is the point). What the client sends is
decoded frame by frame without a state machine and recorded in ``received``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from tcpft.frames import FrameDecoder
from tcpft.limits import MAX_DATA_PAYLOAD
from tcpft.messages import Hello, ListEnd, Login, LoginOk, Message, Welcome, decode_message

from .rawclient import frame

#: What the server sends for each message of the client after login.
Respond = Callable[[Message], bytes]


def nothing(_: Message) -> bytes:
    return b""


class HostileServer:
    """Serves one connection in a daemon thread; ``port`` to connect to, then ``join``."""

    def __init__(
        self,
        respond: Respond = nothing,
        *,
        listing: bytes | None = None,
        version: int = 4,
    ) -> None:
        self.received: list[Message] = []
        self._respond = respond
        self._listing = frame(ListEnd()) if listing is None else listing
        self._version = version
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(10)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with self._listener:
            sock, _ = self._listener.accept()
        decoder = FrameDecoder()

        def next_msg() -> Message | None:
            while (got := decoder.next_frame(lambda _: MAX_DATA_PAYLOAD)) is None:
                data = sock.recv(65536)
                if not data:
                    return None
                decoder.feed(data)
            return decode_message(got.type, got.payload)

        with sock, contextlib.suppress(OSError):  # the client may well hang up on us
            sock.settimeout(10)
            if not isinstance(next_msg(), Hello):
                return
            sock.sendall(frame(Welcome(self._version, "hostile")))
            if not isinstance(next_msg(), Login):
                return
            sock.sendall(frame(LoginOk("x", True)) + self._listing)
            while (msg := next_msg()) is not None:
                self.received.append(msg)
                if reply := self._respond(msg):
                    sock.sendall(reply)

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
