"""The ``tcpft`` command line: a thin argparse layer over the client and server.

::

    tcpft serve [DIR] [--port P] [--config FILE.toml] ...  serve DIR (or: server PORT [DIR])
    tcpft client HOST PORT                                  interactive: list, pick, download
    tcpft ls HOST[:PORT] [PATH] [-R] [--json]               for scripts
    tcpft get HOST[:PORT] NAME... [-o DEST] [-r] [--json]
    tcpft put HOST[:PORT] LOCAL [REMOTE] [--json]
    tcpft user add|del|list                                 manage the users file

Scripts take the password from ``TCPFT_PASSWORD`` or ``--password-file``, never from an
argument. Every error is one line ``tcpft: error: <message>`` on stderr, and the exit
status says what kind it was (the classes are in :mod:`tcpft.errors`):

====  ==========================================================================
exit  meaning
====  ==========================================================================
0     success
1     internal error (InternalError, or the server failed)
2     usage: bad arguments, config file or users file (UsageError)
3     cannot connect, connection lost, timeout, server full (ConnectError)
4     login failed (AuthFailed)
5     TLS verification failed, fingerprint mismatch (TLSVerifyError)
6     invalid or unknown name, no file matches (InvalidName)
7     size or digest mismatch, file changed meanwhile (IntegrityError)
8     permission denied, e.g. upload by a read-only account (PermissionDenied)
9     the destination already exists; use --force (AlreadyExists)
10    protocol error (ProtocolError)
11    local file error, no space left, file too large (LocalFileError, NoSpace, TooLarge)
130   interrupted (Ctrl-C)
====  ==========================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import getpass
import json
import logging
import math
import os
import signal
import stat
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rich.console import Console

from . import __version__
from .client import MAX_TIMEOUT, Progress, Session, TreeOutcome, connect, known_hosts_path
from .config import (
    DEFAULT_PORT,
    ServerConfig,
    check_host,
    default_state_dir,
    load_config,
    parse_size,
)
from .errors import (
    ConnectError,
    InvalidName,
    LocalFileError,
    TcpftError,
    UsageError,
)
from .limits import MAX_PASSWORD_BYTES, MAX_USERNAME_BYTES
from .messages import Entry
from .names import download_partial, printable, split_path
from .progress import (
    BarReporter,
    JsonReporter,
    Reporter,
    Stop,
    entry_record,
    error_line,
    listing_line,
    listing_table,
)
from .tls import TrustNew, certificate_fingerprint, ensure_server_certificate, server_context

if TYPE_CHECKING:  # the server side is imported by the commands that need it
    from .server import Server

__all__ = ["main"]

_GLOB_CHARS = frozenset("*?[")


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (status 2)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    level = logging.INFO if args.func is _cmd_serve else logging.WARNING
    if args.verbose:
        level = logging.DEBUG
    elif args.quiet:
        level = logging.WARNING if args.func is _cmd_serve else logging.ERROR
    logging.basicConfig(
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        level=level,
        handlers=[_StderrHandler(sys.stderr)],
    )
    try:
        code = int(args.func(args))
        _out("")  # the last of stdout is written now, not after main where errors are lost
        return code
    except KeyboardInterrupt:
        _err("tcpft: interrupted")
        return 130
    except TcpftError as exc:
        _err(error_line(exc))
        return exc.exit_code
    except BrokenPipeError:  # the reader of stdout left (| head): stop quietly
        _silence(sys.stdout)
        return 1
    except OSError as exc:  # the last resort: a local file error no command caught
        what = f"{exc.filename}: " if exc.filename is not None else ""
        _err(error_line(LocalFileError(f"{what}{exc.strerror or exc}")))
        return LocalFileError.exit_code


# --- small helpers -----------------------------------------------------------------------


def _stderr(text: str) -> None:
    """Write ``text`` to stderr. A stderr that is gone (a closed pipe, a full disk) is no
    error of ours: it is pointed at the null device, and what is written to it is lost,
    so that a message can never stop a server from serving or from stopping."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):  # ValueError: the stream was closed
        _silence(sys.stderr)


def _silence(stream: TextIO) -> None:
    """Point ``stream`` at the null device, so that what it still holds and what is
    written to it later is dropped without an error (at exit too)."""
    with contextlib.suppress(OSError, ValueError):
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(fd, stream.fileno())
        finally:
            os.close(fd)


def _out(line: str) -> None:
    """Print ``line`` on stdout; an empty one flushes it instead.

    Raises:
        BrokenPipeError: the reader is gone (main stops quietly).
        LocalFileError: stdout cannot be written (a full disk).
    """
    try:
        if line:
            print(line)
        else:
            sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        _silence(sys.stdout)
        raise LocalFileError(f"cannot write to standard output: {exc.strerror or exc}") from None


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The log handler: a log line that cannot be written silences stderr, as in _stderr."""

    def handleError(self, record: logging.LogRecord) -> None:
        _silence(sys.stderr)


def _err(line: str) -> None:
    _stderr(line + "\n")


def _ask(prompt: str) -> str | None:
    """Show ``prompt`` on stderr and read one line of stdin (None at end of input)."""
    _stderr(prompt)
    return _read_line()


def _read_line() -> str | None:
    """One line of stdin without its end, None at end of input; UsageError if not text."""
    try:
        line = sys.stdin.readline()
    except UnicodeDecodeError:
        raise UsageError(f"standard input is not {sys.stdin.encoding} text") from None
    return line.rstrip("\r\n") if line else None


def _getpass(prompt: str) -> str:
    """A hidden prompt; UsageError at end of input (Ctrl-D) or for bytes that are not text.

    When stdin is not a terminal, the password is its next line, as the other answers
    are (getpass would warn that it may be echoed, or read another terminal).
    """
    if not sys.stdin.isatty():
        line = _ask(prompt)
        if line is None:
            _err("")
            raise UsageError("no password given (end of input)")
        return line
    try:
        return getpass.getpass(prompt)
    except EOFError:
        _err("")  # end the prompt's line
        raise UsageError("no password given (end of input)") from None
    except UnicodeDecodeError:
        raise UsageError("the password is not valid text in this terminal's encoding") from None


def _lookup(path: Path, error: type[TcpftError] = UsageError) -> os.stat_result | None:
    """``stat`` of ``path``, None if it does not exist; ``error`` if it cannot be looked
    at (a name too long, no permission, a loop of links)."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise error(f"cannot use {path}: {exc.strerror or exc}") from None


def _yes(prompt: str, default: bool) -> bool:
    answer = _ask(prompt)
    if answer is None:
        return False
    answer = answer.strip().lower()
    return default if not answer else answer in ("y", "yes")


def _port(text: str, *, allow_zero: bool = False) -> int:
    digits = text.isascii() and text.isdigit()  # not "²", which int() refuses
    if not digits or not (0 if allow_zero else 1) <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a valid port: {text!r}")
    return int(text)


def _listen_port(text: str) -> int:
    """A port to listen on: 0 asks the system for a free one."""
    return _port(text, allow_zero=True)


def _target(text: str) -> tuple[str, int]:
    """Parse ``host``, ``host:port``, ``[v6]:port``, ``[v6]`` or a bare IPv6 address."""
    port = str(DEFAULT_PORT)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise argparse.ArgumentTypeError(f"not HOST[:PORT]: {text!r}")
        port = rest[1:] if rest else port
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host = text  # a name, an IPv4 address, or a bare IPv6 address (no port)
    if not host:
        raise argparse.ArgumentTypeError(f"no host in {text!r}")
    return _host(host), _port(port)


def _host(text: str) -> str:
    try:
        return check_host(text.strip("[]") if text.startswith("[") else text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _timeout(text: str) -> float:
    """Seconds, a finite number above zero and at most a day."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_TIMEOUT:  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"not a timeout: {text!r} (seconds, above 0 and at most {MAX_TIMEOUT:g})"
        )
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _password(args: argparse.Namespace, *, ask: bool = False) -> str:
    """From --password-file, else $TCPFT_PASSWORD (unless ``ask``), else a hidden prompt."""
    if path := args.password_file:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read password file {path}: {exc}") from None
        if not lines or not lines[0]:
            raise UsageError(f"password file {path} is empty")
        return lines[0]
    env = os.environ.get("TCPFT_PASSWORD")
    if env is not None and not ask:
        return env
    if ask or sys.stdin.isatty():
        return _getpass("password: ")
    raise UsageError("no password: set TCPFT_PASSWORD or use --password-file")


def _check_user(user: str) -> str:
    """Refuse, before connecting, a user name no server could take (UsageError)."""
    try:
        size = len(user.encode("utf-8"))
    except UnicodeEncodeError:
        raise UsageError(f"the user name {user!r} is not valid UTF-8 text") from None
    if size > MAX_USERNAME_BYTES:
        raise UsageError(f"the user name is {size} bytes long; at most {MAX_USERNAME_BYTES}")
    return user


def _check_password(password: str) -> str:
    """Refuse, before sending it, a password no server could take; never shows it."""
    try:
        size = len(password.encode("utf-8"))
    except UnicodeEncodeError:
        raise UsageError("the password is not valid UTF-8 text") from None
    if size > MAX_PASSWORD_BYTES:
        raise UsageError(f"the password is {size} bytes long; at most {MAX_PASSWORD_BYTES}")
    return password


def _default_user() -> str:
    env = os.environ.get("TCPFT_USER")
    if env:
        return env
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        raise UsageError("no user name: use --user or set TCPFT_USER") from None


def _trust(known_hosts: Path) -> TrustNew:
    """SSH-style trust on first use: ask on a terminal, else pin and warn."""

    def decide(label: str, fp: str) -> bool:
        if not sys.stdin.isatty():
            _err(
                f"tcpft: warning: {label} is unknown; pinned its fingerprint {fp} in {known_hosts}"
            )
            return True
        _err(f"The authenticity of {label} can't be established.\nCertificate fingerprint: {fp}")
        if not _yes("Trust this server? [y/N] ", False):
            return False
        _err(f"tcpft: pinned {label} in {known_hosts}")
        return True

    return decide


def _connect(
    args: argparse.Namespace, host: str, port: int, user: str, password: Callable[[], str]
) -> Session:
    known_hosts = Path(args.known_hosts) if args.known_hosts else known_hosts_path()
    if args.plaintext:
        _err("tcpft: warning: --plaintext: the password and the files travel UNENCRYPTED")
    return connect(
        host.strip("[]"),
        port,
        user=user,
        password=password,
        plaintext=args.plaintext,
        fingerprint=args.fingerprint,
        cafile=args.cafile,
        known_hosts=known_hosts,
        trust_new=_trust(known_hosts),
        timeout=args.timeout,
        limit_rate=args.limit_rate,
    )


def _session(args: argparse.Namespace) -> Session:
    host, port = args.target
    user = _check_user(args.user or _default_user())
    # Before connecting: a script without a (usable) password fails at once.
    password = _check_password(_password(args))
    return _connect(args, host, port, user, lambda: password)


def _reporter(args: argparse.Namespace, verb: str) -> Reporter:
    if getattr(args, "json", False):
        return JsonReporter(verb)
    if args.quiet or not sys.stderr.isatty():
        return Reporter(verb, quiet=args.quiet)
    return BarReporter(verb)


# --- scripting commands ------------------------------------------------------------------


def _cmd_ls(args: argparse.Namespace) -> int:
    with _session(args) as s:
        if args.path or args.recursive:
            entries = s.list(args.path, recursive=args.recursive)
        elif s.listing_error is not None:  # the root listing sent at login was refused
            raise s.listing_error
        else:
            entries = s.listing
    for e in entries:
        _out(json.dumps(entry_record(e)) if args.json else listing_line(e))
    return 0


def _glob(s: Session, pattern: str) -> list[str]:
    found = [e.path for e in s.glob(pattern)]
    if not found:
        raise InvalidName(f"no file matches {pattern}")
    return found


def _cmd_get(args: argparse.Namespace) -> int:
    many = len(args.names) > 1 or args.recursive or any(_GLOB_CHARS & set(n) for n in args.names)
    # A string, not a Path: "-o downloads/" keeps the slash that makes it a folder.
    dest: str | None = args.output or ("." if many else None)
    if many and dest is not None:
        try:
            Path(dest).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LocalFileError(f"cannot create {dest}: {exc.strerror}") from None
    opts = {"force": args.force, "resume": args.resume}
    with _session(args) as s, _reporter(args, "received") as rep:
        try:
            for name in args.names:
                if args.recursive:
                    track = functools.partial(_track_entry, rep)
                    each = s.download_tree_each(name, dest or ".", progress_for=track, **opts)
                    _settle_tree(rep, name, each)
                    continue
                glob = _GLOB_CHARS & set(name)
                paths = rep.attempt(name, functools.partial(_glob, s, name)) if glob else [name]
                _get_files(s, rep, paths or [], dest, opts)
        except Stop:
            pass
    return rep.failures[0] if rep.failures else 0


def _get_files(
    s: Session, rep: Reporter, paths: list[str], dest: str | None, opts: dict[str, bool]
) -> None:
    """Download ``paths`` with requests pipelined, reporting each file in turn."""
    jobs = [(path, dest) for path in paths]
    with contextlib.closing(s.download_many(jobs, progress_for=rep.track, **opts)) as outcomes:
        for path in paths:
            outcome = rep.attempt(path, functools.partial(next, outcomes))
            if outcome is None:
                return
            rep.settle(*outcome)


def _settle_tree(rep: Reporter, name: str, outcomes: Generator[TreeOutcome, None, None]) -> None:
    """Report each file of a tree in turn; what fails the tree itself (its listing, the
    session) is reported under ``name``."""
    with contextlib.closing(outcomes):
        while (step := rep.attempt(name, functools.partial(next, outcomes, None))) is not None:
            rep.settle(*step)


def _track_entry(rep: Reporter, entry: Entry) -> Progress | None:
    return rep.track(entry.path)


def _cmd_put(args: argparse.Namespace) -> int:
    local = Path(args.local)
    st = _lookup(local, LocalFileError)
    is_dir = st is not None and stat.S_ISDIR(st.st_mode)
    if is_dir and not args.recursive:
        raise UsageError(f"{local} is a directory; use -r to upload a tree")
    if st is None:
        raise LocalFileError(f"{local}: no such file")
    if not (is_dir or stat.S_ISREG(st.st_mode)):
        raise LocalFileError(f"{local}: not a regular file or a directory")
    remote = args.remote or local.resolve().name
    with _session(args) as s, _reporter(args, "sent") as rep:
        opts = {"force": args.force, "resume": args.resume}
        try:
            if is_dir:
                _settle_tree(
                    rep, remote, s.upload_tree_each(local, remote, progress_for=rep.track, **opts)
                )
            else:
                put = functools.partial(s.upload, local, remote, progress=rep.track(remote), **opts)
                if (result := rep.attempt(remote, put)) is not None:
                    rep.finished(remote, result)
        except Stop:
            pass
    return rep.failures[0] if rep.failures else 0


# --- the interactive client --------------------------------------------------------------


def _cmd_client(args: argparse.Namespace) -> int:
    user = args.user or (_ask("user: ") or "").strip()
    if not user:
        raise UsageError("no user name given")
    _check_user(user)
    out = Path(args.output) if args.output else Path(".")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalFileError(f"cannot create {out}: {exc.strerror}") from None
    console = Console(highlight=False)

    def password() -> str:  # asked once the server is trusted
        return _check_password(_password(args, ask=True))

    with _connect(args, args.host, args.port, user, password) as s:
        if s.listing_error is not None:  # a root with more entries than the server lists
            _err(f"tcpft: no listing: {s.listing_error.message}; a name can still be asked for")
        else:
            console.print(listing_table(s.listing))
        while True:
            name = _ask("file (empty to quit): ")
            if name is None or not name.strip():
                return 0
            try:
                target = out / split_path(name)[-1]
                force = resume = False
                if os.path.lexists(target):
                    if not _yes(f"{printable(str(target))} exists; overwrite? [y/N] ", False):
                        continue
                    force = True
                if os.path.exists(download_partial(target)):
                    resume = _yes("a partial download exists; resume? [Y/n] ", True)
                bar = sys.stderr.isatty()
                with BarReporter("received") if bar else Reporter("received") as rep:
                    result = s.download(
                        name, out, force=force, resume=resume, progress=rep.track(name)
                    )
                    rep.finished(name, result)
                return 0
            except InvalidName as exc:
                _err(error_line(exc))
                if s.listing_error is None:
                    console.print(listing_table(getattr(exc, "listing", None) or s.listing))


# --- the server --------------------------------------------------------------------------


def _server_config(args: argparse.Namespace) -> ServerConfig:
    config = load_config(Path(args.config)) if args.config else ServerConfig()
    paths = {"root": "dir", "users_file": "users", "cert_file": "cert", "key_file": "key"}
    for key, flag in {**paths, "state_dir": "state_dir"}.items():
        if (value := getattr(args, flag)) is not None:
            setattr(config, key, Path(value).absolute())
    for key in ("host", "port", "plaintext", "limit_rate", "max_upload_size"):
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    config.validate()
    return config


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _cmd_serve(args: argparse.Namespace) -> int:
    from .audit import Audit
    from .auth import UserStore, create_default
    from .native import tune_server_malloc
    from .server import Server

    config = _server_config(args)
    if args.print_config:
        for key, value in config.as_dict().items():
            _out(f"# {key} = (unset)" if value is None else f"{key} = {_toml_value(value)}")
        return 0
    root = _lookup(config.root)
    if root is None or not stat.S_ISDIR(root.st_mode):
        raise UsageError(f"cannot serve {config.root}: not a directory")
    ctx = fingerprint = None  # the identity first: if it is refused, nothing was made
    if not config.plaintext:
        if config.cert_file and config.key_file:
            cert, key_file = config.cert_file, config.key_file
        else:
            cert, key_file = ensure_server_certificate(config.state_dir)
        ctx = server_context(cert, key_file)
        fingerprint = certificate_fingerprint(cert)
    if config.audit_json is not None:  # refused before a users file is made, too
        Audit(config.audit_json).close()
    path = config.users_path()
    if _lookup(path) is not None:
        users = UserStore.load(path)
    else:
        users, password = create_default(path)
        name = users.users()[0].name
        _err(
            f"tcpft: created the users file {path} with one account (shown only this once):\n"
            f"    user:     {name}\n    password: {password}\n"
            f"tcpft: add accounts with: tcpft user add NAME --users {path}"
        )
    if fingerprint is None:
        _err("tcpft: warning: --plaintext: passwords and files travel UNENCRYPTED")
    else:
        _err(f"fingerprint: {fingerprint}")
    tune_server_malloc()
    asyncio.run(_serve(Server(config, users, ctx)))
    return 0


async def _serve(server: Server) -> None:
    try:
        await server.start()
    except OSError as exc:
        where = f"{server.config.host or '*'}:{server.config.port}"
        raise ConnectError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    loop = asyncio.get_running_loop()
    stops: list[asyncio.Task[None]] = []

    def on_signal(sig: signal.Signals) -> None:
        # The shutdown first: nothing said about it may keep it from starting.
        if stops:
            stops.append(loop.create_task(server.shutdown(0.0)))
            _err(f"tcpft: {sig.name} again: closing every connection now")
            return
        stops.append(loop.create_task(server.shutdown()))
        grace = server.config.shutdown_grace
        _err(f"tcpft: {sig.name}: shutting down (transfers may finish within {grace:g} s)")

    # Before "serving" is shown: whoever waits for that line may send a signal at once.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    for host, port in server.addresses:
        shown = f"[{host}]" if ":" in host else host
        _err(f"tcpft: serving {server.config.root} on {shown}:{port}")
    await server.serve_forever()
    if not stops:
        stops.append(loop.create_task(server.shutdown()))
    while not all(t.done() for t in stops):
        await asyncio.wait(list(stops))
    _err("tcpft: stopped")


# --- users -------------------------------------------------------------------------------


def _new_password(name: str) -> str:
    if not sys.stdin.isatty():
        line = _read_line()
        if line is None:
            raise UsageError(f"no password for {name} on standard input")
        return line
    first = _getpass(f"password for {name}: ")
    if _getpass("again: ") != first:
        raise UsageError("the two passwords do not match")
    return first


def _cmd_user(args: argparse.Namespace) -> int:
    from .auth import UserStore, lock_users_file, validate_username

    state = Path(args.state_dir) if args.state_dir else default_state_dir()
    path = Path(args.users) if args.users else state / "users"
    if args.action == "list":
        for u in UserStore.load(path).users():
            _out(f"{u.name}  {'rw' if u.can_write else 'r'}")
        return 0
    if args.action == "add":
        validate_username(args.name)
        password = _new_password(args.name)  # before the lock: a person may be typing
    # Through a symbolic link, the file it points to is updated and the link is kept.
    try:
        target = path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a loop of links (Python < 3.13)
        raise UsageError(f"cannot use users file {path}: {exc}") from None
    if _lookup(target) is None and args.action == "del":  # a name too long: UsageError
        raise UsageError(f"no such user: {args.name!r}")
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalFileError(f"cannot create {target.parent}: {exc.strerror}") from None
    with lock_users_file(target):  # no other tcpft user add/del loses or undoes this one
        store = UserStore.load(target) if _lookup(target) is not None else UserStore()
        if args.action == "add":
            user = store.add(args.name, password, write=args.write, replace=args.replace)
            done = f"added user {user.name} ({'rw' if user.can_write else 'r'})"
        else:
            store.remove(args.name)
            done = f"removed user {args.name}"
        store.save(target)
    _err(f"tcpft: {done} in {path}")
    return 0


# --- the parser --------------------------------------------------------------------------


def _serve_options(p: argparse.ArgumentParser, *, port_option: bool) -> None:
    if port_option:
        p.add_argument("--port", type=_listen_port, help=f"default {DEFAULT_PORT}")
    p.add_argument("--host", type=_host, help="address to listen on (default: every interface)")
    p.add_argument("--users", metavar="FILE", help="users file (default: STATE_DIR/users)")
    p.add_argument("--state-dir", metavar="DIR", help="certificate and default users file")
    p.add_argument("--config", metavar="FILE.toml", help="settings file; flags override it")
    p.add_argument("--plaintext", action="store_true", default=None, help="no TLS (unsafe)")
    p.add_argument("--cert", metavar="FILE", help="TLS certificate (PEM), with --key")
    p.add_argument("--key", metavar="FILE", help="TLS private key (PEM)")
    p.add_argument("--limit-rate", type=_size, metavar="RATE", help="bytes/s per connection (10M)")
    p.add_argument("--max-upload-size", type=_size, metavar="SIZE", help="largest upload (1G)")
    p.add_argument("--print-config", action="store_true", help="print the settings and exit")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    loud = common.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    loud.add_argument("-q", "--quiet", action="store_true", help="less output")

    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--user", help="user name (default: $TCPFT_USER, else your login name)")
    conn.add_argument("--password-file", metavar="FILE", help="first line is the password")
    conn.add_argument("--known-hosts", metavar="FILE", help="pinned server fingerprints")
    conn.add_argument("--fingerprint", metavar="SHA256:...", help="expect this certificate")
    conn.add_argument("--cafile", metavar="FILE", help="verify the server with these CAs")
    conn.add_argument("--plaintext", action="store_true", help="no TLS (unsafe)")
    conn.add_argument("--timeout", type=_timeout, default=30.0, metavar="SECONDS")
    conn.add_argument("--limit-rate", type=_size, metavar="RATE", help="bytes per second (10M)")

    parser = argparse.ArgumentParser(prog="tcpft", description="Authenticated TLS file transfer.")
    parser.add_argument("--version", action="version", version=f"tcpft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", parents=[common], help="serve a directory")
    p.add_argument("dir", nargs="?", help="directory to serve (default: current)")
    _serve_options(p, port_option=True)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("server", parents=[common], help="serve: tcpft server PORT [DIR]")
    p.add_argument("port", type=_listen_port)
    p.add_argument("dir", nargs="?", help="directory to serve (default: current)")
    _serve_options(p, port_option=False)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("client", parents=[common, conn], help="interactive download")
    p.add_argument("host", type=_host)
    p.add_argument("port", type=_port)
    p.add_argument("-o", "--output", metavar="DIR", help="download into DIR (default: .)")
    p.set_defaults(func=_cmd_client)

    p = sub.add_parser("ls", parents=[common, conn], help="list a directory")
    p.add_argument("target", type=_target, metavar="HOST[:PORT]")
    p.add_argument("path", nargs="?", default="")
    p.add_argument("-R", "--recursive", action="store_true")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_ls)

    p = sub.add_parser("get", parents=[common, conn], help="download files")
    p.add_argument("target", type=_target, metavar="HOST[:PORT]")
    p.add_argument("names", nargs="+", metavar="NAME", help="a path or a glob (*.iso)")
    p.add_argument("-o", "--output", metavar="DEST", help="file or directory")
    p.add_argument("-r", "--recursive", action="store_true", help="download directories")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--resume", action="store_true", help="continue a partial download")
    p.add_argument("--json", action="store_true", help="NDJSON progress events on stdout")
    p.set_defaults(func=_cmd_get)

    p = sub.add_parser("put", parents=[common, conn], help="upload a file or a tree")
    p.add_argument("target", type=_target, metavar="HOST[:PORT]")
    p.add_argument("local")
    p.add_argument("remote", nargs="?")
    p.add_argument("-r", "--recursive", action="store_true", help="upload a directory tree")
    p.add_argument("--force", action="store_true", help="overwrite the remote file")
    p.add_argument("--resume", action="store_true", help="continue a partial upload")
    p.add_argument("--json", action="store_true", help="NDJSON progress events on stdout")
    p.set_defaults(func=_cmd_put)

    p = sub.add_parser("user", help="manage the users file")
    users = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    files = argparse.ArgumentParser(add_help=False, parents=[common])
    files.add_argument("--users", metavar="FILE", help="users file (default: STATE_DIR/users)")
    files.add_argument("--state-dir", metavar="DIR")
    q = users.add_parser("add", parents=[files], help="add an account")
    q.add_argument("name")
    q.add_argument("--write", action="store_true", help="may upload")
    q.add_argument("--replace", action="store_true", help="replace an existing account")
    users.add_parser("del", parents=[files], help="delete an account").add_argument("name")
    users.add_parser("list", parents=[files], help="list the accounts")
    p.set_defaults(func=_cmd_user)
    return parser
