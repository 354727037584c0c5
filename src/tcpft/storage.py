"""The served directory: listing, reading and receiving files, safely (Linux/POSIX).

Every name comes from the network, so nothing here hands a path string to the OS.
The root is opened once; each request walks from that descriptor one validated
component at a time with ``O_NOFOLLOW``, and the file is opened relative to its
parent's descriptor. A symbolic link anywhere in the path is refused, and one swapped
in during a request cannot redirect it. Uploads go to a hidden partial file in the
target's directory and are renamed into place by :meth:`UploadHandle.commit`.
Error messages speak of wire names only, never of the root's path on disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from tcpft.errors import (
    AlreadyExists,
    IntegrityError,
    InvalidName,
    LocalFileError,
    NoSpace,
    TcpftError,
    TooLarge,
    UsageError,
)
from tcpft.messages import Entry, entry_wire_size
from tcpft.names import is_partial_name, join_path, partial_name, printable, split_path
from tcpft.native import DIRECT_IO_ALIGN, is_aligned, set_direct_io, start_writeback
from tcpft.partials import open_partial

__all__ = ["Entry", "ReadHandle", "ServedDirectory", "UploadHandle"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under the partial's name fails to open instead of hanging.
_PARTIAL_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: Permissions of a committed upload (its partial file is 0600 while it is incomplete).
UPLOADED_MODE = 0o644
#: An upload asks the kernel to start writing its data to disk every this many bytes.
WRITEBACK_STEP = 8 * 1024 * 1024
#: Uploads from this size up are written with direct I/O where they can be...
DIRECT_IO_MIN_SIZE = 8 * 1024 * 1024
#: ...by writes from this size up (a smaller one would wait for the disk too often).
DIRECT_IO_MIN_WRITE = 64 * 1024
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_LINK = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV})


class _Closing:
    """Context manager support: ``with`` calls ``close()``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _io_error(exc: OSError, doing: str) -> TcpftError:
    """Translate an OS write-side failure: NoSpace for a full disk or quota."""
    if exc.errno in _NO_SPACE:
        return NoSpace(f"no room left to {doing}")
    return LocalFileError(f"cannot {doing}: {exc.strerror}")


def _clear_nonblock(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)


def _lstat_at(name: str, dir_fd: int) -> os.stat_result | None:
    """``lstat`` relative to ``dir_fd``; None when nothing is there."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidName(f"cannot examine {printable(name)}: {exc.strerror}") from None


@dataclass
class ReadHandle(_Closing):
    """An open regular file to send. Closing is idempotent."""

    fd: int
    size: int
    mtime_ns: int
    dev: int
    ino: int
    ctime_ns: int

    @property
    def identity(self) -> tuple[int, int, int, int, int]:
        """``(dev, ino, size, mtime_ns, ctime_ns)`` as seen when the file was opened."""
        return (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)

    def changed(self) -> bool:
        """Say whether the size, mtime or ctime differ from those seen at opening.

        The ctime counts because the mtime can be set back (``touch -d``, ``cp -p``,
        ``rsync -t``) after a write in place, and the ctime cannot: a file rewritten in
        place and given its old mtime is still seen. A change of its metadata alone
        (``chmod``) counts too.

        Raises:
            LocalFileError: the handle is closed or ``fstat`` fails.
        """
        try:
            st = os.fstat(self.fd)
        except OSError as exc:
            raise LocalFileError(f"cannot examine the file being sent: {exc.strerror}") from None
        now = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return now != (self.size, self.mtime_ns, self.ctime_ns)

    def close(self) -> None:
        """Close the descriptor (again is harmless)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class UploadHandle(_Closing):
    """A file being received into its partial file; see :meth:`ServedDirectory.open_upload`.

    ``offset`` is the number of bytes already in the partial file (kept from an earlier
    attempt when resuming); the next :meth:`write` appends there. ``close()``, and
    leaving a ``with`` block, without :meth:`commit` is ``abort(keep=False)``.
    """

    def __init__(
        self,
        parent_fd: int,
        fd: int,
        name: str,
        offset: int,
        *,
        size: int,
        mtime_ns: int,
        force: bool,
    ) -> None:
        self._parent_fd, self.fd, self.name, self.offset = parent_fd, fd, name, offset
        self.partial = partial_name(name)
        self.size, self.mtime_ns, self.force = size, mtime_ns, force
        self._open = True
        self._end = offset  # where the next write goes
        self._unflushed = offset  # where the data not yet sent to the disk begins
        self._direct = False  # O_DIRECT is on for fd
        self._direct_works = True  # until the file system refuses it
        # A write may run in a worker thread: closing waits for it, so that the
        # descriptor is never closed (and reused) under a write in progress.
        self._lock = threading.Lock()

    def open_partial_for_read(self) -> int:
        """Open the partial file again, read-only (to hash the prefix already present).

        The caller closes the returned descriptor.

        Raises:
            LocalFileError: it cannot be opened, or it is no longer the file being written.
        """
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.partial, flags, dir_fd=self._parent_fd)
        except OSError as exc:
            raise LocalFileError(f"cannot reopen the partial file: {exc.strerror}") from None
        mine, theirs = os.fstat(self.fd), os.fstat(fd)
        if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
            os.close(fd)
            raise LocalFileError("the partial file was replaced during the upload")
        _clear_nonblock(fd)
        return fd

    def write(self, data: bytes | memoryview) -> None:
        """Append all of ``data`` to the partial file.

        In an upload of :data:`DIRECT_IO_MIN_SIZE` or more, the part of ``data`` that
        direct I/O can take (see :meth:`_direct_length`) goes from ``data`` to the
        disk, past the page cache: the fsync of :meth:`commit` has to wait for the
        disk anyway, and copying into the page cache first cost 0.25 s of CPU per GiB
        at best, 2 s on a virtual machine that hands freed memory back to its host,
        against 0.1 s. Smaller files, which the fsync writes at once, stay in the
        page cache. What is written through the page cache is sent on to the disk
        every :data:`WRITEBACK_STEP` bytes, so that the fsync finds little left.

        Raises:
            NoSpace: the disk or the quota is full.
            LocalFileError: any other write failure.
        """
        view = memoryview(data).cast("B")
        with self._lock:
            if not self._open:
                raise LocalFileError(f"the upload of {printable(self.name)} is closed")
            try:
                direct = self._direct_length(view)
                if direct:
                    self._write(view[:direct])
                    if self._direct and self._unflushed == self._end - direct:
                        self._unflushed = self._end  # nothing left behind in the cache
                    view = view[direct:]
                if view:
                    self._switch_direct(False)
                    self._write(view)
            except OSError as exc:
                raise _io_error(exc, f"write {printable(self.name)}") from None
            if self._end - self._unflushed >= WRITEBACK_STEP:
                start_writeback(self.fd, self._unflushed, self._end - self._unflushed)
                self._unflushed = self._end

    def _direct_length(self, view: memoryview) -> int:
        """How many bytes at the start of ``view`` to write with direct I/O (O_DIRECT on).

        The memory, the file offset and the length must be aligned to
        :data:`DIRECT_IO_ALIGN`: 0 for a small upload, a small or unaligned write, or
        when the file system has no direct I/O; else ``view``'s length rounded down.
        """
        length = len(view) - len(view) % DIRECT_IO_ALIGN
        if (
            not self._direct_works
            or self.size < DIRECT_IO_MIN_SIZE
            or length < DIRECT_IO_MIN_WRITE
            or self._end % DIRECT_IO_ALIGN
            or not is_aligned(view)
        ):
            return 0
        return length if self._switch_direct(True) else 0

    def _switch_direct(self, on: bool) -> bool:
        """Turn O_DIRECT on or off for the partial file; whether it now is as asked."""
        if on != self._direct:
            if not set_direct_io(self.fd, on):
                if on:
                    self._direct_works = False  # not on this file system: never again
                    return False
                raise OSError(errno.EIO, "cannot turn off direct I/O")
            self._direct = on
        return True

    def _write(self, view: memoryview) -> None:
        while view:
            try:
                n = os.write(self.fd, view)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self._direct:
                    raise
                self._direct_works = False  # the flag was taken, the write is not
                self._switch_direct(False)
                continue
            view = view[n:]
            self._end += n

    def truncate(self, offset: int) -> None:
        """Cut the partial file to ``offset`` bytes; writing goes on from there.

        Raises:
            LocalFileError: ``offset`` is negative or the file cannot be truncated.
        """
        try:
            if offset < 0:
                raise OSError(errno.EINVAL, "negative offset")
            os.ftruncate(self.fd, offset)
            os.lseek(self.fd, offset, os.SEEK_SET)
        except OSError as exc:
            raise _io_error(exc, f"truncate {printable(self.name)}") from None
        self.offset = self._end = self._unflushed = offset

    def commit(self) -> None:
        """Set the mtime, flush to disk and move the partial file to its final name.

        Without ``force`` an existing target is never replaced. The handle is closed
        afterwards whatever happens; on failure the partial file is removed (it would
        only take space: a complete upload is not resumed).

        Raises:
            IntegrityError: the partial file does not hold exactly ``size`` bytes.
            AlreadyExists: the target appeared meanwhile and ``force`` is false.
            InvalidName: the target has become a directory.
            NoSpace, LocalFileError: flushing or renaming failed.
        """
        if not self._open:
            raise LocalFileError(f"upload of {printable(self.name)} is already closed")
        shown = printable(self.name)
        committed = False
        try:
            length = os.fstat(self.fd).st_size
            if length != self.size:
                raise IntegrityError(f"{shown}: received {length} bytes, expected {self.size}")
            try:
                os.fchmod(self.fd, UPLOADED_MODE)  # the partial was private until now
                os.utime(self.fd, ns=(self.mtime_ns, self.mtime_ns))
                os.fsync(self.fd)
                self._rename()
                committed = True
            except FileExistsError:
                raise AlreadyExists(f"{shown} already exists") from None
            except (IsADirectoryError, NotADirectoryError):
                raise InvalidName(f"{shown} exists and is not a regular file") from None
            except OSError as exc:
                raise _io_error(exc, f"store {shown}") from None
            with contextlib.suppress(OSError):  # the file is in place; this is best effort
                os.fsync(self._parent_fd)
        finally:
            if not committed:
                with contextlib.suppress(OSError):
                    os.unlink(self.partial, dir_fd=self._parent_fd)
            self._close()

    def _rename(self) -> None:
        src, dst, pfd = self.partial, self.name, self._parent_fd
        if not self.force:
            try:  # link() never replaces an existing file
                os.link(src, dst, src_dir_fd=pfd, dst_dir_fd=pfd, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
                # No hard links on this file system: check, then rename (racy, best effort).
                if _lstat_at(dst, pfd) is not None:
                    raise FileExistsError(errno.EEXIST, "exists") from None
            else:
                os.unlink(src, dir_fd=pfd)
                return
        os.rename(src, dst, src_dir_fd=pfd, dst_dir_fd=pfd)

    def abort(self, keep: bool) -> None:
        """Close the upload, keeping the partial file for a later resume or removing it.

        Does nothing once committed or aborted. Raises nothing if the partial file is
        already gone.
        """
        if not self._open:
            return
        try:
            if not keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.partial, dir_fd=self._parent_fd)
        finally:
            self._close()

    def close(self) -> None:
        """Same as ``abort(keep=False)``; harmless after :meth:`commit`."""
        self.abort(keep=False)

    def _close(self) -> None:
        with self._lock:
            if self._open:
                self._open = False
                os.close(self.fd)
                os.close(self._parent_fd)


class ServedDirectory(_Closing):
    """The directory tree a server exposes, reached only through its root descriptor."""

    def __init__(self, root: Path) -> None:
        """Open ``root``.

        Raises:
            UsageError: ``root`` is missing, not a directory or cannot be opened.
        """
        try:
            self._root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(f"cannot serve {root}: {exc.strerror}") from None

    def close(self) -> None:
        """Close the root descriptor (again is harmless); open handles stay usable."""
        if self._root_fd >= 0:
            fd, self._root_fd = self._root_fd, -1
            os.close(fd)

    def _open_dir(self, parts: tuple[str, ...], *, create: bool = False) -> int:
        """Open the directory ``parts`` below the root without following any symlink.

        With ``create``, missing directories are made (mode 0755). The caller closes
        the result. Raises InvalidName when any component is missing (and not
        created), a symbolic link, not a directory or not accessible.
        """
        if self._root_fd < 0:
            raise LocalFileError("the served directory is closed")
        # Opened anew, not dup()ed: a duplicate shares the directory's read position
        # with every other, and listings made at once in worker threads then saw some
        # entries twice and others not at all.
        fd = os.open(".", _DIR_FLAGS, dir_fd=self._root_fd)
        for i, part in enumerate(parts):
            if is_partial_name(part):  # hidden from listings: never a way through
                os.close(fd)
                raise InvalidName(f"not a directory: {printable('/'.join(parts[: i + 1]))}")
            try:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                shown = printable("/".join(parts[: i + 1]))
                if exc.errno == errno.ENOENT:
                    raise InvalidName(f"no such directory: {shown}") from None
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise InvalidName(f"not a directory: {shown}") from None
                if exc.errno in _NO_SPACE:  # no block or no inode left for the mkdir
                    raise NoSpace(f"no room left to make the directory {shown}") from None
                raise InvalidName(f"cannot open directory {shown}: {exc.strerror}") from None
            finally:
                os.close(fd)
            fd = child
        return fd

    def list(
        self,
        path: str = "",
        *,
        recursive: bool = False,
        limit: int = 100_000,
        byte_limit: int | None = None,
    ) -> list[Entry]:
        """List the regular files and directories in directory ``path``, sorted by path.

        Symbolic links, special files, partial files and names that are not valid
        wire names are left out. ``recursive`` descends into subdirectories (never
        through a symbolic link); one that cannot be opened is listed, not entered.

        Raises:
            InvalidName: ``path`` is not a valid name or not a reachable directory.
            TooLarge: there are more than ``limit`` entries, or they would take more
                than ``byte_limit`` bytes on the wire.
        """
        start = split_path(path, allow_root=True)
        entries: list[Entry] = []
        wire_bytes = 0
        pending = [start]
        while pending:
            parts = pending.pop()
            try:  # walked again from the root: holds one descriptor, however deep
                fd = self._open_dir(parts)
            except InvalidName:
                if parts == start:
                    raise
                continue  # replaced or unreadable since it was seen
            try:
                with os.scandir(fd) as it:
                    for item in it:
                        child = (*parts, item.name)
                        try:
                            wire = join_path(child)
                            st = item.stat(follow_symlinks=False)
                        except (InvalidName, OSError):
                            continue
                        is_dir = stat.S_ISDIR(st.st_mode)
                        if not (is_dir or stat.S_ISREG(st.st_mode)) or is_partial_name(item.name):
                            continue
                        if len(entries) >= limit:
                            raise TooLarge(f"listing exceeds {limit} entries")
                        size = 0 if is_dir else st.st_size
                        entry = Entry(wire, is_dir, size, st.st_mtime_ns)
                        wire_bytes += entry_wire_size(entry)
                        if byte_limit is not None and wire_bytes > byte_limit:
                            raise TooLarge(f"listing exceeds {byte_limit} bytes")
                        entries.append(entry)
                        if is_dir and recursive:
                            pending.append(child)
            except OSError as exc:
                shown = printable(join_path(parts))
                raise InvalidName(f"cannot list {shown}: {exc.strerror}") from None
            finally:
                os.close(fd)
        entries.sort(key=lambda e: e.path)
        return entries

    def open_read(self, path: str) -> ReadHandle:
        """Open the regular file ``path`` for sending.

        Raises:
            InvalidName: ``path`` is not a valid name, is a partial file, is missing, is
                reached through a symbolic link, or is not a regular file.
        """
        parts = split_path(path)
        name, shown = parts[-1], printable(path)
        if is_partial_name(name):
            raise InvalidName(f"not a servable file: {shown}")
        parent = self._open_dir(parts[:-1])
        try:
            before = _lstat_at(name, parent)
            if before is None:
                raise InvalidName(f"no such file: {shown}")
            # Devices and FIFOs are not opened. One swapped in between this lstat and the
            # open is opened (O_NONBLOCK: never waits), then refused by the fstat below;
            # making a device node takes root on the server's machine.
            if not stat.S_ISREG(before.st_mode):
                raise InvalidName(f"not a regular file: {shown}")
            fd = os.open(name, _READ_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise InvalidName(f"cannot open {shown}: {exc.strerror}") from None
        finally:
            os.close(parent)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # swapped after the lstat
                raise InvalidName(f"not a regular file: {shown}")
            _clear_nonblock(fd)
        except BaseException:
            os.close(fd)
            raise
        return ReadHandle(fd, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, st.st_ctime_ns)

    @staticmethod
    def _check_space(dir_fd: int, needed: int, shown: str, size: int) -> None:
        vfs = os.fstatvfs(dir_fd)
        if vfs.f_bavail * vfs.f_frsize < needed:
            raise NoSpace(f"not enough free space to store {shown} ({size} bytes)")

    def open_upload(
        self,
        path: str,
        size: int,
        mtime_ns: int,
        *,
        force: bool,
        resume: bool,
        max_size: int | None,
        reserve_bytes: int = 64 * 1024 * 1024,
    ) -> UploadHandle:
        """Prepare to receive ``size`` bytes into file ``path``.

        Missing parent directories are created. The data goes to a hidden partial file
        beside the target (mode 0600; the committed file gets UPLOADED_MODE, 0644).
        With ``resume`` an existing partial file no longer than ``size`` is kept and
        its length is the handle's ``offset``; otherwise it is emptied.

        Raises:
            InvalidName: ``path`` is not a valid name or names a partial file, its
                directory cannot be made, or the target or the partial file exists and is
                not a regular file.
            AlreadyExists: the target exists and ``force`` is false, or another
                upload is writing into the same partial file.
            TooLarge: ``size`` is over ``max_size``.
            NoSpace: free space is under the bytes still to come plus ``reserve_bytes``.
            LocalFileError: the partial file cannot be created.
        """
        parts = split_path(path)
        name, shown = parts[-1], printable(path)
        if is_partial_name(name):
            raise InvalidName(f"not a valid upload name: {shown}")
        # Refused before any missing directory is made for it.
        if max_size is not None and size > max_size:
            raise TooLarge(f"{shown}: {size} bytes is over the limit of {max_size} bytes")
        if not resume:  # (a resume may need less: what its partial holds is counted)
            self._check_space(self._root_fd, size + reserve_bytes, shown, size)
        parent = self._open_dir(parts[:-1], create=True)
        fd = -1
        try:
            target = _lstat_at(name, parent)
            if target is not None and not stat.S_ISREG(target.st_mode):
                raise InvalidName(f"exists and is not a regular file: {shown}")
            if target is not None and not force:
                raise AlreadyExists(f"{shown} already exists")
            pname = partial_name(name)
            old = _lstat_at(pname, parent)
            if old is not None and not stat.S_ISREG(old.st_mode):
                raise InvalidName(f"the partial file of {shown} is not a regular file")
            present = old.st_size if old is not None and resume and old.st_size <= size else 0
            self._check_space(parent, (size - present) + reserve_bytes, shown, size)
            # Locked until the handle closes: one upload per partial file.
            got = open_partial(pname, _PARTIAL_FLAGS, dir_fd=parent)
            if got is None:
                # Another upload writes into it: of this name (another server process
                # on this directory), or of a long name whose partial is named after
                # its SHA-256, which is the partial of that hex name too.
                raise AlreadyExists(f"an upload into the partial file of {shown} is in progress")
            fd = got[0]
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidName(f"the partial file of {shown} is not a regular file")
            _clear_nonblock(fd)
            offset = st.st_size if resume and st.st_size <= size else 0
            if offset != st.st_size:
                os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
            return UploadHandle(parent, fd, name, offset, size=size, mtime_ns=mtime_ns, force=force)
        except BaseException as exc:
            if fd >= 0:
                os.close(fd)
            os.close(parent)
            if isinstance(exc, OSError):
                raise _io_error(exc, f"prepare the partial file of {shown}") from None
            raise
