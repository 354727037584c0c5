"""The benchmark runs end to end on a tiny file and prints its table."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from benchmarks.run import Ctx, Sizes, _run_python_clients

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(150)
def test_benchmark_quick_run_prints_the_table() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--runs", "1", "--cases", "big",
         "--size", "4M"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    rows = {
        line.split("|")[2].strip(): line
        for line in result.stdout.splitlines()
        if line.startswith("| big ")
    }
    for tool in ("raw TCP download", "raw TCP upload", "tcpft TLS download", "tcpft TLS upload",
                 "tcpft plaintext download", "tcpft plaintext upload"):  # fmt: skip
        assert tool in rows, out
        cells = [c.strip() for c in rows[tool].split("|")]
        assert float(cells[3].replace(",", "")) > 0, rows[tool]  # MB/s
        assert "ERROR" not in rows[tool]
    assert "PASS" in result.stdout or "FAIL" in result.stdout
    assert elapsed < 30, f"the quick benchmark took {elapsed:.0f} s"


@pytest.mark.timeout(60)
def test_a_benchmark_stopped_with_sigterm_leaves_no_process_and_no_files(
    tmp_path: Path,
) -> None:
    bench = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--runs", "3", "--cases", "big",
         "--size", "64M", "--tools", "raw", "tcpft", "--workdir", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    children: list[psutil.Process] = []
    try:
        assert bench.stdout is not None
        deadline = time.monotonic() + 30
        for line in bench.stdout:  # wait until transfers are under way
            if "run 1/3" in line or time.monotonic() > deadline:
                break
        children = psutil.Process(bench.pid).children(recursive=True)
        assert list(tmp_path.iterdir()), "the benchmark should have made its workdir"
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(30) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], alive
        assert list(tmp_path.iterdir()) == []
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for child in children:  # only if the benchmark failed to stop them
            with contextlib.suppress(psutil.Error):
                child.kill()


def _ctx(tmp_path: Path, *, set_aside: bool) -> Ctx:
    dirs = {name: tmp_path / name for name in ("served", "dl", "state", "logs")}
    for d in dirs.values():
        d.mkdir()
    (dirs["served"] / "small").mkdir()
    return Ctx(
        work=tmp_path, env={}, fingerprint="", sizes=Sizes(1, 1, 1, 1), runs=1,
        original={"small"}, set_aside=set_aside, **dirs,
    )  # fmt: skip


def _leave_a_run(ctx: Ctx) -> list[int]:
    """Files as a run leaves them: an upload in the served tree, a client's downloads."""
    (ctx.served / "up-c00-f0000.bin").write_bytes(b"u")
    (ctx.dl / "c00").mkdir()
    (ctx.dl / "c00" / "f0000.bin").write_bytes(b"d")
    return [(ctx.served / "up-c00-f0000.bin").stat().st_ino,
            (ctx.dl / "c00" / "f0000.bin").stat().st_ino]  # fmt: skip


def test_clean_sets_the_files_of_a_run_aside_without_deleting_them(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, set_aside=True)
    inodes = _leave_a_run(ctx)
    ctx.clean()
    assert sorted(p.name for p in ctx.served.iterdir()) == ["small"]
    assert list(ctx.dl.iterdir()) == []
    kept = {p.stat().st_ino for p in (tmp_path / "aside").rglob("*.bin")}
    assert kept == set(inodes)  # the same files, moved: no inode was freed


def test_clean_deletes_the_files_of_a_run_when_not_set_aside(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, set_aside=False)
    _leave_a_run(ctx)
    ctx.clean()
    assert sorted(p.name for p in ctx.served.iterdir()) == ["small"]
    assert list(ctx.dl.iterdir()) == []
    assert not (tmp_path / "aside").exists()


def _quick_rows(case: str, *options: str) -> list[str]:
    """The table rows of a quick benchmark of ``case``, raw and tcpft."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--cases", case,
         "--tools", "raw", "tcpft", *options],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    rows = [line for line in result.stdout.splitlines() if line.startswith(f"| {case} ")]
    assert len(rows) == 6, out  # raw, tcpft TLS and plaintext, both ways
    assert not any("ERROR" in row for row in rows), out
    return rows


@pytest.mark.timeout(150)
def test_benchmark_files_case_runs_twice_with_its_files_set_aside(tmp_path: Path) -> None:
    rows = _quick_rows("files", "--runs", "2", "--workdir", str(tmp_path))
    assert all("files/s" in row for row in rows), rows
    assert list(tmp_path.iterdir()) == []  # removed with the work directory


def _logins_cpu(row: str) -> float:
    return float(row.split("their logins' server CPU ")[1].split(" s")[0])


@pytest.mark.timeout(150)
def test_benchmark_clients_case_counts_the_logins_apart() -> None:
    rows = _quick_rows("clients", "--runs", "1")
    for row in rows:
        assert "aggregate/1 = " in row and _logins_cpu(row) >= 0, row
    tls = next(row for row in rows if "tcpft TLS download" in row)
    # an argon2id verification for each of the 5 logins: tens of milliseconds each
    assert _logins_cpu(tls) > 0.05, tls


# A client that behaves as benchmarks.client_proc does around its transfer: READY, a
# transfer of argv[1] seconds, the JSON result, then it stays until told to leave and
# writes the moment it left to argv[2].
_CLIENT = """
import json, sys, time
from pathlib import Path
from benchmarks.client_proc import _wait_for_go, _wait_for_leave
_wait_for_go()
t0 = time.monotonic()
time.sleep(float(sys.argv[1]))
t1 = time.monotonic()
result = {"bytes": 1, "files": 1, "connect_s": 0, "transfer_s": t1 - t0, "close_s": 0,
          "t_start": t0, "t_end": t1, "cpu_s": 0, "vmhwm_kib": 1}
print(json.dumps(result), flush=True)
_wait_for_leave()
Path(sys.argv[2]).write_text(repr(time.monotonic()))
"""


@pytest.mark.timeout(60)
def test_many_clients_leave_only_once_every_one_is_done(tmp_path: Path) -> None:
    """A client's exit would take CPU from the transfers still going."""
    ctx = _ctx(tmp_path, set_aside=False)
    left = [tmp_path / "left-fast", tmp_path / "left-slow"]
    argvs = [
        [sys.executable, "-c", _CLIENT, "0", str(left[0])],
        [sys.executable, "-c", _CLIENT, "1.0", str(left[1])],
    ]
    results = _run_python_clients(ctx, argvs, 30.0, "transfer")
    last_end = max(r.end for r in results)
    assert results[0].end < last_end - 0.5  # the fast one was done long before
    assert all(float(p.read_text()) >= last_end for p in left)  # both left after it
