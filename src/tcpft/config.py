"""Server settings: every tunable limit with its safe default, and the TOML config file.

A config file holds the same keys as :class:`ServerConfig` (``root``, ``port``,
``login_timeout`` ...), at the top level; command-line flags override it.
Unknown keys and values of the wrong type are refused with a clear message.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from .errors import UsageError

DEFAULT_PORT = 7878


def default_state_dir() -> Path:
    """The platform's state directory for tcpft (certificate, default users file)."""
    env = os.environ.get("TCPFT_STATE_DIR")
    return Path(env) if env else Path(platformdirs.user_state_dir("tcpft"))


def default_client_dir() -> Path:
    """Where the client keeps its known-hosts file."""
    env = os.environ.get("TCPFT_CONFIG_DIR")
    return Path(env) if env else Path(platformdirs.user_config_dir("tcpft"))


def check_host(host: str) -> str:
    """Return ``host`` if it can be looked up: an IP address or a host name (IDNA).

    Raises:
        UsageError: empty, holds white space or control characters, or a name that
            cannot be encoded (an empty or over-long label, an undecodable byte).
    """
    bad = not host or any(not ch.isprintable() or ch.isspace() for ch in host)
    if not bad:
        try:
            ipaddress.ip_address(host)  # "fe80::1%eth0" too
        except ValueError:
            try:
                bad = len(host.encode("idna")) > 253
            except UnicodeError:
                bad = True
    if bad:
        shown = host if len(host) <= 80 else host[:77] + "..."
        raise UsageError(f"not a valid host name or address: {shown!r}")
    return host


@dataclass
class ServerConfig:
    """Everything a server needs. Times are seconds, sizes bytes."""

    root: Path = field(default_factory=Path.cwd)
    host: str | None = None  # None: every interface
    port: int = DEFAULT_PORT
    state_dir: Path = field(default_factory=default_state_dir)
    users_file: Path | None = None  # None: state_dir / "users"
    plaintext: bool = False
    cert_file: Path | None = None  # None: a self-signed one in state_dir
    key_file: Path | None = None

    # Login defences.
    login_timeout: float = 30.0  # whole login phase, TLS handshake included
    max_login_attempts: int = 3  # per connection
    login_failure_delay: float = 1.0  # before the failure reply
    penalty_threshold: int = 5  # failures from one address before it is refused
    penalty_base: float = 10.0  # first refusal; doubles on each further failure
    penalty_max: float = 600.0
    max_concurrent_hashes: int = 2  # argon2 verifications at once (bounds memory)

    # Connection caps and timeouts.
    max_connections: int = 256
    max_unauthenticated: int = 64
    max_per_address: int = 32
    idle_timeout: float = 300.0  # waiting for the next request (the whole of it)
    stall_timeout: float = 60.0  # peer taking and sending no byte at all during a transfer
    shutdown_grace: float = 30.0  # running transfers may finish within this on SIGTERM

    # Transfers.
    chunk_size: int = 512 * 1024  # DATA frame size sent; smaller bounds memory per peer
    max_upload_size: int | None = None
    upload_reserve: int = 64 * 1024 * 1024  # free space kept after an upload
    limit_rate: int | None = None  # bytes per second per connection
    max_list_entries: int = 100_000
    max_list_bytes: int = 8 * 1024 * 1024  # one listing's LIST_ENTRIES payloads in all

    # Audit.
    audit_json: Path | None = None  # also write JSON lines here

    def users_path(self) -> Path:
        return self.users_file or self.state_dir / "users"

    def validate(self) -> None:
        """Check the values make sense.

        Raises:
            UsageError: a value is out of range.
        """
        if not 0 <= self.port <= 65535:
            raise UsageError(f"port {self.port} is outside 0..65535")
        if self.host is not None:
            check_host(self.host)
        positive = (
            "login_timeout",
            "idle_timeout",
            "stall_timeout",
            "max_login_attempts",
            "max_connections",
            "max_unauthenticated",
            "max_per_address",
            "max_concurrent_hashes",
            "penalty_threshold",
            "chunk_size",
            "max_list_entries",
            "max_list_bytes",
        )
        for name in positive:
            value = getattr(self, name)
            if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
                raise UsageError(f"{name} must be positive, not {getattr(self, name)}")
        if not 0 < self.chunk_size <= 1024 * 1024:
            raise UsageError("chunk_size must be between 1 and 1048576")
        if self.limit_rate is not None and self.limit_rate <= 0:
            raise UsageError("limit_rate must be positive")
        if self.max_upload_size is not None and self.max_upload_size <= 0:
            raise UsageError(f"max_upload_size must be positive, not {self.max_upload_size}")
        if self.upload_reserve < 0:
            raise UsageError(f"upload_reserve must be 0 or more, not {self.upload_reserve}")
        for name in ("login_failure_delay", "shutdown_grace"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"{name} must be a finite number of seconds >= 0, not {value}")
        for name in ("penalty_base", "penalty_max"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"{name} must be a finite number of seconds > 0, not {value}")
        if self.penalty_base > self.penalty_max:
            raise UsageError(
                f"penalty_base ({self.penalty_base:g}) must not be above "
                f"penalty_max ({self.penalty_max:g})"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise UsageError("cert_file and key_file go together")

    def as_dict(self) -> dict[str, Any]:
        """The effective settings, paths as strings (for --print-config)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


_PATH_KEYS = {"root", "state_dir", "users_file", "cert_file", "key_file", "audit_json"}
_FLOAT_KEYS = {f.name for f in dataclasses.fields(ServerConfig) if f.type in ("float", float)}


def load_config(path: Path, base: ServerConfig | None = None) -> ServerConfig:
    """Read a TOML config file over ``base`` (defaults when None).

    Raises:
        UsageError: the file is missing, not TOML, or holds an unknown key or bad value.
    """
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"config file {path} is not UTF-8 text: {exc.reason}") from None
    except RecursionError:
        raise UsageError(f"config file {path} is not valid TOML: nested too deeply") from None
    config = dataclasses.replace(base) if base else ServerConfig()
    known = {f.name: f for f in dataclasses.fields(ServerConfig)}
    for key, value in data.items():
        if key not in known:
            raise UsageError(f"config file {path}: unknown key {key!r}")
        setattr(config, key, _coerce(path, key, value))
    try:
        config.validate()
    except UsageError as exc:
        raise UsageError(f"config file {path}: {exc.message}") from None
    return config


def _coerce(path: Path, key: str, value: Any) -> Any:
    if key in _PATH_KEYS:
        if not isinstance(value, str):
            raise UsageError(f"config file {path}: {key} must be a string path")
        if "\0" in value:
            raise UsageError(f"config file {path}: {key}: a path cannot hold a NUL character")
        try:
            p = Path(value).expanduser()
        except RuntimeError:  # ~name of no such user
            raise UsageError(f"config file {path}: {key}: cannot expand {value!r}") from None
        return p if p.is_absolute() else (path.parent / p)
    if key in ("plaintext",):
        if not isinstance(value, bool):
            raise UsageError(f"config file {path}: {key} must be true or false")
        return value
    if key == "host":
        if not isinstance(value, str):
            raise UsageError(f"config file {path}: host must be a string")
        try:
            return check_host(value) if value else None
        except UsageError as exc:
            raise UsageError(f"config file {path}: host: {exc.message}") from None
    if key in _FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UsageError(f"config file {path}: {key} must be a number")
        return float(value)
    if key in ("limit_rate", "max_upload_size", "max_list_bytes") and isinstance(value, str):
        try:
            return parse_size(value)
        except UsageError as exc:
            raise UsageError(f"config file {path}: {key}: {exc.message}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"config file {path}: {key} must be an integer")
    return value


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
#: The largest size accepted anywhere: what a file offset (a signed 64-bit off_t) can hold.
MAX_SIZE = 2**63 - 1


def parse_size(text: str) -> int:
    """Parse ``10M``, ``512K``, ``1G`` or a plain byte count.

    Raises:
        UsageError: not a size, under one byte or over :data:`MAX_SIZE`.
    """
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] != "" else ""
    number = t[: len(t) - len(unit)] if unit else t
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"not a size: {text!r} (try 10M, 512K, 1G)") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"size must be a positive number: {text!r}")
    scaled = value * _UNITS[unit]  # inf when it overflows a float
    if not scaled <= MAX_SIZE:
        raise UsageError(f"size is too large: {text!r} (at most {MAX_SIZE} bytes)")
    result = int(scaled)
    if result < 1:
        raise UsageError(f"size must be at least one byte: {text!r}")
    return result
