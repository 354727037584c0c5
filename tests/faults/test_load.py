"""Load: 200 concurrent connections, half of them hostile, while honest clients download.

Hostile (100): idle TCP, a TLS ClientHello dripped one byte per 0.2 s, garbage, and
half-open TLS (handshake done, then silence). Honest (100): 80 logged-in sessions that
list and wait, and 20 threads that each download a 2 MiB file. Every download must be
byte-identical, the server must reap every hostile connection by its login deadline and
get back to zero connections, and this process must not leak descriptors.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from tcpft.client import Session

from ..adversarial.rawclient import RawConn, client_hello
from ..conftest import Env, ServerThread, b3

StartServer = Callable[..., ServerThread]

MIB = 1024 * 1024
PER_KIND = 25
HONEST_IDLE = 80
DOWNLOADERS = 20
LOGIN_TIMEOUT = 3.0


def _count(srv: ServerThread) -> int:
    return int(srv.call(lambda: srv.server.connection_count))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_hundred_connections_half_hostile(
    start_server: StartServer, login: Callable[..., Session], env: Env
) -> None:
    content = os.urandom(2 * MIB)
    (env.root / "two.bin").write_bytes(content)
    want = b3(content)
    srv = start_server(
        max_connections=300,
        max_unauthenticated=250,
        max_per_address=300,
        login_timeout=LOGIN_TIMEOUT,
        idle_timeout=60,
    )
    me = psutil.Process()
    fds_before = me.num_fds()
    hostile: list[RawConn] = []
    honest: list[Session] = []
    stop_drip = threading.Event()
    drip_thread: threading.Thread | None = None
    peak_fds = peak_conns = 0
    try:
        # 80 honest sessions, logged in a few at a time, stay connected.
        with ThreadPoolExecutor(8) as pool:
            honest.extend(pool.map(lambda _: login(srv), range(HONEST_IDLE)))

        # The hostile wave.
        wave_started = time.monotonic()
        hello = client_hello()
        drips: list[RawConn] = []
        for _ in range(PER_KIND):
            hostile.append(RawConn(srv.port, tls=False))  # idle TCP
            drip = RawConn(srv.port, tls=False)
            hostile.append(drip)
            drips.append(drip)
            garbage = RawConn(srv.port, tls=False)
            hostile.append(garbage)
            with contextlib.suppress(OSError):
                garbage.send_raw(os.urandom(1024))
            hostile.append(RawConn(srv.port))  # half-open TLS: handshake, then nothing

        def drip_loop() -> None:
            for i in range(len(hello)):
                if stop_drip.wait(0.2):
                    return
                for conn in drips:
                    with contextlib.suppress(OSError):
                        conn.send_raw(hello[i : i + 1])

        drip_thread = threading.Thread(target=drip_loop, daemon=True)
        drip_thread.start()

        # Meanwhile, 20 honest downloads.
        def download(i: int) -> str:
            target = env.client / f"two-{i}.bin"
            with login(srv) as s:
                result = s.download("two.bin", target)
                for entry in s.list():
                    assert entry.path
            assert b3(target) == want
            return result.digest

        with ThreadPoolExecutor(DOWNLOADERS) as pool:
            futures = [pool.submit(download, i) for i in range(DOWNLOADERS)]
            while not all(f.done() for f in futures):
                peak_conns = max(peak_conns, _count(srv))
                peak_fds = max(peak_fds, me.num_fds())
                time.sleep(0.05)
            digests = [f.result(timeout=60) for f in futures]
        print(
            f"peak: {peak_conns} connections, {peak_fds - fds_before} more descriptors; "
            f"downloads done {time.monotonic() - wave_started:.1f} s after the wave"
        )
        assert digests == [want] * DOWNLOADERS
        for i in range(DOWNLOADERS):
            assert (env.client / f"two-{i}.bin").read_bytes() == content

        # The honest idle sessions are still alive and well.
        for s in honest[:5]:
            assert {e.path for e in s.list()} >= {"two.bin", "hello.txt"}
        for s in honest:
            s.close()
        honest.clear()

        # The server reaps every hostile connection by the login deadline.
        deadline = wave_started + LOGIN_TIMEOUT + 8.0
        while _count(srv):
            assert time.monotonic() < deadline, (
                f"{_count(srv)} connections still open "
                f"{time.monotonic() - wave_started:.1f} s after the hostile wave"
            )
            time.sleep(0.1)
        print(f"all reaped {time.monotonic() - wave_started:.1f} s after the wave")
        # At the peak, honest and hostile were there together (the garbage ones go fast).
        assert peak_conns >= HONEST_IDLE + 3 * PER_KIND, peak_conns
        assert srv.call(lambda: srv.server._unauthenticated) == 0
        assert srv.call(lambda: dict(srv.server._per_address)) == {}
    finally:
        stop_drip.set()
        if drip_thread is not None:
            drip_thread.join(5)
        for conn in hostile:
            conn.close()
        for s in honest:
            with contextlib.suppress(Exception):
                s.close()
    assert peak_fds < fds_before + 2 * 200 + 100, (fds_before, peak_fds)
    time.sleep(0.2)
    assert me.num_fds() <= fds_before + 10, (fds_before, me.num_fds())
