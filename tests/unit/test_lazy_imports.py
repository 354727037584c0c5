"""A client does not load the server side: no asyncio server, argon2 or cryptography."""

from __future__ import annotations

import subprocess
import sys

import pytest

import tcpft

HEAVY = ("tcpft.server", "tcpft.auth", "tcpft.aio", "argon2", "cryptography")


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.split()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("statement", ["import tcpft.client", "from tcpft import connect"])
def test_the_client_loads_nothing_of_the_server(statement: str) -> None:
    assert _loaded_after(statement) == []


@pytest.mark.timeout(60)
def test_the_server_is_there_when_asked_for() -> None:
    assert _loaded_after("from tcpft import Server") == ["tcpft.server", "tcpft.auth", "argon2"]


def test_every_public_name_resolves() -> None:
    for name in tcpft.__all__:
        assert getattr(tcpft, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tcpft.nope  # noqa: B018
