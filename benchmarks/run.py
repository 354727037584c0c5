"""tcpft throughput benchmark against a raw TCP copy and the usual tools.

    python -m benchmarks.run [--quick] [--size 1G] [--runs 5] [--cases big files clients]
                             [--tools raw socat scp http ftp tcpft] [--json OUT]
                             [--profile DIR]

Every server (tcpft, the raw pump, socat, sshd, http.server, pyftpdlib) runs as its
own process, started fresh for every measured run, on 127.0.0.1; every client is a
separate process too, so the CPU time and peak RSS of each side are measured apart:

- server CPU: psutil ``cpu_times`` of the server (and its child processes) just before
  the client starts and just after it ends; with many clients, from the moment they
  have all logged in (the logins' CPU is shown apart, in the notes);
- server peak RSS: the larger of its ``VmHWM`` and the sum of the RSS of its process
  tree sampled every 50 ms (sshd forks a process per connection);
- client CPU and peak RSS: Python clients (tcpft, raw) report their own ``VmHWM`` and
  the CPU they used from connecting to closing; external tools (scp, curl, socat) are
  read from ``wait4`` (all of the process and its children, start-up included).

Rates: MB = 10^6 bytes. One big file: bytes / session time (connect, TLS, login,
transfer, close; for external tools the wall time of the client process, which for
scp includes the SSH handshake). Many files: files / time of the transfers in the
session (login excluded for tcpft and raw). Many clients: all bytes / (last end -
first start); the Python clients log in first and start together on a barrier.

Every ratio is to the raw TCP copy measured in the same run and in the same direction.
Targets are printed as PASS/FAIL after the table. The exit status is 0 whether targets
pass or fail, and non-zero only when a measurement could not be made.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import platform
import pwd
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import psutil

from tcpft.auth import UserStore
from tcpft.config import parse_size
from tcpft.server import DIGESTS_NAME
from tcpft.tls import certificate_fingerprint, ensure_server_certificate

from .common import CHUNK, HOST, PASSWORD, USER, vmhwm_kib

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent
MB = 1_000_000
ALL_CASES = ("big", "files", "clients")
ALL_TOOLS = ("raw", "socat", "scp", "http", "ftp", "tcpft")
SCP_CIPHERS = ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr")
READY_TIMEOUT = 30.0
SAMPLE_INTERVAL = 0.05
SMALL_FILE = 64 * 1024


class BenchError(Exception):
    """A measurement could not be made."""


# --- processes ---------------------------------------------------------------------------


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


class Child:
    """A process we started in its own session; reaped with wait4 for its rusage."""

    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        log: Path,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = None,
        user: str | None = None,
        group: str | None = None,
    ) -> None:
        self.argv = argv
        self.log = log
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs.update(user=user, group=group, extra_groups=[])
        with open(log, "ab") as fh:
            self.popen = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=fh if stdout is None else stdout,
                stderr=fh,
                env=env,
                cwd=REPO,
                start_new_session=True,
                **kwargs,
            )
        self.pid = self.popen.pid
        self.started = time.monotonic()
        self.ended: float | None = None
        self.status: int | None = None
        self.rusage: Any = None

    def poll(self) -> bool:
        """True once the process has ended (and has been reaped)."""
        if self.status is not None:
            return True
        pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.ended = time.monotonic()
        self.status = os.waitstatus_to_exitcode(status)
        self.rusage = rusage
        self.popen.returncode = self.status
        return True

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while not self.poll():
            if time.monotonic() > deadline:
                raise BenchError(f"{Path(self.argv[0]).name} did not finish in {timeout:.0f} s")
            time.sleep(0.001)
        assert self.status is not None
        return self.status

    @property
    def cpu(self) -> float:
        return float(self.rusage.ru_utime + self.rusage.ru_stime) if self.rusage else 0.0

    def kill(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL to the group we created for it)."""
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self.status is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.wait(5.0)
        except BenchError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.wait(5.0)

    def check(self, what: str) -> None:
        if self.status != 0:
            raise BenchError(f"{what} exited with {self.status}: {_tail(self.log)}")


def tree_rss(proc: psutil.Process, cpu: dict[int, float] | None = None) -> int:
    """RSS in bytes of ``proc`` and its descendants (0 once it is gone).

    With ``cpu``, also record each descendant's own CPU seconds, by pid.
    """
    total = 0
    with contextlib.suppress(psutil.Error):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
                if cpu is not None and p.pid != proc.pid:
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system
    return total


class RssSampler:
    """Peak RSS of process trees, sampled every 50 ms in a thread.

    (``wait4``'s ru_maxrss is no good here: on Linux a child inherits the high-water
    mark of the parent it was forked from, this driver, across exec.)

    It also keeps the last CPU time seen of every descendant: sshd's per-connection
    processes are not all reaped by the listener, so its ``children_*`` times miss them.
    """

    def __init__(self, pids: list[int]) -> None:
        self.procs: dict[int, psutil.Process] = {}
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                self.procs[pid] = psutil.Process(pid)
        self.peaks = dict.fromkeys(pids, 0)
        self.descendant_cpu: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        with self._lock:
            for pid, proc in self.procs.items():
                self.peaks[pid] = max(self.peaks[pid], tree_rss(proc, self.descendant_cpu))

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(SAMPLE_INTERVAL):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def peak_kib(self, pid: int) -> int:
        return self.peaks.get(pid, 0) // 1024


class ServerProc:
    """A server process: waits until it listens, samples its RSS, reads its CPU."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        log: Path,
        portfile: Path | None = None,
        port: int | None = None,
        user: str | None = None,
        group: str | None = None,
    ) -> None:
        self.name = name
        self.child = Child(argv, env=env, log=log, user=user, group=group)
        try:
            self.ps = psutil.Process(self.child.pid)
            self.port = self._wait_ready(portfile, port)
        except BaseException:
            self.child.kill()
            raise
        self.sampler = RssSampler([self.child.pid])

    def _wait_ready(self, portfile: Path | None, port: int | None) -> int:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.child.poll():
                raise BenchError(f"{self.name} exited at start: {_tail(self.child.log)}")
            if portfile is not None and portfile.exists():
                return int(portfile.read_text())
            if port is not None and self._listening(port):
                return port
            time.sleep(0.02)
        raise BenchError(f"{self.name} did not start listening in {READY_TIMEOUT:.0f} s")

    def _tree(self) -> list[psutil.Process]:
        return [self.ps, *self.ps.children(recursive=True)]

    def _listening(self, port: int) -> bool:
        with contextlib.suppress(psutil.Error):
            for proc in self._tree():
                for conn in proc.net_connections("tcp"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                        return True
        return False

    def cpu(self) -> float:
        """CPU seconds used so far by the server and every descendant it had.

        Descendants are counted from the sampler (last value seen, so a process that
        ended loses at most its last 50 ms); the server's own ``children_*`` times are
        not added, which would count reaped children twice.
        """
        if self.child.poll():
            return self.child.cpu
        try:
            t = self.ps.cpu_times()
            self.sampler.sample()
        except psutil.NoSuchProcess:
            self.child.wait(5.0)
            return self.child.cpu
        return float(t.user + t.system + sum(self.sampler.descendant_cpu.values()))

    def settle(self, timeout: float = 2.0) -> None:
        """Wait (bounded) for per-connection child processes to end and be reaped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.ps.children(recursive=True):
                    return
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    def peak_kib(self) -> int:
        """Peak RSS: VmHWM while it runs, or the sampled peak of its process tree."""
        peak = self.sampler.peak_kib(self.child.pid)
        if self.child.status is None:
            peak = max(peak, vmhwm_kib(self.child.pid))
        return peak

    def stop(self) -> None:
        self.sampler.stop()
        self.child.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def snapshot_source(work: Path) -> Path:
    """Copy src/tcpft into the work dir; every child process imports that copy.

    Every row then measures the same code, even if src/ is edited while the benchmark
    runs (and a half-saved file cannot break a row midway).
    """
    dest = work / "src"
    shutil.copytree(REPO / "src" / "tcpft", dest / "tcpft",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    return dest


def child_env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    extra = [str(src), str(REPO)]
    if env.get("PYTHONPATH"):
        extra.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(extra)
    env.pop("PYTHONSTARTUP", None)
    return env


# --- results -------------------------------------------------------------------------------


@dataclass
class Sample:
    """One measured run of one row."""

    seconds: float
    bytes: int
    files: int
    server_cpu: float | None
    client_cpu: float | None
    server_rss_kib: int | None
    client_rss_kib: int | None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def mbps(self) -> float:
        return self.bytes / self.seconds / MB

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds


@dataclass
class Row:
    case: str
    tool: str
    direction: str  # "download" or "upload"
    family: str  # raw, raw-fsync, socat, scp, http, ftp, tcpft-tls, tcpft-plain
    samples: list[Sample] = field(default_factory=list)
    skipped: str = ""
    error: str = ""
    note: str = ""
    single: list[Sample] = field(default_factory=list)  # clients case: one client alone

    @property
    def ok(self) -> bool:
        return bool(self.samples) and not self.error

    def median(
        self, fn: Callable[[Sample], float | None], samples: list[Sample] | None = None
    ) -> float | None:
        values = [v for s in (samples or self.samples) if (v := fn(s)) is not None]
        return statistics.median(values) if values else None

    def peak(self, fn: Callable[[Sample], int | None]) -> float | None:
        values = [v for s in self.samples if (v := fn(s)) is not None]
        return max(values) * 1024 / MB if values else None

    @property
    def mbps(self) -> float | None:
        return self.median(lambda s: s.mbps)

    @property
    def files_per_s(self) -> float | None:
        return self.median(lambda s: s.files_per_s)

    @property
    def single_mbps(self) -> float | None:
        return self.median(lambda s: s.mbps, self.single) if self.single else None

    @property
    def server_rss_mb(self) -> float | None:
        return self.peak(lambda s: s.server_rss_kib)

    @property
    def client_rss_mb(self) -> float | None:
        return self.peak(lambda s: s.client_rss_kib)

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "tool": self.tool,
            "direction": self.direction,
            "family": self.family,
            "skipped": self.skipped,
            "error": self.error,
            "note": self.note,
            "mbps": self.mbps,
            "files_per_s": self.files_per_s,
            "single_mbps": self.single_mbps,
            "server_rss_mb": self.server_rss_mb,
            "client_rss_mb": self.client_rss_mb,
            "samples": [s.__dict__ for s in self.samples],
            "single": [s.__dict__ for s in self.single],
        }


# --- the world of one benchmark run ----------------------------------------------------------


@dataclass
class Sizes:
    big: int
    small_count: int
    clients: int
    client_size: int


@dataclass
class Ctx:
    work: Path
    served: Path
    dl: Path
    state: Path
    logs: Path
    env: dict[str, str]
    fingerprint: str
    sizes: Sizes
    runs: int
    original: set[str]
    gets_ahead: int | None = None  # tcpft clients' pipelining depth (None: the default)
    set_aside: bool = False  # clean() moves a run's files aside instead of deleting them
    ssh: SshSetup | None = None
    counter: int = 0

    def next_id(self) -> int:
        self.counter += 1
        return self.counter

    def log(self, name: str) -> Path:
        return self.logs / f"{self.next_id():04d}-{name}.log"

    def portfile(self) -> Path:
        return self.work / f"port-{self.next_id()}"

    def names_file(self, label: str, names: list[str]) -> Path:
        path = self.work / f"names-{label}.txt"
        path.write_text("".join(n + "\n" for n in names))
        return path

    def prime_page_cache(self, nbytes: int) -> None:
        """Write and delete ``nbytes`` of scratch data, just before a measured transfer.

        On a virtual machine that hands freed memory back to its host (free page
        reporting, as on the machine of docs/PERFORMANCE.md), a page the kernel has
        returned costs a fault in the host when it is used again: writing 1 GiB into
        the page cache took 2.2-2.3 s of CPU there when the memory had been free for
        10 s, and 0.23-0.27 s right after another 1 GiB file was deleted. Every run
        gets the cheap case this way, whatever ran or idled before it, as on a machine
        without that feature.
        """
        path = self.work / "prime.bin"
        chunk = bytes(1 << 20)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(-(-nbytes // len(chunk))):
                os.write(fd, chunk)
        finally:
            os.close(fd)
            path.unlink()

    def clear_downloads(self) -> None:
        """Delete downloaded files, keeping the per-client directories."""
        for d in self.dl.iterdir():
            for f in d.iterdir() if d.is_dir() else ():
                f.unlink()
        os.sync()

    def clean(self) -> None:
        """Clear what a run left, uploads in the served tree and downloads, for the next.

        While ``set_aside`` is on (the files case), they are moved into ``work/aside``
        and removed only with the work directory. On ext4 without a journal (the
        machine of docs/PERFORMANCE.md), an inode deleted in the last minute (six,
        while its table block is dirty) is not reused, and the allocator steps over
        each one, reading its deletion time: creating a file right after thousands
        were deleted costs 0.5-0.8 ms instead of 0.06-0.25. Deleting a run's 1,000
        files just before the next run made every run after the first measure that
        instead of the tool.
        """
        leftovers = [e for e in self.served.iterdir() if e.name not in self.original]
        if self.set_aside:
            aside = self.work / "aside" / str(self.next_id())
            aside.mkdir(parents=True)
            for entry in [*leftovers, self.dl]:
                entry.rename(aside / entry.name)
        else:
            for entry in leftovers:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            shutil.rmtree(self.dl, ignore_errors=True)
        self.dl.mkdir()
        os.sync()  # no write-back of the last run's files during the next one
        if self.ssh is not None:
            os.chmod(self.dl, 0o777)


def write_random(path: Path, size: int) -> None:
    """A file of ``size`` random bytes, written 1 MiB at a time."""
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(CHUNK, left)
            fh.write(os.urandom(n))
            left -= n


def make_ctx(args: argparse.Namespace, sizes: Sizes, cases: list[str], work: Path) -> Ctx:
    env = child_env(snapshot_source(work))  # first: the code measured is fixed from now on
    served, dl, state, logs = work / "served", work / "dl", work / "state", work / "logs"
    for d in (served, dl, state, logs):
        d.mkdir()
    if "big" in cases or args.profile:
        print(f"generating big.bin ({sizes.big / MB:.0f} MB) ...", flush=True)
        write_random(served / "big.bin", sizes.big)
    if "files" in cases:
        (served / "small").mkdir()
        for i in range(sizes.small_count):
            write_random(served / "small" / f"f{i:04d}.bin", SMALL_FILE)
    if "clients" in cases:
        write_random(served / "mid.bin", sizes.client_size)
    os.sync()  # the generated files reach the disk before anything is timed
    store = UserStore()
    store.add(USER, PASSWORD, write=True)
    store.save(state / "users")
    cert, _ = ensure_server_certificate(state)
    return Ctx(
        work=work,
        served=served,
        dl=dl,
        state=state,
        logs=logs,
        env=env,
        fingerprint=certificate_fingerprint(cert),
        sizes=sizes,
        runs=args.runs,
        original={p.name for p in served.iterdir()},
        gets_ahead=args.gets_ahead,
    )


# --- servers ---------------------------------------------------------------------------------


def start_raw(ctx: Ctx) -> ServerProc:
    pf = ctx.portfile()
    argv = [PY, "-m", "benchmarks.raw_proc", str(ctx.served), str(pf)]
    return ServerProc("raw server", argv, env=ctx.env, log=ctx.log("raw-server"), portfile=pf)


def start_tcpft(ctx: Ctx, plaintext: bool, profile: Path | None = None) -> ServerProc:
    # Every server starts cold: the digests the last one saved at shutdown would make
    # its files' first downloads warm ones (the "warm" rows measure that on purpose).
    (ctx.state / DIGESTS_NAME).unlink(missing_ok=True)
    pf = ctx.portfile()
    argv = [PY, "-m", "benchmarks.serve_proc", str(ctx.served), str(ctx.state), str(pf)]
    if plaintext:
        argv.append("--plaintext")
    if profile is not None:
        argv += ["--profile", str(profile)]
    log = ctx.log("tcpft-server")
    return ServerProc("tcpft server", argv, env=ctx.env, log=log, portfile=pf)


def start_http(ctx: Ctx) -> ServerProc:
    port = free_port()
    argv = [PY, "-m", "http.server", "--bind", HOST, "--directory", str(ctx.served), str(port)]
    return ServerProc("http.server", argv, env=ctx.env, log=ctx.log("http-server"), port=port)


def start_ftp(ctx: Ctx) -> ServerProc:
    pf = ctx.portfile()
    argv = [PY, "-m", "benchmarks.ftp_proc", str(ctx.served), str(pf)]
    return ServerProc("pyftpdlib", argv, env=ctx.env, log=ctx.log("ftp-server"), portfile=pf)


def socat_argv(left: str, right: str) -> list[str]:
    return ["socat", "-u", "-b", str(CHUNK), left, right]


@dataclass
class SshSetup:
    sshd: str
    key: Path
    dir: Path
    user: str
    group: str | None
    run_as: str | None  # None: as ourselves
    pam: bool
    ciphers: list[str]

    def config(self, port: int) -> Path:
        path = self.dir / f"sshd_config.{port}"
        path.write_text(
            f"ListenAddress {HOST}\nPort {port}\nHostKey {self.dir / 'host_key'}\n"
            f"PidFile none\nAuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            f"UsePAM {'yes' if self.pam else 'no'}\nForceCommand internal-sftp\n"
            "Subsystem sftp internal-sftp\nLogLevel ERROR\nMaxStartups 100:30:200\n"
            "MaxSessions 100\n"
        )
        return path

    def scp(self, cipher: str, port: int, src: str, dst: str, recursive: bool) -> list[str]:
        argv = ["scp", "-q", "-B", "-F", "/dev/null", "-c", cipher, "-i", str(self.key)]
        for opt in (
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "LogLevel=ERROR",
            "Compression=no",
            "IdentitiesOnly=yes",
        ):
            argv += ["-o", opt]
        return [*argv, *(["-r"] if recursive else []), "-P", str(port), src, dst]

    def remote(self, path: Path) -> str:
        return f"{self.user}@{HOST}:{path}"


def start_sshd(ctx: Ctx) -> ServerProc:
    ssh = ctx.ssh
    assert ssh is not None
    port = free_port()
    argv = [ssh.sshd, "-D", "-e", "-f", str(ssh.config(port))]
    return ServerProc(
        "sshd",
        argv,
        env=ctx.env,
        log=ctx.log("sshd"),
        port=port,
        user=ssh.run_as,
        group=ssh.group,
    )


def setup_ssh(ctx: Ctx) -> str:
    """Prepare a private sshd; return "" or why scp cannot be measured."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    sshd = shutil.which("sshd", path=path)
    missing = [t for t in ("scp", "ssh", "ssh-keygen") if not shutil.which(t)]
    if sshd is None or missing:
        return "sshd not found" if sshd is None else f"{', '.join(missing)} not found"
    run_as: str | None = None
    group: str | None = None
    user = pwd.getpwuid(os.geteuid()).pw_name
    pam = False
    if os.geteuid() == 0:
        # sshd as root wants its privilege-separation user and /run/sshd; an unprivileged
        # sshd needs neither (it can only log in its own user: "nobody" here, with PAM
        # doing the account check that the locked shadow entry would fail otherwise).
        try:
            pw = pwd.getpwnam("nobody")
            group = grp.getgrgid(pw.pw_gid).gr_name
        except KeyError:
            return "running as root and there is no 'nobody' user to run sshd as"
        run_as = user = "nobody"
        pam = True
    d = ctx.work / "ssh"
    d.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    if run_as is not None:
        pw = pwd.getpwnam(run_as)
        os.chown(d / "host_key", pw.pw_uid, pw.pw_gid)
        for p in (ctx.work, d):
            os.chmod(p, 0o755)
        os.chmod(d / "authorized_keys", 0o644)
        for p in (ctx.served, ctx.dl):
            os.chmod(p, 0o777)  # uploads land here as the sshd user
    supported = subprocess.run(
        ["ssh", "-Q", "cipher"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.split()
    ciphers = [c for c in SCP_CIPHERS if c in supported]
    if not ciphers:
        return "ssh supports none of " + ", ".join(SCP_CIPHERS)
    ctx.ssh = SshSetup(sshd, d / "client_key", d, user, group, run_as, pam, ciphers)
    # Probe: one tiny copy through a fresh sshd.
    probe = ctx.served / "probe.txt"
    probe.write_text("probe\n")
    os.chmod(probe, 0o644)
    srv: ServerProc | None = None
    try:
        srv = start_sshd(ctx)
        argv = ctx.ssh.scp(ciphers[0], srv.port, ctx.ssh.remote(probe), str(ctx.dl / "p"), False)
        child = Child(argv, env=ctx.env, log=ctx.log("scp-probe"))
        try:
            child.wait(30.0)
        finally:
            child.kill()
        if child.status != 0 or not (ctx.dl / "p").exists():
            log = _tail(child.log) + " | sshd: " + _tail(srv.child.log)
            ctx.ssh = None
            return f"a private sshd could not be used ({log})"
    except (BenchError, OSError) as exc:
        ctx.ssh = None
        return f"a private sshd could not be started ({exc})"
    finally:
        if srv is not None:
            srv.stop()
        probe.unlink()
        (ctx.dl / "p").unlink(missing_ok=True)
    return ""


# --- running one measured run --------------------------------------------------------------


@dataclass
class ClientResult:
    seconds: float  # for the rate of this client alone
    start: float
    end: float
    bytes: int
    files: int
    cpu: float
    rss_kib: int
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Plan:
    """How to make one measurement: a server factory and client command lines."""

    server: Callable[[], ServerProc]
    clients: Callable[[int], list[list[str]]]  # port -> one argv per client
    python: bool  # the clients are benchmarks.client_proc (JSON, barrier)
    bytes_per_client: int
    files_per_client: int
    expected: Callable[[], list[tuple[Path, int]]]  # (path, size) that must exist after
    timing: str = "session"  # session | transfer (python clients only)
    wait_server: bool = False  # the transfer ends when the server exits (socat upload)
    prime: bool = False  # one unmeasured transfer first, on the same server (warm caches)


def _read_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            data: dict[str, Any] = json.loads(line)
            return data
    raise BenchError(f"client printed no result: {text[-300:]!r}")


def _reported(output: bytearray) -> bool:
    """Whether a client's output ends with its result (the JSON line)."""
    return output.endswith(b"}\n")


def _run_python_clients(
    ctx: Ctx,
    argvs: list[list[str]],
    timeout: float,
    timing: str,
    at_barrier: Callable[[], None] | None = None,
) -> list[ClientResult]:
    """Run the clients; with several, all log in first, then ``at_barrier`` runs and
    they start together."""
    barrier = len(argvs) > 1
    if barrier:
        argvs = [[*a, "--barrier"] for a in argvs]
    children: list[Child] = []
    outputs: dict[int, bytearray] = {}
    sel = selectors.DefaultSelector()
    try:
        for argv in argvs:
            child = Child(
                argv,
                env=ctx.env,
                log=ctx.log("client"),
                stdin=subprocess.PIPE if barrier else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
            )
            children.append(child)
            assert child.popen.stdout is not None
            os.set_blocking(child.popen.stdout.fileno(), False)
            outputs[child.pid] = bytearray()
            sel.register(child.popen.stdout, selectors.EVENT_READ, child)
        deadline = time.monotonic() + timeout

        def pump(until: Callable[[], bool], what: str) -> None:
            while not until():
                if time.monotonic() > deadline:
                    raise BenchError(f"clients did not finish {what} in {timeout:.0f} s")
                for key, _ in sel.select(0.05):
                    c: Child = key.data
                    stream: IO[bytes] = key.fileobj  # type: ignore[assignment]
                    chunk = stream.read()
                    if chunk:
                        outputs[c.pid] += chunk
                    elif chunk == b"":
                        sel.unregister(stream)
                for c in children:
                    if c.poll() and c.status != 0:
                        raise BenchError(f"client exited with {c.status}: {_tail(c.log)}")

        if barrier:
            login_start = time.monotonic()
            pump(lambda: all(b"READY\n" in outputs[c.pid] for c in children), "logging in")
            login_s = time.monotonic() - login_start
            if at_barrier is not None:
                at_barrier()
            for c in children:
                assert c.popen.stdin is not None
                c.popen.stdin.write(b"go\n")
                c.popen.stdin.flush()
        if barrier:
            # Each client stays after its result until all have theirs, then leaves
            # (see client_proc._wait_for_leave): its exit takes no CPU from the others.
            pump(
                lambda: all(c.poll() or _reported(outputs[c.pid]) for c in children), "transferring"
            )
            for c in children:
                assert c.popen.stdin is not None
                c.popen.stdin.close()
        done = "exiting" if barrier else "transferring"
        pump(lambda: all(c.poll() for c in children) and not sel.get_map(), done)
        results = []
        for c in children:
            data = _read_json_line(outputs[c.pid].decode(errors="replace"))
            seconds = data["transfer_s"]
            if timing == "session":
                seconds += data["connect_s"] + data["close_s"]
            extra = {"connect_s": data["connect_s"], "transfer_s": data["transfer_s"]}
            if barrier:
                extra["login_phase_s"] = login_s
            results.append(
                ClientResult(
                    seconds,
                    data["t_start"],
                    data["t_end"],
                    data["bytes"],
                    data["files"],
                    data["cpu_s"],
                    data["vmhwm_kib"],
                    extra,
                )
            )
        return results
    finally:
        sel.close()
        for c in children:
            c.kill()


def _run_external_clients(
    ctx: Ctx, argvs: list[list[str]], timeout: float
) -> list[tuple[Child, int]]:
    """Run external clients at once; each with the sampled peak RSS of its tree (KiB)."""
    children: list[Child] = []
    sampler: RssSampler | None = None
    try:
        for argv in argvs:
            children.append(Child(argv, env=ctx.env, log=ctx.log(Path(argv[0]).name)))
        sampler = RssSampler([c.pid for c in children])
        deadline = time.monotonic() + timeout
        for c in children:
            c.wait(max(0.1, deadline - time.monotonic()))
            c.check(Path(c.argv[0]).name)
        sampler.stop()
        return [(c, sampler.peak_kib(c.pid)) for c in children]
    finally:
        if sampler is not None:
            sampler.stop()
        for c in children:
            c.kill()


def measure(ctx: Ctx, plan: Plan) -> Sample:
    """One run: fresh server, the clients, the numbers; everything stopped after."""
    n_clients = 0
    srv = plan.server()
    try:
        argvs = plan.clients(srv.port)
        n_clients = len(argvs)
        total_bytes = plan.bytes_per_client * n_clients
        timeout = 120.0 + total_bytes / (5 * MB) + 2.0 * n_clients
        if plan.prime:
            _run_python_clients(ctx, argvs, timeout, plan.timing)
            ctx.clear_downloads()
        ctx.prime_page_cache(total_bytes)
        cpu0 = srv.cpu()
        extra: dict[str, float] = {}

        def at_barrier() -> None:
            """Many clients: the server's CPU counts from their start, logins apart."""
            nonlocal cpu0
            now = srv.cpu()
            extra["login_server_cpu_s"] = now - cpu0
            cpu0 = now

        if plan.python:
            results = _run_python_clients(ctx, argvs, timeout, plan.timing, at_barrier)
            if n_clients == 1:
                seconds = results[0].seconds
            else:
                seconds = max(r.end for r in results) - min(r.start for r in results)
            client_cpu = sum(r.cpu for r in results)
            client_rss: int | None = max(r.rss_kib for r in results)
            moved = sum(r.bytes for r in results)
            for key in results[0].extra:
                extra[key] = max(r.extra[key] for r in results)
        else:
            done = _run_external_clients(ctx, argvs, timeout)
            children = [c for c, _ in done]
            end = max(c.ended or 0.0 for c in children)
            if plan.wait_server:
                srv.child.wait(timeout)
                srv.child.check(srv.name)
                end = max(end, srv.child.ended or 0.0)
            seconds = end - min(c.started for c in children)
            client_cpu = sum(c.cpu for c in children)
            client_rss = max(rss for _, rss in done) or None  # 0: too short to sample
            moved = total_bytes
        srv.settle()
        server_cpu = srv.cpu() - cpu0
        server_rss = srv.peak_kib()
    finally:
        srv.stop()
    for path, size in plan.expected():
        try:
            got = path.stat().st_size
        except OSError:
            raise BenchError(f"{path} is missing after the transfer") from None
        if got != size:
            raise BenchError(f"{path} has {got} bytes, expected {size}")
    if moved != total_bytes:
        raise BenchError(f"moved {moved} bytes, expected {total_bytes}")
    return Sample(
        seconds=seconds,
        bytes=total_bytes,
        files=plan.files_per_client * n_clients,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        server_rss_kib=server_rss,
        client_rss_kib=client_rss,
        extra=extra,
    )


# --- plans for every tool ----------------------------------------------------------------------


@dataclass
class Workload:
    """What one case moves: names under the served root, per client, and how many clients."""

    case: str
    names: list[str]  # relative to ctx.served
    size_each: int
    clients: int

    @property
    def bytes(self) -> int:
        return len(self.names) * self.size_each


def _leaf(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _dl_dir(ctx: Ctx, i: int) -> Path:
    d = ctx.dl / f"c{i:02d}"
    d.mkdir(exist_ok=True)
    return d


def python_plan(
    ctx: Ctx,
    w: Workload,
    tool: str,
    direction: str,
    *,
    plaintext: bool = False,
    fsync: bool = False,
    clients: int | None = None,
    prime: bool = False,
) -> Plan:
    n = clients or w.clients
    names = ctx.names_file(w.case, w.names)

    def argvs(port: int) -> list[list[str]]:
        out = []
        for i in range(n):
            argv = [
                PY,
                "-m",
                "benchmarks.client_proc",
                tool,
                direction,
                str(port),
                "--names",
                str(names),
            ]
            if direction == "download":
                argv += ["--dir", str(_dl_dir(ctx, i))]
            else:
                argv += ["--dir", str(ctx.served), "--remote-prefix", f"up-c{i:02d}-"]
            if tool == "tcpft":
                argv += ["--plaintext"] if plaintext else ["--fingerprint", ctx.fingerprint]
                if ctx.gets_ahead is not None:
                    argv += ["--gets-ahead", str(ctx.gets_ahead)]
            if fsync:
                argv.append("--fsync")
            out.append(argv)
        return out

    def expected() -> list[tuple[Path, int]]:
        if direction == "download":
            return [
                (ctx.dl / f"c{i:02d}" / _leaf(x), w.size_each) for i in range(n) for x in w.names
            ]
        return [
            (ctx.served / f"up-c{i:02d}-{_leaf(x)}", w.size_each) for i in range(n) for x in w.names
        ]

    if tool == "raw":
        server: Callable[[], ServerProc] = lambda: start_raw(ctx)  # noqa: E731
    else:
        server = lambda: start_tcpft(ctx, plaintext)  # noqa: E731
    return Plan(
        server=server,
        clients=argvs,
        python=True,
        bytes_per_client=w.bytes,
        files_per_client=len(w.names),
        expected=expected,
        timing="session" if w.case == "big" else "transfer",
        prime=prime,
    )


def socat_plan(ctx: Ctx, w: Workload, direction: str) -> Plan:
    name = w.names[0]
    port = free_port()
    src, dst = ctx.served / name, ctx.dl / _leaf(name)
    up = ctx.served / f"up-{_leaf(name)}"
    if direction == "download":
        server_argv = socat_argv(f"OPEN:{src},rdonly", f"TCP-LISTEN:{port},bind={HOST},reuseaddr")
        client_argv = socat_argv(f"TCP:{HOST}:{port}", f"CREATE:{dst}")
    else:
        server_argv = socat_argv(f"TCP-LISTEN:{port},bind={HOST},reuseaddr", f"CREATE:{up}")
        client_argv = socat_argv(f"OPEN:{src},rdonly", f"TCP:{HOST}:{port}")
    return Plan(
        server=lambda: ServerProc(
            "socat", server_argv, env=ctx.env, log=ctx.log("socat"), port=port
        ),
        clients=lambda _port: [client_argv],
        python=False,
        bytes_per_client=w.bytes,
        files_per_client=1,
        expected=lambda: [(dst if direction == "download" else up, w.bytes)],
        wait_server=direction == "upload",
    )


def scp_plan(ctx: Ctx, w: Workload, direction: str, cipher: str) -> Plan:
    ssh = ctx.ssh
    assert ssh is not None
    many = len(w.names) > 1  # the files case: the whole directory, recursively
    src = ctx.served / (w.names[0].split("/")[0] if many else w.names[0])
    up = ctx.served / f"up-{src.name}"

    def argvs(port: int) -> list[list[str]]:
        if direction == "download":
            return [ssh.scp(cipher, port, ssh.remote(src), str(ctx.dl), many)]
        return [ssh.scp(cipher, port, str(src), ssh.remote(up), many)]

    def expected() -> list[tuple[Path, int]]:
        base = ctx.dl if direction == "download" else ctx.served
        if not many:
            return [((ctx.dl / src.name) if direction == "download" else up, w.size_each)]
        top = base / (src.name if direction == "download" else up.name)
        return [(top / _leaf(x), w.size_each) for x in w.names]

    return Plan(
        server=lambda: start_sshd(ctx),
        clients=argvs,
        python=False,
        bytes_per_client=w.bytes,
        files_per_client=len(w.names),
        expected=expected,
    )


def curl_plan(ctx: Ctx, w: Workload, direction: str, proto: str) -> Plan:
    n = w.clients

    def urls(port: int, i: int) -> list[tuple[str, str]]:
        base = f"{proto}://{HOST}:{port}/"
        if direction == "download":
            return [(base + x, str(_dl_dir(ctx, i) / _leaf(x))) for x in w.names]
        return [(base + f"up-c{i:02d}-{_leaf(x)}", str(ctx.served / x)) for x in w.names]

    def argvs(port: int) -> list[list[str]]:
        out = []
        for i in range(n):
            cfg = ctx.work / f"curl-{i:02d}.cfg"
            key = "output" if direction == "download" else "upload-file"
            cfg.write_text("".join(f'url = "{u}"\n{key} = "{p}"\n' for u, p in urls(port, i)))
            argv = ["curl", "-q", "-s", "-S", "-f", "-K", str(cfg)]
            if proto == "ftp" and len(w.names) > 1:
                # Active mode for many files: curl 7.88 in passive mode loses a race when
                # it reuses the control connection and waits 1 s per file.
                argv[1:1] = ["-P", HOST]
            out.append(argv)
        return out

    def expected() -> list[tuple[Path, int]]:
        if direction == "download":
            return [
                (ctx.dl / f"c{i:02d}" / _leaf(x), w.size_each) for i in range(n) for x in w.names
            ]
        return [
            (ctx.served / f"up-c{i:02d}-{_leaf(x)}", w.size_each) for i in range(n) for x in w.names
        ]

    return Plan(
        server=(lambda: start_http(ctx)) if proto == "http" else (lambda: start_ftp(ctx)),
        clients=argvs,
        python=False,
        bytes_per_client=w.bytes,
        files_per_client=len(w.names),
        expected=expected,
    )


# --- cases -------------------------------------------------------------------------------------


@dataclass
class Bench:
    ctx: Ctx
    tools: list[str]
    skip_reasons: dict[str, str]
    rows: list[Row] = field(default_factory=list)
    errors: int = 0
    pending: list[tuple[Row, Callable[[], Plan], Callable[[], Plan] | None]] = field(
        default_factory=list
    )

    def run_row(
        self, row: Row, make: Callable[[], Plan], single: Callable[[], Plan] | None = None
    ) -> None:
        """Queue ``row``: measured ctx.runs times (with its one-client reference if any)."""
        self.rows.append(row)
        self.pending.append((row, make, single))

    def measure_pending(self) -> None:
        """Measure the queued rows round-robin (run 1 of every row, then run 2, ...).

        Interleaving spreads a passing disturbance (another process, write-back) over
        many rows instead of one row's every run.
        """
        for run in range(self.ctx.runs):
            for row, make, single in self.pending:
                if row.error:
                    continue
                label = f"{row.case}: {row.tool}"
                try:
                    if single is not None:
                        row.single.append(measure(self.ctx, single()))
                        self.ctx.clean()
                    sample = measure(self.ctx, make())
                    self.ctx.clean()
                except (BenchError, OSError, ValueError, KeyError) as exc:
                    row.error = str(exc)[:500]
                    self.errors += 1
                    print(f"  {label}: ERROR {row.error}", flush=True)
                    self.ctx.clean()
                    continue
                row.samples.append(sample)
                rate = (
                    f"{sample.files_per_s:,.0f} files/s"
                    if row.case == "files"
                    else f"{sample.mbps:,.1f} MB/s"
                )
                print(f"  {label} run {run + 1}/{self.ctx.runs}: {rate}", flush=True)
        self.pending.clear()

    def warm_up(self, w: Workload) -> None:
        """One unmeasured raw copy each way: the first run after the files were made is
        always slow (page cache and allocator state), and must not be anyone's sample."""
        if "raw" not in self.tools:
            return
        for direction in ("download", "upload"):
            with contextlib.suppress(BenchError, OSError):
                measure(self.ctx, python_plan(self.ctx, w, "raw", direction, clients=1))
            self.ctx.clean()

    def skip(self, case: str, tool: str, direction: str, family: str, reason: str) -> None:
        self.rows.append(Row(case, tool, direction, family, skipped=reason))
        print(f"  {case}: {tool}: skipped ({reason})", flush=True)

    def case(self, w: Workload) -> None:
        self.ctx.set_aside = len(w.names) > 1  # many files per run: see Ctx.clean
        self.warm_up(w)
        for direction in ("download", "upload"):
            self._case_direction(w, direction)
        self.measure_pending()

    def _case_direction(self, w: Workload, d: str) -> None:
        ctx, tools = self.ctx, self.tools
        multi = w.clients > 1

        def alone(tool: str, plaintext: bool = False) -> Callable[[], Plan] | None:
            """The same transfer by one client alone (the clients case's reference)."""
            if not multi:
                return None
            if tool in ("raw", "tcpft"):
                return partial(python_plan, ctx, w, tool, d, plaintext=plaintext, clients=1)
            return partial(curl_plan, ctx, Workload(w.case, w.names, w.size_each, 1), d, tool)

        if "raw" in tools:
            self.run_row(
                Row(w.case, f"raw TCP {d}", d, "raw"),
                partial(python_plan, ctx, w, "raw", d),
                alone("raw"),
            )
            if w.case == "big" and d == "upload":
                note = "info: plus the server's fsync, as tcpft's upload commit does"
                self.run_row(
                    Row(w.case, "raw TCP upload + fsync", d, "raw-fsync", note=note),
                    partial(python_plan, ctx, w, "raw", d, fsync=True),
                    None,
                )
        if "socat" in tools and w.case == "big":
            if "socat" in self.skip_reasons:
                self.skip(w.case, f"socat {d}", d, "socat", self.skip_reasons["socat"])
            else:
                self.run_row(Row(w.case, f"socat {d}", d, "socat"), partial(socat_plan, ctx, w, d))
        if "scp" in tools and not multi:
            if ctx.ssh is None:
                self.skip(w.case, f"scp {d}", d, "scp", self.skip_reasons.get("scp", "?"))
            else:
                ciphers = ctx.ssh.ciphers if w.case == "big" else ctx.ssh.ciphers[:1]
                for cipher in ciphers:
                    self.run_row(
                        Row(w.case, f"scp {d} ({cipher.split('@')[0]})", d, "scp"),
                        partial(scp_plan, ctx, w, d, cipher),
                    )
        for proto in ("http", "ftp"):
            if proto not in tools or (proto == "http" and d == "upload"):
                continue
            if multi and d == "upload":
                continue
            label = f"curl {d} ({'http.server' if proto == 'http' else 'pyftpdlib'})"
            if proto in self.skip_reasons:
                self.skip(w.case, label, d, proto, self.skip_reasons[proto])
                continue
            self.run_row(
                Row(w.case, label, d, proto), partial(curl_plan, ctx, w, d, proto), alone(proto)
            )
        if "tcpft" in tools:
            for plaintext in (False, True):
                kind, family = ("plaintext", "tcpft-plain") if plaintext else ("TLS", "tcpft-tls")
                self.run_row(
                    Row(w.case, f"tcpft {kind} {d}", d, family),
                    partial(python_plan, ctx, w, "tcpft", d, plaintext=plaintext),
                    alone("tcpft", plaintext),
                )
            if w.case == "big" and d == "download":
                # The server caches a file's digest in memory: a second download of the
                # same file skips hashing (and in plaintext uses os.sendfile).
                note = "server already served the file once (digest cached)"
                for plaintext in (False, True):
                    kind = "plaintext" if plaintext else "TLS"
                    family = f"{'tcpft-plain' if plaintext else 'tcpft-tls'}-warm"
                    self.run_row(
                        Row(w.case, f"tcpft {kind} download, warm", d, family, note=note),
                        partial(python_plan, ctx, w, "tcpft", d, plaintext=plaintext, prime=True),
                    )


# --- the report --------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def baseline(rows: list[Row], case: str, direction: str) -> Row | None:
    for row in rows:
        if row.case == case and row.direction == direction and row.family == "raw" and row.ok:
            return row
    return None


def rate_of(row: Row) -> float | None:
    return row.files_per_s if row.case == "files" else row.mbps


def ratio(rows: list[Row], row: Row) -> float | None:
    base = baseline(rows, row.case, row.direction)
    if base is None or not row.ok:
        return None
    mine, theirs = rate_of(row), rate_of(base)
    return mine / theirs if mine is not None and theirs else None


def table(rows: list[Row], sizes: Sizes, runs: int) -> str:
    head = [
        "case",
        "tool",
        "MB/s",
        "ratio to raw",
        "server CPU s",
        "client CPU s",
        "server peak RSS MB",
        "client peak RSS MB",
        "notes",
    ]
    lines = [head]
    for row in rows:
        if row.skipped or row.error:
            what = f"skipped: {row.skipped}" if row.skipped else f"ERROR: {row.error[:120]}"
            lines.append([row.case, row.tool, "-", "-", "-", "-", "-", "-", what])
            continue
        notes = []
        if row.case == "files":
            notes.append(f"{row.files_per_s:,.0f} files/s")
        if row.single:
            single = row.single_mbps
            agg = row.mbps
            notes.append(f"1 client alone {_fmt(single, ',.1f')} MB/s")
            if single and agg:
                notes.append(f"aggregate/1 = {agg / single:.2f}")
            login = row.median(lambda s: s.extra.get("login_phase_s"))
            if login is not None:
                notes.append(f"start+login {login:.1f} s")
            login_cpu = row.median(lambda s: s.extra.get("login_server_cpu_s"))
            if login_cpu is not None:
                notes.append(f"their logins' server CPU {login_cpu:.2f} s, apart")
        if row.case == "big" and row.family in ("raw", "tcpft-tls", "tcpft-plain"):
            alone = row.median(lambda s: s.bytes / s.extra["transfer_s"] / MB)
            login = row.median(lambda s: s.extra["connect_s"])
            notes.append(f"transfer alone {_fmt(alone, ',.1f')} MB/s, connect {login:.2f} s")
        if row.note:
            notes.append(row.note)
        lines.append(
            [
                row.case,
                row.tool,
                _fmt(row.mbps, ",.1f"),
                _fmt(ratio(rows, row), ".2f"),
                _fmt(row.median(lambda s: s.server_cpu), ".2f"),
                _fmt(row.median(lambda s: s.client_cpu), ".2f"),
                _fmt(row.server_rss_mb, ".1f"),
                _fmt(row.client_rss_mb, ".1f"),
                "; ".join(notes),
            ]
        )
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = []
    for n, r in enumerate(lines):
        cells = [
            c.ljust(w) if i in (0, 1, 8) else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("| " + " | ".join(cells).rstrip() + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    legend = (
        f"MB = 10^6 bytes; rates are medians of {runs} run(s); CPU: medians; RSS: the largest "
        f"peak seen. big = one {sizes.big / MB:,.0f} MB file; files = {sizes.small_count} x "
        f"64 KiB in one session; clients = {sizes.clients} clients x "
        f"{sizes.client_size / MB:,.1f} MB at once (MB/s is the aggregate; CPU and RSS of the "
        "clients: sum and largest)."
    )
    return "\n".join(out) + "\n\n" + legend


@dataclass
class Verdict:
    ok: bool | None  # None: could not be judged
    text: str

    def __str__(self) -> str:
        word = {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]
        return f"{word}  {self.text}"


def verdicts(rows: list[Row]) -> list[Verdict]:
    out: list[Verdict] = []
    found = {(r.case, r.family, r.direction): r for r in rows if r.ok}

    def check(label: str, value: float | None, op: str, limit: float, fmt: str = ".2f") -> None:
        if value is None:
            out.append(Verdict(None, f"{label}: not measured"))
            return
        ok = value >= limit if op == ">=" else value < limit
        out.append(Verdict(ok, f"{label}: {value:{fmt}} {op} {limit:{fmt}}"))

    for d in ("download", "upload"):
        plain = found.get(("big", "tcpft-plain", d))
        tls = found.get(("big", "tcpft-tls", d))
        check(f"big {d}: tcpft plaintext / raw", ratio(rows, plain) if plain else None, ">=", 0.85)
        check(f"big {d}: tcpft TLS / raw", ratio(rows, tls) if tls else None, ">=", 0.30)
        if d == "download":
            for fam, kind, limit in (("tcpft-plain-warm", "plaintext", 0.85),
                                     ("tcpft-tls-warm", "TLS", 0.30)):  # fmt: skip
                warm = found.get(("big", fam, d))
                check(f"big {d}: tcpft {kind} / raw, warm server (digest cached)",
                      ratio(rows, warm) if warm else None, ">=", limit)  # fmt: skip
        scps = [
            r for r in rows if r.ok and r.case == "big" and r.family == "scp" and r.direction == d
        ]
        if scps and tls is not None and tls.mbps is not None:
            best = max(scps, key=lambda r: r.mbps or 0.0)
            check(
                f"big {d}: tcpft TLS / fastest scp ({best.tool})",
                tls.mbps / (best.mbps or 1.0),
                ">=",
                1.5,
            )
        else:
            out.append(Verdict(None, f"big {d}: tcpft TLS vs scp: scp not measured"))
        files = found.get(("files", "tcpft-tls", d))
        check(
            f"files {d}: tcpft TLS files/s",
            files.files_per_s if files else None,
            ">=",
            1000,
            ",.0f",
        )
        for fam in ("tcpft-tls", "tcpft-plain"):
            many = found.get(("clients", fam, d))
            kind = "TLS" if fam == "tcpft-tls" else "plaintext"
            if many is None or many.mbps is None or many.single_mbps is None:
                check(f"clients {d}: tcpft {kind} aggregate / one client", None, ">=", 1.0)
            else:
                check(
                    f"clients {d}: tcpft {kind} aggregate / one client",
                    many.mbps / many.single_mbps,
                    ">=",
                    1.0,
                )
        for fam in ("tcpft-tls", "tcpft-plain"):
            big = found.get(("big", fam, d))
            kind = "TLS" if fam == "tcpft-tls" else "plaintext"
            check(
                f"big {d}: tcpft {kind} server peak RSS MB",
                big.server_rss_mb if big else None,
                "<",
                80,
                ".1f",
            )
            warm = found.get(("big", f"{fam}-warm", d))
            if warm is not None:
                check(f"big {d}: tcpft {kind} server peak RSS MB, warm (2 downloads, 1 process)",
                      warm.server_rss_mb, "<", 80, ".1f")  # fmt: skip
            many = found.get(("clients", fam, d))
            check(
                f"clients {d}: tcpft {kind} server peak RSS MB",
                many.server_rss_mb if many else None,
                "<",
                200,
                ".1f",
            )
        client_rows = [
            r
            for r in rows
            if r.ok
            and r.family.startswith("tcpft")
            and r.direction == d
            and r.client_rss_mb is not None
        ]
        if client_rows:
            worst = max(client_rows, key=lambda r: r.client_rss_mb or 0.0)
            check(
                f"{d}: tcpft client peak RSS MB (largest: {worst.case}, {worst.tool})",
                worst.client_rss_mb,
                "<",
                80,
                ".1f",
            )
        else:
            check(f"{d}: tcpft client peak RSS MB", None, "<", 80)
    return out


def source_version() -> str:
    """The commit measured, and whether src/ differs from it (read-only git calls)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + (" with uncommitted changes in src/" if dirty else "")


def machine_summary() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {ram:.1f} GiB RAM, {platform.platform()}, "
        f"Python {platform.python_version()}, {ssl.OPENSSL_VERSION}"
    )


# --- profiling ---------------------------------------------------------------------------------


def profile(ctx: Ctx, out: Path) -> None:
    """One TLS download and one TLS upload of big.bin with cProfile in server and client."""
    import pstats

    out.mkdir(parents=True, exist_ok=True)
    w = Workload("big", ["big.bin"], ctx.sizes.big, 1)
    for d in ("download", "upload"):
        srv_prof, cli_prof = out / f"server-{d}.pstats", out / f"client-{d}.pstats"
        srv = start_tcpft(ctx, False, profile=srv_prof)
        threads: dict[int, float] = {}
        try:
            plan = python_plan(ctx, w, "tcpft", d)
            argv = [*plan.clients(srv.port)[0], "--profile", str(cli_prof)]
            child = Child(argv, env=ctx.env, log=ctx.log("profiled-client"), stdout=subprocess.PIPE)
            try:
                deadline = time.monotonic() + 600
                while not child.poll():  # per-thread CPU of the server, sampled
                    with contextlib.suppress(psutil.Error):
                        for t in srv.ps.threads():
                            threads[t.id] = t.user_time + t.system_time
                    if time.monotonic() > deadline:
                        raise BenchError("profiled client did not finish")
                    time.sleep(0.1)
                child.check("profiled client")
                assert child.popen.stdout is not None
                result = _read_json_line(child.popen.stdout.read().decode())
            finally:
                child.kill()
        finally:
            srv.stop()
            ctx.clean()
        main_cpu = threads.pop(srv.ps.pid, 0.0)
        print(
            f"\n=== profile: TLS {d} of {w.bytes / MB:,.0f} MB (cProfile on, so slower): "
            f"{w.bytes / result['transfer_s'] / MB:,.1f} MB/s; client CPU "
            f"{result['cpu_s']:.2f} s; server event-loop thread CPU {main_cpu:.2f} s, "
            f"worker threads {sum(threads.values()):.2f} s ==="
        )
        for label, path in (("server (event-loop thread)", srv_prof), ("client", cli_prof)):
            print(f"\n--- {label}: top 15 by own time ({path}) ---")
            stats = pstats.Stats(str(path), stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(15)


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark tcpft against a raw TCP copy and scp/curl/socat on 127.0.0.1.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="32 MiB, 1 run, 50 small files, 5 clients x 2 MiB"
    )
    parser.add_argument("--size", help="size of the big file (default 1G; --quick: 32M)")
    parser.add_argument("--runs", type=int, help="runs per row (default 5; --quick: 1)")
    parser.add_argument("--cases", nargs="+", choices=ALL_CASES, default=list(ALL_CASES))
    parser.add_argument(
        "--tools",
        nargs="+",
        choices=ALL_TOOLS,
        default=list(ALL_TOOLS),
        help="tools to measure (raw is the denominator of ratios)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write every sample here")
    parser.add_argument(
        "--profile", metavar="DIR", help="also profile one TLS download and upload (cProfile)"
    )
    parser.add_argument("--workdir", help="where to make the temporary directory")
    parser.add_argument(
        "--gets-ahead",
        type=int,
        metavar="N",
        help="tcpft downloads: GETs sent ahead of the file in progress (default: the library's)",
    )
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 5
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


@contextlib.contextmanager
def _workdir(parent: str | None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tcpft-bench-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the cleanups: children stopped, workdir removed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    quick = args.quick
    big = parse_size(args.size) if args.size else (32 if quick else 1024) * 2**20
    sizes = Sizes(
        big=big,
        small_count=50 if quick else 1000,
        clients=5 if quick else 50,
        client_size=(2 if quick else 20) * 2**20,
    )
    cases = [c for c in ALL_CASES if c in args.cases]
    tools = [t for t in ALL_TOOLS if t in args.tools]
    print(f"machine: {machine_summary()}")
    print(f"tcpft source: {source_version()}")
    print(f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"command: python -m benchmarks.run {' '.join(sys.argv[1:] if argv is None else argv)}")
    started = time.monotonic()
    with _workdir(args.workdir) as work:
        ctx = make_ctx(args, sizes, cases, work)
        skip: dict[str, str] = {}
        if "socat" in tools and not shutil.which("socat"):
            skip["socat"] = "socat not installed"
        if "http" in tools and not shutil.which("curl"):
            skip["http"] = "curl not installed"
        if "ftp" in tools:
            import importlib.util

            if not shutil.which("curl"):
                skip["ftp"] = "curl not installed"
            elif importlib.util.find_spec("pyftpdlib") is None:
                skip["ftp"] = "pyftpdlib not importable"
        if "scp" in tools:
            reason = setup_ssh(ctx)
            if reason:
                skip["scp"] = reason
        for tool, reason in skip.items():
            print(f"note: {tool} skipped: {reason}")
        bench = Bench(ctx, tools, skip)
        workloads = {
            "big": Workload("big", ["big.bin"], sizes.big, 1),
            "files": Workload(
                "files", [f"small/f{i:04d}.bin" for i in range(sizes.small_count)], SMALL_FILE, 1
            ),
            "clients": Workload("clients", ["mid.bin"], sizes.client_size, sizes.clients),
        }
        try:
            for case in cases:
                print(f"case {case}:", flush=True)
                bench.case(workloads[case])
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        print()
        print(table(bench.rows, sizes, args.runs))
        print()
        for verdict in verdicts(bench.rows):
            print(verdict)
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "machine": machine_summary(),
                        "argv": sys.argv,
                        "sizes": sizes.__dict__,
                        "runs": args.runs,
                        "rows": [r.as_dict() for r in bench.rows],
                        "verdicts": [str(v) for v in verdicts(bench.rows)],
                    },
                    indent=1,
                )
            )
        if args.profile:
            profile(ctx, Path(args.profile))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\ntotal time {time.monotonic() - started:.0f} s; load average now {load}")
    if bench.errors:
        print(f"{bench.errors} row(s) could not be measured", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
