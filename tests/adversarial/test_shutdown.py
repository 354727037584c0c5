"""Shutdown: stop accepting, let a running transfer finish within the grace period, tell
idle sessions, and cut what runs past it."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import pytest

from tcpft.client import Session, TransferResult
from tcpft.errors import ConnectError, ErrorCode
from tcpft.messages import Get

from ..conftest import ALICE, Env, ServerThread
from .rawclient import RawConn, expect_error, frame, logged_in

StartServer = Callable[..., ServerThread]

MIB = 1024 * 1024


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.timeout(60)
def test_shutdown_lets_a_running_download_finish_and_tells_idle_sessions(
    start_server: StartServer, login: Callable[..., Session], env: Env
) -> None:
    content = os.urandom(4 * MIB)
    (env.root / "four.bin").write_bytes(content)
    srv = start_server(limit_rate=3 * MIB)  # 1 MiB burst, then ~1 s for the rest
    port = srv.port
    idle = logged_in(port, ALICE)
    pre_login = RawConn(port)
    pre_login.hello()
    started = threading.Event()
    outcome: list[TransferResult | BaseException] = []

    def download() -> None:
        try:
            with login(srv) as s:
                outcome.append(
                    s.download("four.bin", env.client, progress=lambda n, t: started.set())
                )
        except BaseException as exc:
            outcome.append(exc)
            started.set()

    worker = threading.Thread(target=download)
    stopper = threading.Thread(target=lambda: srv.stop(grace=5.0))
    try:
        worker.start()
        assert started.wait(10)
        t0 = time.monotonic()
        stopper.start()
        # The idle session and the one still logging in are told, and closed.
        expect_error(idle, ErrorCode.SHUTTING_DOWN, timeout=3.0)
        assert idle.read_message(3.0) is None
        expect_error(pre_login, ErrorCode.SHUTTING_DOWN, timeout=3.0)
        # No new connection is accepted meanwhile.
        assert _refuses_connections(port)
        worker.join(15)
        stopper.join(15)
        took = time.monotonic() - t0
    finally:
        idle.close()
        pre_login.close()
        worker.join(15)
        stopper.join(15)
    assert len(outcome) == 1 and isinstance(outcome[0], TransferResult), outcome
    assert (env.client / "four.bin").read_bytes() == content
    assert took < 5.0, f"shutdown took {took:.2f} s with a 5 s grace"


@pytest.mark.timeout(60)
def test_transfer_running_past_the_grace_period_is_cut(
    start_server: StartServer, login: Callable[..., Session], env: Env
) -> None:
    (env.root / "slow.bin").write_bytes(os.urandom(8 * MIB))
    srv = start_server(limit_rate=2 * MIB)  # ~3.5 s: far past a 0.5 s grace
    target = env.client / "slow.bin"
    stopper = threading.Thread(target=lambda: srv.stop(grace=0.5), daemon=True)

    def progress(n: int, total: int) -> None:
        if n >= MIB and not stopper.is_alive() and stopper.ident is None:
            stopper.start()

    t0 = time.monotonic()
    s = login(srv)
    try:
        with pytest.raises(ConnectError):
            s.download("slow.bin", target, progress=progress)
        took = time.monotonic() - t0
    finally:
        with contextlib.suppress(Exception):
            s.close()
        if stopper.ident is not None:
            stopper.join(15)
    assert stopper.ident is not None, "the shutdown never started"
    assert took < 3.0, f"the transfer was cut after {took:.2f} s (grace 0.5 s)"
    assert not target.exists()
    assert srv.server.connection_count == 0


@pytest.mark.timeout(30)
def test_shutdown_logs_no_errors(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = start_server()
    with logged_in(srv.port, ALICE) as idle, RawConn(srv.port) as pre_login:
        pre_login.hello()
        with caplog.at_level(logging.INFO):
            srv.stop(grace=1.0)
        expect_error(idle, ErrorCode.SHUTTING_DOWN)
        expect_error(pre_login, ErrorCode.SHUTTING_DOWN)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.mark.timeout(60)
def test_download_cut_by_shutdown_can_be_resumed(
    start_server: StartServer, login: Callable[..., Session], env: Env
) -> None:
    content = os.urandom(10 * MIB)
    (env.root / "slow.bin").write_bytes(content)
    srv = start_server(limit_rate=8 * MIB)
    partial = env.client / "slow.bin.tcpft-part"
    seen: list[int] = []

    def progress(n: int, total: int) -> None:
        if n >= 6 * MIB and not seen:
            seen.append(n)
            threading.Thread(target=lambda: srv.stop(grace=0), daemon=True).start()

    with login(srv) as s, pytest.raises(ConnectError):
        s.download("slow.bin", env.client, progress=progress)
    assert partial.exists(), "the partial file was deleted: no resume possible"
    again = start_server()
    with login(again) as s:
        result = s.download("slow.bin", env.client, resume=True)
    assert result.resumed_from > 0
    assert (env.client / "slow.bin").read_bytes() == content


@pytest.mark.timeout(60)
def test_shutdown_closes_a_connection_whose_client_stopped_reading(
    start_server: StartServer, env: Env
) -> None:
    # The session cannot even send its ERROR to a client that does not read; the
    # shutdown must still close the connection before it returns, not leave it open.
    (env.root / "big.bin").write_bytes(os.urandom(64 * MIB))
    srv = start_server()
    with logged_in(srv.port, ALICE) as conn:
        conn.send(frame(Get("big.bin")))
        time.sleep(0.5)  # the socket buffers fill up; the client reads nothing
        t0 = time.monotonic()
        srv.stop(grace=0)
        took = time.monotonic() - t0
        try:
            conn.wait_closed(5.0)
        except TimeoutError:
            pytest.fail("the shutdown returned and left the connection open")
        assert conn.eof
    assert took < 10.0
