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

from . import errors
from .aio import AsyncSession, aconnect
from .client import Session, TransferResult, connect
from .config import DEFAULT_PORT, ServerConfig
from .errors import TcpftError
from .messages import Entry
from .server import Server

__all__ = [
    "DEFAULT_PORT",
    "AsyncSession",
    "Entry",
    "Server",
    "ServerConfig",
    "Session",
    "TcpftError",
    "TransferResult",
    "__version__",
    "aconnect",
    "connect",
    "errors",
]
