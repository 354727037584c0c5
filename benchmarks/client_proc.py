"""One benchmark client in its own process: connect, move files, print JSON, exit.

    python -m benchmarks.client_proc {tcpft,raw} {download,upload} PORT --names FILE --dir DIR
        [--remote-prefix P] [--plaintext] [--fingerprint FP] [--barrier] [--fsync]
        [--profile OUT.pstats]

``--names`` lists one name per line: remote names to download into DIR (as their base
name), or files under DIR to upload (as ``P`` + their base name). With ``--barrier``
the client logs in, prints ``READY`` and waits for a line on stdin before it moves any
byte, so that many clients can start their transfers together; after its result it
waits again, for the end of stdin, so that it exits only once every client is done.

The last line printed is JSON: bytes, files, connect_s (TCP + TLS + login),
transfer_s, close_s, t_start / t_end (CLOCK_MONOTONIC, comparable across processes),
cpu_s (this process, connect to close) and vmhwm_kib (its peak RSS, read just before
exit).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import select
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .common import HOST, PASSWORD, USER, cpu_seconds, vmhwm_kib
from .raw_proc import U16, U64, recv_exact, recv_to_fd, send_file

BARRIER_TIMEOUT = 600.0


class _Client:
    def download(self, name: str, dest: Path) -> int:
        raise NotImplementedError

    def download_all(self, names: list[str], base: Path) -> int:
        return sum(self.download(name, base / name.rsplit("/", 1)[-1]) for name in names)

    def upload(self, local: Path, remote: str) -> int:
        raise NotImplementedError

    def upload_all(self, names: list[str], base: Path, prefix: str) -> int:
        return sum(self.upload(base / name, prefix + name.rsplit("/", 1)[-1]) for name in names)

    def close(self) -> None:
        raise NotImplementedError


class _Tcpft(_Client):
    def __init__(
        self, port: int, plaintext: bool, fingerprint: str | None, kh: Path, ahead: int | None
    ) -> None:
        from tcpft.client import GETS_AHEAD, connect  # imported before the clock starts

        self.session = connect(
            HOST, port, user=USER, password=PASSWORD, plaintext=plaintext,
            fingerprint=fingerprint, known_hosts=kh, timeout=120.0,
        )  # fmt: skip
        self.ahead = GETS_AHEAD if ahead is None else ahead

    def download(self, name: str, dest: Path) -> int:
        return self.session.download(name, dest, force=True).size

    def download_all(self, names: list[str], base: Path) -> int:
        """As ``tcpft get`` does with several names: requests pipelined."""
        total = 0
        jobs = [(name, base / name.rsplit("/", 1)[-1]) for name in names]
        for _, result in self.session.download_many(jobs, force=True, ahead=self.ahead):
            if isinstance(result, Exception):
                raise result
            total += result.size
        return total

    def upload(self, local: Path, remote: str) -> int:
        return self.session.upload(local, remote, force=True).size

    def upload_all(self, names: list[str], base: Path, prefix: str) -> int:
        """As ``tcpft put -r`` does: small files streamed."""
        total = 0
        jobs = [(base / name, prefix + name.rsplit("/", 1)[-1]) for name in names]
        for _, result in self.session.upload_many(jobs, force=True):
            if isinstance(result, Exception):
                raise result
            total += result.size
        return total

    def close(self) -> None:
        self.session.close()


class _Raw(_Client):
    def __init__(self, port: int, fsync: bool) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=120.0)
        self.sock.settimeout(None)  # blocking: os.sendfile on a timeout socket gets EAGAIN
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fsync = fsync

    def _request(self, op: bytes, name: str) -> None:
        raw = name.encode()
        self.sock.sendall(op + U16.pack(len(raw)) + raw)

    def download(self, name: str, dest: Path) -> int:
        self._request(b"G", name)
        (size,) = U64.unpack(recv_exact(self.sock, 8))
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            recv_to_fd(self.sock, fd, size)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return int(size)

    def upload(self, local: Path, remote: str) -> int:
        fd = os.open(local, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            self._request(b"S" if self.fsync else b"P", remote)
            self.sock.sendall(U64.pack(size))
            send_file(self.sock, fd, size)
        finally:
            os.close(fd)
        if recv_exact(self.sock, 1) != b"K":
            raise ConnectionError("raw server did not acknowledge the upload")
        return size

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"Q")
        self.sock.close()


def _wait_for_go() -> None:
    print("READY", flush=True)
    ready, _, _ = select.select([sys.stdin], [], [], BARRIER_TIMEOUT)
    if not ready or not sys.stdin.readline():
        raise SystemExit("no start signal from the benchmark driver")


def _wait_for_leave() -> None:
    """Stay until the driver closes stdin, which it does once every client is done.

    The clients share the machine's cores with the server. The exit of a Python
    process (its interpreter's teardown) costs 10-15 ms of CPU; 50 clients exiting one
    by one as they finished took that from the transfers still going, and held back
    the aggregate rate of every row (docs/PERFORMANCE.md, `f4e3a05`). Clients on other
    machines would not, and their start-up is kept out of the measure by the barrier.
    """
    select.select([sys.stdin], [], [], BARRIER_TIMEOUT)


@contextlib.contextmanager
def _profiled(out: str | None) -> Iterator[None]:
    if not out:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        prof.dump_stats(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.client_proc")
    parser.add_argument("tool", choices=["tcpft", "raw"])
    parser.add_argument("op", choices=["download", "upload"])
    parser.add_argument("port", type=int)
    parser.add_argument("--names", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--remote-prefix", default="")
    parser.add_argument("--plaintext", action="store_true")
    parser.add_argument("--fingerprint")
    parser.add_argument("--barrier", action="store_true")
    parser.add_argument(
        "--fsync", action="store_true", help="raw: fsync each file (the server does, on upload)"
    )
    parser.add_argument("--profile", metavar="OUT")
    parser.add_argument("--gets-ahead", type=int, metavar="N", help="tcpft: pipelining depth")
    args = parser.parse_args(argv)
    names = [n for n in Path(args.names).read_text().splitlines() if n]
    base = Path(args.dir)

    if args.tool == "tcpft":
        import tcpft.client  # noqa: F401 - the import is not part of what is measured

    cpu0 = cpu_seconds()
    t0 = time.monotonic()
    client: _Client
    if args.tool == "tcpft":
        client = _Tcpft(
            args.port, args.plaintext, args.fingerprint, base / ".known_hosts", args.gets_ahead
        )
    else:
        client = _Raw(args.port, args.fsync)
    t1 = time.monotonic()
    if args.barrier:
        _wait_for_go()
    total = 0
    t2 = time.monotonic()
    with _profiled(args.profile):
        if args.op == "download":
            total = client.download_all(names, base)
        else:
            total = client.upload_all(names, base, args.remote_prefix)
    t3 = time.monotonic()
    client.close()
    t4 = time.monotonic()
    result = {
        "bytes": total,
        "files": len(names),
        "connect_s": t1 - t0,
        "transfer_s": t3 - t2,
        "close_s": t4 - t3,
        "t_start": t2,
        "t_end": t3,
        "cpu_s": cpu_seconds() - cpu0,
        "vmhwm_kib": vmhwm_kib(),
    }
    print(json.dumps(result), flush=True)
    if args.barrier:
        _wait_for_leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
