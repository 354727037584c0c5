"""Partial files: opened and locked so that each is written by one transfer, and is its own.

A download (in the client) or an upload (in the server) writes into a hidden partial
file beside its target and publishes it by linking it to the final name, then
unlinking the partial's name. The lock (``flock``) keeps two transfers out of one
partial file. Two more things must hold once the lock is taken, or the transfer
would write into a file that is not its partial:

- **The name still names the locked file.** A transfer that opened the partial just
  before its holder published it gets the lock on what is now the published file
  once the holder closes it. The partial is then opened again.
- **The file has no other link.** A publish cut between its link and its unlink (a
  crash, ``kill -9``) leaves the partial's name as a second link to the published
  file, and anyone who can write in the directory can make one to another file.
  Truncating it would truncate that file. The name is removed and a new partial made.
"""

from __future__ import annotations

import fcntl
import os

#: Attempts to open and lock a partial file that keeps changing under us.
_ATTEMPTS = 4


def open_partial(name: str, flags: int, *, dir_fd: int | None = None) -> tuple[int, bool] | None:
    """Open the partial file ``name`` with ``flags`` (mode 0600 if created) and lock it.

    Returns the descriptor, and whether the file found at first was not kept (a stale
    link removed, or a file published meanwhile): the partial is then new and holds
    nothing of an earlier attempt. None when another transfer holds the partial, or
    it kept changing under us.

    Raises:
        OSError: the file cannot be opened, examined or unlinked.
    """
    replaced = False
    for _ in range(_ATTEMPTS):
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return None
            mine = os.fstat(fd)
            try:
                now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                if mine.st_nlink == 1:
                    return fd, replaced
                os.unlink(name, dir_fd=dir_fd)  # another file's link: leave that file be
            replaced = True
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    return None
