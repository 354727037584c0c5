"""The server's receive side: bytes go from the connection into the buffer the reader names.

asyncio's :class:`~asyncio.StreamReader` copies every received byte in and out of its
own buffer, and TLS joins its records into one more bytes object first. For an upload
that is three copies of every byte on the event-loop thread, which limits the upload
rate. :class:`ReceiverProtocol` is a :class:`~asyncio.BufferedProtocol`: the transport
(TCP or TLS, which decrypts in place) writes straight into the memory that
:meth:`Receiver.read_into` was given, such as the buffer a DATA payload will be written
to disk from. Between reads the transport is paused, so nothing is buffered here but
what arrives in the moment a read ends (at most :data:`SPILL_SIZE` bytes).

The protocol still derives from :class:`~asyncio.StreamReaderProtocol` so that the
:class:`~asyncio.StreamWriter` side (``drain``, ``start_tls``, ``wait_closed``) works
unchanged; its StreamReader is never fed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

#: The most that is taken from the transport while no read is waiting.
SPILL_SIZE = 16 * 1024


class StallWatch:
    """Says when a transfer has made no progress for ``limit`` seconds.

    ``progress()`` returns something that changes whenever the peer sends or takes a
    byte. It is looked at every ``step`` (a quarter of ``limit``), so a peer that
    stops is seen between ``limit`` and 1.25 ``limit`` after its last byte. Checking
    once per ``limit`` would let a byte at the start of a period buy it a second one.
    """

    CHECKS = 4

    def __init__(self, limit: float, progress: Callable[[], object]) -> None:
        self.limit = limit
        self.step = limit / self.CHECKS
        self._progress = progress
        self._seen = progress()
        self._since = time.monotonic()

    def stalled(self) -> bool:
        """Look at the progress now: True once it has not moved for ``limit`` seconds."""
        now, seen = time.monotonic(), self._progress()
        if seen != self._seen:
            self._seen, self._since = seen, now
            return False
        return now - self._since >= self.limit * 0.999  # timers fire a hair early or late


class Receiver:
    """Reads from one connection into caller-supplied buffers; see :class:`ReceiverProtocol`."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self._target: memoryview | None = None  # where the transport writes now
        self._filled = 0  # bytes of _target written
        self._exact = False  # complete the read only when _target is full
        self._waiter: asyncio.Future[None] | None = None
        self._spill = bytearray(SPILL_SIZE)
        self._extra = bytearray()  # received while no read was waiting
        self._paused = False
        self._eof = False
        self._error: BaseException | None = None

    def attach(self, transport: asyncio.BaseTransport | None) -> None:
        """Read from ``transport`` from now on, paused until a read waits.

        None while the transport is being replaced (during ``start_tls``): the TLS
        layer may deliver the first bytes before the new transport is known.
        """
        self.transport, self._paused = transport, False
        if self._target is None:
            self._pause()

    # --- the reading side ----------------------------------------------------------

    async def read_into(
        self,
        view: memoryview,
        *,
        exact: bool = False,
        stall: float | None = None,
        busy: Callable[[], int] | None = None,
    ) -> int:
        """Receive into ``view``: all of it with ``exact``, else at least one byte.

        Returns the number of bytes received; fewer than asked (0 without
        ``exact``) only when the peer has closed.

        Raises:
            TimeoutError: ``stall`` seconds passed without a byte, and without a
                change of ``busy()`` (a count that moves as the peer takes our bytes,
                such as what its TCP acknowledged): a peer that keeps sending or
                reading, however slowly, is waited for.
            OSError, ssl.SSLError: the connection failed.
        """
        got = self._take_extra(view)
        if got == len(view) or (got and not exact):
            return got
        if self._error is not None:
            raise self._error
        if self._eof:
            return got
        if self._waiter is not None:
            raise RuntimeError("read_into() is already waiting")
        loop = asyncio.get_running_loop()
        self._target, self._filled, self._exact = view[got:], 0, exact
        self._waiter = waiter = loop.create_future()
        timer: asyncio.TimerHandle | None = None
        if stall is not None:
            watch = StallWatch(stall, lambda: (self._filled, busy() if busy else 0))

            def check() -> None:
                nonlocal timer
                if watch.stalled():
                    if not waiter.done():
                        waiter.set_exception(TimeoutError())
                    return
                timer = loop.call_later(watch.step, check)

            timer = loop.call_later(watch.step, check)
        self._resume()
        try:
            await waiter
        finally:
            got += self._filled
            self._target, self._waiter = None, None
            if timer is not None:
                timer.cancel()
        if self._error is not None and not got:
            raise self._error
        return got

    def _take_extra(self, view: memoryview) -> int:
        extra = self._extra
        if not extra:
            return 0
        n = min(len(extra), len(view))
        view[:n] = extra[:n]
        del extra[:n]
        return n

    def _resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()  # type: ignore[attr-defined]

    def _pause(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._paused = True
            self.transport.pause_reading()  # type: ignore[attr-defined]

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- called by the protocol ----------------------------------------------------

    def get_buffer(self) -> memoryview:
        target = self._target
        if target is not None and self._filled < len(target):
            return target[self._filled :]
        # No read is waiting: take a little and stop the transport until one is.
        self._pause()
        return memoryview(self._spill)

    def buffer_updated(self, nbytes: int) -> None:
        target = self._target
        if target is not None and self._filled < len(target):
            self._filled += nbytes
            if self._filled == len(target) or not self._exact:
                self._target = None
                self._wake()
        else:
            self._extra += self._spill[:nbytes]

    def data_received(self, data: bytes) -> None:
        """Take bytes a transport delivers by copy (event loops that do not call
        :meth:`get_buffer`, such as uvloop): the same path, one copy more."""
        view = memoryview(data)
        while view:
            buf = self.get_buffer()
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    def eof(self) -> None:
        self._eof = True
        self._wake()

    def lost(self, exc: BaseException | None) -> None:
        if exc is not None and self._error is None:
            self._error = exc
        self._eof = True
        self._wake()


Handler = Callable[[Receiver, asyncio.StreamWriter], Awaitable[None]]


class ReceiverProtocol(asyncio.StreamReaderProtocol, asyncio.BufferedProtocol):
    """A StreamReaderProtocol whose incoming bytes go to a :class:`Receiver` instead.

    For ``loop.create_server(lambda: ReceiverProtocol(handler), ...)``: like
    :func:`asyncio.start_server`, it runs ``handler(receiver, writer)`` as a task for
    each connection.
    """

    def __init__(self, handler: Handler) -> None:
        self.receiver = Receiver()
        receiver = self.receiver

        def connected(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
            return handler(receiver, writer)

        super().__init__(asyncio.StreamReader(), connected)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.receiver.attach(transport)
        super().connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.receiver.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.receiver.buffer_updated(nbytes)

    def data_received(self, data: bytes) -> None:
        self.receiver.data_received(data)

    def eof_received(self) -> bool:
        self.receiver.eof()
        return bool(super().eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self.receiver.lost(exc)
        super().connection_lost(exc)
