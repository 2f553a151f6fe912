"""The co-process protocol and restart decisions, as pure functions (docs/operations.md).

One request per line on the handler's stdin, one answer per line on its
stdout, in order::

    -> {"op": "register", "idempotency_key": "ik1-...", "envelope": {...}}
    <- {"idempotency_key": "ik1-...", "schedule_id": "S-1"}
    <- {"idempotency_key": "ik1-...", "error": "collector busy", "transient": true}

Any answer may add ``"updates": false``: this handler has no use for the final
envelope, so the sink stops sending ``update`` requests (a second round trip a
wake; a per-wake command gets none unless ``update_argv`` is set). An answer
that is not one JSON object, names another idempotency key, has an ``error``
without a boolean ``transient`` or an ``updates`` that is not a boolean
breaks the framing: the handler is dropped and the request failed as
transient. An answer without a usable schedule id is permanent, as for a
per-wake command.

Restarts: a handler that ended before answering anything makes the next
start wait ``initial_s``, doubling up to ``max_s``; after ``give_up``
such handlers in a row, requests fail at once as permanent (FIRE_FAILED)
and at most one start is tried per wait, so a handler that dies at once
every time is never a restart loop. A handler that answered at least once
resets the count.
"""

from __future__ import annotations

import enum
import json
from typing import Any

import attrs

from anu_watchd.errors import PermanentWakeError, TransientWakeError, WakeError
from anu_watchd.sinks.base import MAX_ID_CHARS

QUOTE_CHARS = 500


class Malformed(ValueError):
    """The answer line breaks the protocol: drop the handler, the request is transient."""


def request_line(op: str, idempotency_key: str, envelope: bytes) -> bytes:
    """The request as one line; the envelope (JSON text) is embedded as it is, as an object."""
    if b"\n" in envelope or b"\r" in envelope:
        # Raw CR or LF in JSON text can only be whitespace between tokens; either would end
        # the line for a reader with universal newlines (Python's text-mode stdin).
        envelope = envelope.replace(b"\r", b" ").replace(b"\n", b" ")
    head = json.dumps({"op": op, "idempotency_key": idempotency_key})[:-1]
    return head.encode() + b', "envelope": ' + envelope + b"}\n"


@attrs.frozen
class Answer:
    schedule_id: str = ""
    error: WakeError | None = None
    updates: bool = True  # False: the handler declined update requests


def parse_answer(line: bytes, idempotency_key: str, *, op: str, program: str) -> Answer:
    """The handler's answer to the ``op`` request for ``idempotency_key``; raises Malformed.

    An update needs no schedule id: any answer without an error acknowledges it.
    """
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: a hostile nesting depth
        raise Malformed("its answer is not JSON") from None
    if not isinstance(doc, dict):
        raise Malformed("its answer is not a JSON object")
    if doc.get("idempotency_key") != idempotency_key:
        raise Malformed("its answer names another idempotency key")
    updates = doc.get("updates", True)
    if not isinstance(updates, bool):
        raise Malformed('its answer has an "updates" that is not a boolean')
    if "error" in doc:
        answer = Answer(error=_error(doc, program))
    elif op == "update":
        answer = Answer()
    else:
        answer = _schedule_id(doc.get("schedule_id"), program)
    return answer if updates else attrs.evolve(answer, updates=False)


def _error(doc: dict[str, Any], program: str) -> WakeError:
    transient = doc.get("transient")
    if not isinstance(transient, bool):
        raise Malformed('its error answer has no boolean "transient"')
    kind = TransientWakeError if transient else PermanentWakeError
    # Whole: the sink redacts the key before it cuts the text to QUOTE_CHARS (coprocess.py).
    return kind(f"{program} answered: {doc['error']}")


def _schedule_id(found: object, program: str) -> Answer:
    usable = isinstance(found, str | int) and not isinstance(found, bool)
    candidate = str(found).strip() if usable else ""
    if not candidate:
        return Answer(error=PermanentWakeError(f"{program} answered without a usable schedule_id"))
    if len(candidate) > MAX_ID_CHARS:
        # Refused rather than cut: a truncated id names some other schedule.
        why = f"{program} answered a schedule id over {MAX_ID_CHARS} chars"
        return Answer(error=PermanentWakeError(why))
    return Answer(schedule_id=candidate)


# -- restarts ---------------------------------------------------------------------------


class Admit(enum.Enum):
    START = "start"  # start a handler now
    WAIT = "wait"  # wait for the backoff, then ask again
    REFUSE = "refuse"  # fail the request at once: handlers die at once every time


@attrs.frozen
class Restarts:
    """How recent handlers ended, and so whether, and when, the next may start."""

    initial_s: float
    max_s: float
    give_up: int = 3
    failures: int = 0  # handlers in a row that ended before answering anything
    not_before: float = 0.0
    last_error: str = ""

    def delay(self) -> float:
        return min(self.max_s, self.initial_s * float(2 ** max(0, self.failures - 1)))


def ended(state: Restarts, *, answered: int, now: float, error: str) -> Restarts:
    """A handler ended with ``error`` after ``answered`` answers."""
    if answered:
        return attrs.evolve(state, failures=0, not_before=now, last_error=error)
    failed = attrs.evolve(state, failures=state.failures + 1, last_error=error)
    return attrs.evolve(failed, not_before=now + failed.delay())


def admit(state: Restarts, now: float) -> tuple[Admit, Restarts]:
    """May a handler start now? Past ``give_up``, one probe start per wait, else refuse."""
    if state.failures == 0 or (state.failures < state.give_up and now >= state.not_before):
        return Admit.START, state
    if state.failures < state.give_up:
        return Admit.WAIT, state
    if now >= state.not_before:
        return Admit.START, attrs.evolve(state, not_before=now + state.delay())
    return Admit.REFUSE, state
