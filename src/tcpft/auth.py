"""User accounts, password hashing and login throttling. No network code here.

Passwords are hashed with argon2id (argon2-cffi) using the ``ARGON2_*`` parameters
below (OWASP's minimum: m=19456 KiB, t=2, p=1) and are only ever compared through
``PasswordHasher.verify``.

Users file format
-----------------
UTF-8 text, one user per line::

    NAME:PERMS:HASH

- ``NAME`` is 1 to 64 bytes of ASCII letters, digits and ``. _ - @``, not starting
  with ``-`` or ``.``; each name appears at most once.
- ``PERMS`` is ``r`` (download and list) or ``rw`` (also upload).
- ``HASH`` is the argon2id encoded string, ``$argon2id$v=19$m=...,t=...,p=...$salt$hash``.
- Blank lines and lines starting with ``#`` are ignored; whitespace around a line is
  ignored.

A malformed line or a duplicate name is a :class:`~tcpft.errors.UsageError` naming the
file and the line number. The file is written atomically with mode 0600. Whoever
changes it (``tcpft user add``/``del``) holds :func:`lock_users_file` from reading it to
writing it: ``NAME.lock`` beside it, locked with ``flock``. The lock is on a file of its
own because the users file is replaced on every save: a lock on it would be a lock on
the replaced inode, and a later writer would lock the new one alongside.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import os
import secrets
import string
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from tcpft.errors import LocalFileError, UsageError
from tcpft.limits import MAX_PASSWORD_BYTES, MAX_USERNAME_BYTES

__all__ = [
    "ARGON2_HASH_LEN",
    "ARGON2_MEMORY_COST_KIB",
    "ARGON2_PARALLELISM",
    "ARGON2_SALT_LEN",
    "ARGON2_TIME_COST",
    "DEFAULT_USER",
    "LoginGuard",
    "User",
    "UserStore",
    "create_default",
    "hash_password",
    "lock_users_file",
    "prepare",
    "validate_password",
    "validate_username",
]

ARGON2_TIME_COST = 2
ARGON2_MEMORY_COST_KIB = 19456
ARGON2_PARALLELISM = 1
ARGON2_HASH_LEN = 32
ARGON2_SALT_LEN = 16

#: Name of the account :func:`create_default` makes.
DEFAULT_USER = "tcpft"

_HASH_PREFIX = "$argon2id$"
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "._-@")
_PERMS = {"r": False, "rw": True}

_HASHER = argon2.PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_COST_KIB,
    parallelism=ARGON2_PARALLELISM,
    hash_len=ARGON2_HASH_LEN,
    salt_len=ARGON2_SALT_LEN,
    type=argon2.Type.ID,
)


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user is unknown, so that costs as much as a wrong password.

    Made on first use, not at import: hashing takes 19 MiB and tens of milliseconds.
    """
    return _HASHER.hash(secrets.token_urlsafe(32))


def prepare() -> None:
    """Make the hash verified for unknown users now (a server calls this as it starts),
    so that the first login of an unknown user takes no longer than the next ones."""
    _dummy_hash()


@dataclass(frozen=True, slots=True)
class User:
    """One account: its name, argon2id hash and whether it may upload."""

    name: str
    password_hash: str = field(repr=False)
    can_write: bool = False


def validate_username(name: str) -> None:
    """Raise UsageError unless ``name`` is 1..MAX_USERNAME_BYTES of ``[A-Za-z0-9._-@]``
    not starting with ``-`` or ``.``."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size == 0:
        raise UsageError("user name is empty")
    if size > MAX_USERNAME_BYTES:
        raise UsageError(f"user name is {size} bytes long; at most {MAX_USERNAME_BYTES} allowed")
    bad = next((ch for ch in name if ch not in _NAME_CHARS), None)
    if bad is not None:
        raise UsageError(
            f"user name {name!r} contains {bad!r}; "
            "only ASCII letters, digits and . _ - @ are allowed"
        )
    if name[0] in "-.":
        raise UsageError(f"user name {name!r} must not start with {name[0]!r}")


def validate_password(password: str) -> None:
    """Raise UsageError if ``password`` is empty, over MAX_PASSWORD_BYTES UTF-8 bytes,
    holds a NUL or cannot be encoded. The message never contains the password."""
    if not password:
        raise UsageError("password is empty")
    try:
        size = len(password.encode("utf-8"))
    except UnicodeEncodeError:
        raise UsageError("password is not valid Unicode text") from None
    if size > MAX_PASSWORD_BYTES:
        raise UsageError(f"password is {size} bytes long; at most {MAX_PASSWORD_BYTES} allowed")
    if "\0" in password:
        raise UsageError("password contains a NUL character")


def hash_password(password: str) -> str:
    """Return the argon2id encoded hash of ``password``; UsageError if it is invalid."""
    validate_password(password)
    return _HASHER.hash(password)


class UserStore:
    """The accounts of a server, loaded from and saved to a users file.

    ``hasher`` exists for tests; by default the module's argon2id parameters are used.
    """

    def __init__(
        self, users: Iterable[User] = (), *, hasher: argon2.PasswordHasher | None = None
    ) -> None:
        """Build a store from ``users``; UsageError if two share a name."""
        self._hasher = hasher if hasher is not None else _HASHER
        self._users: dict[str, User] = {}
        for user in users:
            if user.name in self._users:
                raise UsageError(f"duplicate user name {user.name!r}")
            self._users[user.name] = user

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, hasher: argon2.PasswordHasher | None = None
    ) -> UserStore:
        """Read a users file (format in the module docstring).

        Raises UsageError if the file is missing, unreadable or not UTF-8, or for a
        malformed line or duplicate name (the message gives file and line number).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"users file not found: {path}") from None
        except UnicodeDecodeError as exc:
            raise UsageError(f"users file {path} is not UTF-8 text: {exc.reason}") from None
        except OSError as exc:
            raise UsageError(f"cannot read users file {path}: {exc.strerror}") from None
        store = cls(hasher=hasher)
        for lineno, raw in enumerate(text.split("\n"), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                user = _parse_line(line)
            except UsageError as exc:
                raise UsageError(f"{path}, line {lineno}: {exc.message}") from None
            if user.name in store._users:
                raise UsageError(f"{path}, line {lineno}: duplicate user name {user.name!r}")
            store._users[user.name] = user
        return store

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the users file atomically (0600 temp file beside it, fsync, rename).

        Raises LocalFileError if it cannot be written.
        """
        path = Path(path)
        lines = ["# tcpft users file: NAME:PERMS:HASH (PERMS is r or rw)\n"]
        lines += [
            f"{u.name}:{'rw' if u.can_write else 'r'}:{u.password_hash}\n" for u in self.users()
        ]
        data = "".join(lines).encode("utf-8")
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise LocalFileError(f"cannot write users file {path}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise LocalFileError(f"cannot write users file {path}: {exc.strerror}") from None
        _fsync_dir(path.parent)

    def add(self, name: str, password: str, *, write: bool = False, replace: bool = False) -> User:
        """Add (or with ``replace``, overwrite) a user and return it.

        Raises UsageError for an invalid name or password, or an existing name.
        """
        validate_username(name)
        if name in self._users and not replace:
            raise UsageError(f"user {name!r} already exists")
        validate_password(password)
        user = User(name, self._hasher.hash(password), can_write=write)
        self._users[name] = user
        return user

    def remove(self, name: str) -> None:
        """Delete the user ``name``; UsageError if there is none."""
        if self._users.pop(name, None) is None:
            raise UsageError(f"no such user: {name!r}")

    def get(self, name: str) -> User | None:
        """Return the user called ``name``, or None."""
        return self._users.get(name)

    def users(self) -> list[User]:
        """Return every user, sorted by name."""
        return sorted(self._users.values(), key=lambda u: u.name)

    def verify(self, name: str, password: str) -> User | None:
        """Return the user if ``password`` is theirs, else None. Never raises.

        An unknown name costs one argon2 verification, like a wrong password. A name or
        password over its byte limit (or not encodable) returns None without hashing.
        """
        try:
            name_size = len(name.encode("utf-8"))
            secret = password.encode("utf-8")
        except UnicodeEncodeError:
            return None
        if name_size > MAX_USERNAME_BYTES or len(secret) > MAX_PASSWORD_BYTES:
            return None
        user = self._users.get(name)
        try:
            self._hasher.verify(_dummy_hash() if user is None else user.password_hash, secret)
        except (VerifyMismatchError, InvalidHashError, VerificationError):
            return None
        return user

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, name: object) -> bool:
        return name in self._users


def _parse_line(line: str) -> User:
    parts = line.split(":")
    if len(parts) != 3:
        raise UsageError(f"expected NAME:PERMS:HASH, found {len(parts)} field(s)")
    name, perms, encoded = parts
    validate_username(name)
    if perms not in _PERMS:
        raise UsageError(f"permissions must be 'r' or 'rw', not {perms!r}")
    if not encoded.startswith(_HASH_PREFIX):
        raise UsageError(f"password hash must be an argon2id string starting {_HASH_PREFIX}")
    try:
        argon2.extract_parameters(encoded)
    except InvalidHashError:
        raise UsageError("password hash is not a valid argon2id encoded string") from None
    return User(name, encoded, can_write=_PERMS[perms])


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; best effort (some systems cannot open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def lock_users_file(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive lock of the users file ``path`` (waiting for it if need be).

    Raises LocalFileError if the lock file cannot be created or locked.
    """
    path = Path(path)
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LocalFileError(f"cannot create the lock file {lock}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise LocalFileError(f"cannot lock {lock}: {exc.strerror}") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def create_default(path: str | os.PathLike[str]) -> tuple[UserStore, str]:
    """Create a users file with one writable user ``tcpft`` and a random password.

    Missing parent directories are created with mode 0700. Returns the store and the
    clear password, which exists nowhere else. Raises UsageError if ``path`` exists,
    LocalFileError if a directory or the file cannot be created.
    """
    path = Path(path)
    if path.exists():
        raise UsageError(f"users file already exists: {path}")
    parent = path.parent.absolute()
    missing = [p for p in (*reversed(parent.parents), parent) if not p.exists()]
    try:
        for directory in missing:
            directory.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise LocalFileError(f"cannot create directory {exc.filename}: {exc.strerror}") from None
    password = secrets.token_urlsafe(18)
    store = UserStore()
    store.add(DEFAULT_USER, password, write=True)
    store.save(path)
    return store, password


@dataclass(slots=True)
class _Record:
    failures: collections.deque[float]
    penalty_until: float = 0.0


class LoginGuard:
    """Per-address login penalties, in the manner of OpenSSH's PerSourcePenalties.

    Once an address has ``threshold`` failures within ``window`` seconds, each further
    failure bars it for ``base_penalty`` seconds, doubling every time up to
    ``max_penalty``. At most ``max_tracked`` addresses are remembered; the least
    recently failed are forgotten first. Not thread-safe (meant for one event loop).
    """

    def __init__(
        self,
        *,
        threshold: int = 5,
        base_penalty: float = 10.0,
        max_penalty: float = 600.0,
        window: float = 600.0,
        max_tracked: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Raises UsageError if a setting is out of range."""
        if threshold < 1 or max_tracked < 1:
            raise UsageError("login threshold and max_tracked must be at least 1")
        if not 0 < base_penalty <= max_penalty or window <= 0:
            raise UsageError("need 0 < base_penalty <= max_penalty and window > 0")
        self.threshold = threshold
        self.base_penalty = base_penalty
        self.max_penalty = max_penalty
        self.window = window
        self.max_tracked = max_tracked
        self._clock = clock
        self._records: dict[str, _Record] = {}
        # Past this many failures the penalty is at its cap; older ones need no memory.
        self._keep = threshold + 64

    def penalty_remaining(self, addr: str) -> float:
        """Return the seconds ``addr`` must still wait before trying again (0.0 if none)."""
        record = self._records.get(addr)
        if record is None:
            return 0.0
        now = self._clock()
        self._expire(record, now)
        if not record.failures and record.penalty_until <= now:
            del self._records[addr]
        return max(0.0, record.penalty_until - now)

    def record_failure(self, addr: str) -> None:
        """Count a failed login from ``addr``, penalizing it at or past the threshold."""
        now = self._clock()
        record = self._records.pop(addr, None)
        if record is None:
            record = _Record(collections.deque(maxlen=self._keep))
        self._records[addr] = record  # now the most recent entry
        self._expire(record, now)
        record.failures.append(now)
        excess = len(record.failures) - self.threshold
        if excess >= 0:
            penalty = min(self.max_penalty, self.base_penalty * 2.0**excess)
            record.penalty_until = max(record.penalty_until, now + penalty)
        while len(self._records) > self.max_tracked:
            del self._records[next(iter(self._records))]

    def record_success(self, addr: str) -> None:
        """Forget the failures of ``addr``; an active penalty still runs its course."""
        record = self._records.get(addr)
        if record is None:
            return
        record.failures.clear()
        if record.penalty_until <= self._clock():
            del self._records[addr]

    def __len__(self) -> int:
        """Number of addresses currently remembered."""
        return len(self._records)

    def _expire(self, record: _Record, now: float) -> None:
        while record.failures and now - record.failures[0] > self.window:
            record.failures.popleft()
