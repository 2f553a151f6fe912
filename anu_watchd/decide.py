"""The pipeline's decisions, pure: what to do with a valid result, and the documents it writes.

``decide`` looks only at the ledger's latest entry for the result's
idempotency key and at ``wake.activated``::

    prior entry          activated   decision
    DONE or FAILED       any         Skip      repair the projections; PICKUP_SKIP
    none/CLAIMED/RETRY   false       NotActivated                     FIRE_NOT_ACTIVATED
    none                 true        Fire(1, new_wake=True)   a stale ack is cleared first
    CLAIMED or RETRY     true        Fire(prior.attempt + 1)  same key, next attempt

The builders below turn what a run learnt into the evidence ``Outcome`` and
the escalation document. No clock, filesystem or logger in here: callers
pass ``ts`` in (docs/design.md, "Module map").
"""

from __future__ import annotations

from typing import Any

import attrs

from anu_watchd.model import LedgerEntry, LedgerState, Outcome, Verdict


@attrs.frozen
class Skip:
    """The wake was already decided (delivered or failed): repair projections, record a skip."""

    prior: LedgerEntry

    @property
    def reason(self) -> str:
        was = Verdict.WAKE_BUILT if self.prior.state is LedgerState.DONE else Verdict.FIRE_FAILED
        return f"already {was}"


@attrs.frozen
class NotActivated:
    """``wake.activated`` is false: log the envelope that would have been sent, send nothing."""

    reason: str = "wake.activated is false"


@attrs.frozen
class Fire:
    """Claim and call the sink; ``new_wake`` means no earlier attempt of this key exists."""

    attempt: int
    new_wake: bool


Decision = Skip | NotActivated | Fire


def decide(prior: LedgerEntry | None, *, activated: bool) -> Decision:
    """The dedupe decision for one valid result (see the table in this module's docstring)."""
    if prior is not None and prior.state.terminal:
        return Skip(prior)
    if not activated:
        return NotActivated()
    if prior is None:
        return Fire(attempt=1, new_wake=True)
    return Fire(attempt=prior.attempt + 1, new_wake=False)


@attrs.frozen
class RunFacts:
    """What a run knows about its input when it ends; the fixed part of its ``Outcome``."""

    run_id: str
    path: str
    task_id: str | None = None
    sha256: str | None = None
    idempotency_key: str | None = None
    host_id: str | None = None  # a fleet host's id (the nats sink); None otherwise


def outcome(
    facts: RunFacts,
    verdict: Verdict,
    *,
    ts: str,
    duration_ms: float,
    reason: str | None = None,
    schedule_id: str | None = None,
    attempts: int = 0,
    error: str | None = None,
) -> Outcome:
    """The evidence of one run; ``wake_built`` is true exactly for ``WAKE_BUILT``."""
    return Outcome(
        run_id=facts.run_id,
        path=facts.path,
        task_id=facts.task_id,
        verdict=verdict,
        ts=ts,
        sha256=facts.sha256,
        reason=reason,
        wake_built=verdict is Verdict.WAKE_BUILT,
        schedule_id=schedule_id,
        attempts=attempts,
        duration_ms=duration_ms,
        error=error,
        idempotency_key=facts.idempotency_key,
        host_id=facts.host_id,
    )


def escalation(
    task_id: str,
    verdict: str,
    *,
    reason: str,
    error: str | None,
    attempts: object,
    idempotency_key: object,
    ts: str,
) -> dict[str, Any]:
    """The JSON an escalation command reads on stdin (the same fields for every cause)."""
    return {
        "task_id": task_id,
        "verdict": verdict,
        "reason": reason,
        "error": error,
        "attempts": attempts,
        "idempotency_key": idempotency_key,
        "ts": ts,
    }
