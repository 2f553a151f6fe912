"""The daemon's batch path (``Pipeline.start_many``): many queued files started at once.

Real files in a temp spool, the real pipeline and log sink. The ledger's fsyncs are
counted at ``fsio.fsync`` to see the batch's claims share one flush.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from anu_watchd import fsio
from anu_watchd.config import load_config
from anu_watchd.model import Outcome, QuarantineReason, Verdict
from anu_watchd.pipeline import Begun, Pipeline
from anu_watchd.runtime import open_pipeline
from anu_watchd.secret import load_key
from tests.spool import Spool

WAIT_S = 10.0


def _states(spool: Spool) -> dict[str, list[str]]:
    by_task: dict[str, list[str]] = {}
    for line in spool.ledger_lines():
        by_task.setdefault(line["task_id"], []).append(line["state"])
    return by_task


async def _finish(begun: list[Begun]) -> list[Outcome | None]:
    return list(await asyncio.wait_for(asyncio.gather(*(b.finish() for b in begun)), WAIT_S))


def _opened(spool: Spool) -> Any:
    return open_pipeline(load_config(spool.config), load_key(str(spool.key_file)))


async def _started(pipeline: Pipeline, paths: list[Path]) -> list[Begun]:
    return await pipeline.start_many([(p, None) for p in paths])


async def test_a_batch_claims_every_wake_with_one_ledger_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six results started at once: six CLAIMED lines, durable when start_many returns, made
    so by one fsync; then each run goes on by itself to one wake and one evidence line."""
    spool = Spool(tmp_path)
    first = spool.drop("task-0")
    paths = [spool.drop(f"task-{i}") for i in range(1, 7)]
    fsyncs: list[int] = []

    def counted(fd: int) -> None:
        fsyncs.append(fd)
        os.fsync(fd)

    async with _opened(spool) as pipeline:
        await pipeline.pickup(first)  # the ledger is open: what follows is the batch's alone
        monkeypatch.setattr(fsio, "fsync", counted)
        begun = await _started(pipeline, paths)
        assert len(fsyncs) == 1, "the six claims share one ledger flush"
        claimed = _states(spool)
        assert all(claimed[f"task-{i}"] == ["CLAIMED"] for i in range(1, 7))
        outs = await _finish(begun)
    assert [o.verdict if o else None for o in outs] == [Verdict.WAKE_BUILT] * 6
    assert all(_states(spool)[f"task-{i}"] == ["CLAIMED", "DONE"] for i in range(1, 7))
    evidence = [e["task_id"] for e in spool.evidence()]
    assert sorted(evidence) == [f"task-{i}" for i in range(7)]


async def test_a_busy_task_in_a_batch_waits_alone_and_the_others_go_on(tmp_path: Path) -> None:
    """A file whose task lock is held (an ack, or its earlier run still at the sink) is not
    judged by the batch: it waits for its lock as a run of its own, the others do not."""
    spool = Spool(tmp_path)
    paths = [spool.drop(t) for t in ("task-a", "task-b", "task-c")]
    async with _opened(spool) as pipeline:
        locks = pipeline.stages.task_locks
        assert locks.try_take("task-b")
        begun = await _started(pipeline, paths)
        assert set(_states(spool)) == {"task-a", "task-c"}
        tasks = [asyncio.ensure_future(b.finish()) for b in begun]
        await asyncio.wait_for(asyncio.gather(tasks[0], tasks[2]), WAIT_S)
        assert not tasks[1].done() and "task-b" not in _states(spool)
        locks.release("task-b")
        out = await asyncio.wait_for(tasks[1], WAIT_S)
    assert out is not None and out.verdict is Verdict.WAKE_BUILT
    assert _states(spool)["task-b"] == ["CLAIMED", "DONE"]


async def test_a_batch_judges_every_kind_of_file_as_a_single_run_would(tmp_path: Path) -> None:
    """One batch of a good result, bad JSON, the key in a name, a file gone before its turn
    and one already settled: one wake, two quarantines with their reasons, two silent Nones."""
    spool = Spool(tmp_path)
    settled = spool.drop("task-settled")
    good = spool.drop("task-good")
    bad = spool.drop("task-bad", raw=b"{not json")
    keyed = spool.drop(f"task-{spool.key}")
    gone = spool.drop("task-gone")
    gone.unlink()
    async with _opened(spool) as pipeline:
        assert (await pipeline.pickup(settled)) is not None
        outs = await _finish(await _started(pipeline, [good, bad, keyed, gone, settled]))
    verdicts = [o.verdict if o else None for o in outs]
    assert verdicts == [Verdict.WAKE_BUILT, Verdict.QUARANTINE, Verdict.QUARANTINE, None, None]
    reasons = sorted(q["reason"] for q in spool.quarantined())
    assert reasons == sorted(
        str(r) for r in (QuarantineReason.INVALID_JSON, QuarantineReason.KEY_LITERAL)
    )
    assert _states(spool)["task-settled"] == ["CLAIMED", "DONE"], "not woken again"
    assert spool.key not in "".join(os.listdir(spool.events / "quarantine"))


async def test_a_run_never_finished_lets_go_of_its_task(tmp_path: Path) -> None:
    """abandon(), as the daemon calls when a run's task was cancelled before it began,
    releases the task lock and the stages' users: nothing waits for ever at a reload."""
    spool = Spool(tmp_path)
    path = spool.drop("task-1")
    async with _opened(spool) as pipeline:
        stages = pipeline.stages
        begun = await _started(pipeline, [path])
        assert not stages.task_locks.try_take("task-1")
        begun[0].abandon()
        begun[0].abandon()  # once is enough; twice does no harm
        assert stages.task_locks.try_take("task-1")
        stages.task_locks.release("task-1")
        await asyncio.wait_for(stages.users.idle(), WAIT_S)


async def test_a_disabled_driver_starts_nothing(tmp_path: Path) -> None:
    """With the enable flag off a batch reads nothing and claims nothing, as pickup does."""
    spool = Spool(tmp_path, enabled=False)
    paths = [spool.drop(f"task-{i}") for i in range(3)]
    async with _opened(spool) as pipeline:
        assert await _started(pipeline, paths) == []
    assert spool.ledger_lines() == [] and spool.evidence() == []
