"""Where received file data goes: written to a file and hashed, inline or in a worker.

A driver asks the sink for a buffer, receives a DATA payload straight into it, and
submits it. :class:`ThreadSink` writes and hashes in a worker thread while the next
payload arrives (os.write and the hashers release the GIL, so this uses a second
core); a few reused buffers bound its memory and spare the allocator. :class:`InlineSink`
does the same work at once, for small files where a thread costs more than it saves.
"""

from __future__ import annotations

import os
import queue
import threading

from .integrity import Hasher
from .limits import MAX_DATA_PAYLOAD


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


class InlineSink:
    """Writes and hashes each chunk as it is submitted."""

    def __init__(self, fd: int, hasher: Hasher, buf: bytearray | None = None) -> None:
        self.fd = fd
        self.hasher = hasher
        self._buf = buf if buf is not None else bytearray(MAX_DATA_PAYLOAD)

    def buffer(self) -> bytearray:
        """A buffer to receive the next payload into (valid until :meth:`submit`)."""
        return self._buf

    def submit(self, data: bytes | bytearray, length: int) -> None:
        """Write and hash ``data[:length]``.

        Raises:
            OSError: the write failed.
        """
        view = memoryview(data)[:length]
        _write_all(self.fd, view)
        self.hasher.update(view)

    def close(self) -> None:
        """Nothing is pending; present for symmetry with ThreadSink."""


class ThreadSink:
    """Writes and hashes chunks in order in a worker thread, overlapping the network."""

    def __init__(self, fd: int, hasher: Hasher, buffers: int = 3) -> None:
        self.fd = fd
        self.hasher = hasher
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(buffers):
            self._free.put(bytearray(MAX_DATA_PAYLOAD))
        self._todo: queue.Queue[tuple[bytes | bytearray, int] | None] = queue.Queue()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="tcpft-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            data, length = item
            if self._error is None:
                try:
                    view = memoryview(data)[:length]
                    _write_all(self.fd, view)
                    self.hasher.update(view)
                except OSError as exc:
                    self._error = exc
            if isinstance(data, bytearray):
                self._free.put(data)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def buffer(self) -> bytearray:
        """A free buffer (waits for the worker to release one).

        Raises:
            OSError: an earlier write failed.
        """
        buf = self._free.get()
        if self._error is not None:
            self._free.put(buf)
            self._check()
        return buf

    def submit(self, data: bytes | bytearray, length: int) -> None:
        """Queue ``data[:length]``; a bytearray from :meth:`buffer` comes back to the pool.

        Raises:
            OSError: an earlier write failed.
        """
        self._check()
        self._todo.put((data, length))

    def close(self) -> None:
        """Wait until everything queued is written and hashed (again is harmless).

        Raises:
            OSError: a write failed.
        """
        if self._thread.is_alive():
            self._todo.put(None)
            self._thread.join()
        self._check()


Sink = InlineSink | ThreadSink
