"""Hostile and unlucky, part two: planted markers, in-place writers, swapped paths, retries."""

from __future__ import annotations

import json
import os
from pathlib import Path

from anu_watchd import markers
from anu_watchd.config import load_config
from anu_watchd.model import Verdict
from anu_watchd.runtime import open_pipeline
from anu_watchd.secret import load_key
from anu_watchd.spool import FileStamp
from tests.spool import Spool


def _planted_marker(path: Path, task_id: str) -> dict[str, object]:
    st = os.lstat(path)
    stamp = FileStamp.of(st)
    return {
        "task_id": task_id,
        "sha256": "0" * 64,
        "idempotency_key": "planted",
        "verdict": "WAKE_BUILT",
        "schedule_id": "planted",
        "attempts": 1,
        "ts": "2026-01-01T00:00:00Z",
        "error": None,
        "size": stamp.size,
        "mtime_ns": stamp.mtime_ns,
        "inode": stamp.inode,
    }


async def test_a_planted_done_marker_does_not_suppress_the_wake(tmp_path: Path) -> None:
    """A done marker written beside a result that was never woken, matching its size, mtime
    and inode, is no proof: the scan hashes the file and wakes it."""
    spool = Spool(tmp_path)
    path = spool.drop("task-1")
    done = spool.events / "task-1.pickup.done"
    done.write_bytes(markers.encode_json(_planted_marker(path, "task-1")))
    config = load_config(spool.config)
    async with open_pipeline(config, load_key(str(spool.key_file))) as pipeline:
        out = await pipeline.pickup(path, scan=True)
    assert out is not None and out.verdict is Verdict.WAKE_BUILT
    assert [e["state"] for e in spool.ledger_lines()] == ["CLAIMED", "DONE"]
    assert json.loads(done.read_text())["idempotency_key"] == out.idempotency_key


async def test_a_settled_result_is_still_skipped_unhashed_on_a_rescan(tmp_path: Path) -> None:
    """The shortcut still holds for a result the ledger settled: a second scan decides nothing."""
    spool = Spool(tmp_path)
    path = spool.drop("task-2")
    config = load_config(spool.config)
    async with open_pipeline(config, load_key(str(spool.key_file))) as pipeline:
        first = await pipeline.pickup(path, scan=True)
        again = await pipeline.pickup(path, scan=True)
    assert first is not None and first.verdict is Verdict.WAKE_BUILT
    assert again is None
