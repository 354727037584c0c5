"""The asyncio server: a thin driver around the protocol core, storage and auth.

Each connection is one :class:`_Session` task. The session reads bytes, feeds them to
its :class:`~tcpft.protocol.Connection`, acts on the messages that come out, and writes
the bytes the core gives it. Every wait has a deadline (login, idle, stall), every
count has a cap (connections in total, per address, before login), and OS, TLS and
asyncio errors are translated into our tree here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import mmap
import os
import ssl
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from . import __version__
from .audit import Audit
from .auth import LoginGuard, User, UserStore
from .auth import prepare as prepare_logins
from .config import ServerConfig
from .errors import (
    AlreadyExists,
    ConnectionBroken,
    ErrorCode,
    FileChanged,
    PermissionDenied,
    ProtocolError,
    RemoteProtocolError,
    TcpftError,
    TimeoutExpired,
    error_from_wire,
)
from .integrity import (
    Algorithm,
    HashCache,
    Hasher,
    algorithm_for,
    align_down,
    labelled,
    new_hasher,
    prefix_digest,
    scan_prefix,
)
from .limits import (
    FRAME_HEADER_SIZE,
    MAX_DATA_PAYLOAD,
    MAX_PRELOGIN_PAYLOAD,
    RESUME_BLOCK_SIZE,
)
from .messages import MIN_PROTOCOL_VERSION as _MIN_VERSION
from .messages import PROTOCOL_VERSION as _VERSION
from .messages import (
    Ack,
    Bye,
    Cancel,
    Data,
    Done,
    Error,
    FileHeader,
    Get,
    Hello,
    ListEnd,
    ListRequest,
    LoginOk,
    Message,
    Put,
    PutReady,
    Welcome,
    batch_entries,
)
from .names import printable
from .native import aligned_buffer, socket_bytes_acked
from .pacing import Pacer
from .protocol import CLOSED, NEED_DATA, Connection, Role
from .receiver import Receiver, ReceiverProtocol, StallWatch
from .storage import ReadHandle, ServedDirectory, UploadHandle

log = logging.getLogger("tcpft.server")

SOFTWARE = f"tcpft/{__version__}"
_T = TypeVar("_T")
_READ_SIZE = 64 * 1024  # bytes taken per read outside the DATA fast path, after login
_READ_BLOCK = 512 * 1024  # file bytes read (and hashed) per step of a download
_SMALL_FILE = 256 * 1024  # up to this, a download is sent in one write (see _send_small)
# An upload is received into buffers (three for the large ones, two for the others),
# each written and hashed by workers while the next fills, with as many DATA frames
# as fit; a payload larger than a buffer is received in pieces. Larger buffers mean
# fewer hand-offs to the workers and larger direct writes (docs/PERFORMANCE.md), so
# the first few uploads at once get them and the rest the smaller size, which bounds
# memory.
_UPLOAD_BUFFER = 512 * 1024
_UPLOAD_BUFFER_LARGE = 2 * MAX_DATA_PAYLOAD
_LARGE_BUFFER_UPLOADS = 8
_LIST_SLOTS = 4  # listings made at once, and large ones held while they are sent
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)
_PRELOGIN_READ = MAX_PRELOGIN_PAYLOAD + FRAME_HEADER_SIZE
_CLOSE_TIMEOUT = 2.0
DIGESTS_NAME = "digests"  # in the state directory: the SHA-256 cache, kept across restarts


class _PeerClosed(Exception):
    """The client closed the connection cleanly."""


class _ReadFailed(Exception):
    """Reading the file being sent failed."""


class _Abort(Exception):
    """A frame was left half-sent: the connection can only be dropped."""


@dataclasses.dataclass
class _Transfer:
    """What the audit line of one transfer says."""

    bytes: int = 0
    digest: str = ""  # "blake3:<hex>" (or "sha256:<hex>" with older clients)
    result: str | None = None  # None until the transfer reached an outcome
    deferred: bool = False  # its audit line is written later, with its verdict


@dataclasses.dataclass
class _Received:
    """An upload received whole, to be checked and committed."""

    last: memoryview | None  # the final chunk, not written yet
    hasher: Hasher
    digest: bytes  # the client's, from DONE


class Server:
    """A tcpft server. Use ``async with Server(...) as srv: await srv.serve_forever()``.

    Args:
        config: the settings; ``config.root`` is the directory served.
        users: the accounts allowed to log in.
        ssl_context: the TLS context, or None for plaintext (``config.plaintext``).
    """

    def __init__(
        self, config: ServerConfig, users: UserStore, ssl_context: ssl.SSLContext | None
    ) -> None:
        config.validate()
        if ssl_context is None and not config.plaintext:
            raise TcpftError("a TLS context is required unless config.plaintext is set")
        self.config = config
        self.users = users
        self.ssl_context = ssl_context
        self.storage = ServedDirectory(config.root)
        self.guard = LoginGuard(
            threshold=config.penalty_threshold,
            base_penalty=config.penalty_base,
            max_penalty=config.penalty_max,
        )
        self.hashes = HashCache()
        self.audit = Audit(config.audit_json)
        self.closing = False
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], _Session] = {}
        self._per_address: Counter[str] = Counter()
        self._unauthenticated = 0
        self._uploads: set[str] = set()
        self._large_buffer_uploads = 0  # uploads with _UPLOAD_BUFFER_LARGE buffers now
        self._hash_slots = asyncio.Semaphore(config.max_concurrent_hashes)
        self._list_slots = asyncio.Semaphore(_LIST_SLOTS)

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start listening.

        Raises:
            OSError: the address cannot be bound.
        """
        await asyncio.to_thread(prepare_logins)
        await asyncio.to_thread(self.hashes.load, self._digests_path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ReceiverProtocol(self._accept), self.config.host, self.config.port
        )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs listened on."""
        assert self._server is not None
        return [s.getsockname()[:2] for s in self._server.sockets]

    @property
    def port(self) -> int:
        """The port listened on (useful with port 0)."""
        return self.addresses[0][1]

    @property
    def connection_count(self) -> int:
        return len(self._sessions)

    async def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` is called (or the task is cancelled)."""
        assert self._server is not None
        with contextlib.suppress(asyncio.CancelledError):
            await self._server.serve_forever()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting; let running transfers finish within ``grace`` seconds; close.

        Sessions still running then are told the server is shutting down; when this
        returns, every connection is closed. A second call while the first still
        waits cancels every session at once.
        """
        if self.closing:  # called again while stopping: stop waiting for anyone
            for task in list(self._sessions):
                task.cancel()
            await self._wait_sessions_closed()
            return
        grace = self.config.shutdown_grace if grace is None else grace
        self.closing = True
        if self._server is not None:
            self._server.close()
        for task, session in list(self._sessions.items()):
            if not session.busy:
                task.cancel()
        pending = set(self._sessions)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()
        await self._wait_sessions_closed()
        await asyncio.to_thread(self._save_digests)
        self.storage.close()
        self.audit.close()

    async def _wait_sessions_closed(self) -> None:
        """Give cancelled sessions a moment to say why they close; then cut the rest.

        A client that does not read keeps its session waiting to send (the ERROR, then
        the TLS close), so when this returns every connection is closed all the same.
        """
        if self._sessions:
            await asyncio.wait(set(self._sessions), timeout=_CLOSE_TIMEOUT + 1)
        for session in self._sessions.values():
            session.writer.transport.abort()

    @property
    def _digests_path(self) -> Path:
        """Where the digest cache is kept across restarts (see :meth:`HashCache.save`)."""
        return self.config.state_dir / DIGESTS_NAME

    def _save_digests(self) -> None:
        try:
            self.config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.hashes.save(self._digests_path)
        except OSError as exc:
            log.warning("cannot save the digest cache in %s: %s", self.config.state_dir, exc)

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    # --- connections ---------------------------------------------------------------

    async def _accept(self, receiver: Receiver, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        addr = str(peer[0]) if peer else "?"
        cfg = self.config
        if (
            self.closing
            or len(self._sessions) >= cfg.max_connections
            or self._unauthenticated >= cfg.max_unauthenticated
            or self._per_address[addr] >= cfg.max_per_address
        ):
            log.warning("refusing connection from %s: connection limits reached", addr)
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        session = _Session(self, receiver, writer, addr)
        self._sessions[task] = session
        self._per_address[addr] += 1
        self._unauthenticated += 1
        try:
            await session.run()
        except asyncio.CancelledError:
            if not self.closing:
                raise
            # Stopping: the session has said so to its client; nothing to report.
        finally:
            if not session.logged_in:
                self._unauthenticated -= 1
            self._per_address[addr] -= 1
            if not self._per_address[addr]:
                del self._per_address[addr]
            del self._sessions[task]

    def _logged_in(self, session: _Session) -> None:
        session.logged_in = True
        self._unauthenticated -= 1

    async def _verify(self, name: str, password: str) -> User | None:
        async with self._hash_slots:
            return await asyncio.to_thread(self.users.verify, name, password)


class _Session:
    """One client connection."""

    def __init__(
        self,
        server: Server,
        receiver: Receiver,
        writer: asyncio.StreamWriter,
        addr: str,
    ) -> None:
        self.server = server
        self.cfg = server.config
        self.receiver = receiver
        self._buf = bytearray(_PRELOGIN_READ)  # for reads outside the DATA fast path
        self._header = bytearray(FRAME_HEADER_SIZE)
        self._payload_left = 0  # bytes of the DATA payload in progress not read yet
        self._failed_read: Exception | None = None  # deferred by _next_payload
        self.writer = writer
        self._tcp = writer.transport  # stays beneath TLS once start_tls wraps it
        self.addr = addr
        self.conn = Connection(Role.SERVER)
        self.user: User | None = None
        self.logged_in = False  # counted out of the pre-login connections
        self.busy = False
        self.pacer = Pacer(self.cfg.limit_rate) if self.cfg.limit_rate else None
        # Streamed uploads (version 4) being committed, each sending its verdict in
        # turn; the last one is the end of the chain.
        self._verdicts: set[asyncio.Task[None]] = set()
        self._last_verdict: asyncio.Task[None] | None = None

    @property
    def algorithm(self) -> Algorithm:
        """The digest algorithm of this session (set by the version in WELCOME)."""
        return algorithm_for(self.conn.version)

    # --- I/O helpers ---------------------------------------------------------------

    async def _send(self, msg: Message) -> None:
        self.writer.write(self.conn.send(msg))
        await self._drain()

    async def _drain(self) -> None:
        """Wait for the client to take what was written; _Abort once it takes nothing
        for ``stall_timeout`` (a client reading slowly is waited for).

        A drain cut by the timeout is simply made again: it is only a wait, unlike a
        sendfile (see :meth:`_while_taken`), and this way costs no task per frame.
        """
        watch = StallWatch(self.cfg.stall_timeout, self._taken)
        while True:
            try:
                async with asyncio.timeout(watch.step):
                    await self.writer.drain()
                return
            except TimeoutError:
                if watch.stalled():
                    raise _Abort("client stopped reading") from None

    async def _while_taken(self, work: Awaitable[_T]) -> _T:
        """Await ``work`` (a sendfile) for as long as the client takes bytes.

        _Abort once ``stall_timeout`` passes in which it took none: a client reading
        slowly is waited for, one that stopped is not.
        """
        task = asyncio.ensure_future(work)
        watch = StallWatch(self.cfg.stall_timeout, self._taken)
        try:
            while True:
                done, _ = await asyncio.wait([task], timeout=watch.step)
                if done:
                    return task.result()
                if watch.stalled():
                    raise _Abort("client stopped reading")
        finally:
            if not task.done():
                task.cancel()
                task.add_done_callback(_retrieve)

    def _taken(self) -> int:
        """A count that changes whenever the client takes bytes of ours: what its TCP
        has acknowledged, or (where that cannot be read) what waits in the transport's
        buffers, negated."""
        tcp = self._tcp
        sock = tcp.get_extra_info("socket")
        acked = socket_bytes_acked(sock) if sock is not None else None
        if acked is not None:
            return acked
        app = self.writer.transport
        queued = app.get_write_buffer_size()
        if tcp is not app:
            queued += tcp.get_write_buffer_size()
        return -queued

    async def _next(self, timeout: float | None) -> Message:
        """The next message from the client; raises _PeerClosed on a clean close."""
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                view = memoryview(self._buf)
                n = await self._read_into(view, timeout, exact=False)
                self.conn.receive_data(view[:n])  # nothing: the client closed
                continue
            if event is CLOSED:
                raise _PeerClosed
            assert isinstance(event, Message)
            if isinstance(event, Error):
                raise error_from_wire(event.code, event.text)
            return event

    async def _read_into(self, view: memoryview, timeout: float | None, *, exact: bool) -> int:
        """Read from the client; TimeoutExpired after ``timeout`` seconds in which it
        neither sent a byte nor took one of ours (say, the end of a download that is
        still on its way to a slow client, before its ACK can come)."""
        try:
            return await self.receiver.read_into(view, exact=exact, stall=timeout, busy=self._taken)
        except TimeoutError:
            raise TimeoutExpired("no data from the client in time") from None

    async def _next_payload(
        self, buffers: list[mmap.mmap | None], size: int
    ) -> memoryview | Message:
        """The next piece of an upload: DATA payload bytes, or any other message.

        Fast path for bulk data: with nothing buffered in the core, frame headers are
        read here and DATA payloads straight into ``buffers[0]`` (made as needed,
        page-aligned for direct I/O). Consecutive DATA frames are gathered into it up
        to ``size`` bytes, and a payload larger than that is received in pieces: the
        worker then writes one buffer per hand-off, whatever the frames' size
        (docs/PERFORMANCE.md). The caller rotates the buffers so that it does not
        overwrite one being written.

        When the connection fails, stalls or breaks the protocol after whole frames
        (or pieces) are in the buffer, those are returned and the next call raises:
        they reach the disk, and a partial file kept for a resume ends on a frame or
        a piece, as when each frame was written on its own.
        """
        if self._failed_read is not None:
            raise self._failed_read
        view: memoryview | None = None
        whole = filled = 0  # whole: the bytes of the frames (pieces) read entirely
        try:
            while view is None or filled < len(view):
                whole = filled
                if not self._payload_left:
                    if view is not None and not self.conn.remaining:
                        break  # the upload's last byte is in: DONE comes next
                    length = await self._data_header()
                    if length is None:  # another frame, or the client closed
                        if view is not None:
                            break
                        return await self._next(self.cfg.stall_timeout)
                    self._payload_left = length  # an empty DATA carries nothing: read on
                    continue
                if view is None:
                    n = min(size, self._payload_left + self.conn.remaining)
                    buf = buffers[0]
                    if buf is None or len(buf) < n:
                        buf = buffers[0] = aligned_buffer(n)
                    view = memoryview(buf)[:n]
                n = min(self._payload_left, len(view) - filled)
                got = await self._read_into(
                    view[filled : filled + n], self.cfg.stall_timeout, exact=True
                )
                self._payload_left -= got
                filled += got
                if got < n:
                    raise ConnectionBroken("connection closed in the middle of a DATA frame")
        except Exception as exc:
            if not whole:
                raise
            assert view is not None
            self._failed_read = exc
            return view[:whole]
        assert view is not None
        return view[:filled]

    async def _data_header(self) -> int | None:
        """Read the next frame header here: a DATA frame's payload length, else None.

        None when bytes are buffered in the core, when the frame is another kind (the
        core has its header), or when the client closed (the core knows): carry on
        with :meth:`_next`.
        """
        if self.conn.buffered:
            return None
        header = self._header
        got = await self._read_into(memoryview(header), self.cfg.stall_timeout, exact=True)
        if got < FRAME_HEADER_SIZE:
            self.conn.receive_data(header[:got])
            self.conn.receive_data(b"")  # the client closed: _next says how badly
            return None
        return self.conn.receive_data_header(header)

    async def _fatal(self, code: ErrorCode, text: str) -> None:
        """Tell the client why we close, if the connection still takes it."""
        with contextlib.suppress(Exception):
            self.writer.write(self.conn.send_error(code, text))
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self.writer.drain()

    # --- the session ---------------------------------------------------------------

    async def run(self) -> None:
        try:
            try:
                async with asyncio.timeout(self.cfg.login_timeout):
                    if self.server.ssl_context is not None:
                        self.receiver.attach(None)  # the TCP transport is TLS's now
                        await self.writer.start_tls(self.server.ssl_context)
                        self.receiver.attach(self.writer.transport)
                    if not await self._login():
                        return
            except TimeoutError:
                log.info("login deadline passed for %s", self.addr)
                await self._fatal(ErrorCode.LOGIN_TIMEOUT, "login took too long")
                return
            self.server._logged_in(self)
            self._buf = bytearray(_READ_SIZE)
            await self._send_listing(ListRequest())
            await self._requests()
        except _PeerClosed:
            pass
        except _Abort as exc:
            log.info("dropping %s: %s", self.addr, exc)
            self.writer.transport.abort()
        except asyncio.CancelledError:
            if self.server.closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_CLOSE_TIMEOUT):
                        await self._flush_verdicts()
                await self._fatal(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
            raise
        except TimeoutExpired as exc:
            log.info("closing %s: %s", self.addr, exc)
            await self._fatal(exc.code, str(exc))
        except ProtocolError as exc:
            log.info("protocol error from %s: %s", self.addr, exc)
            if isinstance(exc, RemoteProtocolError):
                await self._fatal(exc.code, str(exc))
        except TcpftError as exc:
            log.info("closing %s: %s", self.addr, exc)
        except (ConnectionError, ssl.SSLError, OSError, EOFError) as exc:
            log.info("connection from %s lost: %s", self.addr, exc)
        except Exception:
            log.exception("internal error serving %s", self.addr)
            await self._fatal(ErrorCode.INTERNAL_ERROR, "internal server error")
        finally:
            try:
                await self._settle_verdicts()
            finally:
                await self._close()

    async def _close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self.writer.wait_closed()
        except (TimeoutError, OSError, ssl.SSLError):
            self.writer.transport.abort()

    async def _login(self) -> bool:
        hello = await self._next(None)
        assert isinstance(hello, Hello)
        if hello.version < _MIN_VERSION:
            await self._fatal(
                ErrorCode.UNSUPPORTED_VERSION,
                f"this server speaks versions {_MIN_VERSION} to {_VERSION}",
            )
            return False
        await self._send(Welcome(min(hello.version, _VERSION), SOFTWARE))
        server, attempts = self.server, 0
        while True:
            login = await self._next(None)
            name = getattr(login, "user", "")
            wait = server.guard.penalty_remaining(self.addr)
            if wait > 0:
                server.audit.event("login refused", user=name, addr=self.addr, reason="penalty")
                await self._fatal(
                    ErrorCode.PENALIZED,
                    f"too many failed logins from your address; try again in {wait:.0f} s",
                )
                return False
            user = await server._verify(name, getattr(login, "password", ""))
            if user is not None:
                server.guard.record_success(self.addr)
                server.audit.event("login ok", user=user.name, addr=self.addr)
                self.user = user
                await self._send(LoginOk(user.name, user.can_write))
                return True
            server.guard.record_failure(self.addr)
            server.audit.event("login failed", user=name, addr=self.addr)
            attempts += 1
            await asyncio.sleep(self.cfg.login_failure_delay)
            await self._send(Error.of(ErrorCode.AUTH_FAILED, "login failed"))
            if attempts >= self.cfg.max_login_attempts:
                return False

    async def _requests(self) -> None:
        while True:
            if self.server.closing:
                await self._flush_verdicts()
                await self._fatal(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
                return
            try:  # for the whole request: a byte now and then does not keep it open
                async with asyncio.timeout(self.cfg.idle_timeout):
                    msg = await self._next(None)
            except TimeoutError:
                raise TimeoutExpired("no request from the client in time") from None
            self.busy = True
            if isinstance(msg, ListRequest):
                await self._send_listing(msg)
            elif isinstance(msg, Get):
                await self._download(msg)
            elif isinstance(msg, Put):
                await self._upload(msg)
            elif isinstance(msg, Bye):
                return
            self.busy = False

    # --- listing -------------------------------------------------------------------

    async def _send_listing(self, req: ListRequest) -> None:
        """Send a listing. At most :data:`_LIST_SLOTS` are made at once, in the
        workers that logins and file reads share; one of more than a frame also holds
        its slot until it is sent, so that clients that do not read cannot make the
        server hold many large listings at a time (``max_list_bytes`` each)."""
        slots = self.server._list_slots
        await slots.acquire()
        held = True
        try:
            try:
                entries = await asyncio.to_thread(
                    self.server.storage.list,
                    req.path,
                    recursive=req.recursive,
                    limit=self.cfg.max_list_entries,
                    byte_limit=self.cfg.max_list_bytes,
                )
            except TcpftError as exc:
                slots.release()
                held = False
                await self._send(Error.of(exc.code, str(exc)))
                return
            batches = list(batch_entries(entries, MAX_DATA_PAYLOAD))
            del entries
            if len(batches) <= 1:  # small: sent without holding a slot
                slots.release()
                held = False
            for batch in batches:
                await self._send(batch)
        finally:
            if held:
                slots.release()
        await self._send(ListEnd())

    # --- download ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _audited(self, kind: str, path: str) -> AsyncIterator[_Transfer]:
        """Write the transfer's audit line however it ends (cut, timeout, shutdown too)."""
        rec = _Transfer()
        try:
            yield rec
        except asyncio.CancelledError:
            rec.result = rec.result or "cancelled"
            raise
        except _Abort:
            rec.result = rec.result or "stalled"
            raise
        except Exception:
            rec.result = rec.result or "broken"
            raise
        finally:
            if not rec.deferred:
                self._audit(kind, path, rec)

    def _audit(self, kind: str, path: str, rec: _Transfer) -> None:
        user = self.user.name if self.user else ""
        self.server.audit.event(
            kind, user=user, addr=self.addr, path=path, bytes=rec.bytes,
            digest=rec.digest, result=rec.result or "broken",
        )  # fmt: skip

    async def _download(self, req: Get) -> None:
        async with self._audited("transfer get", req.path) as rec:
            await self._send_file(req, rec)

    async def _send_file(self, req: Get, rec: _Transfer) -> None:
        server = self.server
        try:
            handle = server.storage.open_read(req.path)
        except TcpftError as exc:
            rec.result = "invalid"
            await self._send(Error.of(ErrorCode.INVALID_NAME, str(exc)))
            await self._send_listing(ListRequest())
            return
        with handle:
            ident, algorithm = handle.identity, self.algorithm
            cached = server.hashes.digest(ident, algorithm)
            hasher = None if cached else new_hasher(algorithm)
            start = 0
            if req.offset and req.offset % RESUME_BLOCK_SIZE == 0 and req.offset <= handle.size:
                blocks = server.hashes.blocks(ident, algorithm, req.offset // RESUME_BLOCK_SIZE)
                scan = None
                if blocks is None or cached is None:
                    scan = await asyncio.to_thread(scan_prefix, handle.fd, req.offset, algorithm)
                    server.hashes.put_blocks(ident, algorithm, scan.blocks)
                    blocks = scan.blocks
                if prefix_digest(blocks, algorithm) == req.prefix_digest:
                    start = req.offset
                    if scan is not None and cached is None:
                        hasher = scan.whole
            header = FileHeader(req.path, handle.size, handle.mtime_ns, start)
            if handle.size - start <= min(self.cfg.chunk_size, _SMALL_FILE) and not self.pacer:
                sent = await self._send_small(handle, header, hasher, cached, rec)
            else:
                sent = await self._send_large(handle, header, hasher, cached, rec)
            if not sent:
                return
            ack = await self._next(self.cfg.stall_timeout)
            rec.result = "ok" if isinstance(ack, Ack) and ack.ok else "rejected"

    async def _send_large(
        self, handle: ReadHandle, header: FileHeader, hasher: Hasher | None,
        known: bytes | None, rec: _Transfer,
    ) -> bool:  # fmt: skip
        """FILE, the DATA frames, DONE; False when an ERROR ended the transfer instead."""
        await self._send(header)
        start = header.offset
        try:
            await self._stream_file(handle.fd, start, handle.size, hasher, rec)
        except _ReadFailed as exc:
            await self._read_failed(header, rec, str(exc))
            return False
        if rec.bytes < handle.size - start or handle.changed():
            await self._file_changed(rec)
            return False
        await self._send(self._done(handle, _final(known, hasher), rec))
        return True

    async def _send_small(
        self, handle: ReadHandle, header: FileHeader, hasher: Hasher | None,
        known: bytes | None, rec: _Transfer,
    ) -> bool:  # fmt: skip
        """A file whose rest fits in one DATA frame: FILE, DATA and DONE in one write.

        Many small files are bound by the cost per file, so this saves the steps and
        system calls of three writes, and the thread hop when the file is in the page
        cache. Same frames, same errors as :meth:`_send_large`.
        """
        n = handle.size - header.offset
        cached = _read_cached(handle.fd, n, header.offset)
        block: bytes | bytearray
        try:
            if cached is None:
                block = await asyncio.to_thread(_read_chunk, handle.fd, n, header.offset, hasher)
            else:
                block = cached
                if hasher is not None:
                    hasher.update(block)  # at most 256 KiB: shorter than a thread hop
        except OSError as exc:
            await self._send(header)
            await self._read_failed(header, rec, str(exc.strerror or exc))
            return False
        if len(block) < n or handle.changed():
            await self._send(header)
            await self._file_changed(rec)
            return False
        done = self._done(handle, _final(known, hasher), rec)
        frames: list[bytes | bytearray] = [self.conn.send(header)]
        if n:  # an empty file has no DATA
            frames += [self.conn.send_data_header(n), block]
        self.writer.writelines([*frames, self.conn.send(done)])
        rec.bytes = n
        await self._drain()
        return True

    def _done(self, handle: ReadHandle, digest: bytes, rec: _Transfer) -> Done:
        self.server.hashes.put_digest(handle.identity, self.algorithm, digest)
        rec.digest = labelled(self.algorithm, digest)
        return Done(digest)

    async def _read_failed(self, header: FileHeader, rec: _Transfer, why: str) -> None:
        log.warning("reading %s failed: %s", printable(header.path), why)
        rec.result = "read-error"
        await self._send(Error.of(ErrorCode.IO_ERROR, "the server could not read the file"))

    async def _file_changed(self, rec: _Transfer) -> None:
        rec.result = "changed"
        await self._send(Error.of(ErrorCode.FILE_CHANGED, str(FileChanged())))

    async def _stream_file(
        self, fd: int, start: int, size: int, hasher: Hasher | None, rec: _Transfer
    ) -> None:
        """Send ``[start, size)`` of ``fd`` as DATA frames, counting into ``rec.bytes``."""
        if hasher is None and self.server.ssl_context is None and self.pacer is None:
            await self._sendfile(fd, start, size, rec)
            return
        pos = start
        pending = self._read_ahead(fd, pos, size, hasher)
        try:
            while pending is not None:
                try:
                    block = await pending
                except OSError as exc:
                    raise _ReadFailed(str(exc.strerror or exc)) from None
                wanted = min(_READ_BLOCK, size - pos)
                nxt = pos + len(block)
                # Read (and hash) the next block while this one goes out.
                pending = self._read_ahead(fd, nxt, size, hasher) if len(block) == wanted else None
                await self._send_block(block)
                pos = nxt
                rec.bytes = pos - start
                # A block read from the page cache and sent without a wait gives the
                # loop no turn: give one, so that other sessions and a shutdown run.
                await asyncio.sleep(0)
        finally:
            if pending is not None and not pending.done():
                pending.add_done_callback(_retrieve)

    def _read_ahead(
        self, fd: int, pos: int, size: int, hasher: Hasher | None
    ) -> asyncio.Future[bytes | bytearray] | None:
        """Start reading (and hashing) the block at ``pos``.

        A block in the page cache is read and hashed here, on the event loop: that
        costs less than the hand-off to a worker and back (one 512 KiB block of
        BLAKE3 takes about 0.1 ms). Only a block that would wait for the disk goes to
        a worker, so that the loop never waits for it.
        """
        if pos >= size:
            return None
        n = min(_READ_BLOCK, size - pos)
        block = _read_cached(fd, n, pos)
        if block is None:
            return asyncio.ensure_future(asyncio.to_thread(_read_chunk, fd, n, pos, hasher))
        if hasher is not None:
            hasher.update(block)
        future: asyncio.Future[bytes | bytearray] = asyncio.get_running_loop().create_future()
        future.set_result(block)
        return future

    async def _send_block(self, block: bytes | bytearray) -> None:
        """Send one block read from the file as DATA frames of the configured size."""
        view, step = memoryview(block), self.cfg.chunk_size
        for i in range(0, len(block), step):
            frame = view[i : i + step]
            header = self.conn.send_data_header(len(frame))
            if self.pacer is None:
                self.writer.writelines((header, frame))
                await self._drain()
                continue
            self.writer.write(header)
            for j in range(0, len(frame), self.pacer.piece):  # see Pacer.piece
                piece = frame[j : j + self.pacer.piece]
                await asyncio.sleep(self.pacer.delay(len(piece)))
                self.writer.write(piece)
                await self._drain()

    async def _sendfile(self, fd: int, start: int, size: int, rec: _Transfer) -> None:
        """Plaintext with a known digest: let the kernel copy the file (os.sendfile)."""
        loop = asyncio.get_running_loop()
        pos = start
        with open(fd, "rb", buffering=0, closefd=False) as fh:
            while pos < size:
                n = min(self.cfg.chunk_size, size - pos)
                self.writer.write(self.conn.send_data_header(n))
                try:
                    sent = await self._while_taken(loop.sendfile(self.writer.transport, fh, pos, n))
                except OSError as exc:
                    raise _Abort(f"sendfile failed: {exc.strerror or exc}") from None
                except RuntimeError:  # asyncio's "Transport is closing": the client left
                    if not self.writer.transport.is_closing():
                        raise
                    raise _Abort("the connection closed during sendfile") from None
                if sent < n:  # the file shrank: the frame cannot be completed
                    rec.result = "changed"
                    raise _Abort("the file shrank while it was being sent")
                pos += n
                rec.bytes = pos - start

    # --- upload --------------------------------------------------------------------

    async def _upload(self, req: Put) -> None:
        server = self.server
        if req.path in server._uploads and self._verdicts:
            await self._flush_verdicts()  # this session's own upload of it may be ending
        try:
            upload = self._open_upload(req)
        except TcpftError as exc:
            await self._refuse(req, exc)
            return
        server._uploads.add(req.path)
        large = server._large_buffer_uploads < _LARGE_BUFFER_UPLOADS
        server._large_buffer_uploads += large
        handed_over = False
        try:
            async with self._audited("transfer put", req.path) as rec:
                size = _UPLOAD_BUFFER_LARGE if large else _UPLOAD_BUFFER
                received = await self._receive_upload(req, upload, rec, size)
                if received is None:
                    pass
                elif req.stream:  # committed meanwhile; the verdict follows in its turn
                    rec.deferred = handed_over = True
                    self._stream_verdict(req, upload, received, rec, large)
                else:
                    verdict, rec.result = await self._commit(upload, received)
                    await self._send(verdict)
        finally:
            if not handed_over:
                self._upload_ended(req, upload, large)

    def _open_upload(self, req: Put) -> UploadHandle:
        """The partial file of an upload; TcpftError for a refusal."""
        server, user = self.server, self.user
        assert user is not None
        if not user.can_write:
            raise PermissionDenied("this account is read-only")
        if req.path in server._uploads:
            raise AlreadyExists("an upload to this name is in progress")
        return server.storage.open_upload(
            req.path,
            req.size,
            req.mtime_ns,
            force=req.force,
            resume=req.resume,
            max_size=self.cfg.max_upload_size,
            reserve_bytes=self.cfg.upload_reserve,
        )

    async def _refuse(self, req: Put, exc: TcpftError) -> None:
        """Refuse an upload; a streamed one's DATA is then read and thrown away."""
        if not req.stream:
            await self._send(Error.of(exc.code, str(exc)))
            return
        await self._flush_verdicts()
        await self._send(Error.of(exc.code, str(exc)))
        buffers: list[mmap.mmap | None] = [None]
        item = await self._next_payload(buffers, _UPLOAD_BUFFER)
        while isinstance(item, (memoryview, Data)):
            item = await self._next_payload(buffers, _UPLOAD_BUFFER)
        if isinstance(item, Cancel):
            await self._send(Ack(True))

    def _upload_ended(self, req: Put, upload: UploadHandle, large: bool) -> None:
        server = self.server
        server._large_buffer_uploads -= large
        server._uploads.discard(req.path)
        upload.abort(keep=True)  # no-op once settled; cut mid-way: kept for a resume

    async def _receive_upload(
        self, req: Put, upload: UploadHandle, rec: _Transfer, buffer_size: int
    ) -> _Received | None:
        """Receive the upload to its end: what to commit, or None once it is settled.

        Settled means cancelled or failed, ``rec.result`` saying which; the client has
        been told (ERROR, or the ACK that confirms a CANCEL).
        """
        offset, digest, hasher = 0, b"", new_hasher(self.algorithm)
        if req.resume and upload.offset:
            aligned = align_down(min(upload.offset, req.size))
            if aligned:
                fd = upload.open_partial_for_read()
                try:
                    scan = await asyncio.to_thread(scan_prefix, fd, aligned, self.algorithm)
                finally:
                    os.close(fd)
                offset, digest, hasher = aligned, scan.digest, scan.whole
        upload.truncate(offset)
        if not req.stream:
            await self._send(PutReady(offset, digest))
        failed: TcpftError | None = None
        # Chunks are written and hashed in workers while the next ones arrive, each
        # chunk's write beside its hash (see _ChunkStore). Large uploads
        # have three buffers, so that two chunks can be in flight while a third one
        # fills: a direct write waits for the disk, and one that waits longer than
        # usual then does not stop the receiving.
        store = _ChunkStore(upload, hasher)
        inflight: deque[asyncio.Future[None]] = deque()
        buffers: list[mmap.mmap | None] = [None] * (3 if buffer_size > _UPLOAD_BUFFER else 2)
        depth = len(buffers) - 1  # chunks in flight while the next one is received
        last: memoryview | None = None  # the final chunk, written with the commit
        try:
            while True:
                item = await self._next_payload(buffers, buffer_size)
                if failed is None:
                    # The buffer that fills next must be free; everything, at the end.
                    keep = depth - 1 if isinstance(item, memoryview | Data) else 0
                    while len(inflight) > keep and failed is None:
                        failed = await _settled(inflight.popleft())
                    if failed is not None:
                        for later in inflight:
                            await _settled(later)  # its buffer is about to be reused
                        inflight.clear()
                        upload.abort(keep=False)
                        await self._flush_verdicts()
                        await self._send(Error.of(failed.code, str(failed)))
                if isinstance(item, Data):
                    item = memoryview(item.data)
                if isinstance(item, memoryview):
                    if not item:  # an empty DATA carries nothing: not even the last chunk
                        continue
                    buffers.append(buffers.pop(0))  # the one just filled is in flight now
                    if failed is not None:
                        continue
                    rec.bytes += len(item)
                    if self.conn.remaining == 0 and not self._payload_left:
                        last = item  # DONE comes next: one worker trip for both
                        continue
                    # Written in a worker even when small: a write into the page cache
                    # can be held for up to 200 ms while the kernel throttles writers,
                    # which on the loop would stall every client.
                    inflight.append(store.add(item))
                    continue
                msg = item
                break
        finally:
            if inflight:
                # Receiving ended early (a cut, a stall, a bad frame): what arrived
                # whole reaches the partial file before the upload is closed, so that a
                # resume can skip it.
                for pending in inflight:
                    pending.add_done_callback(_retrieve)
                with contextlib.suppress(Exception):
                    await asyncio.shield(asyncio.wait(set(inflight)))
            store.close()
        if isinstance(msg, Done):
            rec.digest = labelled(self.algorithm, msg.digest)
        if failed is not None:
            rec.result = "failed"
        elif isinstance(msg, Done):
            return _Received(last, hasher, msg.digest)
        else:
            upload.abort(keep=False)
            rec.result = "cancelled"
        if isinstance(msg, Cancel):
            await self._send(Ack(True))
        return None

    async def _commit(self, upload: UploadHandle, received: _Received) -> tuple[Message, str]:
        """Write the final chunk, check the digest and commit, in one worker trip.

        Returns the verdict for the client and the audit result.
        """

        def finish() -> bool:
            if (last := received.last) is not None:
                _write_chunk(upload, last, received.hasher)
            if received.hasher.digest() != received.digest:
                return False
            upload.commit()
            return True

        try:
            committed = await asyncio.to_thread(finish)
        except TcpftError as exc:
            upload.abort(keep=False)
            return Error.of(exc.code, str(exc)), "failed"
        finally:
            received.last = None  # its buffer is free while the verdict waits its turn
        if not committed:
            upload.abort(keep=False)
            mismatch = Error.of(ErrorCode.DIGEST_MISMATCH, "the upload's digest differs")
            return mismatch, "digest-mismatch"
        return Ack(True), "ok"

    # --- streamed uploads (version 4) ------------------------------------------------

    def _stream_verdict(
        self, req: Put, upload: UploadHandle, received: _Received, rec: _Transfer, large: bool
    ) -> None:
        """Commit a streamed upload in the background and send its verdict in turn."""
        before = self._last_verdict

        async def verdict() -> None:
            try:
                msg, rec.result = await self._commit(upload, received)
                if before is not None:
                    await asyncio.wait([before])  # verdicts go out in order
                await self._send(msg)
            except _Abort as exc:
                log.info("dropping %s: %s", self.addr, exc)
                self.writer.transport.abort()
            except (TcpftError, ConnectionError, ssl.SSLError, OSError) as exc:
                log.info("verdict on %s not sent to %s: %s", req.path, self.addr, exc)
            except Exception:  # a bug: the client must not wait for this verdict forever
                log.exception("internal error committing an upload from %s", self.addr)
                self.writer.transport.abort()
            finally:
                self._audit("transfer put", req.path, rec)
                self._upload_ended(req, upload, large)

        task = asyncio.ensure_future(verdict())
        self._verdicts.add(task)
        task.add_done_callback(self._verdicts.discard)
        self._last_verdict = task

    async def _flush_verdicts(self) -> None:
        """Wait until every streamed upload's verdict has been sent (or given up)."""
        if self._last_verdict is not None:
            await asyncio.wait([self._last_verdict])

    async def _settle_verdicts(self) -> None:
        """At the end of the session: let every commit in progress finish."""
        while self._verdicts:
            await asyncio.wait(set(self._verdicts))


def _read_cached(fd: int, n: int, pos: int) -> bytearray | None:
    """``n`` bytes at ``pos`` if all are in the page cache (no wait for the disk), else None."""
    if _RWF_NOWAIT is None:
        return None
    buf = bytearray(n)
    try:
        got = os.preadv(fd, [buf], pos, _RWF_NOWAIT)
    except OSError:  # not cached (EAGAIN), or not supported here: read in a worker
        return None
    return buf if got == n else None


def _final(known: bytes | None, hasher: Hasher | None) -> bytes:
    """The whole-file digest: the one known from the cache, or else the one computed."""
    if known is not None:
        return known
    assert hasher is not None
    return hasher.digest()


def _read_chunk(fd: int, n: int, pos: int, hasher: Hasher | None) -> bytes:
    """Read and hash one chunk (in a worker thread, for a read that waits for the disk)."""
    chunk = os.pread(fd, n, pos)
    if hasher is not None:
        hasher.update(chunk)
    return chunk


class _ChunkStore:
    """An upload's chunks, written and hashed in two worker threads of its own.

    One thread writes the chunks in turn, the other hashes them in turn (both release
    the GIL), so a chunk's write and its hash run side by side: a direct write, which
    waits for the disk, holds up neither the hashing nor the receiving. Threads of
    the upload's own keep the order without any hand-off through the event loop;
    they are made at the first chunk (an upload of one chunk needs none) and end
    after :meth:`close`. Measured against one worker doing both in turn, and against
    the shared pool: docs/PERFORMANCE.md.
    """

    def __init__(self, upload: UploadHandle, hasher: Hasher) -> None:
        self._upload = upload
        self._hasher = hasher
        self._workers: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None

    def add(self, chunk: memoryview) -> asyncio.Future[None]:
        """Write and hash ``chunk`` after the chunks before it.

        The result is done once both are, with the write's error if it failed.
        """
        if self._workers is None:
            self._workers = (
                ThreadPoolExecutor(1, thread_name_prefix="tcpft-write"),
                ThreadPoolExecutor(1, thread_name_prefix="tcpft-hash"),
            )
        writer, hasher = self._workers
        loop = asyncio.get_running_loop()
        write = loop.run_in_executor(writer, self._upload.write, chunk)
        hashing = loop.run_in_executor(hasher, self._hasher.update, chunk)
        return asyncio.ensure_future(_both(write, hashing))

    def close(self) -> None:
        """Let the threads end once the chunks given to them are done."""
        if self._workers is not None:
            for worker in self._workers:
                worker.shutdown(wait=False)
            self._workers = None


async def _both(write: asyncio.Future[Any], hashing: asyncio.Future[Any]) -> None:
    await asyncio.wait([write, hashing])
    for error in [write.exception(), hashing.exception()]:  # both taken, the write's first
        if error is not None:
            raise error


async def _settled(pending: asyncio.Future[None] | None) -> TcpftError | None:
    """Wait for a chunk's write; the error it met, if any."""
    if pending is None:
        return None
    try:
        await pending
    except TcpftError as exc:
        return exc
    return None


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Collect the outcome of a write nobody waits for any more."""
    if not future.cancelled():
        future.exception()


def _write_chunk(upload: UploadHandle, data: memoryview, hasher: Hasher) -> None:
    upload.write(data)
    hasher.update(data)
