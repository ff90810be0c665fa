"""What the operating system says about a process and the machine (Linux /proc).

Server CPU is user + system time of the whole process (every thread), read from
``/proc/PID/stat`` before and after the measured window; memory from
``/proc/PID/status``. Nothing here asks the server itself.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """One reading of a process."""

    cpu: float  #: seconds of user + system time, all threads
    rss_kib: int
    hwm_kib: int  #: peak RSS so far
    voluntary: int  #: context switches the process asked for (it waited)
    involuntary: int  #: context switches forced on it (it was preempted)
    threads: int


def sample(pid: int) -> Sample:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.split()[0] if value.split() else "0"
    return Sample(
        (int(fields[11]) + int(fields[12])) / TICK,
        int(status.get("VmRSS", 0)),
        int(status.get("VmHWM", 0)),
        int(status.get("voluntary_ctxt_switches", 0)),
        int(status.get("nonvoluntary_ctxt_switches", 0)),
        int(status.get("Threads", 0)),
    )


def context_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every thread of ``pid`` alive now.
    ``/proc/PID/status`` gives the main thread's only (``sample`` reads that one): for the
    threads backend, whose work is in its 2 threads per connection, sum ``task/*/status``."""
    voluntary = involuntary = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # the thread ended meanwhile
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
    return voluntary, involuntary


def thread_room() -> tuple[int, str]:
    """How many more threads this machine lets us start (the smaller of ``pid_max`` and
    ``threads-max``, less the tasks alive now and a margin of 1,000 for everyone else),
    and which limit that is, for the report."""
    limits = {}
    for name in ("pid_max", "threads-max"):
        try:
            limits[name] = int(Path(f"/proc/sys/kernel/{name}").read_text())
        except (OSError, ValueError):
            continue
    if not limits:
        return 1 << 30, "no limit read"
    name = min(limits, key=lambda k: limits[k])
    alive = sum(1 for _ in Path("/proc").glob("[0-9]*/task/[0-9]*"))
    return max(0, limits[name] - alive - 1000), f"{name} {limits[name]:,}"


def machine() -> dict[str, object]:
    """The machine's description, for the report."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in ("cryptography", "uvloop", "typer"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:  # not installed here (uvloop on Windows)
            versions[package] = None
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": __import__("sqlite3").sqlite_version,
        "versions": versions,
        "redis_server": _redis_version(),
    }


def _redis_version() -> str | None:
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.strip() or None
