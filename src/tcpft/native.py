"""The few C library calls the standard library lacks, and direct I/O, each best effort.

Linux's ``fallocate`` with ``FALLOC_FL_KEEP_SIZE`` (``os.posix_fallocate`` would change
the file size) and ``sync_file_range``, glibc's ``mallopt``, switching a descriptor
to direct I/O (``O_DIRECT``), and what a TCP peer has acknowledged (``TCP_INFO``).
Elsewhere, or when the call is missing or refused, the functions do nothing: they
only make things cheaper, or a stall easier to tell from a slow peer.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import socket
import struct
import sys
from typing import Any


def _libc_function(name: str, argtypes: list[Any]) -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    func.argtypes = argtypes
    func.restype = ctypes.c_int
    return func


_FALLOC_FL_KEEP_SIZE = 1
_fallocate = _libc_function(
    "fallocate64", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
)
_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = _libc_function(
    "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: Malloc heaps for ``tcpft serve`` (see :func:`tune_server_malloc`).
SERVER_MALLOC_ARENAS = 2
#: Allocations from this size up get memory of their own, given back when freed.
SERVER_MMAP_THRESHOLD = 4 << 20
_mallopt = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int])


def preallocate(fd: int, offset: int, length: int) -> None:
    """Reserve the disk blocks of ``length`` bytes at ``offset``, leaving the size alone.

    Writing into reserved blocks spares the file system an allocation per write
    (measured on ext4, 1 GiB in 256 KiB writes: 0.20-0.29 s of CPU instead of
    0.30-0.34, and no waiting, where it took 0.6-0.8 s of wall time before). The
    file keeps its size, so a partial file still says how much was received;
    :func:`release_preallocation` gives back what a cut transfer did not use.
    Best effort: does nothing where Linux's ``fallocate`` is missing or refuses.
    """
    if _fallocate is not None and length > 0:
        _fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length)


def release_preallocation(fd: int) -> None:
    """Free blocks reserved past the end of the file (a truncate to its own size)."""
    if _fallocate is not None:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, os.fstat(fd).st_size)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes at ``offset`` to disk, now.

    It does not wait for the disk and guarantees nothing (the caller still fsyncs);
    it only starts early what a later ``fsync`` would otherwise do all at once. A
    file written at network speed and then fsynced, measured on ext4 at 400 MB/s for
    1 GiB: the final fsync took 0.53-0.61 s, and 0.01-0.02 s when the writeback of
    every 8 MiB was started as it was written, for the same CPU. Best effort: does
    nothing where Linux's ``sync_file_range`` is missing or refuses.
    """
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def tune_server_malloc() -> list[str]:
    """Set glibc malloc up for a server; return the settings applied.

    Each is skipped when the user chose otherwise, with its environment variables or
    glibc's tunables (``GLIBC_TUNABLES``): the user's own choice wins.

    - ``MALLOC_ARENA_MAX``: the threads share at most :data:`SERVER_MALLOC_ARENAS`
      heaps. By default glibc gives each thread that allocates under contention a heap
      of its own (up to 8 per core) and freed buffers stay cached in each: measured
      with 50 concurrent TLS uploads, a peak of 229 MB, 149 MB with 2 arenas, at the
      same speed.
    - ``MALLOC_MMAP_THRESHOLD_``: blocks of :data:`SERVER_MMAP_THRESHOLD` or more are
      mapped on their own and unmapped when freed, and the heaps keep at most twice
      that free at their top. By default glibc raises both limits to fit the largest
      block freed so far: after the first argon2id login (19 MiB) its next ones came
      from the heaps and stayed there, free. 50 concurrent TLS uploads peaked at
      126-133 MB instead of 152-196, at the same speed.

    Call it early, before threads start.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    applied = []
    settings = (  # (environment variable: its glibc tunable), what mallopt sets
        ({"MALLOC_ARENA_MAX": "arena_max"}, ((_M_ARENA_MAX, SERVER_MALLOC_ARENAS),)),
        (
            {
                "MALLOC_MMAP_THRESHOLD_": "mmap_threshold",
                "MALLOC_TRIM_THRESHOLD_": "trim_threshold",
            },
            (
                (_M_MMAP_THRESHOLD, SERVER_MMAP_THRESHOLD),
                (_M_TRIM_THRESHOLD, 2 * SERVER_MMAP_THRESHOLD),
            ),
        ),
    )
    for names, options in settings:
        chosen = any(
            variable in os.environ or f"glibc.malloc.{tunable}" in tunables
            for variable, tunable in names.items()
        )
        if chosen or _mallopt is None:
            continue
        if all(_mallopt(option, value) == 1 for option, value in options):
            applied.append(next(iter(names)))
    return applied


#: What direct I/O needs aligned, here: the memory, the file offset and the length.
#: 4096 is the page size and a multiple of every disk's logical block size.
DIRECT_IO_ALIGN = 4096
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


def aligned_buffer(size: int) -> mmap.mmap:
    """A zeroed buffer of ``size`` (> 0) bytes that starts on a page boundary."""
    return mmap.mmap(-1, size)


def is_aligned(view: memoryview) -> bool:
    """Whether ``view`` is writable memory starting on a :data:`DIRECT_IO_ALIGN` boundary."""
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):  # read-only or empty: never used for direct I/O
        return False
    return address % DIRECT_IO_ALIGN == 0


def set_direct_io(fd: int, on: bool) -> bool:
    """Switch ``O_DIRECT`` on or off for ``fd``; whether the descriptor took it.

    Writes then go from the caller's memory to the disk, past the page cache. False
    where the platform or the file system has no direct I/O (tmpfs before Linux 6.6).
    """
    if not _O_DIRECT:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)
    except OSError:
        return False
    return True


_TCPI_BYTES_ACKED = 120  # offset of tcpi_bytes_acked (u64) in Linux's struct tcp_info


def socket_bytes_acked(sock: socket.socket) -> int | None:
    """How many bytes the peer of TCP socket ``sock`` has acknowledged since the
    connection began (Linux 4.1 and later), or None where that cannot be read.

    It grows as the peer's kernel takes data, which, once its receive buffer is full,
    is as the peer's program reads: unlike an asyncio transport's buffer, which moves
    in large steps (a writer is woken only once a good part of a full send buffer
    is free), it shows a slow reader's every byte.
    """
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None or not sys.platform.startswith("linux"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 256)
    except OSError:
        return None
    if len(info) < _TCPI_BYTES_ACKED + 8:
        return None
    acked: int = struct.unpack_from("<Q", info, _TCPI_BYTES_ACKED)[0]
    return acked
