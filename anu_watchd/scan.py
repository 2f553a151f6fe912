"""Reconcile: run every result in the events directory through the pipeline.

Used at start-up (after the watch is armed), after an inotify overflow, by
the backstop timer and by ``scan --once``. Files already settled for their
current bytes are skipped by the pipeline without hashing, so a scan of a
large, finished spool costs a directory listing.

Start-up recovery lives here too: it trusts only the ledger, rebuilds the
markers it projects, and re-fires every CLAIMED entry with the same key.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import structlog

from anu_watchd import fsio, markers
from anu_watchd.markers import (
    DONE_SUFFIX,
    ENVELOPE_SUFFIX,
    FAILED_SUFFIX,
    RETRY_SUFFIX,
    TaskFiles,
)
from anu_watchd.model import TASK_ID_RE, Outcome
from anu_watchd.pipeline import RUNS_IN_FLIGHT, Pipeline, _durable, is_enabled, is_result_name
from anu_watchd.retry import consume_retry

_log = structlog.get_logger("anu_watchd.scan")
STALE_TEMP_S = 60.0
_OWN_TEMP_RE = re.compile(
    re.escape(fsio.TMP_PREFIX)
    + TASK_ID_RE.pattern.strip("^$")
    + "(?:"
    + "|".join(re.escape(s) for s in (DONE_SUFFIX, FAILED_SUFFIX, ENVELOPE_SUFFIX))
    + r")\.[0-9a-f]{12}"
)


def list_results(events_dir: Path, glob: str) -> list[str]:
    """The names of the result files in the events directory, in name order.

    Names, not paths: a rescan after an overflow lists every result in the
    directory, and 100,000 ``Path`` objects take ~40 MiB where their names take ~8.
    """
    try:
        with os.scandir(events_dir) as it:
            return sorted(e.name for e in it if is_result_name(e.name, glob))
    except FileNotFoundError:
        return []


def list_retry_requests(events_dir: Path) -> list[str]:
    """Task ids with a pending ``.pickup.retry`` request."""
    try:
        names = os.listdir(events_dir)
    except FileNotFoundError:
        return []
    ids = (n[: -len(RETRY_SUFFIX)] for n in names if n.endswith(RETRY_SUFFIX))
    return sorted(t for t in ids if TASK_ID_RE.fullmatch(t))


async def run_all(
    pipeline: Pipeline, paths: Iterable[Path], *, concurrency: int, scan: bool
) -> list[Outcome]:
    """Run paths through the pipeline with at most ``concurrency`` in flight."""
    outcomes: list[Outcome] = []
    source: Iterator[Path] = iter(paths)

    async def worker() -> None:
        for path in source:  # a shared iterator: each path is taken by exactly one worker
            out = await pipeline.pickup(path, scan=scan)
            if out is not None:
                outcomes.append(out)

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(max(1, concurrency)):
                tg.create_task(worker())
    except ExceptionGroup as group:
        # The first failure cancelled the other workers; callers (and the CLI's exit
        # codes: DurabilityError -> 70) expect that error itself, not a group.
        raise group.exceptions[0] from group
    return outcomes


async def reconcile(pipeline: Pipeline) -> list[Outcome]:
    """One pass over the events directory; settled files are skipped silently."""
    spool = pipeline.stages.config.spool
    names = await asyncio.to_thread(list_results, spool.events_dir, spool.result_glob)
    paths = (spool.events_dir / n for n in names)
    outcomes = await run_all(pipeline, paths, concurrency=RUNS_IN_FLIGHT, scan=True)
    _log.info("scan_finished", listed=len(names), ran=len(outcomes))
    return outcomes


def is_own_temp(name: str) -> bool:
    """A temp of a marker or envelope: only the instance-lock holder writes those."""
    return _OWN_TEMP_RE.fullmatch(name) is not None


async def recover_markers(pipeline: Pipeline) -> None:
    """Start-up: remove our stale temp files and rebuild the markers the ledger projects."""
    spool = pipeline.stages.config.spool
    # We hold the instance lock, so the writer of a marker or envelope temp (and of anything
    # in the quarantine dir) is dead: those go at once, however young (a restart after a
    # crash comes within seconds). Other temps get a minute's grace: `emit`, `ack` or
    # `enable` may be writing one right now.
    removed = await _durable(
        fsio.remove_stale_temps, spool.events_dir, min_age_s=STALE_TEMP_S, dead_writer=is_own_temp
    )
    if spool.quarantine_dir.is_dir():
        removed += await _durable(fsio.remove_stale_temps, spool.quarantine_dir)
    if removed:
        _log.info("stale_temps_removed", count=len(removed))
    await _rebuild_markers(pipeline)


async def recover(pipeline: Pipeline) -> list[Outcome]:
    """One-shot recovery: markers, retry requests, then re-fire what was in flight (same key)."""
    await recover_markers(pipeline)
    spool = pipeline.stages.config.spool
    if is_enabled(spool.enable_flag):
        for task_id in await asyncio.to_thread(list_retry_requests, spool.events_dir):
            await consume_retry(pipeline.stages, task_id)
    unfinished = pipeline.stages.ledger.unfinished()
    paths = [TaskFiles(spool.events_dir, e.task_id).result for e in unfinished]
    if paths:
        _log.warning("refiring_in_flight", count=len(paths))
    # scan=True: an unfinished entry has no marker for the current file, so it runs; a
    # superseded one (the result was rewritten since) is settled and skipped silently.
    return await run_all(pipeline, paths, concurrency=RUNS_IN_FLIGHT, scan=True)


async def _rebuild_markers(pipeline: Pipeline) -> None:
    """Write the markers the ledger says should exist but are absent.

    One directory listing, not one open per ledger entry: a marker that exists
    but is unreadable fails the scan's stamp check and is repaired there.
    """
    ledger = pipeline.stages.ledger
    events_dir = pipeline.stages.config.spool.events_dir
    present = set(await asyncio.to_thread(_names, events_dir))
    for task_id, state in ledger.terminal_tasks():
        path = TaskFiles(events_dir, task_id).marker_for(state)
        if path.name in present:
            continue
        entry = ledger.latest_for_task(task_id)
        if entry is None:
            continue
        # No file stamp: the result may have changed since, so the next scan must hash it.
        fresh = markers.marker_doc(entry, attempts=entry.attempt, ts=entry.ts)
        await _durable(markers.write_json, path, fresh)
        _log.info("marker_rebuilt", task_id=task_id, marker=path.name)


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []
