"""Reconcile: recovery at start-up, rescans, and retry requests; for the daemon and ``scan --once``.

Start-up recovery trusts only the ledger: it removes our stale temp files,
repairs the projections of the ledger lines after the watermark, and re-fires every CLAIMED entry
with the same key (``refire_paths``). A rescan (at start-up after the watch
is armed, after an inotify overflow, on the backstop timer, on enable or
reload, and in ``scan --once``) first consumes pending retry requests and
then runs every result in the events directory through the pipeline. Files
already settled for their current bytes are skipped by the pipeline without
hashing, so a scan of a large, finished spool costs a directory listing.

The daemon feeds the paths these return into its bounded queue; the
one-shot commands run them here with ``run_all``. Either way every rule
below has one home (docs/durability.md, "Start-up recovery").

A retry request is a file (``task-<id>.pickup.retry``) so that it works
while the daemon runs: only the ledger's single writer turns it into a RETRY
line, removes the failed marker and re-runs the result.
"""

from __future__ import annotations

import asyncio
import enum
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs
import structlog

from anu_watchd import fsio, markers, spool, watermark
from anu_watchd.fsio import durable
from anu_watchd.ledger import Ledger
from anu_watchd.model import LedgerEntry, LedgerState, Outcome, iso
from anu_watchd.pipeline import Pipeline, Settle
from anu_watchd.runtime import RUNS_IN_FLIGHT
from anu_watchd.spool import TaskFiles
from anu_watchd.stages import Stages

_log = structlog.get_logger("anu_watchd.reconcile")
STALE_TEMP_S = 60.0


# -- start-up recovery ------------------------------------------------------------


async def recover_markers(stages: Stages) -> Repair:
    """Start-up: remove our stale temp files and repair the projections after the watermark."""
    sp = stages.config.spool
    # We hold the instance lock, so the writer of a marker, envelope or watermark temp (and
    # of anything in the quarantine dir) is dead: those go at once, however young (a restart
    # after a crash comes within seconds). Other temps get a minute's grace: `emit`, `ack`
    # or `enable` may be writing one right now.
    def ours(name: str) -> bool:
        return spool.is_own_temp(name) or watermark.is_temp_of(sp.ledger, name)

    removed = await durable(
        fsio.remove_stale_temps, sp.events_dir, min_age_s=STALE_TEMP_S, dead_writer=ours
    )
    if sp.ledger.parent != sp.events_dir:  # the watermark lives beside the ledger
        removed += await durable(
            fsio.remove_stale_temps, sp.ledger.parent, min_age_s=STALE_TEMP_S, dead_writer=ours
        )
    if sp.quarantine_dir.is_dir():
        removed += await durable(fsio.remove_stale_temps, sp.quarantine_dir)
    if removed:
        _log.info("stale_temps_removed", count=len(removed))
    await _settle_orphan_retries(stages)
    return await _rebuild_markers(stages)


@attrs.frozen
class Repair:
    """What start-up repair did: the ledger offset it read from, lines read, files rewritten."""

    since: int
    lines: int
    rewritten: int


async def _rebuild_markers(stages: Stages) -> Repair:
    """Rewrite, from the ledger, every projection a crash or power cut could have spoilt.

    Only the terminal lines after the watermark can have one (docs/durability.md,
    "Projections"): for each task whose latest line is among them, a missing,
    empty, torn or foreign marker or envelope file gets its marker rewritten
    without a file stamp, so the next scan hashes the result and its PICKUP_SKIP
    rebuilds the envelope; a failed marker beside a DONE goes. Nothing is woken.
    """
    ledger = stages.ledger
    events_dir = stages.config.spool.events_dir
    since = await asyncio.to_thread(watermark.read, ledger.path)
    tail = await asyncio.to_thread(_tail_tasks, ledger, since)
    latest = [e for e in map(ledger.latest_for_task, tail.tasks) if e is not None]
    terminal = [e for e in latest if e.state in (LedgerState.DONE, LedgerState.FAILED)]
    writes, remove = await asyncio.to_thread(_spoilt, events_dir, terminal)
    if writes or remove:
        await stages.projections.write(writes, remove=remove)
    for path, _ in writes:
        _log.info("marker_rebuilt", marker=path.name)
    report = Repair(since, tail.lines, len(writes) + len(remove))
    _log.info("projections_checked", since=since, lines=tail.lines, rewritten=report.rewritten)
    return report


@attrs.frozen
class _Tail:
    tasks: list[str]
    lines: int


def _tail_tasks(ledger: Ledger, since: int) -> _Tail:
    """The tasks with a line after ``since``, in file order; blocking."""
    tasks: dict[str, None] = {}
    lines = 0
    for _, entry in ledger.lines_after(since):
        lines += 1
        tasks[entry.task_id] = None
    return _Tail(list(tasks), lines)


def _spoilt(
    events_dir: Path, entries: list[LedgerEntry]
) -> tuple[list[tuple[Path, bytes]], list[Path]]:
    """The markers to rewrite and the stale failed markers to remove; blocking."""
    writes: list[tuple[Path, bytes]] = []
    remove: list[Path] = []
    for entry in entries:
        files = TaskFiles(events_dir, entry.task_id)
        if entry.state is LedgerState.DONE and files.failed.exists():
            remove.append(files.failed)
        if markers.projections_hold(files, entry):
            continue
        # No file stamp: the next scan must hash the result (and rebuild its envelope).
        doc = markers.marker_doc(entry, attempts=entry.attempt, ts=entry.ts)
        writes.append((files.marker_for(entry.state), markers.encode_json(doc)))
    return writes, remove


def refire_paths(stages: Stages) -> list[Path]:
    """The results of every CLAIMED wake: re-run with the same key (at-least-once).

    Run them with ``scan=True``: an unfinished entry has no marker for the current
    file, so it runs; a superseded one (the result was rewritten since) is settled
    and skipped silently.
    """
    unfinished = stages.ledger.unfinished()
    if unfinished:
        _log.warning("refiring_in_flight", count=len(unfinished))
    events_dir = stages.config.spool.events_dir
    return [TaskFiles(events_dir, e.task_id).result for e in unfinished]


# -- retry requests -----------------------------------------------------------------


def request_retry(files: TaskFiles, ts: str) -> None:
    """Write the retry request (any process; the lock holder consumes it)."""
    fsio.atomic_write(files.retry, markers.encode_json({"task_id": files.task_id, "ts": ts}))


class RetryVerdict(enum.Enum):
    """What a retry request came to."""

    ACCEPTED = "accepted"  # RETRY recorded, failed marker removed: re-run the result
    NOT_FAILED = "not_failed"  # the task's latest line is not FAILED: nothing to retry
    NO_RESULT = "no_result"  # the result file is gone: the task stays FAILED, visibly


async def consume_retry(stages: Stages, task_id: str) -> RetryVerdict:
    """Ledger RETRY + failed marker removed + request removed, when the task can re-run.

    A task whose result file is gone is refused and stays FAILED with its marker: a
    RETRY line for it would be re-fired, and found vanished, at every start
    (docs/durability.md, "Retry of a task whose result is gone").
    """
    files = TaskFiles(stages.config.spool.events_dir, task_id)
    latest = stages.ledger.latest_for_task(task_id)
    verdict = _retry_verdict(latest, files)
    if latest is not None and verdict is RetryVerdict.ACCEPTED:
        await stages.ledger.record(
            attrs.evolve(latest, state=LedgerState.RETRY, ts=iso(stages.clock()))
        )
        await durable(fsio.remove_durably, files.failed)
        _log.info("retry_accepted", task_id=task_id, idempotency_key=latest.key)
    elif verdict is RetryVerdict.NO_RESULT:
        _log.warning("retry_refused", task_id=task_id, reason="result_missing")
    else:
        state = latest.state if latest is not None else None
        _log.warning(
            "retry_ignored", task_id=task_id, reason=f"latest state is {state}, not FAILED"
        )
    await durable(fsio.remove_durably, files.retry)
    return verdict


def _retry_verdict(latest: LedgerEntry | None, files: TaskFiles) -> RetryVerdict:
    if latest is None or latest.state is not LedgerState.FAILED:
        return RetryVerdict.NOT_FAILED
    if not os.path.lexists(files.result):
        return RetryVerdict.NO_RESULT
    return RetryVerdict.ACCEPTED


async def _settle_orphan_retries(stages: Stages) -> None:
    """Start-up: a RETRY whose result is gone goes back to FAILED (its marker is rebuilt next).

    Left RETRY it would be re-fired, and found vanished, at every start, and shown
    nowhere; FAILED is visible (``status``) and can be retried once the file is back.
    """
    events_dir = stages.config.spool.events_dir
    for entry in stages.ledger.unfinished():
        result = TaskFiles(events_dir, entry.task_id).result
        if entry.state is not LedgerState.RETRY or os.path.lexists(result):
            continue
        failed = attrs.evolve(entry, state=LedgerState.FAILED, ts=iso(stages.clock()))
        await stages.ledger.record(failed)
        _log.warning("retry_settled_failed", task_id=entry.task_id, reason="result_missing")


async def retry_paths(stages: Stages, task_ids: Iterable[str]) -> list[Path]:
    """Consume these retry requests while the driver is enabled; the results to re-run.

    Disabled, a request is left in place: the rescan that enabling triggers takes it.
    """
    sp = stages.config.spool
    paths: list[Path] = []
    for task_id in task_ids:
        if not spool.is_enabled(sp.enable_flag):
            break
        if await consume_retry(stages, task_id) is RetryVerdict.ACCEPTED:
            paths.append(TaskFiles(sp.events_dir, task_id).result)
    return paths


async def pending_retry_paths(stages: Stages) -> list[Path]:
    """Consume every pending retry request (``retry_paths`` over a listing)."""
    events_dir = stages.config.spool.events_dir
    return await retry_paths(stages, await asyncio.to_thread(spool.list_retry_requests, events_dir))


# -- rescans ------------------------------------------------------------------------


async def rescan_names(stages: Stages, reasons: list[str]) -> list[str]:
    """The result names a rescan runs (after its retry requests); none while disabled."""
    sp = stages.config.spool
    if not spool.is_enabled(sp.enable_flag):
        _log.debug("rescan_skipped_disabled", reasons=reasons)
        return []
    names = await asyncio.to_thread(spool.list_results, sp.events_dir, sp.result_glob)
    _log.info("rescan_started", reasons=reasons, listed=len(names))
    return names


async def run_all(
    pipeline: Pipeline,
    paths: Iterable[Path],
    *,
    concurrency: int,
    scan: bool,
    settle: Settle | None = None,
) -> list[Outcome]:
    """Run paths through the pipeline with at most ``concurrency`` in flight."""
    outcomes: list[Outcome] = []
    source: Iterator[Path] = iter(paths)

    async def worker() -> None:
        for path in source:  # a shared iterator: each path is taken by exactly one worker
            out = await pipeline.pickup(path, scan=scan, settle=settle)
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


# -- one-shot (scan --once) -----------------------------------------------------------


async def recover(pipeline: Pipeline) -> list[Outcome]:
    """One-shot recovery: markers, retry requests, then re-fire what was in flight (same key)."""
    stages = pipeline.stages
    await recover_markers(stages)
    # A consumed request's failed marker is gone: the reconcile pass that follows runs it.
    await pending_retry_paths(stages)
    paths = refire_paths(stages)
    return await run_all(pipeline, paths, concurrency=RUNS_IN_FLIGHT, scan=True)


async def reconcile(pipeline: Pipeline) -> list[Outcome]:
    """One pass over the events directory; settled files are skipped silently."""
    sp = pipeline.stages.config.spool
    names = await asyncio.to_thread(spool.list_results, sp.events_dir, sp.result_glob)
    paths = (sp.events_dir / n for n in names)
    young: dict[Path, float] = {}
    outcomes = await run_all(
        pipeline, paths, concurrency=RUNS_IN_FLIGHT, scan=True, settle=young.__setitem__
    )
    if young:
        # Files a worker may be writing in place: judged once more after their settle
        # time; one still changing then is left to the next scan (docs/operations.md).
        await asyncio.sleep(max(young.values()))
        left: dict[Path, float] = {}
        again = list(young)
        outcomes += await run_all(
            pipeline, again, concurrency=RUNS_IN_FLIGHT, scan=True, settle=left.__setitem__
        )
        if left:
            _log.warning("results_left_unsettled", count=len(left))
    _log.info("scan_finished", listed=len(names), ran=len(outcomes))
    return outcomes
