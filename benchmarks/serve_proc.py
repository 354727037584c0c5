"""A tcpft server in its own process, for the benchmark.

    python -m benchmarks.serve_proc ROOT STATE PORTFILE [--plaintext] [--max-per-address N]
                                    [--profile OUT.pstats]

Serves ROOT on 127.0.0.1 (a free port, written to PORTFILE once listening) with the
users file STATE/users and the certificate in STATE. Stops cleanly on SIGTERM/SIGINT.
With --profile, the event-loop thread runs under cProfile and the stats are written to
OUT.pstats on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import signal
import sys
from pathlib import Path

from tcpft.auth import UserStore
from tcpft.config import ServerConfig
from tcpft.native import tune_server_malloc
from tcpft.server import Server
from tcpft.tls import ensure_server_certificate, server_context

from .common import HOST, write_port_file


async def _serve(args: argparse.Namespace) -> None:
    state = Path(args.state)
    config = ServerConfig(
        root=Path(args.root),
        host=HOST,
        port=0,
        state_dir=state,
        plaintext=args.plaintext,
        max_per_address=args.max_per_address,
        shutdown_grace=1.0,
    )
    users = UserStore.load(state / "users")
    ctx = None
    if not args.plaintext:
        cert, key = ensure_server_certificate(state)
        ctx = server_context(cert, key)
    server = Server(config, users, ctx)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write_port_file(Path(args.portfile), server.port)
    serving = asyncio.create_task(server.serve_forever())
    try:
        await stop.wait()
    finally:
        await server.shutdown(1.0)
        serving.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_proc")
    parser.add_argument("root")
    parser.add_argument("state")
    parser.add_argument("portfile")
    parser.add_argument("--plaintext", action="store_true")
    parser.add_argument("--max-per-address", type=int, default=64)
    parser.add_argument("--profile", metavar="OUT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    tune_server_malloc()  # as `tcpft serve` does
    if not args.profile:
        asyncio.run(_serve(args))
        return 0
    prof = cProfile.Profile()
    prof.enable()
    try:
        asyncio.run(_serve(args))
    finally:
        prof.disable()
        prof.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
