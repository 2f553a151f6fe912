"""Tests for the co-process protocol and the restart decision (pure functions)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anu_watchd.errors import PermanentWakeError, TransientWakeError
from anu_watchd.sinks.coproto import (
    Admit,
    Answer,
    Malformed,
    Restarts,
    admit,
    ended,
    parse_answer,
    request_line,
)

IK = "ik1-0123456789abcdef"


def parse(doc: object, op: str = "register") -> Answer:
    return parse_answer(json.dumps(doc).encode(), IK, op=op, program="h")


def test_a_request_is_one_line_with_the_envelope_as_an_object() -> None:
    """The request line parses back to op, key and the envelope object, and ends in one newline."""
    line = request_line("register", IK, b'{"task_id": "t-1",\n "status": "ok"}')
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "op": "register",
        "idempotency_key": IK,
        "envelope": {"task_id": "t-1", "status": "ok"},
    }


def test_a_schedule_id_answer_registers() -> None:
    """An answer naming the request's key and a schedule id gives that id, stripped."""
    assert parse({"idempotency_key": IK, "schedule_id": " S-1 "}).schedule_id == "S-1"
    assert parse({"idempotency_key": IK, "schedule_id": 7}).schedule_id == "7"


@pytest.mark.parametrize(
    ("transient", "kind"), [(True, TransientWakeError), (False, PermanentWakeError)]
)
def test_an_error_answer_is_typed_by_its_transient_flag(transient: bool, kind: type) -> None:
    """``transient`` true is a TransientWakeError, false a PermanentWakeError, quoting the error."""
    answer = parse({"idempotency_key": IK, "error": "busy", "transient": transient})
    assert type(answer.error) is kind and "busy" in str(answer.error)


@pytest.mark.parametrize("found", [None, "", "  ", True, [], "x" * 201])
def test_an_answer_without_a_usable_id_is_permanent(found: object) -> None:
    """A missing, empty, non-scalar or over-long schedule id is a permanent error, not cut."""
    answer = parse({"idempotency_key": IK, "schedule_id": found})
    assert isinstance(answer.error, PermanentWakeError)


def test_an_update_needs_no_schedule_id() -> None:
    """Any answer to an update without an error acknowledges it."""
    answer = parse({"idempotency_key": IK}, op="update")
    assert answer.error is None


@pytest.mark.parametrize(
    ("doc", "op"),
    [
        ({"schedule_id": "S-1", "updates": False}, "register"),
        ({"error": "busy", "transient": True, "updates": False}, "register"),
        ({"updates": False}, "update"),
    ],
)
def test_any_answer_may_decline_updates(doc: dict[str, object], op: str) -> None:
    """``"updates": false`` rides on any answer and changes nothing else it says."""
    declined = parse({"idempotency_key": IK, **doc}, op=op)
    rest = {k: v for k, v in doc.items() if k != "updates"}
    plain = parse({"idempotency_key": IK, **rest}, op=op)
    assert declined.updates is False and plain.updates is True
    assert (declined.schedule_id, type(declined.error)) == (plain.schedule_id, type(plain.error))


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1, 2]",
        b'{"schedule_id": "S-1"}',
        json.dumps({"idempotency_key": "ik1-other", "schedule_id": "S-1"}).encode(),
        json.dumps({"idempotency_key": IK, "error": "x"}).encode(),
        json.dumps({"idempotency_key": IK, "error": "x", "transient": "yes"}).encode(),
        json.dumps({"idempotency_key": IK, "schedule_id": "S-1", "updates": "no"}).encode(),
        b"[" * 100_000,
    ],
)
def test_a_line_that_breaks_the_protocol_is_malformed(line: bytes) -> None:
    """Not JSON, not an object, another key, a non-boolean transient or updates: Malformed."""
    with pytest.raises(Malformed):
        parse_answer(line, IK, op="register", program="h")


@given(st.binary(max_size=300))
def test_parsing_any_bytes_only_answers_or_raises_malformed(line: bytes) -> None:
    """Whatever a handler writes, parsing returns an Answer or raises Malformed, nothing else."""
    with contextlib.suppress(Malformed):
        parse_answer(line, IK, op="register", program="h")


RESTARTS = Restarts(initial_s=0.5, max_s=4.0, give_up=3)


def test_a_fresh_pool_starts_at_once() -> None:
    """Nothing has failed yet: a handler starts now."""
    assert admit(RESTARTS, 0.0)[0] is Admit.START


def test_a_handler_that_never_answered_makes_the_next_start_wait_doubling() -> None:
    """Each handler in a row that ended before any answer doubles the wait, up to the max."""
    s = ended(RESTARTS, answered=0, now=10.0, error="e")
    assert admit(s, 10.1)[0] is Admit.WAIT and admit(s, 10.5)[0] is Admit.START
    s = ended(s, answered=0, now=11.0, error="e")
    assert s.not_before == 12.0
    assert ended(s, answered=0, now=0, error="e").delay() == 2.0


def test_a_handler_that_answered_resets_the_count() -> None:
    """A handler that answered at least once before ending lets the next start at once."""
    s = ended(ended(RESTARTS, answered=0, now=0, error="e"), answered=5, now=1.0, error="e")
    assert s.failures == 0 and admit(s, 1.0)[0] is Admit.START


def test_past_give_up_requests_are_refused_with_one_probe_start_per_wait() -> None:
    """After give_up early deaths requests are refused; after the wait exactly one probe starts."""
    s = RESTARTS
    for t in range(3):
        s = ended(s, answered=0, now=float(t), error="died at once")
    assert admit(s, s.not_before - 0.01)[0] is Admit.REFUSE
    decision, probed = admit(s, s.not_before)
    assert decision is Admit.START
    assert admit(probed, s.not_before)[0] is Admit.REFUSE  # a second caller meanwhile
    assert probed.last_error == "died at once"


@given(
    st.dictionaries(st.text(max_size=20), st.text(max_size=40) | st.integers(), max_size=8),
    st.sampled_from([None, 1, "\r\n", "\r"]),
    st.text(max_size=30),
)
def test_a_request_line_always_carries_the_envelope_intact(
    envelope: dict[str, object], indent: int | str | None, key: str
) -> None:
    """Whatever the envelope's JSON layout or text, the request is one line holding it as is."""
    line = request_line("update", key, json.dumps(envelope, indent=indent).encode())
    assert line.count(b"\n") == 1 and line.endswith(b"\n") and b"\r" not in line
    assert json.loads(line) == {"op": "update", "idempotency_key": key, "envelope": envelope}
