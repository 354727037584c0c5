"""Small helpers shared by the benchmark driver and its child processes."""

from __future__ import annotations

import os
import resource
from pathlib import Path

#: The benchmark account (created fresh in a temp dir for every benchmark run).
USER = "bench"
PASSWORD = "bench-password-1"  # a throwaway account on 127.0.0.1

HOST = "127.0.0.1"
CHUNK = 1024 * 1024


def vmhwm_kib(pid: int | str = "self") -> int:
    """Peak resident set size (VmHWM) of a process, in KiB; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds() -> float:
    """User + system CPU seconds used by this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def write_port_file(path: Path, port: int) -> None:
    """Publish ``port`` atomically (the driver polls for the file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n", encoding="ascii")
    os.replace(tmp, path)
