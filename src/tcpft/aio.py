"""The asyncio form of the client: :func:`aconnect` and :class:`AsyncSession`.

Each call runs the blocking :class:`~tcpft.client.Session` method in a worker thread,
one at a time per session, so an event loop is never blocked by a transfer::

    async with await tcpft.aconnect(host, user="alice", password=pw) as s:
        await s.download("report.pdf", "downloads/")
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from .client import Entries, Outcomes, Results, Session, TransferResult, connect
from .config import DEFAULT_PORT
from .errors import RemoteFileError

T = TypeVar("T")


class AsyncSession:
    """The asyncio form of :class:`Session`: each call runs in a worker thread."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._lock = asyncio.Lock()

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with self._lock:
            return await asyncio.to_thread(fn, *args, **kwargs)

    @property
    def listing(self) -> Entries:
        return self.session.listing

    @property
    def listing_error(self) -> RemoteFileError | None:
        """See :attr:`Session.listing_error`."""
        return self.session.listing_error

    async def list(self, path: str = "", *, recursive: bool = False) -> Entries:
        """See :meth:`Session.list`."""
        return await self._call(self.session.list, path, recursive=recursive)

    async def download(
        self, remote: str, dest: Path | str | None = None, **kw: Any
    ) -> TransferResult:
        """See :meth:`Session.download`."""
        return await self._call(self.session.download, remote, dest, **kw)

    async def upload(
        self, local: Path | str, remote: str | None = None, **kw: Any
    ) -> TransferResult:
        """See :meth:`Session.upload`."""
        return await self._call(self.session.upload, local, remote, **kw)

    async def download_many(
        self, jobs: Iterable[tuple[str, Path | str | None]], **kw: Any
    ) -> Outcomes:
        """See :meth:`Session.download_many`; returns every outcome at the end."""
        return await self._call(lambda: list(self.session.download_many(jobs, **kw)))

    async def upload_many(
        self, jobs: Iterable[tuple[Path | str, str | None]], **kw: Any
    ) -> Outcomes:
        """See :meth:`Session.upload_many`; returns every outcome at the end."""
        return await self._call(lambda: list(self.session.upload_many(jobs, **kw)))

    async def glob(self, pattern: str) -> Entries:
        """See :meth:`Session.glob`."""
        return await self._call(self.session.glob, pattern)

    async def download_tree(self, remote_dir: str, dest_dir: Path | str, **kw: Any) -> Results:
        """See :meth:`Session.download_tree`."""
        return await self._call(self.session.download_tree, remote_dir, dest_dir, **kw)

    async def upload_tree(
        self, local_dir: Path | str, remote_dir: str | None = None, **kw: Any
    ) -> Results:
        """See :meth:`Session.upload_tree`."""
        return await self._call(self.session.upload_tree, local_dir, remote_dir, **kw)

    async def close(self) -> None:
        await self._call(self.session.close)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def aconnect(host: str, port: int = DEFAULT_PORT, **kwargs: Any) -> AsyncSession:
    """The asyncio form of :func:`connect` (same arguments); returns an AsyncSession."""
    session = await asyncio.to_thread(connect, host, port, **kwargs)
    return AsyncSession(session)


__all__ = ["AsyncSession", "aconnect"]
