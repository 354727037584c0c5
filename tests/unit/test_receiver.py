"""The server's receive side on real loopback sockets, in TCP and TLS: reads land in the
caller's buffer, nothing piles up while no read waits, and a close ends reads cleanly."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tcpft.receiver import SPILL_SIZE, Receiver, ReceiverProtocol
from tcpft.tls import ensure_server_certificate, server_context

Body = Callable[[Receiver], Awaitable[object]]


def _serve_one(
    tmp_path: Path, tls: bool, body: Body, send: Callable[[socket.socket], None]
) -> object:
    """Run ``body(receiver)`` for one connection while a thread runs ``send(sock)``."""
    ctx = server_context(*ensure_server_certificate(tmp_path)) if tls else None
    result: list[object] = []

    async def handler(receiver: Receiver, writer: asyncio.StreamWriter) -> None:
        if ctx is not None:
            receiver.attach(None)
            await writer.start_tls(ctx)
            receiver.attach(writer.transport)
        try:
            result.append(await body(receiver))
        finally:
            writer.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: ReceiverProtocol(handler), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        failed: list[BaseException] = []

        def client() -> None:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                if tls:
                    cctx = ssl.create_default_context()
                    cctx.check_hostname, cctx.verify_mode = False, ssl.CERT_NONE
                    sock = cctx.wrap_socket(sock)
                with sock:
                    send(sock)
            except BaseException as exc:  # reported by the test
                failed.append(exc)

        thread = threading.Thread(target=client)
        thread.start()
        async with asyncio.timeout(20):
            while not result and thread.is_alive():
                await asyncio.sleep(0.01)
            while not result:
                await asyncio.sleep(0.01)
        await asyncio.to_thread(thread.join, 10)
        server.close()
        assert not failed, failed

    asyncio.run(main())
    return result[0]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_exact_reads_gather_small_pieces(tmp_path: Path, tls: bool) -> None:
    data = os.urandom(300_000)

    def send(sock: socket.socket) -> None:
        for i in range(0, 1000, 7):  # the first bytes in tiny pieces, then the rest
            sock.sendall(data[i : i + 7])
            time.sleep(0.001)
        sock.sendall(data[1001:])
        sock.sendall(b"")
        time.sleep(0.5)

    async def body(receiver: Receiver) -> bytes:
        out = bytearray(len(data))
        view = memoryview(out)
        first = await receiver.read_into(view[:5], exact=True)
        rest = await receiver.read_into(view[5:1001], exact=True)
        bulk = await receiver.read_into(view[1001:], exact=True)
        assert (first, rest, bulk) == (5, 996, len(data) - 1001)
        return bytes(out)

    assert _serve_one(tmp_path, tls, body, send) == data


@pytest.mark.timeout(30)
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_nothing_piles_up_while_no_read_waits(tmp_path: Path, tls: bool) -> None:
    data = os.urandom(4 << 20)
    sent = threading.Event()

    def send(sock: socket.socket) -> None:
        sock.settimeout(1.0)
        view = memoryview(data)
        try:
            while view:  # until the receiver stops taking: the buffers fill up
                view = view[sock.send(view[: 64 * 1024]) :]
        except (TimeoutError, ssl.SSLWantWriteError):
            pass
        sent.set()
        sock.settimeout(10)
        sock.sendall(view)
        time.sleep(0.5)

    async def body(receiver: Receiver) -> tuple[int, bytes]:
        await asyncio.to_thread(sent.wait, 10)
        held = len(receiver._extra)
        out = bytearray(len(data))
        assert await receiver.read_into(memoryview(out), exact=True) == len(data)
        return held, bytes(out)

    held, got = _serve_one(tmp_path, tls, body, send)  # type: ignore[misc]
    assert held <= SPILL_SIZE
    assert got == data


@pytest.mark.timeout(30)
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_close_ends_reads_with_what_arrived(tmp_path: Path, tls: bool) -> None:
    def send(sock: socket.socket) -> None:
        sock.sendall(b"abc")
        if isinstance(sock, ssl.SSLSocket):
            sock.unwrap()

    async def body(receiver: Receiver) -> tuple[int, int, bytes]:
        buf = bytearray(10)
        got = await receiver.read_into(memoryview(buf), exact=True)
        again = await receiver.read_into(memoryview(buf)[got:])
        return got, again, bytes(buf[:got])

    assert _serve_one(tmp_path, tls, body, send) == (3, 0, b"abc")


@pytest.mark.timeout(30)
def test_a_read_that_is_not_exact_returns_what_is_there(tmp_path: Path) -> None:
    def send(sock: socket.socket) -> None:
        sock.sendall(b"hello")
        time.sleep(0.5)

    async def body(receiver: Receiver) -> bytes:
        buf = bytearray(100)
        n = await receiver.read_into(memoryview(buf))
        return bytes(buf[:n])

    assert _serve_one(tmp_path, False, body, send) == b"hello"


def test_bytes_delivered_by_copy_take_the_same_path() -> None:
    """Event loops that call data_received (uvloop) instead of get_buffer."""
    data = os.urandom(100_000)

    async def main() -> tuple[bytes, bytes, int]:
        receiver = Receiver()
        receiver.attach(None)
        receiver.data_received(data[:10])  # no read waiting: kept aside
        first = bytearray(50_000)
        read = asyncio.ensure_future(receiver.read_into(memoryview(first), exact=True))
        await asyncio.sleep(0)
        receiver.data_received(data[10:70_000])  # completes the read; the rest kept aside
        assert await read == 50_000
        rest = bytearray(50_000)
        n = await receiver.read_into(memoryview(rest))
        receiver.eof()
        after = await receiver.read_into(memoryview(rest))
        return bytes(first), bytes(rest[:n]), after

    first, rest, after = asyncio.run(main())
    assert first == data[:50_000]
    assert rest == data[50_000:70_000]
    assert after == 0  # closed, nothing left


@pytest.mark.timeout(30)
def test_a_peer_that_stops_is_seen_soon_after_a_stall_timeout(tmp_path: Path) -> None:
    """One byte just after the read starts, then nothing: the TimeoutError comes about
    ``stall`` after that byte, not up to twice that (one check per period)."""
    stall = 0.8

    def send(sock: socket.socket) -> None:
        time.sleep(0.05)
        sock.sendall(b"x")
        time.sleep(1.6)

    async def body(receiver: Receiver) -> float:
        view = memoryview(bytearray(10))
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await receiver.read_into(view, exact=True, stall=stall)
        return time.monotonic() - start

    waited = _serve_one(tmp_path, False, body, send)
    assert isinstance(waited, float)
    assert stall <= waited < 1.25 * stall + 0.1 + 0.2, waited  # the byte came at ~0.05 s
