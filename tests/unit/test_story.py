"""The pure side of `show TASK`: the next step decided from the facts, and the terminal form."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from anu_watchd.model import LedgerEntry, LedgerState
from anu_watchd.quarantine import QuarantineEntry
from anu_watchd.story import Facts, Next, ResultFile, assemble, decide_next, render


def _entry(state: LedgerState, sha: str = "a", ts: str = "2026-01-01T00:00:01Z") -> LedgerEntry:
    return LedgerEntry("ik1-k", "task-1", sha, "anu", state, 1, ts)


def _facts(**over: Any) -> Facts:
    base = Facts(
        task_id="task-1",
        result=ResultFile("/e/task-1.result.json", "a", 10),
        ledger=[],
        evidence=[],
        quarantined=[],
        markers={"done": None, "failed": None, "acked": None, "retry": None},
        envelope=None,
    )
    return attrs.evolve(base, **over)


MARK = {"ts": "2026-01-01T00:00:05Z"}


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({}, Next.PENDING),
        ({"evidence": [{"sha256": "a", "verdict": "FIRE_NOT_ACTIVATED"}]}, Next.NOT_ACTIVATED),
        ({"ledger": [_entry(LedgerState.CLAIMED)]}, Next.IN_FLIGHT),
        ({"ledger": [_entry(LedgerState.FAILED)]}, Next.FAILED),
        ({"ledger": [_entry(LedgerState.RETRY)]}, Next.RETRY_SCHEDULED),
        ({"ledger": [_entry(LedgerState.DONE)]}, Next.AWAITING_ACK),
        ({"ledger": [_entry(LedgerState.DONE, sha="old")]}, Next.PENDING),
        (
            {"ledger": [_entry(LedgerState.DONE)], "markers": {"acked": MARK}},
            Next.ACKED,
        ),
        (
            {"ledger": [_entry(LedgerState.FAILED)], "markers": {"retry": MARK}},
            Next.RETRY_SCHEDULED,
        ),
        (
            {"result": None, "quarantined": [QuarantineEntry("q1", "SCHEMA", "d", None, "t")]},
            Next.QUARANTINED,
        ),
        ({"result": None}, Next.UNKNOWN),
    ],
)
def test_next_step(over: dict[str, Any], expected: Next) -> None:
    """Each combination of ledger, markers, result and quarantine leads to one next step."""
    assert decide_next(_facts(**over))[0] is expected


def test_history_is_oldest_first_across_sources() -> None:
    """Ledger, evidence and marker events interleave by their timestamps."""
    facts = _facts(
        ledger=[
            _entry(LedgerState.CLAIMED, ts="2026-01-01T00:00:01Z"),
            _entry(LedgerState.DONE, ts="2026-01-01T00:00:03Z"),
        ],
        evidence=[{"ts": "2026-01-01T00:00:04Z", "verdict": "WAKE_BUILT", "sha256": "a"}],
        markers={"acked": MARK},
    )
    doc = assemble(facts)
    assert [e["what"] for e in doc["history"]] == ["CLAIMED", "DONE", "WAKE_BUILT", "acked marker"]


def test_render_escapes_control_characters() -> None:
    """An error text holding a terminal escape is printed escaped, never raw."""
    facts = _facts(
        ledger=[_entry(LedgerState.FAILED)],
        evidence=[{"ts": "t", "verdict": "FIRE_FAILED", "error": "bad\x1b[2J\nnews"}],
    )
    text = render(assemble(facts))
    assert "\x1b" not in text
    assert "bad\\x1b[2J\\nnews" in text
    assert text.splitlines()[-1].startswith("next: failed: ")
