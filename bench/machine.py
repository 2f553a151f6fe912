"""The machine a run was measured on, for RESULTS.md."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from anu_watchd.intake import filesystem_type
from bench.systems import REPO


def _first(path: str, prefix: str) -> str:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip() if ":" in line else line.strip()
    except OSError:
        pass
    return "unknown"


def _os_name() -> str:
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _out(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=REPO)
    except OSError:
        return "unknown"
    return (
        (done.stdout or done.stderr).strip().splitlines()[0] if done.stdout or done.stderr else ""
    )


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _mount_source(path: Path) -> str:
    target = os.path.realpath(path)
    best, source = "", "unknown"
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            mount = left.split()[4]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best) and right:
                best, source = mount, right.split()[1]
    return source


def details(workdir: Path) -> dict[str, Any]:
    dirty = _out(["git", "status", "--porcelain", "--untracked-files=no", "anu_watchd"])
    mem_kib = int(_first("/proc/meminfo", "MemTotal").split()[0])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "os": _os_name(),
        "kernel": platform.release(),
        "cpu": _first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "workdir": str(workdir.parent),
        "filesystem": f"{filesystem_type(workdir)} on {_mount_source(workdir)}",
        "inotify_max_queued_events": _first("/proc/sys/fs/inotify/max_queued_events", ""),
        "anu_watchd": _out(["git", "rev-parse", "--short", "HEAD"]) + ("+dirty" if dirty else ""),
        "watchdog": _version("watchdog"),
        "matplotlib": _version("matplotlib"),
        "inotifywait": _out(["inotifywait", "--help"]),
        "bash": _out(["bash", "--version"]),
        "handler": _handler_name(),
        "loadavg_start": list(os.getloadavg()),
    }


def _pressure_totals() -> dict[str, int]:
    """Cumulative stall microseconds ("some") for cpu and io from /proc/pressure (PSI)."""
    out = {}
    for res in ("cpu", "io"):
        try:
            with open(f"/proc/pressure/{res}") as fh:
                out[res] = int(fh.readline().split("total=")[1])
        except (OSError, IndexError, ValueError):
            out[res] = 0
    out["steal"], out["cpu_total"] = _steal_ticks()
    out["t_us"] = time.monotonic_ns() // 1000
    return out


def _steal_ticks() -> tuple[int, int]:
    """(steal, all) clock ticks from /proc/stat: the hypervisor taking our CPUs shows here."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def pressure() -> dict[str, int]:
    return _pressure_totals()


def pressure_since(before: dict[str, int]) -> dict[str, float]:
    """Share of the interval in which some task (ours included) stalled on cpu / io (0..1)."""
    now = _pressure_totals()
    span = max(now["t_us"] - before["t_us"], 1)
    out = {res: round((now[res] - before[res]) / span, 3) for res in ("cpu", "io")}
    ticks = max(now["cpu_total"] - before["cpu_total"], 1)
    out["steal"] = round((now["steal"] - before["steal"]) / ticks, 3)
    return out


def _handler_name() -> str:
    from bench.systems import HANDLER  # compiling it is the systems module's business

    return str(HANDLER.relative_to(HANDLER.parents[2]))
