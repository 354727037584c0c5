"""The benchmark runs end to end on a tiny file and prints its table."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

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
