"""Tests for the shared values."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given
from hypothesis import strategies as st

from anu_watchd.model import FourTuple, LedgerEntry, LedgerState
from anu_watchd.spool import task_id_from_name


def test_idempotency_key_is_stable_and_distinguishes_each_field() -> None:
    """The same 4-tuple always gives the same key; changing any field changes it."""
    base = FourTuple("task-7", "a" * 64, "anu")
    assert base.idempotency_key == FourTuple("task-7", "a" * 64, "anu").idempotency_key
    others = [
        FourTuple("task-8", "a" * 64, "anu"),
        FourTuple("task-7", "b" * 64, "anu"),
        FourTuple("task-7", "a" * 64, "other"),
        FourTuple("task-7", "a" * 64, "anu", "x"),
    ]
    assert len({base.idempotency_key, *(o.idempotency_key for o in others)}) == 5


def test_idempotency_key_is_pinned() -> None:
    """The key of a known 4-tuple, as every host and every earlier release computed it."""
    four = FourTuple("task-7", "a" * 64, "anu")
    assert four.idempotency_key == "ik1-" + _stdlib_hash(four)
    assert four.idempotency_key == "ik1-fe512630b7fa3f60eda3129499dd8e688ba66444"


@given(st.text(), st.text(), st.text(), st.text())
def test_idempotency_key_is_the_stdlib_canonical_json_hash_for_any_text(
    task_id: str, sha256: str, collector: str, kind: str
) -> None:
    """Non-ASCII, controls, quotes and lone surrogates included: the bytes hashed are
    json.dumps(..., separators=(",", ":")) with its ASCII escapes, as they always were."""
    four = FourTuple(task_id, sha256, collector, kind)
    assert four.idempotency_key == "ik1-" + _stdlib_hash(four)


def _stdlib_hash(t: FourTuple) -> str:
    canon = json.dumps([t.task_id, t.sha256, t.collector, t.kind], separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:40]


def test_task_id_from_name_accepts_only_valid_result_names() -> None:
    """Only `task-<id>.result.json` with an id matching the pattern yields a task id."""
    assert task_id_from_name("task-7.result.json") == "task-7"
    assert task_id_from_name("task-a.b_c-d.result.json") == "task-a.b_c-d"
    for bad in (
        "task-.result.json",
        "task-7.pickup.done",
        "task-\n.result.json",
        "task-" + "x" * 129 + ".result.json",
        "task-_x.result.json",
        "job-1.result.json",
    ):
        assert task_id_from_name(bad) is None


def test_ledger_entry_serialises_every_spec_field() -> None:
    """A ledger line carries exactly the fields docs/protocol.md lists."""
    e = LedgerEntry(
        key="k",
        task_id="task-7",
        sha256="s",
        collector="anu",
        state=LedgerState.CLAIMED,
        attempt=1,
        ts="t",
    )
    assert set(e.to_json()) == {
        "v",
        "key",
        "task_id",
        "sha256",
        "collector",
        "kind",
        "state",
        "attempt",
        "schedule_id",
        "ts",
    }
    assert e.to_json()["state"] == "CLAIMED" and not LedgerState.CLAIMED.terminal
