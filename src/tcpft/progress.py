"""Progress reporting for the command line: a rich bar, NDJSON events, or nothing.

The client library reports a transfer through a ``Progress`` callback, ``(done, total)``,
called once per chunk (up to 1 MiB). A :class:`Reporter` hands out one such callback per
file with :meth:`Reporter.track`; the callback is throttled so that a fast transfer
costs one clock read per chunk and redraws (or emits an event) at most
:data:`UPDATES_PER_SECOND` times a second.

- :class:`Reporter`: no live display; a summary line per file on stderr (unless quiet).
- :class:`BarReporter`: a transient rich progress bar on stderr (bytes, speed, ETA).
- :class:`JsonReporter`: NDJSON events on stdout (``start``, ``progress``, ``done``,
  ``error``), one JSON object per line.

It also formats what the command line shows of a listing (:func:`listing_table`,
:func:`listing_line`, :func:`entry_record`) and of a finished transfer.

Names that came from the server are shown through :func:`tcpft.names.printable`; in
JSON they are escaped by the JSON encoder (``ensure_ascii``), which keeps them exact.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO, TypeVar

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

from .client import Progress, Skipped, TransferResult
from .errors import RemoteFileError, TcpftError
from .messages import Entry
from .names import printable

__all__ = [
    "UPDATES_PER_SECOND",
    "BarReporter",
    "JsonReporter",
    "Reporter",
    "Stop",
    "entry_record",
    "error_line",
    "human_size",
    "listing_line",
    "listing_table",
    "local_time",
    "summary_line",
]

T = TypeVar("T")

#: Most redraws of the display (bars, in all) or progress events (JSON, per file) a second.
UPDATES_PER_SECOND = 10
_INTERVAL = 1.0 / UPDATES_PER_SECOND
_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(n: float) -> str:
    """Return ``n`` bytes as ``512 B``, ``1.5 KiB``, ``3.4 MiB``, ``1.0 GiB`` ... Never raises."""
    if n < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024.0
        if value < 1024.0 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def summary_line(verb: str, name: str, result: TransferResult) -> str:
    """The line printed after a transfer, e.g.
    ``received a.iso: 1.2 MiB in 0.35 s (3.4 MiB/s), blake3 verified``.

    ``verb`` is ``received`` or ``sent``; ``name`` is made printable here.
    """
    seconds = max(result.seconds, 1e-6)
    rate = human_size(result.transferred / seconds)
    resumed = f", resumed at {human_size(result.resumed_from)}" if result.resumed_from else ""
    return (
        f"{verb} {printable(name)}: {human_size(result.size)} in {result.seconds:.2f} s "
        f"({rate}/s{resumed}), {result.algorithm} verified"
    )


def skipped_line(name: str, skip: Skipped) -> str:
    """The line printed for a file a resume left alone, e.g.
    ``skipped a.iso: 1.2 MiB already there (same size and modification time)``."""
    return (
        f"skipped {printable(name)}: {human_size(skip.size)} already there "
        "(same size and modification time)"
    )


def error_line(exc: TcpftError) -> str:
    """``tcpft: error: <message>`` on one line, every part made printable."""
    parts = [printable(line.strip()) for line in exc.message.splitlines() if line.strip()]
    return "tcpft: error: " + (" ".join(parts) or type(exc).__name__)


def local_time(mtime_ns: int) -> str:
    """A modification time as local ``YYYY-MM-DD HH:MM``. Never raises."""
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime_ns / 1e9))
    except (OverflowError, OSError, ValueError):
        return "????-??-?? ??:??"


def listing_line(e: Entry) -> str:
    """``SIZE  YYYY-MM-DD HH:MM  NAME`` (a directory's name ends with ``/``)."""
    size = "-" if e.is_dir else human_size(e.size)
    return f"{size:>10}  {local_time(e.mtime_ns)}  {printable(e.path)}{'/' if e.is_dir else ''}"


def entry_record(e: Entry) -> dict[str, Any]:
    """The JSON object of one listed entry (``path type size mtime mtime_ns``)."""
    kind = "dir" if e.is_dir else "file"
    return {
        "path": e.path,
        "type": kind,
        "size": e.size,
        "mtime": e.mtime_ns / 1e9,
        "mtime_ns": e.mtime_ns,
    }


def listing_table(entries: list[Entry]) -> Table | Text:
    """A rich table of ``entries``: name (directories with ``/``), size, local time."""
    if not entries:
        return Text("(the directory is empty)")
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("name")
    table.add_column("size", justify="right")
    table.add_column("modified")
    for e in entries:
        name = printable(e.path) + ("/" if e.is_dir else "")
        table.add_row(Text(name), "-" if e.is_dir else human_size(e.size), local_time(e.mtime_ns))
    return table


class Stop(Exception):
    """Raised by :meth:`Reporter.attempt` after a failure that ends the session."""


class Reporter:
    """Reports transfers with no live display: a summary line per file on stderr.

    Use as a context manager. ``verb`` (``received`` or ``sent``) starts the summary
    line; ``quiet`` silences summaries (errors are always reported).
    """

    def __init__(self, verb: str, *, quiet: bool = False, err: TextIO | None = None) -> None:
        self.verb = verb
        self.quiet = quiet
        self.err = err if err is not None else sys.stderr
        self.failures: list[int] = []  # exit status of each failed transfer

    def attempt(self, path: str, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` (a transfer of ``path``) and report its failure, if any.

        A refusal by the server (RemoteFileError) leaves the session usable: None is
        returned. Any other TcpftError raises :class:`Stop` once reported.
        """
        try:
            return fn()
        except TcpftError as exc:
            self._failure(path, exc)
            return None

    def settle(self, path: str, outcome: TransferResult | Skipped | TcpftError) -> None:
        """Report one outcome of a batch (:meth:`Session.download_many`, a tree) like
        :meth:`attempt` and :meth:`finished` do: a failure other than a refusal
        raises :class:`Stop`."""
        if isinstance(outcome, TcpftError):
            self._failure(path, outcome)
        elif isinstance(outcome, Skipped):
            self.skipped(path, outcome)
        else:
            self.finished(path, outcome)

    def _failure(self, path: str, exc: TcpftError) -> None:
        self.failed(path, exc)
        self.failures.append(exc.exit_code)
        if not isinstance(exc, RemoteFileError):
            raise Stop from exc

    def track(self, path: str) -> Progress | None:
        """Return the progress callback for the transfer of ``path`` (None: no tracking)."""
        return None

    def finished(self, path: str, result: TransferResult) -> None:
        """Report a transfer of ``path`` that completed."""
        if not self.quiet:
            self._say(summary_line(self.verb, path, result))

    def failed(self, path: str, exc: TcpftError) -> None:
        """Report a transfer of ``path`` that failed with ``exc``."""
        self._say(error_line(exc))

    def skipped(self, path: str, skip: Skipped) -> None:
        """Report a file of a tree that a resume found already there."""
        if not self.quiet:
            self._say(skipped_line(path, skip))

    def _say(self, line: str) -> None:
        print(line, file=self.err, flush=True)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class _SpeedColumn(ProgressColumn):
    """Transfer speed in binary units, like the rest of the output (``3.4 MiB/s``)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        shown = "?" if speed is None else human_size(speed) + "/s"
        return Text(shown, style="progress.data.speed")


class BarReporter(Reporter):
    """A transient rich progress bar per file on stderr; summaries printed above it.

    The display is drawn at most ``UPDATES_PER_SECOND`` times a second whatever the
    number of files: summary lines wait for the next draw, and a file gets its bar
    only if it is still going when a draw is due. Drawing costs about a millisecond,
    and drawn for every file, 1,000 files of 64 KiB took 3.4 s instead of 1.0.
    """

    def __init__(self, verb: str, *, quiet: bool = False, console: Console | None = None) -> None:
        super().__init__(verb, quiet=quiet)
        self.console = console if console is not None else Console(stderr=True, highlight=False)
        self.bar = RichProgress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(binary_units=True),
            _SpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            auto_refresh=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lines: list[Text] = []  # summaries and errors waiting for the next draw
        self._draw_at = 0.0  # time.monotonic() of the next draw

    def track(self, path: str) -> Progress:
        """Return a callback that advances the bar of ``path`` (made when first drawn)."""
        bar, label = self.bar, printable(path)
        task: TaskID | None = None
        next_at = 0.0

        def update(done: int, total: int) -> None:
            nonlocal task, next_at
            now = time.monotonic()
            if now < next_at and done < total:
                return
            next_at = now + _INTERVAL
            if task is not None:
                bar.update(task, completed=done, total=total, visible=done < total)
            elif done < total and now >= self._draw_at:
                task = bar.add_task(label, total=total, completed=done)  # rich draws it
                self._tasks[path] = task
            self._draw(now)

        return update

    def finished(self, path: str, result: TransferResult) -> None:
        """Drop the bar of ``path``; its summary line goes above the others at the next draw."""
        self._drop(path)
        if not self.quiet:
            self._lines.append(Text(summary_line(self.verb, path, result)))
        self._draw(time.monotonic())

    def skipped(self, path: str, skip: Skipped) -> None:
        """Print the line of a file a resume left alone above the bars."""
        if not self.quiet:
            self._lines.append(Text(skipped_line(path, skip)))
        self._draw(time.monotonic())

    def failed(self, path: str, exc: TcpftError) -> None:
        """Drop the bar of ``path`` and print the error above the others, at once."""
        self._drop(path)
        self._lines.append(Text(error_line(exc)))
        self._draw(time.monotonic(), force=True)

    def _drop(self, path: str) -> None:
        task = self._tasks.pop(path, None)
        if task is not None:
            self.bar.remove_task(task)

    def _draw(self, now: float, *, force: bool = False) -> None:
        """Print the waiting lines and redraw the bars, if a draw is due (or forced)."""
        if now < self._draw_at and not force:
            return
        self._draw_at = now + _INTERVAL
        self.bar.refresh()  # what printing redraws below the lines is the last refresh
        if self._lines:
            self.console.print(Text("\n").join(self._lines))
            self._lines.clear()

    def __enter__(self) -> BarReporter:
        self.bar.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._draw(time.monotonic(), force=True)
        finally:
            self.bar.stop()


class JsonReporter(Reporter):
    """NDJSON events on ``out`` (stdout): start, progress (throttled), done, error."""

    def __init__(self, verb: str, *, out: TextIO | None = None) -> None:
        super().__init__(verb, quiet=True)
        self.out = out if out is not None else sys.stdout

    def emit(self, **event: Any) -> None:
        """Write one event as a JSON line and flush it."""
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()

    def track(self, path: str) -> Progress:
        """Return a callback emitting ``start`` once, then ``progress`` at most 10/s."""
        started = False
        next_at = 0.0

        def update(done: int, total: int) -> None:
            nonlocal started, next_at
            if not started:
                started = True
                next_at = time.monotonic() + _INTERVAL
                self.emit(event="start", path=path, size=total, offset=done)
                return
            now = time.monotonic()
            if now < next_at and done < total:
                return
            next_at = now + _INTERVAL
            self.emit(event="progress", path=path, bytes=done, size=total)

        return update

    def finished(self, path: str, result: TransferResult) -> None:
        """Emit the ``done`` event of ``path``."""
        self.emit(
            event="done",
            path=path,
            local=str(result.local),
            size=result.size,
            bytes_transferred=result.transferred,
            digest=result.checksum,
            seconds=round(result.seconds, 6),
        )

    def skipped(self, path: str, skip: Skipped) -> None:
        """Emit the ``skipped`` event of ``path``."""
        self.emit(event="skipped", path=path, local=str(skip.local), size=skip.size)

    def failed(self, path: str, exc: TcpftError) -> None:
        """Emit the ``error`` event of ``path`` (and the error line on stderr)."""
        self.emit(event="error", path=path, code=exc.exit_code, message=exc.message)
        self._say(error_line(exc))
