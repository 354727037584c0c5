"""tcpft: authenticated, encrypted file transfer over TCP.

The library in short::

    import tcpft

    with tcpft.connect("files.example", 7878, user="alice", password=pw) as session:
        for entry in session.list():
            print(entry.path, entry.size)
        session.download("report.pdf", "downloads/")

See :func:`tcpft.connect` (and :func:`tcpft.aconnect` for asyncio), :class:`tcpft.Server`
for serving, and :mod:`tcpft.errors` for the exception tree.
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

from . import errors
from .errors import TcpftError

if TYPE_CHECKING:
    from .aio import AsyncSession, aconnect
    from .client import Session, Skipped, TransferResult, connect
    from .config import DEFAULT_PORT, ServerConfig
    from .messages import Entry
    from .server import Server

# Imported on first use, so that a client does not load the server, asyncio or argon2.
_LAZY = {
    "AsyncSession": "aio",
    "aconnect": "aio",
    "Session": "client",
    "Skipped": "client",
    "TransferResult": "client",
    "connect": "client",
    "DEFAULT_PORT": "config",
    "ServerConfig": "config",
    "Entry": "messages",
    "Server": "server",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tcpft' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_PORT",
    "AsyncSession",
    "Entry",
    "Server",
    "ServerConfig",
    "Session",
    "Skipped",
    "TcpftError",
    "TransferResult",
    "__version__",
    "aconnect",
    "connect",
    "errors",
]
