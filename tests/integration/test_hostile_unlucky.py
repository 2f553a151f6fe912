"""Hostile and unlucky, part two: planted markers, in-place writers, swapped paths, retries."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from anu_watchd import fsio, markers
from anu_watchd.config import load_config
from anu_watchd.model import Verdict
from anu_watchd.runtime import open_pipeline
from anu_watchd.secret import load_key
from anu_watchd.spool import FileStamp
from tests.spool import Spool, valid_doc


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


async def test_a_done_marker_copied_from_another_task_does_not_suppress_the_wake(
    tmp_path: Path,
) -> None:
    """A real, woken task's done marker copied beside another task's result and restamped
    for it names a terminal ledger line, but of another task: the result is woken."""
    spool = Spool(tmp_path)
    woken = spool.drop("task-8")
    path = spool.drop("task-9")
    config = load_config(spool.config)
    async with open_pipeline(config, load_key(str(spool.key_file))) as pipeline:
        await pipeline.pickup(woken, scan=True)
        copied = json.loads((spool.events / "task-8.pickup.done").read_text())
        stamp = _planted_marker(path, "task-9")
        copied.update(size=stamp["size"], mtime_ns=stamp["mtime_ns"], inode=stamp["inode"])
        (spool.events / "task-9.pickup.done").write_bytes(markers.encode_json(copied))
        out = await pipeline.pickup(path, scan=True)
    assert out is not None and out.verdict is Verdict.WAKE_BUILT


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


async def test_a_fifo_replaced_by_a_valid_file_before_the_quarantine_move_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO at the result path is judged NOT_REGULAR_FILE, but a worker renames a valid
    result over it just before the quarantine move: the move gives the valid file back,
    the pipeline reads it again and wakes it; nothing valid lands in quarantine."""
    spool = Spool(tmp_path)
    path = spool.result_path("task-3")
    os.mkfifo(path)
    valid = json.dumps(valid_doc("task-3")).encode()
    real, moves = fsio.atomic_move, []

    def replaced_first(src: Path, dst: Path) -> None:
        if not moves:
            tmp = src.with_name(".w-" + src.name)
            tmp.write_bytes(valid)
            os.rename(tmp, src)
        moves.append((src, dst))
        real(src, dst)

    monkeypatch.setattr(fsio, "atomic_move", replaced_first)
    config = load_config(spool.config)
    async with open_pipeline(config, load_key(str(spool.key_file))) as pipeline:
        out = await pipeline.pickup(path)
    assert out is not None and out.verdict is Verdict.WAKE_BUILT
    assert out.sha256 == hashlib.sha256(valid).hexdigest()
    assert spool.quarantined() == []
    assert path.read_bytes() == valid
