"""A coverage-guided fuzz target (atheris/libFuzzer) for the frame decoder and state machine.

Run it for a fixed time (libFuzzer flags pass through; atheris comes with the
``fuzz`` extra: ``pip install -e '.[fuzz]'``)::

    python -m tests.adversarial.atheris_frames -max_total_time=60

Each input picks a role and a depth (how far a scripted, valid conversation has gone
before the fuzzed bytes arrive), then feeds the rest of the input to that side in
pieces whose sizes the input also chooses. The only exceptions allowed out of the core
are ProtocolError and ConnectionBroken; anything else is a crash that libFuzzer saves
as a reproducer. ``tests.adversarial.fuzz_frames`` is the seeded random mutator that
needs no extra package; this one learns from coverage.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["tcpft"]):
    from tcpft.errors import ConnectionBroken, ProtocolError
    from tcpft.messages import (
        Get,
        Hello,
        ListEnd,
        Login,
        LoginOk,
        Put,
        PutReady,
        Welcome,
    )
    from tcpft.protocol import CLOSED, NEED_DATA, Connection, Role

MAX_EVENTS = 10_000


def _server_at(depth: int) -> Connection:
    """A server that has heard a valid client up to ``depth`` (0..3)."""
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    steps = [
        lambda: server.receive_data(client.send(Hello(1, "fuzz"))),
        lambda: client.receive_data(server.send(Welcome(1, "fuzz"))),
        lambda: server.receive_data(client.send(Login("u", "p"))),
        lambda: client.receive_data(server.send(LoginOk("u", True)) + server.send(ListEnd())),
        lambda: server.receive_data(client.send(Put("f", 1 << 20, 0))),
        lambda: client.receive_data(server.send(PutReady())),
    ]
    for i, step in enumerate(steps[: 2 * depth]):
        step()
        _drain(server if i % 2 == 0 else client)
    return server


def _drain(conn: Connection) -> None:
    while conn.next_event() is not NEED_DATA:
        pass


def _client_at(depth: int) -> Connection:
    """A client that has spoken validly up to ``depth`` (0..3)."""
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    server.receive_data(client.send(Hello(1, "fuzz")))
    _drain(server)
    if depth >= 1:
        client.receive_data(server.send(Welcome(1, "fuzz")))
        _drain(client)
        server.receive_data(client.send(Login("u", "p")))
        _drain(server)
    if depth >= 2:
        client.receive_data(server.send(LoginOk("u", True)) + server.send(ListEnd()))
        _drain(client)
    if depth >= 3:
        server.receive_data(client.send(Get("f")))
        _drain(server)
    return client


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    role = fdp.ConsumeIntInRange(0, 1)
    depth = fdp.ConsumeIntInRange(0, 3)
    conn = _server_at(depth) if role == 0 else _client_at(depth)
    try:
        events = 0
        while fdp.remaining_bytes():
            piece = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 4096))
            conn.receive_data(piece)
            while events < MAX_EVENTS and conn.next_event() is not NEED_DATA:
                events += 1
        conn.receive_data(b"")
        while events < MAX_EVENTS:
            events += 1
            if conn.next_event() in (NEED_DATA, CLOSED):
                break
    except (ProtocolError, ConnectionBroken):
        return


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
