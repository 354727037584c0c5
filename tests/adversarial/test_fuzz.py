"""The protocol-core fuzz target: it runs as a module, finds nothing, and would notice."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

import tcpft.protocol
from tcpft.messages import Message, decode_message

from . import fuzz_frames

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60)
def test_fuzz_target_runs_three_seconds_without_a_crash() -> None:
    seed = random.SystemRandom().getrandbits(32)
    result = subprocess.run(
        [sys.executable, "-m", "tests.adversarial.fuzz_frames", "--seconds", "3",
         "--seed", str(seed)],
        cwd=ROOT, capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    stats = result.stdout.strip().splitlines()[-1]
    cases = int(stats.split("cases=")[1].split()[0])
    states = int(stats.split("states=")[1].split()[0])
    assert cases > 1000, stats
    assert states >= 12, f"the fuzzer should reach the deep states: {stats}"


@pytest.mark.timeout(30)
def test_fuzz_target_reports_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    real = decode_message

    def fragile(frame_type: int, payload: bytes) -> Message:
        if frame_type == 0x0D and len(payload) % 7 == 3:  # some PUTs
            raise IndexError("planted bug")
        return real(frame_type, payload)

    monkeypatch.setattr(tcpft.protocol, "decode_message", fragile)
    with pytest.raises(fuzz_frames.FuzzCrash) as info:
        fuzz_frames.run(10.0, seed=7)
    crash = info.value
    assert "IndexError" in str(crash) and crash.data
    with pytest.raises(IndexError):  # and the case replays
        fuzz_frames.run_case(crash.role, crash.data, crash.case_seed)


@pytest.mark.timeout(10)
def test_fuzz_mutations_are_deterministic_per_seed() -> None:
    a = [fuzz_frames.mutate(s, random.Random(5)) for s in fuzz_frames.CLIENT_STREAMS]
    b = [fuzz_frames.mutate(s, random.Random(5)) for s in fuzz_frames.CLIENT_STREAMS]
    assert a == b


@pytest.mark.timeout(60)
def test_coverage_guided_target_runs_for_a_fixed_time(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="the coverage-guided fuzzer comes with .[fuzz]")
    result = subprocess.run(
        [sys.executable, "-m", "tests.adversarial.atheris_frames", "-max_total_time=3",
         f"-artifact_prefix={tmp_path}/"],
        cwd=ROOT, capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done" in result.stderr and "cov:" in result.stderr
    assert not list(tmp_path.iterdir()), "libFuzzer saved a crashing input"
