"""The shipped envelope schema against envelope.check, in both directions.

Every well-typed combination of the five axes and the three optional fields
is tried (5,120 envelopes), then drawn shapes: the schema's if/then rules and
``check`` must accept exactly the same envelopes, and whatever the schema
refuses, ``check`` refuses naming the field at fault.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anu_watchd import envelope, schemas
from anu_watchd.envelope import DELIVERY_METHODS, DeliveryStatus, ReceiptStatus, RegistrationResult
from anu_watchd.model import FourTuple, Result, TaskStatus

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "envelope"
SCHEMA = schemas.load("envelope")
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
SHA = hashlib.sha256(b"result bytes").hexdigest()
KEY = FourTuple("task-7", SHA, "anu").idempotency_key
PROPERTY = settings(max_examples=300, deadline=None)
# The schema already names the nats sink's delivery_method; until that sink is in
# DELIVERY_METHODS, check's refusal of "nats" is the one expected difference.
NATS_REFUSED = "delivery_method 'nats' is not one of"
Env = dict[str, Any]


def built(**over: Any) -> Env:
    result = Result(
        task_id="task-7",
        status=TaskStatus.DONE,
        executor="dev6",
        collector="anu",
        finished_at="2026-05-23T09:13:58Z",
        summary="did the thing",
    )
    env = envelope.build(
        result,
        result_path="/spool/task-7.result.json",
        sha256=SHA,
        idempotency_key=KEY,
        delivery_method="http",
    )
    return {**env, **over}


def registered() -> Env:
    return envelope.registered(built(), schedule_id="S-1", registered_at="2026-05-23T09:14:07Z")


# Every envelope the daemon itself produces, one per transition.
TRANSITIONS: dict[str, Env] = {
    "build": built(),
    "registered": registered(),
    "received": envelope.received(registered()),
    "timed_out": envelope.timed_out(registered()),
    "register_failed": envelope.register_failed(built(), error="HTTP 404"),
    "not_activated": envelope.not_activated(built()),
}


def test_envelope_schema_is_a_valid_draft_2020_12_schema() -> None:
    """The shipped file is itself a valid draft 2020-12 schema."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_schema_names_exactly_the_envelope_keys() -> None:
    """The schema requires every key envelope.py writes and allows no other."""
    assert set(SCHEMA["required"]) == envelope.KEYS == set(SCHEMA["properties"])
    assert SCHEMA["additionalProperties"] is False


def test_delivery_methods_are_the_sinks_plus_nats() -> None:
    """The schema lists every sink's delivery_method (nats included, for its sink)."""
    assert set(SCHEMA["properties"]["delivery_method"]["enum"]) == {*DELIVERY_METHODS, "nats"}


@pytest.mark.parametrize("name", sorted(TRANSITIONS))
def test_every_envelope_the_daemon_builds_validates(name: str) -> None:
    """Each transition's envelope, as encoded, passes check and the schema."""
    env = json.loads(envelope.encode(TRANSITIONS[name]))
    assert envelope.check(env) == []
    VALIDATOR.validate(env)


@pytest.mark.parametrize("case", sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()))
def test_seed_fixtures_get_the_same_answer_from_both(case: str) -> None:
    """A seed fixture's expected envelope: schema-valid exactly when check accepts it."""
    doc = json.loads((FIXTURES / case / "expected.json").read_text())
    if "registration_result_status" not in doc:
        pytest.skip("this fixture's expected.json is an error, not an envelope")
    assert VALIDATOR.is_valid(doc) == (envelope.check(doc) == [])


def _combinations() -> list[Env]:
    optional = (None, "x")
    return [
        built(
            registration_result_status=str(r),
            callback_delivery_status=str(d),
            collector_receipt_status=str(c),
            registration_intent=intent,
            registration_attempted=attempted,
            attempted_callback_registration=legacy,
            cron_schedule_id=sid,
            registered_at_ts=at,
            error_message=error,
        )
        for r, d, c, intent, attempted, legacy, sid, at, error in itertools.product(
            RegistrationResult,
            DeliveryStatus,
            ReceiptStatus,
            (True, False),
            (True, False),
            (True, False),
            optional,
            optional,
            optional,
        )
    ]


def test_every_axis_combination_gets_the_same_answer_from_both() -> None:
    """For all 5,120 well-typed axis combinations, schema-valid exactly when check finds nothing."""
    combos = _combinations()
    disagree = [e for e in combos if VALIDATOR.is_valid(e) != (envelope.check(e) == [])]
    assert disagree == []
    # The daemon's own states are among the few consistent ones.
    assert 0 < sum(VALIDATOR.is_valid(e) for e in combos) < 20


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.text(max_size=6),
    st.sampled_from([*map(str, RegistrationResult), *map(str, DeliveryStatus), "nats", ""]),
    st.sampled_from(["task-7\n", "task-8", "x", SHA.upper(), SHA + "\n", SHA[:-1]]),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(0, 3), max_size=1),
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[Env, str]:
    """A daemon-built envelope with one field redrawn, removed, or one key added."""
    env = dict(draw(st.sampled_from(list(TRANSITIONS.values()))))
    field = draw(st.sampled_from([*envelope.KEY_ORDER, "extra"]))
    how = draw(st.sampled_from(["redraw", "redraw", "redraw", "remove"]))
    if field == "extra":
        env["extra"] = draw(junk)
    elif how == "remove":
        del env[field]
    else:
        env[field] = draw(junk)
    return env, field


@PROPERTY
@given(mutated())
def test_one_field_changed_gets_the_same_answer_and_check_names_it(case: tuple[Env, str]) -> None:
    """Schema-valid exactly when check finds nothing; a refusal names the changed field."""
    env, field = case
    problems = [p for p in envelope.check(env) if not p.startswith(NATS_REFUSED)]
    assert VALIDATOR.is_valid(env) == (problems == [])
    if problems:
        assert any(field in p for p in problems), problems


@pytest.mark.parametrize("field", ["summary", "executor", "error_message"])
def test_a_lone_surrogate_is_what_only_check_refuses(field: str) -> None:
    """An unpaired surrogate is schema-valid (JSON Schema sees code points) but check refuses it."""
    env = envelope.register_failed(built(), error="boom")
    env[field] = "bad \ud800 text"
    assert VALIDATOR.is_valid(env)
    assert envelope.check(env) == [f"{field} holds a lone surrogate (not encodable as UTF-8)"]
