"""The raw TCP baseline server: the least work that can move a file over a socket.

    python -m benchmarks.raw_proc ROOT PORTFILE

One thread per connection. A connection carries any number of requests:

- ``G`` u16 name-length, name: the server answers u64 size, then the file's bytes,
  sent with ``os.sendfile``.
- ``P`` u16 name-length, name, u64 size, then the bytes: the server reads them with
  ``recv_into`` a 1 MiB buffer, writes them to ROOT/name and answers ``K``.
- ``S``: the same as ``P``, and the server fsyncs the file before it answers.
- ``Q`` (or a close): the end.

No authentication, no encryption, no integrity check, no fsync (unless ``S``): this
is the denominator of every ratio in the benchmark table.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import sys
import threading
from pathlib import Path

from .common import CHUNK, HOST, write_port_file

U16 = struct.Struct("!H")
U64 = struct.Struct("!Q")


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from ``sock``; ConnectionError on a premature close."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError("peer closed")
        got += k
    return bytes(buf)


def send_file(sock: socket.socket, fd: int, size: int) -> None:
    """Send ``size`` bytes of ``fd`` from offset 0 with sendfile."""
    offset = 0
    while offset < size:
        sent = os.sendfile(sock.fileno(), fd, offset, size - offset)
        if sent == 0:
            raise ConnectionError("sendfile sent nothing")
        offset += sent


def recv_to_fd(sock: socket.socket, fd: int, size: int) -> None:
    """Receive ``size`` bytes into ``fd`` through a 1 MiB buffer."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    left = size
    while left:
        n = sock.recv_into(view, min(CHUNK, left))
        if not n:
            raise ConnectionError("peer closed mid-file")
        out = view[:n]
        while out:
            out = out[os.write(fd, out) :]
        left -= n


def _safe(root: Path, name: str) -> Path:
    path = (root / name).resolve()
    if root not in path.parents:
        raise ValueError(f"bad name {name!r}")
    return path


def _handle(conn: socket.socket, root: Path) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            op = conn.recv(1)
            if op in (b"", b"Q"):
                return
            (length,) = U16.unpack(recv_exact(conn, 2))
            path = _safe(root, recv_exact(conn, length).decode())
            if op == b"G":
                fd = os.open(path, os.O_RDONLY)
                try:
                    size = os.fstat(fd).st_size
                    conn.sendall(U64.pack(size))
                    send_file(conn, fd, size)
                finally:
                    os.close(fd)
            elif op in (b"P", b"S"):
                (size,) = U64.unpack(recv_exact(conn, 8))
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    recv_to_fd(conn, fd, size)
                    if op == b"S":
                        os.fsync(fd)
                finally:
                    os.close(fd)
                conn.sendall(b"K")
            else:
                return


def _serve_one(conn: socket.socket, root: Path) -> None:
    try:
        _handle(conn, root)
    except (OSError, ValueError) as exc:
        print(f"raw server: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.raw_proc")
    parser.add_argument("root")
    parser.add_argument("portfile")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with socket.socket() as lsock:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((HOST, 0))
        lsock.listen(128)
        write_port_file(Path(args.portfile), lsock.getsockname()[1])
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=_serve_one, args=(conn, root), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
