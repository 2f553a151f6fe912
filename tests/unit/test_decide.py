"""Tests for the pipeline's pure decisions: the dedupe table and the documents it builds."""

from __future__ import annotations

import pytest

from anu_watchd import decide
from anu_watchd.decide import Fire, NotActivated, RunFacts, Skip
from anu_watchd.model import LedgerEntry, LedgerState, Verdict


def entry(state: LedgerState, attempt: int = 1) -> LedgerEntry:
    return LedgerEntry("ik1-k", "task-7", "a" * 64, "anu", state, attempt, "ts")


@pytest.mark.parametrize(
    ("prior", "activated", "expected"),
    [
        (None, True, Fire(attempt=1, new_wake=True)),
        (None, False, NotActivated()),
        (entry(LedgerState.CLAIMED, 1), True, Fire(attempt=2, new_wake=False)),
        (entry(LedgerState.CLAIMED, 1), False, NotActivated()),
        (entry(LedgerState.RETRY, 3), True, Fire(attempt=4, new_wake=False)),
        (entry(LedgerState.RETRY, 3), False, NotActivated()),
        (entry(LedgerState.DONE), True, Skip(entry(LedgerState.DONE))),
        (entry(LedgerState.DONE), False, Skip(entry(LedgerState.DONE))),
        (entry(LedgerState.FAILED, 2), True, Skip(entry(LedgerState.FAILED, 2))),
        (entry(LedgerState.FAILED, 2), False, Skip(entry(LedgerState.FAILED, 2))),
    ],
)
def test_decide_table(
    prior: LedgerEntry | None, activated: bool, expected: decide.Decision
) -> None:
    """Each (prior ledger state, activated) pair maps to exactly one decision."""
    assert decide.decide(prior, activated=activated) == expected


@pytest.mark.parametrize(
    ("state", "reason"),
    [(LedgerState.DONE, "already WAKE_BUILT"), (LedgerState.FAILED, "already FIRE_FAILED")],
)
def test_skip_reason_names_the_settled_verdict(state: LedgerState, reason: str) -> None:
    """A skip's reason names the verdict the earlier run reached."""
    assert Skip(entry(state)).reason == reason


@pytest.mark.parametrize("verdict", list(Verdict))
def test_outcome_carries_the_run_facts_and_marks_only_a_built_wake(verdict: Verdict) -> None:
    """The outcome copies the run's facts; wake_built is true exactly for WAKE_BUILT."""
    facts = RunFacts("r1", "/e/task-7.result.json", "task-7", "a" * 64, "ik1-k")
    out = decide.outcome(facts, verdict, ts="t", duration_ms=1.5, reason="why", attempts=2)
    assert (out.run_id, out.path, out.task_id, out.sha256, out.idempotency_key) == (
        "r1",
        "/e/task-7.result.json",
        "task-7",
        "a" * 64,
        "ik1-k",
    )
    assert (out.verdict, out.ts, out.reason, out.attempts) == (verdict, "t", "why", 2)
    assert out.wake_built is (verdict is Verdict.WAKE_BUILT)


def test_escalation_document_has_the_same_fields_for_every_cause() -> None:
    """A failed wake and a receipt timeout escalate with one document shape."""
    a = decide.escalation(
        "task-7", "FIRE_FAILED", reason="r", error="e", attempts=3, idempotency_key="k", ts="t"
    )
    b = decide.escalation(
        "task-7",
        "RECEIPT_TIMED_OUT",
        reason="r",
        error=None,
        attempts=None,
        idempotency_key="k",
        ts="t",
    )
    assert (
        a.keys()
        == b.keys()
        == {"task_id", "verdict", "reason", "error", "attempts", "idempotency_key", "ts"}
    )
