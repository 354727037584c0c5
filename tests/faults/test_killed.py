"""Processes killed mid-transfer: the server (the client keeps a partial and resumes it
after a restart), and the client (the server releases the file at once)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tcpft.client import connect
from tcpft.errors import ConnectionBroken

from ..conftest import ALICE
from .childserver import ChildServer

MIB = 1024 * 1024


def _dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    root, state, client = tmp_path / "served", tmp_path / "state", tmp_path / "client"
    root.mkdir()
    client.mkdir()
    return root, state, client


@pytest.mark.timeout(90)
def test_server_killed_mid_download_then_resumed_after_restart(tmp_path: Path) -> None:
    root, state, client = _dirs(tmp_path)
    content = os.urandom(12 * MIB)
    (root / "big.bin").write_bytes(content)
    known = tmp_path / "known_hosts"
    target = client / "big.bin"
    partial = client / "big.bin.tcpft-part"

    with ChildServer(root, state, limit_rate=4 * MIB) as srv:
        killed: list[int] = []

        def progress(n: int, total: int) -> None:
            if n >= 6 * MIB and not killed:
                killed.append(n)
                srv.kill()

        s = connect("127.0.0.1", srv.port, user=ALICE[0], password=ALICE[1],
                    known_hosts=known, timeout=10)  # fmt: skip
        fingerprint = s.server_fingerprint
        try:
            with pytest.raises(ConnectionBroken):
                s.download("big.bin", client, progress=progress)
        finally:
            s.close()
        assert killed, "the server was never killed"
        assert not srv.process.is_alive()

    assert not target.exists(), "a cut download must never appear under its final name"
    assert partial.exists()
    kept = partial.stat().st_size
    assert 4 * MIB <= kept < len(content), kept
    # The blocks reserved for the whole file were given back when the download failed.
    assert partial.stat().st_blocks * 512 <= kept + 64 * 1024

    # Same state dir: same certificate, so the pinned fingerprint still holds.
    with ChildServer(root, state) as again, connect(
        "127.0.0.1", again.port, user=ALICE[0], password=ALICE[1], fingerprint=fingerprint,
        timeout=10,
    ) as s:  # fmt: skip
        result = s.download("big.bin", client, resume=True)
    assert result.resumed_from > 0 and result.resumed_from % (4 * MIB) == 0
    assert result.transferred == len(content) - result.resumed_from < len(content)
    assert target.read_bytes() == content
    assert not partial.exists()


CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tcpft.client import connect

    port, known, mode, local = int(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])

    def progress(n, total):
        print(f"progress {n}", flush=True)

    s = connect("127.0.0.1", port, user="alice", password="alice-password-1",
                known_hosts=known, timeout=10, limit_rate=4 * 1024 * 1024)
    if mode == "get":
        s.download("big.bin", local, progress=progress)
    else:
        s.upload(local, "uploaded.bin", progress=progress)
    print("finished", flush=True)
    """
)


def _open_paths(pid: int) -> set[str]:
    return {f.path for f in psutil.Process(pid).open_files()}


def _established(pid: int) -> int:
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["get", "put"])
def test_client_killed_mid_transfer_server_releases_the_file(tmp_path: Path, mode: str) -> None:
    root, state, client = _dirs(tmp_path)
    content = os.urandom(16 * MIB)
    if mode == "get":
        (root / "big.bin").write_bytes(content)
        local = client / "big.bin"
        watched = root / "big.bin"
    else:
        local = client / "big.bin"
        local.write_bytes(content)
        watched = root / ".uploaded.bin.tcpft-part"
    with ChildServer(root, state, limit_rate=4 * MIB) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT_SCRIPT, str(srv.port), str(tmp_path / "kh"), mode,
             str(local)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            while True:
                line = proc.stdout.readline()
                assert line, f"the client ended early: {proc.stderr.read() if proc.stderr else ''}"
                if line.startswith("progress") and int(line.split()[1]) >= 2 * MIB:
                    break
            # The transfer is running: the server holds the file open.
            assert str(watched) in _open_paths(srv.pid)
            assert _established(srv.pid) == 1
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            deadline = time.monotonic() + 5
            while str(watched) in _open_paths(srv.pid) or _established(srv.pid):
                assert time.monotonic() < deadline, (
                    f"the server still holds {watched.name} 5 s after the client died"
                )
                time.sleep(0.05)
            released = 5 - (deadline - time.monotonic())
            assert srv.process.is_alive()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc.stdout:
                proc.stdout.close()
            if proc.stderr:
                proc.stderr.close()
    assert released < 5
    if mode == "put":  # the partial upload is kept for a resume, never committed
        assert watched.exists() and 0 < watched.stat().st_size < len(content)
        assert not (root / "uploaded.bin").exists()
