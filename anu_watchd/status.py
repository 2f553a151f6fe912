"""``anu-watchd status``: what the spool looks like, from files alone.

Reads the events directory, the quarantine directory and the evidence log;
never the ledger's writer side, so it works while the daemon runs.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any

from anu_watchd import fsio, markers
from anu_watchd.config import Config
from anu_watchd.model import Verdict
from anu_watchd.quarantine import list_quarantined
from anu_watchd.spool import (
    ACKED_SUFFIX,
    DONE_SUFFIX,
    FAILED_SUFFIX,
    RESULT_SUFFIX,
    FileStamp,
    TaskFiles,
    is_result_name,
)
from anu_watchd.terminal import shown

LAST_RUNS = 10


def _task_ids(names: set[str], suffix: str) -> set[str]:
    return {n[: -len(suffix)] for n in names if n.endswith(suffix)}


def _evidence(path: Path) -> tuple[dict[str, int], list[dict[str, Any]]]:
    counts: collections.Counter[str] = collections.Counter()
    last: collections.deque[dict[str, Any]] = collections.deque(maxlen=LAST_RUNS)
    try:
        with os.fdopen(fsio.open_state(path, os.O_RDONLY, op="read the evidence log"), "rb") as fh:
            for raw in fh:
                try:
                    line = json.loads(raw)
                except (ValueError, RecursionError):
                    continue  # a torn last evidence line is not worth failing status over
                if not isinstance(line, dict):
                    continue
                counts[str(line.get("verdict"))] += 1
                last.append(line)
    except FileNotFoundError:
        return {}, []
    return dict(counts), list(last)


def _pending(events_dir: Path, names: set[str], glob: str) -> int:
    """Results with no marker that settles their current file."""
    n = 0
    for name in names:
        if not is_result_name(name, glob):
            continue
        files = TaskFiles(events_dir, name[: -len(RESULT_SUFFIX)])
        try:
            stamp = FileStamp.of(files.result.lstat())
        except OSError:
            continue
        if not any(
            markers.stamp_matches(markers.read_json(p), stamp) for p in (files.done, files.failed)
        ):
            n += 1
    return n


def failed_now(events_dir: Path) -> int:
    """How many tasks are FIRE_FAILED now (a failed marker present), for STATUS=."""
    try:
        with os.scandir(events_dir) as it:
            return sum(1 for e in it if e.name.endswith(FAILED_SUFFIX))
    except OSError:
        return 0


def collect(config: Config) -> dict[str, Any]:
    """The document ``status --json`` prints."""
    spool = config.spool
    try:
        names = set(os.listdir(spool.events_dir))
    except FileNotFoundError:
        names = set()
    counts, last_runs = _evidence(spool.evidence_log)
    done = _task_ids(names, DONE_SUFFIX)
    return {
        "counts": {str(v): counts.get(str(v), 0) for v in Verdict},
        "pending": _pending(spool.events_dir, names, spool.result_glob),
        "failed": sorted(_task_ids(names, FAILED_SUFFIX)),
        "quarantined": len(list_quarantined(spool.quarantine_dir)),
        "unacked": sorted(done - _task_ids(names, ACKED_SUFFIX)),
        "last_runs": last_runs,
    }


def render(doc: dict[str, Any]) -> str:
    """Human form of ``collect``'s document; every name from the spool is ``shown`` escaped."""
    lines = [
        "verdicts: " + ", ".join(f"{k}={v}" for k, v in doc["counts"].items()),
        f"pending: {doc['pending']}",
        _listed("failed", doc["failed"]),
        f"quarantined: {doc['quarantined']}",
        _listed("unacked", doc["unacked"]),
        "last runs:",
    ]
    lines += [_run_line(r) for r in doc["last_runs"]]
    return "\n".join(lines)


def _listed(label: str, task_ids: list[str]) -> str:
    return f"{label}: {len(task_ids)} {' '.join(shown(t) for t in task_ids[:20])}".rstrip()


def _run_line(run: dict[str, Any]) -> str:
    fields = (run.get("ts"), run.get("task_id"), run.get("verdict"), run.get("reason") or "")
    return "  " + " ".join(shown(str(f)) for f in fields).rstrip()
