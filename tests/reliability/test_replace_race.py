"""Bad luck at scale: results replaced, renamed away and back, deleted and re-created while
the running daemon reads them (issue 18).

Each hypothesis example drives a few fresh task ids through a random sequence of a
worker's legal moves, without waiting for the daemon: an atomic replace with new bytes,
a rename storm of the same bytes, a delete, a rename away to a temp name and back. Every
byte written is a valid result. Then, for each task, the last version left at its path
must be woken, and in the end every version was woken at most once, every final one
exactly once, and nothing landed in quarantine.

Knob: ANU_RACE_EXAMPLES (default 100; thousands of file operations).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anu_watchd.model import FourTuple
from tests.daemonproc import DaemonProc, wait_for
from tests.reliability.harness import finish, start
from tests.spool import Spool, valid_doc

EXAMPLES = int(os.environ.get("ANU_RACE_EXAMPLES", "100"))
TASKS = 3
STORM = 40
MOVES = st.sampled_from(["replace", "same", "storm", "delete", "stash", "unstash"])
pytestmark = pytest.mark.slow


class Race:
    """One running daemon and the results a worker keeps changing under it."""

    def __init__(self, root: Path) -> None:
        self.spool = Spool(root)
        self.d: DaemonProc = start(self.spool)
        self.d.wait_notify("READY=1")
        self.batch = 0
        self.version = 0
        self.ops = 0
        self.finals: dict[str, str] = {}  # every final version's key -> its task id

    def key(self, task_id: str, data: bytes) -> str:
        return FourTuple(task_id, hashlib.sha256(data).hexdigest(), "anu").idempotency_key

    def put(self, path: Path, data: bytes) -> None:
        """A worker's atomic write: a temp name (never an input), fsync, rename over."""
        tmp = path.with_name(f".tmp-race-{secrets.token_hex(4)}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
        self.ops += 1

    def fresh(self, task_id: str) -> bytes:
        self.version += 1
        return json.dumps(valid_doc(task_id, summary=f"version {self.version}")).encode()

    def run(self, moves: list[tuple[int, str]]) -> None:
        self.batch += 1
        tids = [f"task-r{self.batch}-{i}" for i in range(TASKS)]
        now: dict[str, bytes | None] = dict.fromkeys(tids)
        stashed: dict[str, bytes | None] = dict.fromkeys(tids)
        for i, move in moves:
            self.apply(tids[i], move, now, stashed)
        for tid in tids:
            self.spool.result_path(tid).with_name(f".tmp-stash-{tid}").unlink(missing_ok=True)
        for tid, data in now.items():
            if data is not None:
                self.finals[self.key(tid, data)] = tid
        want = [self.key(t, d) for t, d in now.items() if d is not None]
        wait_for(lambda: set(want) <= self.done_keys(), 30, f"batch {self.batch} woken")

    def apply(
        self, tid: str, move: str, now: dict[str, bytes | None], stashed: dict[str, bytes | None]
    ) -> None:
        path = self.spool.result_path(tid)
        stash = path.with_name(f".tmp-stash-{tid}")
        current = now[tid]
        if move == "replace" or (move in ("same", "storm") and current is None):
            now[tid] = self.fresh(tid)
            self.put(path, now[tid] or b"")
        elif move == "same" and current is not None:
            self.put(path, current)
        elif move == "storm" and current is not None:
            for _ in range(STORM):
                self.put(path, current)
        elif move == "delete" and current is not None:
            path.unlink()
            now[tid] = None
            self.ops += 1
        elif move == "stash" and current is not None and stashed[tid] is None:
            os.rename(path, stash)
            stashed[tid], now[tid] = current, None
            self.ops += 1
        elif move == "unstash" and stashed[tid] is not None:
            os.rename(stash, path)  # back at its name, the inode it had, or over a newer one
            now[tid], stashed[tid] = stashed[tid], None
            self.ops += 1

    def ledger(self) -> list[dict[str, Any]]:
        """The ledger's complete lines (the daemon may be appending one)."""
        path = self.spool.events / "callback_4tuple_index.jsonl"
        text = path.read_text() if path.exists() else ""
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def done_keys(self) -> set[str]:
        return {e["key"] for e in self.ledger() if e["state"] == "DONE"}


def test_replace_rename_delete_recreate_races_wake_each_final_version_exactly_once(
    tmp_path: Path,
) -> None:
    """Thousands of replaces, renames, deletes and re-creates under the running daemon:
    every final valid version is woken exactly once, no version twice, none quarantined."""
    race = Race(tmp_path)
    try:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(st.tuples(st.integers(0, TASKS - 1), MOVES), min_size=5, max_size=60))
        def batch(moves: list[tuple[int, str]]) -> None:
            race.run(moves)

        batch()
    finally:
        code = finish(race.d)
    assert code == 0, race.d.log_text()[-3000:]
    ledger = race.ledger()
    done = collections.Counter(e["key"] for e in ledger if e["state"] == "DONE")
    claimed = collections.Counter(e["key"] for e in ledger if e["state"] == "CLAIMED")
    assert max(done.values()) == 1 and max(claimed.values()) == 1
    assert all(done[k] == 1 for k in race.finals)
    woken = collections.Counter(
        e["idempotency_key"] for e in race.spool.evidence() if e["verdict"] == "WAKE_BUILT"
    )
    assert max(woken.values()) == 1
    assert race.spool.quarantined() == []
    print(f"{race.ops} file operations in {race.batch} batches")
    assert race.ops >= 1000, f"only {race.ops} file operations"
    assert not (race.spool.events / "quarantine").exists() or not any(
        (race.spool.events / "quarantine").iterdir()
    )
