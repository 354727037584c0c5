"""The terminal progress display: bars and summary lines drawn a bounded number of times."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from rich.console import Console

from tcpft.client import Skipped, TransferResult
from tcpft.errors import InvalidName
from tcpft.progress import (
    UPDATES_PER_SECOND,
    BarReporter,
    JsonReporter,
    Reporter,
    skipped_line,
    summary_line,
)

SIZE = 64 * 1024


def _reporter() -> tuple[BarReporter, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    return BarReporter("received", console=console), out


def _result(name: str) -> TransferResult:
    return TransferResult(name, Path(name), SIZE, SIZE, 0, "00" * 32, "blake3", 0.001)


def _count_draws(rep: BarReporter) -> list[int]:
    """Count the bar's redraws (rich's own add_task redraws through the same method)."""
    count = [0]
    draw = rep.bar.refresh

    def counted() -> None:
        count[0] += 1
        draw()

    rep.bar.refresh = counted  # type: ignore[method-assign]
    return count


def test_many_small_files_are_drawn_a_bounded_number_of_times() -> None:
    rep, out = _reporter()
    names = [f"small/f{i:04d}.bin" for i in range(500)]
    draws = _count_draws(rep)
    started = time.monotonic()
    with rep:
        for name in names:
            update = rep.track(name)
            update(0, SIZE)
            update(SIZE, SIZE)
            rep.finished(name, _result(name))
    elapsed = time.monotonic() - started
    # Drawn for every file, this was 2 draws per file and 3.4 s for 1,000 files.
    assert draws[0] <= elapsed * UPDATES_PER_SECOND + 3, (draws[0], elapsed)
    text = out.getvalue()
    lines = [summary_line("received", n, _result(n)) for n in names]
    positions = [text.find(line) for line in lines]
    assert -1 not in positions  # every summary printed, at the latest on exit
    assert positions == sorted(positions)  # in order


def test_a_long_transfer_gets_its_bar_and_a_finished_one_loses_it() -> None:
    rep, out = _reporter()
    with rep:
        update = rep.track("big.iso")
        update(0, 100 * SIZE)  # a draw is due: the bar is made and drawn
        assert "big.iso" in out.getvalue()
        update(100 * SIZE, 100 * SIZE)
        rep.finished("big.iso", _result("big.iso"))
        assert rep._tasks == {}
    assert "received big.iso" in out.getvalue()


def test_an_error_is_printed_at_once_after_the_summaries_before_it() -> None:
    rep, out = _reporter()
    with rep:
        for name in ("a.bin", "b.bin"):
            rep.track(name)(SIZE, SIZE)
            rep.finished(name, _result(name))
        rep.failed("c.bin", InvalidName("no such file: c.bin"))
        text = out.getvalue()  # before the display ends
        assert "tcpft: error: no such file: c.bin" in text
        assert text.find("received a.bin") < text.find("received b.bin") < text.find("c.bin")


def test_waiting_summaries_are_printed_when_the_display_ends_by_an_exception() -> None:
    rep, out = _reporter()
    with pytest.raises(KeyboardInterrupt), rep:
        rep.track("a.bin")(0, SIZE)  # draws: the next draw is a tenth of a second away
        rep.finished("a.bin", _result("a.bin"))
        raise KeyboardInterrupt
    assert "received a.bin" in out.getvalue()


def test_a_skipped_file_gets_its_line_in_every_reporter() -> None:
    skip = Skipped("t/a.bin", Path("t/a.bin"), 3 * 1024 * 1024)
    rep, out = _reporter()
    with rep:
        rep.settle("t/a.bin", skip)
    assert "skipped t/a.bin: 3.0 MiB already there" in out.getvalue()
    assert rep.failures == []
    err = io.StringIO()
    with Reporter("received", err=err) as plain:
        plain.settle("t/a.bin", skip)
    assert err.getvalue() == skipped_line("t/a.bin", skip) + "\n"
    events = io.StringIO()
    with JsonReporter("received", out=events) as js:
        js.settle("t/a.bin", skip)
    assert json.loads(events.getvalue().splitlines()[-1]) == {
        "event": "skipped", "path": "t/a.bin", "local": "t/a.bin", "size": 3 * 1024 * 1024,
    }  # fmt: skip
