"""The ``tcpft`` command line as scripts use it: real subprocesses against real servers.

Every command runs as ``python -m tcpft ...`` with its own config and state directories,
stdin not a terminal, against a TLS server on 127.0.0.1 (the ``start_server`` fixture)
or against ``tcpft serve`` itself started as a subprocess.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tcpft.cli import _target

from ..conftest import ALICE, BOB, Env, ServerThread, b3

pytestmark = pytest.mark.timeout(60)

WRONG_FP = "SHA256:" + base64.b64encode(bytes(32)).decode().rstrip("=")


def cli_env(env: Env, password: str | None = ALICE[1], user: str = ALICE[0]) -> dict[str, str]:
    """The environment of a CLI subprocess: its own config and state directories."""
    e = dict(os.environ)
    e.pop("TCPFT_PASSWORD", None)
    e.update(
        TCPFT_CONFIG_DIR=str(env.client.parent / "config"),
        TCPFT_STATE_DIR=str(env.client.parent / "cli-state"),
        TCPFT_USER=user,
        PYTHONUNBUFFERED="1",
    )
    if password is not None:
        e["TCPFT_PASSWORD"] = password
    return e


def tcpft(
    env: Env,
    *args: str,
    password: str | None = ALICE[1],
    user: str = ALICE[0],
    cwd: Path | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tcpft ARGS`` to completion (stdin: ``stdin`` or /dev/null)."""
    return subprocess.run(
        [sys.executable, "-m", "tcpft", *args],
        env=cli_env(env, password, user),
        cwd=cwd or env.client,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=45,
    )


def addr(srv: ServerThread) -> str:
    return f"127.0.0.1:{srv.port}"


def known_hosts(env: Env) -> Path:
    return env.client.parent / "config" / "known_hosts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- ls ----------------------------------------------------------------------------------


def test_ls_plain(server: ServerThread, env: Env) -> None:
    r = tcpft(env, "ls", addr(server))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    pattern = re.compile(r"^\s*(\S+(?: \S+)?)  (\d{4}-\d\d-\d\d \d\d:\d\d)  (.+)$")
    names = {m.group(3) for m in map(pattern.match, lines) if m}
    assert names == {"hello.txt", "data.bin", "sub/"}
    assert len(lines) == 3
    assert any(line.strip().startswith("3.0 MiB") for line in lines)


def test_ls_json_and_recursive(server: ServerThread, env: Env) -> None:
    r = tcpft(env, "ls", addr(server), "--json", "-R")
    assert r.returncode == 0, r.stderr
    records = {rec["path"]: rec for rec in map(json.loads, r.stdout.splitlines())}
    assert set(records) == {"hello.txt", "data.bin", "sub", "sub/inner.txt"}
    data = records["data.bin"]
    st = (env.root / "data.bin").stat()
    assert data["type"] == "file" and data["size"] == st.st_size
    assert data["mtime_ns"] == st.st_mtime_ns
    assert data["mtime"] == pytest.approx(st.st_mtime_ns / 1e9)
    assert records["sub"]["type"] == "dir"

    r = tcpft(env, "ls", addr(server), "sub", "--json")
    assert [json.loads(line)["path"] for line in r.stdout.splitlines()] == ["sub/inner.txt"]


def test_ls_missing_directory_exits_6(server: ServerThread, env: Env) -> None:
    r = tcpft(env, "ls", addr(server), "nope")
    assert r.returncode == 6
    assert r.stderr.strip().endswith("tcpft: error: no such directory: nope")


# --- get ---------------------------------------------------------------------------------


def test_get_file_is_byte_identical(server: ServerThread, env: Env) -> None:
    r = tcpft(env, "get", addr(server), "data.bin")
    assert r.returncode == 0, r.stderr
    assert (env.client / "data.bin").read_bytes() == (env.root / "data.bin").read_bytes()
    assert re.search(
        r"received data\.bin: 3\.0 MiB in [\d.]+ s \(.+/s\), blake3 verified", r.stderr
    )
    assert not list(env.client.glob("*.tcpft-part"))


def test_get_output_is_a_file_or_with_a_trailing_slash_a_folder(
    server: ServerThread, env: Env
) -> None:
    r = tcpft(env, "get", addr(server), "hello.txt", "-o", "downloads/")
    assert r.returncode == 0, r.stderr
    assert (env.client / "downloads" / "hello.txt").read_text() == "hello, world\n"
    r = tcpft(env, "get", addr(server), "hello.txt", "-o", "renamed.txt")
    assert r.returncode == 0, r.stderr
    assert (env.client / "renamed.txt").read_text() == "hello, world\n"


def test_get_bad_name_exits_6(server: ServerThread, env: Env) -> None:
    r = tcpft(env, "get", addr(server), "no-such-file")
    assert r.returncode == 6
    assert "tcpft: error: no such file: no-such-file" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (env.client / "no-such-file").exists()


def test_get_existing_destination(server: ServerThread, env: Env) -> None:
    dest = env.client / "hello.txt"
    dest.write_text("mine\n")
    r = tcpft(env, "get", addr(server), "hello.txt")
    assert r.returncode == 9
    assert "exists" in r.stderr
    assert dest.read_text() == "mine\n"
    r = tcpft(env, "get", addr(server), "hello.txt", "--force")
    assert r.returncode == 0, r.stderr
    assert dest.read_text() == "hello, world\n"


def test_get_glob(server: ServerThread, env: Env) -> None:
    (env.root / "other.txt").write_text("other\n")
    r = tcpft(env, "get", addr(server), "*.txt", "-o", "out")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (env.client / "out").iterdir()) == ["hello.txt", "other.txt"]
    r = tcpft(env, "get", addr(server), "*.iso")
    assert r.returncode == 6
    assert "no file matches *.iso" in r.stderr


def test_get_several_names_reports_each_in_its_turn(server: ServerThread, env: Env) -> None:
    (env.root / "other.txt").write_text("other\n")
    r = tcpft(env, "get", addr(server), "hello.txt", "nope", "other.txt", "-o", "out")
    assert r.returncode == 6  # the refusal's status; the other files still came
    assert sorted(p.name for p in (env.client / "out").iterdir()) == ["hello.txt", "other.txt"]
    lines = r.stderr.splitlines()
    words = ("hello", "nope", "other")
    order = [next(i for i, line in enumerate(lines) if w in line) for w in words]
    assert order == sorted(order), r.stderr
    assert "Traceback" not in r.stderr


def test_get_recursive(server: ServerThread, env: Env) -> None:
    r = tcpft(env, "get", addr(server), "-r", "sub", "-o", "tree")
    assert r.returncode == 0, r.stderr
    assert (env.client / "tree" / "sub" / "inner.txt").read_text() == "inner\n"


def test_get_recursive_goes_on_past_a_file_and_a_resume_finishes_it(
    server: ServerThread, env: Env
) -> None:
    """A file that exists locally fails alone (exit 9 at the end, the rest received);
    run again with --resume, files already there are skipped, the missing one comes."""
    for i in range(4):
        (env.root / "t").mkdir(exist_ok=True)
        (env.root / "t" / f"f{i}.bin").write_bytes(os.urandom(5000 + i))
    (env.client / "out" / "t").mkdir(parents=True)
    (env.client / "out" / "t" / "f1.bin").write_text("mine")
    r = tcpft(env, "get", addr(server), "-r", "t", "-o", "out")
    assert r.returncode == 9, r.stderr
    assert "f1.bin" in r.stderr and "Traceback" not in r.stderr
    for i in (0, 2, 3):
        assert (env.client / "out" / "t" / f"f{i}.bin").read_bytes() == (
            env.root / "t" / f"f{i}.bin"
        ).read_bytes()
    (env.client / "out" / "t" / "f1.bin").unlink()
    r = tcpft(env, "get", addr(server), "-r", "t", "-o", "out", "--resume", "--json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(e["path"] for e in events if e["event"] == "skipped") == [
        "t/f0.bin", "t/f2.bin", "t/f3.bin",
    ]  # fmt: skip
    assert [e["path"] for e in events if e["event"] == "done"] == ["t/f1.bin"]
    assert (env.client / "out" / "t" / "f1.bin").read_bytes() == (
        env.root / "t" / "f1.bin"
    ).read_bytes()


def test_get_json_events(server: ServerThread, env: Env) -> None:
    r = tcpft(env, "get", addr(server), "data.bin", "nope", "--json")
    assert r.returncode == 6
    events = [json.loads(line) for line in r.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-2:] == ["done", "error"]
    assert set(kinds[1:-2]) <= {"progress"}
    size = (env.root / "data.bin").stat().st_size
    assert events[0] == {"event": "start", "path": "data.bin", "size": size, "offset": 0}
    done = events[-2]
    assert done["size"] == done["bytes_transferred"] == size
    assert done["digest"] == "blake3:" + b3(env.root / "data.bin")
    assert Path(env.client, done["local"]).resolve() == (env.client / "data.bin").resolve()
    assert events[-1]["path"] == "nope" and events[-1]["code"] == 6


# --- put ---------------------------------------------------------------------------------


def test_put_by_writer(server: ServerThread, env: Env) -> None:
    local = env.client / "up.bin"
    local.write_bytes(os.urandom(200_000))
    r = tcpft(env, "put", addr(server), "up.bin", "sub/uploaded.bin", "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout.splitlines()[-1])
    assert done["event"] == "done" and done["size"] == 200_000
    assert (env.root / "sub" / "uploaded.bin").read_bytes() == local.read_bytes()


def test_put_by_read_only_user_exits_8(server: ServerThread, env: Env) -> None:
    (env.client / "up.txt").write_text("nope\n")
    r = tcpft(env, "put", addr(server), "up.txt", user=BOB[0], password=BOB[1])
    assert r.returncode == 8
    assert "read-only" in r.stderr
    assert not (env.root / "up.txt").exists()


def test_put_directory_needs_r(server: ServerThread, env: Env) -> None:
    (env.client / "d").mkdir()
    r = tcpft(env, "put", addr(server), "d")
    assert r.returncode == 2
    assert "use -r" in r.stderr


def test_put_tree_with_r(server: ServerThread, env: Env) -> None:
    (env.client / "d" / "e").mkdir(parents=True)
    (env.client / "d" / "one.txt").write_text("1\n")
    (env.client / "d" / "e" / "two.txt").write_text("2\n")
    r = tcpft(env, "put", addr(server), "d", "backup/d", "-r", "--json")
    assert r.returncode == 0, r.stderr
    done = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(e["path"] for e in done if e["event"] == "done") == [
        "backup/d/e/two.txt",
        "backup/d/one.txt",
    ]
    assert (env.root / "backup" / "d" / "e" / "two.txt").read_text() == "2\n"


def test_put_tree_again_with_resume_skips_what_is_there(server: ServerThread, env: Env) -> None:
    (env.client / "d").mkdir()
    for i in range(3):
        (env.client / "d" / f"f{i}.txt").write_text(f"{i}\n")
    assert tcpft(env, "put", addr(server), "d", "-r").returncode == 0
    (env.root / "d" / "f1.txt").unlink()
    again = tcpft(env, "put", addr(server), "d", "-r")  # without --resume: each exists
    assert again.returncode == 9 and again.stderr.count("exists") == 2, again.stderr
    assert (env.root / "d" / "f1.txt").read_text() == "1\n"  # the others did not stop it
    (env.root / "d" / "f1.txt").unlink()
    r = tcpft(env, "put", addr(server), "d", "-r", "--resume")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("skipped") == 2, r.stderr
    assert (env.root / "d" / "f1.txt").read_text() == "1\n"


def test_put_of_a_fifo_says_what_it_is(server: ServerThread, env: Env) -> None:
    os.mkfifo(env.client / "pipe")
    r = tcpft(env, "put", addr(server), "pipe")
    assert r.returncode == 11
    assert "not a regular file or a directory" in r.stderr


# --- login and trust ---------------------------------------------------------------------


def test_wrong_password_exits_4(server: ServerThread, env: Env) -> None:
    r = tcpft(env, "ls", addr(server), password="wrong-password")
    assert r.returncode == 4
    assert r.stderr.strip().endswith("tcpft: error: login failed")


def test_no_password_without_terminal_exits_2(server: ServerThread, env: Env) -> None:
    r = tcpft(env, "ls", addr(server), password=None)
    assert r.returncode == 2
    assert "no password: set TCPFT_PASSWORD or use --password-file" in r.stderr


def test_password_file(server: ServerThread, env: Env) -> None:
    pw = env.client / "pw"
    pw.write_text(ALICE[1] + "\n")
    r = tcpft(env, "ls", addr(server), "--password-file", str(pw), password=None)
    assert r.returncode == 0, r.stderr


def test_fingerprint_option(server: ServerThread, env: Env) -> None:
    r = tcpft(env, "ls", addr(server), "--fingerprint", WRONG_FP)
    assert r.returncode == 5
    assert WRONG_FP in r.stderr
    assert server.fingerprint is not None
    r = tcpft(env, "ls", addr(server), "--fingerprint", server.fingerprint)
    assert r.returncode == 0, r.stderr
    assert not known_hosts(env).exists()  # an explicit fingerprint pins nothing


def test_known_hosts_pinned_then_mismatch(server: ServerThread, env: Env) -> None:
    r = tcpft(env, "ls", addr(server))
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and str(known_hosts(env)) in r.stderr
    assert server.fingerprint is not None
    text = known_hosts(env).read_text()
    assert f"127.0.0.1:{server.port} {server.fingerprint}" in text
    known_hosts(env).write_text(text.replace(server.fingerprint, WRONG_FP))
    r = tcpft(env, "ls", addr(server))
    assert r.returncode == 5
    assert str(known_hosts(env)) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one line, even for a long message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host", ("host", 7878)),
        ("host:9000", ("host", 9000)),
        ("[::1]:9000", ("::1", 9000)),
        ("[::1]", ("::1", 7878)),
        ("::1", ("::1", 7878)),
    ],
)
def test_host_port_parsing(text: str, expected: tuple[str, int]) -> None:
    assert _target(text) == expected


@pytest.mark.parametrize("target", ["host:0", "host:99999", "host:x", "[::1]x", ":80"])
def test_bad_host_port_is_a_usage_error(env: Env, target: str) -> None:
    r = tcpft(env, "ls", target)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "usage:" in r.stderr


# --- server configuration and users ------------------------------------------------------


def test_print_config(env: Env, tmp_path: Path) -> None:
    config = tmp_path / "tcpft.toml"
    config.write_text('port = 9000\nlimit_rate = "1M"\nlogin_timeout = 5\nroot = "files"\n')
    r = tcpft(env, "serve", "--config", str(config), "--port", "9100", "--print-config")
    assert r.returncode == 0, r.stderr
    lines = set(r.stdout.splitlines())
    assert "port = 9100" in lines
    assert "limit_rate = 1048576" in lines
    assert "login_timeout = 5.0" in lines
    assert f"root = {json.dumps(str(tmp_path / 'files'))}" in lines
    assert "# users_file = (unset)" in lines and "plaintext = false" in lines
    assert not (env.client.parent / "cli-state").exists()  # nothing created


def test_bad_config_file_exits_2(env: Env, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("colour = 'blue'\n")
    r = tcpft(env, "serve", "--config", str(config), "--print-config")
    assert r.returncode == 2
    assert "unknown key 'colour'" in r.stderr


def test_user_add_list_del(env: Env, tmp_path: Path) -> None:
    users = tmp_path / "users"
    r = tcpft(env, "user", "add", "carol", "--write", "--users", str(users), stdin="carol-pw-3\n")
    assert r.returncode == 0, r.stderr
    r = tcpft(env, "user", "add", "dave", "--users", str(users), stdin="dave-pw-4\n")
    assert r.returncode == 0, r.stderr
    r = tcpft(env, "user", "list", "--users", str(users))
    assert r.stdout.split() == ["carol", "rw", "dave", "r"]
    r = tcpft(env, "user", "add", "dave", "--users", str(users), stdin="x\n")
    assert r.returncode == 2 and "already exists" in r.stderr
    r = tcpft(env, "user", "del", "carol", "--users", str(users))
    assert r.returncode == 0, r.stderr
    r = tcpft(env, "user", "list", "--users", str(users))
    assert r.stdout.split() == ["dave", "r"]
    r = tcpft(env, "user", "del", "carol", "--users", str(users))
    assert r.returncode == 2 and "no such user" in r.stderr


def test_user_added_can_log_in(start_server: Callable[..., ServerThread], env: Env) -> None:
    r = tcpft(env, "user", "add", "erin", "--state-dir", str(env.state), stdin="erin-pw-55\n")
    assert r.returncode == 0, r.stderr
    from tcpft.auth import UserStore

    srv = start_server(users=UserStore.load(env.state / "users"))
    r = tcpft(env, "ls", addr(srv), user="erin", password="erin-pw-55")
    assert r.returncode == 0, r.stderr


def _client_piped(env: Env, srv: ServerThread, name: str) -> subprocess.CompletedProcess[str]:
    """``tcpft client`` in a session of its own (no terminal), answering user, password
    and one file name from a pipe."""
    return subprocess.run(
        [sys.executable, "-m", "tcpft", "client", "127.0.0.1", str(srv.port),
         "--fingerprint", srv.fingerprint],
        env=cli_env(env, None), cwd=env.client, input=f"{ALICE[0]}\n{ALICE[1]}\n{name}\n",
        capture_output=True, text=True, timeout=45, start_new_session=True,
    )  # fmt: skip


def test_interactive_client_with_piped_input_and_no_terminal(
    server: ServerThread, env: Env
) -> None:
    """Without a terminal the password is read from stdin, with no Python warning."""
    r = _client_piped(env, server, "hello.txt")
    assert "Warning" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (env.client / "hello.txt").read_text() == "hello, world\n"


def test_interactive_client_of_a_root_too_large_to_list(
    start_server: Callable[..., ServerThread], env: Env
) -> None:
    """No listing after login (TOO_LARGE): said once, and a name still downloads."""
    srv = start_server(max_list_entries=2)
    r = _client_piped(env, srv, "hello.txt")
    assert r.returncode == 0, r.stderr
    assert "no listing: listing exceeds 2 entries" in r.stderr and "Traceback" not in r.stderr
    assert (env.client / "hello.txt").read_text() == "hello, world\n"
    ls = tcpft(env, "ls", f"127.0.0.1:{srv.port}", "--fingerprint", srv.fingerprint)
    assert ls.returncode != 0 and "listing exceeds 2 entries" in ls.stderr, ls


# --- tcpft serve as a real process -------------------------------------------------------


class Running:
    """A ``tcpft`` subprocess whose stderr is read line by line in a thread."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tcpft", *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if m := re.search(pattern, line):
                    return m
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and self.lines.empty()):
                raise AssertionError(f"no {pattern!r} in {''.join(self.seen)}")
            with contextlib.suppress(queue.Empty):
                self.seen.append(self.lines.get(timeout=min(left, 0.5)))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def spawn() -> Iterator[Callable[..., Running]]:
    procs: list[Running] = []

    def start(args: list[str], env: dict[str, str], cwd: Path) -> Running:
        procs.append(Running(args, env, cwd))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()


def test_serve_subprocess(env: Env, tmp_path: Path, spawn: Callable[..., Running]) -> None:
    port, state = free_port(), tmp_path / "serve-state"
    e = cli_env(env, password=None)
    srv = spawn(
        [
            "serve",
            str(env.root),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--state-dir",
            str(state),
        ],
        e,
        tmp_path,
    )
    user = srv.wait_for(r"^\s+user:\s+(\S+)").group(1)
    password = srv.wait_for(r"^\s+password:\s+(\S+)").group(1)
    assert srv.wait_for(r"users file (\S+)").group(1) == str(state / "users")
    fp = srv.wait_for(r"^fingerprint: (SHA256:\S+)$").group(1)
    srv.wait_for(rf"tcpft: serving .* on 127\.0\.0\.1:{port}$")
    r = tcpft(
        env,
        "get",
        f"127.0.0.1:{port}",
        "hello.txt",
        "--fingerprint",
        fp,
        user=user,
        password=password,
    )
    assert r.returncode == 0, r.stderr
    assert (env.client / "hello.txt").read_text() == "hello, world\n"
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(10) == 0
    srv.wait_for(r"tcpft: stopped")
    assert sum(password in line for line in srv.seen) == 1  # shown once, never logged


def test_server_original_usage(env: Env, tmp_path: Path, spawn: Callable[..., Running]) -> None:
    port = free_port()
    e = cli_env(env, password=None)
    e["TCPFT_STATE_DIR"] = str(tmp_path / "orig-state")
    srv = spawn(["server", str(port)], e, env.root)
    password = srv.wait_for(r"^\s+password:\s+(\S+)").group(1)
    srv.wait_for(rf"tcpft: serving {re.escape(str(env.root))} on .*:{port}$")
    r = tcpft(env, "ls", f"127.0.0.1:{port}", "--json", user="tcpft", password=password)
    assert r.returncode == 0, r.stderr
    assert {json.loads(line)["path"] for line in r.stdout.splitlines()} == {
        "hello.txt",
        "data.bin",
        "sub",
    }
    srv.proc.send_signal(signal.SIGINT)
    assert srv.proc.wait(10) == 0


def test_serve_missing_directory_exits_2(env: Env, tmp_path: Path) -> None:
    r = tcpft(env, "serve", str(tmp_path / "nope"), "--port", "0")
    assert r.returncode == 2
    assert "nope" in r.stderr and "Traceback" not in r.stderr


def test_plaintext_needs_the_flag_and_warns(
    start_server: Callable[..., ServerThread], env: Env
) -> None:
    plain = start_server(plaintext=True)
    r = tcpft(env, "ls", addr(plain), "--plaintext")
    assert r.returncode == 0, r.stderr
    assert "hello.txt" in r.stdout
    assert "UNENCRYPTED" in r.stderr
    r = tcpft(env, "ls", addr(plain))  # TLS against a plaintext server
    assert r.returncode == 3
    assert "plaintext" in r.stderr


def test_malformed_fingerprint_is_a_usage_error_before_connecting(env: Env) -> None:
    r = tcpft(env, "ls", f"127.0.0.1:{free_port()}", "--fingerprint", "SHA256:nonsense")
    assert r.returncode == 2
    assert "fingerprint" in r.stderr and "cannot connect" not in r.stderr


def test_serve_with_stderr_gone_still_serves_and_stops(env: Env, tmp_path: Path) -> None:
    """A closed stderr (its reader gone) must neither stop the server from serving nor
    keep SIGTERM from stopping it."""
    port = free_port()
    e = cli_env(env, password=None)
    e["TCPFT_STATE_DIR"] = str(tmp_path / "gone-state")
    args = ["serve", str(env.root), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcpft", *args],
        env=e,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        seen = b""
        while b"tcpft: serving" not in seen:
            chunk = proc.stderr.read1(4096)
            assert chunk, seen.decode()
            seen += chunk
        password = re.search(rb"password:\s+(\S+)", seen)
        assert password is not None
        proc.stderr.close()  # every later write to stderr fails with EPIPE
        r = tcpft(env, "ls", f"127.0.0.1:{port}", user="tcpft", password=password.group(1).decode())
        assert r.returncode == 0, r.stderr  # served, and logged that to the broken stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "-inf", "1e10", "0", "x", "86401"])
def test_bad_timeout_is_a_usage_error(env: Env, value: str) -> None:
    r = tcpft(env, "ls", f"127.0.0.1:{free_port()}", f"--timeout={value}")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "--timeout" in r.stderr
    assert "cannot connect" not in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["ls", "127.0.0.1:1", "--limit-rate", "1e300T"],
        ["serve", "--limit-rate", "1e300T", "--print-config"],
        ["serve", "--max-upload-size", "9e18K", "--print-config"],
    ],
)
def test_huge_size_is_a_usage_error(env: Env, args: list[str]) -> None:
    r = tcpft(env, *args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "too large" in r.stderr


@pytest.mark.parametrize("host", ["a" * 300, "a..b", "\udcff", "a b", ".x"])
@pytest.mark.parametrize("command", ["serve", "ls", "get", "put", "client"])
def test_bad_host_name_is_a_usage_error(env: Env, command: str, host: str) -> None:
    target = f"{host}:{free_port()}"
    args = {
        "serve": ["serve", str(env.root), "--host", host, "--port", "0"],
        "ls": ["ls", target],
        "get": ["get", target, "x"],
        "put": ["put", target, str(env.root / "hello.txt")],
        "client": ["client", host, "7878"],
    }[command]
    r = tcpft(env, *args, stdin="")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "not a valid host name" in r.stderr
    assert not (env.client.parent / "cli-state").exists()  # refused before any work


def test_serve_with_an_audit_file_that_cannot_be_opened_exits_2(env: Env, tmp_path: Path) -> None:
    config = tmp_path / "audited.toml"
    config.write_text(f'audit_json = "{tmp_path}"\nhost = "127.0.0.1"\nport = 0\n')
    state = ["--state-dir", str(tmp_path / "audit-state")]
    r = tcpft(env, "serve", str(env.root), "--config", str(config), *state)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert f"tcpft: error: cannot open the audit file {tmp_path}: Is a directory" in r.stderr
    assert not (tmp_path / "audit-state" / "users").exists()  # refused before any account


LONG = "n" * 300  # over NAME_MAX (255 bytes) of every common file system


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["serve", LONG, "--port", "0"], 2),
        (["serve", ".", "--users", LONG, "--port", "0"], 2),
        (["serve", ".", "--state-dir", LONG, "--port", "0"], 2),
        (["serve", ".", "--users", "users", "--state-dir", LONG, "--port", "0"], 2),
        (["user", "add", "bob", "--users", LONG], 2),
        (["user", "del", "bob", "--users", LONG], 2),
        (["user", "add", "bob", "--state-dir", LONG], 2),
        (["put", "127.0.0.1:1", LONG], 11),
    ],
)
def test_path_name_too_long_is_a_clear_error(
    env: Env, tmp_path: Path, args: list[str], code: int
) -> None:
    from tcpft.auth import UserStore

    UserStore().save(tmp_path / "users")  # an existing users file for --users users
    r = tcpft(env, *args, cwd=tmp_path, stdin="pw-for-bob\n")
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("tcpft: error: ") and "File name too long" in r.stderr


def run_detached(env: Env, args: list[str], stdin: bytes, **extra: str) -> tuple[int, str]:
    """Run tcpft with ``stdin`` bytes and no controlling terminal (getpass cannot use one)."""
    e = cli_env(env, password=None)
    e.update(extra)
    r = subprocess.run(
        [sys.executable, "-m", "tcpft", *args],
        env=e,
        cwd=env.client,
        input=stdin,
        capture_output=True,
        timeout=45,
        start_new_session=True,
    )
    return r.returncode, r.stderr.decode("utf-8", "replace")


def test_end_of_input_where_the_client_wants_a_password(server: ServerThread, env: Env) -> None:
    code, err = run_detached(env, ["client", "127.0.0.1", str(server.port)], b"alice\n")
    assert code == 2, err
    assert "tcpft: error: no password given (end of input)" in err and "Traceback" not in err


def test_end_of_input_where_user_add_wants_a_password(env: Env, tmp_path: Path) -> None:
    code, err = run_detached(env, ["user", "add", "carol", "--users", str(tmp_path / "u")], b"")
    assert code == 2, err
    assert "tcpft: error: no password for carol on standard input" in err
    assert not (tmp_path / "u").exists()


@pytest.mark.parametrize(
    "args", [["client", "127.0.0.1", "1"], ["user", "add", "carol", "--users", "u"]]
)
def test_stdin_that_is_not_text_is_a_usage_error(env: Env, args: list[str]) -> None:
    code, err = run_detached(env, args, b"\xff\xfe\n", PYTHONIOENCODING="utf-8:strict")
    assert code == 2, err
    assert "tcpft: error: standard input is not utf-8 text" in err and "Traceback" not in err


def run_to(env: Env, args: list[str], stdout: int | object) -> subprocess.CompletedProcess[str]:
    """Run tcpft with stdout going to ``stdout`` (a file descriptor or a file)."""
    return subprocess.run(
        [sys.executable, "-m", "tcpft", *args],
        env=cli_env(env),
        cwd=env.client,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=45,
    )


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["ls", "user list", "print-config"])
def test_stdout_on_a_full_disk_is_a_clear_error(
    server: ServerThread, env: Env, tmp_path: Path, command: str
) -> None:
    from tcpft.auth import UserStore

    users = UserStore()
    users.add("carol", "carol-pw-3")
    users.save(tmp_path / "users")
    args = {
        "ls": ["ls", addr(server)],
        "user list": ["user", "list", "--users", str(tmp_path / "users")],
        "print-config": ["serve", "--print-config"],
    }[command]
    with open("/dev/full", "w") as full:
        r = run_to(env, args, full)
    assert r.returncode == 11, r.stderr
    assert r.stderr.strip().endswith(
        "tcpft: error: cannot write to standard output: No space left on device"
    )
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr


def test_stdout_closed_by_its_reader_ends_quietly(server: ServerThread, env: Env) -> None:
    for i in range(2000):
        (env.root / "sub" / f"file-{i:04}.txt").write_text("x")
    fp = ["--fingerprint", str(server.fingerprint)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcpft", "ls", addr(server), "-R", *fp],
        env=cli_env(env),
        cwd=env.client,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()  # like | head -1
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(30) == 1
    assert err == ""


def test_concurrent_user_adds_lose_no_account(env: Env, tmp_path: Path) -> None:
    users = tmp_path / "accounts" / "users"
    names = [f"user{i}" for i in range(6)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tcpft", "user", "add", name, "--users", str(users)],
            env=cli_env(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    for p in procs:  # all of them started, now all of them at once
        assert p.stdin is not None
        p.stdin.write("a-password-1\n")
        p.stdin.close()
    for p in procs:
        assert p.wait(45) == 0, p.stderr.read() if p.stderr else ""
        if p.stderr:
            p.stderr.close()
    r = tcpft(env, "user", "list", "--users", str(users))
    assert r.stdout.split()[::2] == names
    r = tcpft(env, "user", "del", "user3", "--users", str(users))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in users.parent.iterdir()) == ["users", "users.lock"]


def test_user_add_through_a_symlink_updates_its_target(env: Env, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "users"
    link.symlink_to(real / "users")
    for name in ("carol", "dave"):
        r = tcpft(env, "user", "add", name, "--users", str(link), stdin="pw-12345\n")
        assert r.returncode == 0, r.stderr
    assert link.is_symlink() and link.resolve() == real / "users"
    r = tcpft(env, "user", "list", "--users", str(real / "users"))
    assert r.stdout.split() == ["carol", "r", "dave", "r"]


def test_user_del_without_a_users_file_creates_nothing(env: Env, tmp_path: Path) -> None:
    r = tcpft(env, "user", "del", "carol", "--users", str(tmp_path / "new" / "users"))
    assert r.returncode == 2 and "no such user" in r.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("args", [["serve", "--port", "\u00b2"], ["server", "\u00b2"]])
def test_unicode_digit_port_is_a_plain_usage_error(env: Env, args: list[str]) -> None:
    r = tcpft(env, *args)
    assert r.returncode == 2
    assert "not a valid port: '\u00b2'" in r.stderr and "functools" not in r.stderr


@pytest.mark.parametrize(
    ("args", "variables", "message"),
    [
        ([], {"TCPFT_USER": "\udcff"}, "user name '\\udcff' is not valid UTF-8"),
        (["--user", "\udcff"], {}, "user name '\\udcff' is not valid UTF-8"),
        ([], {"TCPFT_PASSWORD": "\udcff"}, "the password is not valid UTF-8 text"),
        ([], {"TCPFT_PASSWORD": "p" * 5000}, "the password is 5000 bytes long"),
        (["--user", "u" * 5000], {}, "the user name is 5000 bytes long"),
    ],
)
def test_credentials_no_server_could_take_are_refused_before_connecting(
    env: Env, args: list[str], variables: dict[str, str], message: str
) -> None:
    extra = {"TCPFT_USER": "alice", "TCPFT_PASSWORD": "a-password", **variables}
    code, err = run_detached(env, ["ls", f"127.0.0.1:{free_port()}", *args], b"", **extra)
    assert code == 2, err
    assert message in err and "cannot connect" not in err
    assert "a-password" not in err and "p" * 100 not in err


def test_serve_refuses_a_state_dir_with_half_an_identity(env: Env, tmp_path: Path) -> None:
    from tcpft.tls import ensure_server_certificate

    state = tmp_path / "half-state"
    cert, key = ensure_server_certificate(state)
    key.unlink()
    before = cert.read_bytes()
    r = tcpft(env, "serve", str(env.root), "--state-dir", str(state), "--port", "0")
    assert r.returncode == 2
    assert f"tcpft: error: {key} is missing, though {cert} is there" in r.stderr
    assert cert.read_bytes() == before and not key.exists()
    assert not (state / "users").exists()  # refused before anything was made


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_an_os_error_no_command_caught_is_one_line_and_exit_11(
    server: ServerThread, env: Env
) -> None:
    """The last resort: --json events written to a full stdout by the reporter."""
    with open("/dev/full", "w") as full:
        r = run_to(env, ["get", addr(server), "hello.txt", "--json"], full)
    assert r.returncode == 11, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("tcpft: error: ")
    assert "No space left on device" in r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr
