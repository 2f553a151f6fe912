"""Tests for the callback envelope: transitions, the consistency check, fitting to 3900 bytes."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from anu_watchd import envelope
from anu_watchd.envelope import (
    MAX_ENVELOPE_BYTES,
    TRUNCATION_MARKER,
    DeliveryStatus,
    ReceiptStatus,
    RegistrationResult,
)
from anu_watchd.errors import EnvelopeError
from anu_watchd.model import TASK_ID_RE, FourTuple, Result, TaskStatus

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "envelope"
SHA = hashlib.sha256(b"result bytes").hexdigest()
KEY = FourTuple("task-7", SHA, "anu").idempotency_key
R = RegistrationResult
D = DeliveryStatus
C = ReceiptStatus
Env = dict[str, Any]


def _result(**over: Any) -> Result:
    fields: dict[str, Any] = {
        "task_id": "task-7",
        "status": TaskStatus.DONE,
        "executor": "dev6",
        "collector": "anu",
        "finished_at": "2026-05-23T09:13:58Z",
        "summary": "did the thing",
    }
    return Result(**(fields | over))


def _built(
    result: Result | None = None, *, path: str = "/spool/task-7.result.json"
) -> dict[str, Any]:
    return envelope.build(
        result or _result(),
        result_path=path,
        sha256=SHA,
        idempotency_key=KEY,
        delivery_method="exec",
    )


def _registered(sid: str = "8A9EB65E") -> dict[str, Any]:
    return envelope.registered(_built(), schedule_id=sid, registered_at="2026-05-23T09:14:07Z")


def _sendfile_only() -> dict[str, Any]:
    return _built() | {
        "registration_result_status": "SENDFILE_ONLY",
        "callback_delivery_status": "NOT_APPLICABLE",
    }


STATES: dict[str, Callable[[], Env]] = {
    "built": _built,
    "registered": _registered,
    "register_failed": lambda: envelope.register_failed(_built(), error="exit status 2"),
    "not_activated": lambda: envelope.not_activated(_built()),
    "received": lambda: envelope.received(_registered()),
    "timed_out": lambda: envelope.timed_out(_registered()),
    "received_after_timeout": lambda: envelope.received(envelope.timed_out(_registered())),
    "sendfile_only": _sendfile_only,
}


# -- transitions -------------------------------------------------------------------------------


def test_build_is_the_pre_registration_envelope() -> None:
    """build() records only what is known before registering: intent, nothing attempted, PENDING."""
    env = _built()
    assert set(env) == envelope.KEYS and env["schema"] == envelope.SCHEMA
    assert (env["registration_intent"], env["registration_attempted"]) == (True, False)
    assert env["attempted_callback_registration"] is False
    assert (
        env["registration_result_status"],
        env["callback_delivery_status"],
        env["collector_receipt_status"],
    ) == ("NOT_REGISTERED", "PENDING", "NOT_APPLICABLE")
    assert env["cron_schedule_id"] is None and env["registered_at_ts"] is None
    assert env["error_message"] is None and env["status"] == "DONE"


@pytest.mark.parametrize("state", sorted(STATES))
def test_every_transition_output_passes_check(state: str) -> None:
    """Each transition (and the literal SENDFILE_ONLY shape) yields a consistent envelope."""
    assert envelope.check(STATES[state]()) == []


def test_registered_records_the_real_outcome() -> None:
    """registered() sets REGISTERED, schedule id, time, attempted, DELIVERED and UNCONFIRMED."""
    env = _registered("8A9EB65E")
    assert env["registration_result_status"] == "REGISTERED"
    assert env["cron_schedule_id"] == "8A9EB65E"
    assert env["registered_at_ts"] == "2026-05-23T09:14:07Z"
    assert env["attempted_callback_registration"] is env["registration_attempted"] is True
    assert (env["callback_delivery_status"], env["collector_receipt_status"]) == (
        "DELIVERED",
        "UNCONFIRMED",
    )


@pytest.mark.parametrize(("sid", "at"), [("", "2026-05-23T09:14:07Z"), ("8A9EB65E", "")])
def test_registered_refuses_without_a_schedule_id_or_time(sid: str, at: str) -> None:
    """REGISTERED is only written once a real schedule id and its time exist."""
    with pytest.raises(EnvelopeError):
        envelope.registered(_built(), schedule_id=sid, registered_at=at)


def test_register_failed_keeps_the_error_and_never_leaves_it_empty() -> None:
    """register_failed() carries the error; an empty error still gets a message."""
    env = envelope.register_failed(_built(), error="HTTP 503")
    assert env["error_message"] == "HTTP 503"
    assert (env["registration_result_status"], env["callback_delivery_status"]) == (
        "REGISTER_FAILED",
        "UNDELIVERED",
    )
    assert envelope.check(envelope.register_failed(_built(), error="")) == []


def test_not_activated_is_skipped_with_its_reason() -> None:
    """not_activated() is SKIPPED_WITH_EXPLICIT_REASON, 'wake not activated', nothing attempted."""
    env = envelope.not_activated(_built())
    assert env["registration_result_status"] == "SKIPPED_WITH_EXPLICIT_REASON"
    assert env["error_message"] == "wake not activated"
    assert env["registration_attempted"] is False
    assert env["callback_delivery_status"] == env["collector_receipt_status"] == "NOT_APPLICABLE"


@pytest.mark.parametrize("state", ["registered", "register_failed", "not_activated", "received"])
@pytest.mark.parametrize("transition", ["registered", "register_failed", "not_activated"])
def test_settling_transitions_refuse_a_settled_envelope(state: str, transition: str) -> None:
    """Only a pre-registration envelope can be registered, failed or skipped."""
    calls: dict[str, Callable[[Env], Env]] = {
        "registered": lambda e: envelope.registered(e, schedule_id="x", registered_at="t"),
        "register_failed": lambda e: envelope.register_failed(e, error="boom"),
        "not_activated": envelope.not_activated,
    }
    with pytest.raises(EnvelopeError):
        calls[transition](STATES[state]())


@pytest.mark.parametrize("state", ["built", "register_failed", "not_activated", "sendfile_only"])
def test_receipt_transitions_need_a_delivered_wake(state: str) -> None:
    """received() and timed_out() refuse an envelope that was never DELIVERED."""
    with pytest.raises(EnvelopeError):
        envelope.received(STATES[state]())
    with pytest.raises(EnvelopeError):
        envelope.timed_out(STATES[state]())


@pytest.mark.parametrize("state", ["received", "timed_out"])
def test_timed_out_only_from_unconfirmed(state: str) -> None:
    """A receipt times out once, and never after the collector acked."""
    with pytest.raises(EnvelopeError):
        envelope.timed_out(STATES[state]())


def test_received_is_idempotent_and_accepts_a_late_ack() -> None:
    """A second ack, or an ack after TIMED_OUT, leaves the receipt RECEIVED."""
    assert envelope.received(STATES["received"]())["collector_receipt_status"] == "RECEIVED"
    assert STATES["received_after_timeout"]()["collector_receipt_status"] == "RECEIVED"


def test_transitions_never_mutate_their_input() -> None:
    """Every transition returns a new dict and leaves its argument as it was."""
    env = _built()
    before = dict(env)
    envelope.registered(env, schedule_id="s", registered_at="t")
    envelope.register_failed(env, error="e")
    envelope.not_activated(env)
    assert env == before


def test_build_shortens_the_summary_and_replaces_lone_surrogates() -> None:
    """The summary is cut to SUMMARY_MAX_CHARS, marked; lone surrogates become U+FFFD."""
    env = _built(_result(summary="x" * 1500))
    assert env["summary"] == "x" * envelope.SUMMARY_MAX_CHARS + TRUNCATION_MARKER
    env = _built(_result(summary="a\ud800b"), path="/spool/\udcff/task-7.result.json")
    assert env["summary"] == "a\ufffdb" and "\ufffd" in env["result_path"]
    assert envelope.check(env) == []


# -- check: contradictions ---------------------------------------------------------------------

# A table reads better dense.
# fmt: off
CONTRADICTIONS = [
    # The six contradiction rules of docs/protocol.md.
    ("not_registered_with_schedule_id", "built", {"cron_schedule_id": "8A9EB65E"},
     "only REGISTERED has a schedule id"),
    ("registered_without_schedule_id", "registered", {"cron_schedule_id": None},
     "REGISTERED without a cron_schedule_id"),
    ("not_attempted_but_registered", "registered",
     {"registration_attempted": False, "attempted_callback_registration": False},
     "registration_attempted is false but registration_result_status is REGISTERED"),
    ("not_attempted_but_register_failed", "register_failed",
     {"registration_attempted": False, "attempted_callback_registration": False},
     "registration_attempted is false but registration_result_status is REGISTER_FAILED"),
    ("sendfile_only_with_attempted_callback_registration", "sendfile_only",
     {"attempted_callback_registration": True},
     "SENDFILE_ONLY but attempted_callback_registration"),
    ("delivered_unless_registered", "register_failed", {"callback_delivery_status": "DELIVERED"},
     "DELIVERED contradicts registration_result_status REGISTER_FAILED"),
    ("received_unless_delivered", "register_failed", {"collector_receipt_status": "RECEIVED"},
     "RECEIVED contradicts callback_delivery_status UNDELIVERED"),
    # The rest of the module docstring's list.
    ("schedule_id_on_register_failed", "register_failed", {"cron_schedule_id": "X1"},
     "only REGISTERED has a schedule id"),
    ("registered_at_without_registered", "built", {"registered_at_ts": "2026-05-23T09:14:07Z"},
     "registered_at_ts is set"),
    ("registered_without_registered_at", "registered", {"registered_at_ts": None},
     "REGISTERED without a registered_at_ts"),
    ("attempted_but_not_registered", "built",
     {"registration_attempted": True, "attempted_callback_registration": True},
     "an attempt ends REGISTERED or REGISTER_FAILED"),
    ("legacy_flag_disagrees", "registered", {"attempted_callback_registration": False},
     "attempted_callback_registration (false) contradicts registration_attempted (true)"),
    ("no_intent_but_attempted", "registered", {"registration_intent": False},
     "registration_intent is false but a registration was attempted"),
    ("no_intent_without_exemption", "built", {"registration_intent": False},
     "an exemption is SKIPPED_WITH_EXPLICIT_REASON"),
    ("registered_not_delivered", "registered", {"callback_delivery_status": "NOT_APPLICABLE"},
     "NOT_APPLICABLE contradicts registration_result_status REGISTERED"),
    ("undelivered_unless_register_failed", "built", {"callback_delivery_status": "UNDELIVERED"},
     "UNDELIVERED contradicts registration_result_status NOT_REGISTERED"),
    ("pending_after_attempt", "register_failed", {"callback_delivery_status": "PENDING"},
     "PENDING contradicts registration_result_status REGISTER_FAILED"),
    ("pending_when_skipped", "not_activated", {"callback_delivery_status": "PENDING"},
     "PENDING contradicts registration_result_status SKIPPED_WITH_EXPLICIT_REASON"),
    ("timed_out_unless_delivered", "built", {"collector_receipt_status": "TIMED_OUT"},
     "TIMED_OUT contradicts callback_delivery_status PENDING"),
    ("unconfirmed_unless_delivered", "not_activated", {"collector_receipt_status": "UNCONFIRMED"},
     "UNCONFIRMED contradicts callback_delivery_status NOT_APPLICABLE"),
    ("delivered_receipt_not_applicable", "registered",
     {"collector_receipt_status": "NOT_APPLICABLE"},
     "NOT_APPLICABLE contradicts callback_delivery_status DELIVERED"),
    ("register_failed_without_error", "register_failed", {"error_message": None},
     "REGISTER_FAILED without an error_message"),
    ("skipped_without_reason", "not_activated", {"error_message": None},
     "SKIPPED_WITH_EXPLICIT_REASON without the reason"),
    ("registered_with_error", "registered", {"error_message": "boom"},
     "REGISTERED but error_message is set"),
    # Shape.
    ("unknown_result_status", "built", {"registration_result_status": "MAYBE"},
     "registration_result_status 'MAYBE' is not one of"),
    ("unknown_delivery_status", "built", {"callback_delivery_status": "SENT"},
     "callback_delivery_status 'SENT' is not one of"),
    ("unknown_receipt_status", "built", {"collector_receipt_status": "SEEN"},
     "collector_receipt_status 'SEEN' is not one of"),
    ("unknown_task_status", "built", {"status": "OK"}, "status 'OK' is not one of"),
    ("unknown_delivery_method", "built", {"delivery_method": "anu_cron_callback"},
     "delivery_method 'anu_cron_callback' is not one of"),
    ("wrong_schema", "built", {"schema": "anu.callback-envelope/v0"}, "schema"),
    ("flag_not_bool", "built", {"registration_intent": 1},
     "registration_intent must be true or false"),
    ("text_not_string", "built", {"summary": None}, "summary must be a string"),
    ("empty_schedule_id", "registered", {"cron_schedule_id": ""},
     "cron_schedule_id must be null or a non-empty string"),
    ("bad_sha256", "built", {"result_sha256": "abc"}, "result_sha256 is not a 64-character"),
    ("bad_task_id", "built", {"task_id": "job-7"}, "task_id is not a valid task id"),
    ("lone_surrogate", "built", {"summary": "a\udc80"}, "summary holds a lone surrogate"),
    ("unknown_key", "built", {"registration_status": "REGISTERED"},
     "unknown key 'registration_status'"),
]
# fmt: on


@pytest.mark.parametrize(
    ("base", "changes", "fragment"),
    [c[1:] for c in CONTRADICTIONS],
    ids=[c[0] for c in CONTRADICTIONS],
)
def test_check_names_each_contradiction(base: str, changes: dict[str, Any], fragment: str) -> None:
    """A contradictory envelope is rejected with a sentence naming the contradiction."""
    env = STATES[base]() | changes
    problems = envelope.check(env)
    assert any(fragment in p for p in problems), problems
    with pytest.raises(EnvelopeError, match="inconsistent envelope"):
        envelope.encode(env)


def test_check_reports_missing_keys_and_non_objects() -> None:
    """A missing key, or a top level that is not an object, is named."""
    env = _built()
    del env["collector_receipt_status"]
    assert envelope.check(env) == ["missing key 'collector_receipt_status'"]
    assert envelope.check([]) == ["an envelope is a JSON object, got list"]


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(envelope.KEYS)), value=_JSON_VALUES)
def test_check_reports_any_json_value_at_any_key_and_never_raises(key: str, value: Any) -> None:
    """A planted envelope file can hold anything JSON can: check() names a problem (or
    accepts it), never raises; a list or object at a status field is unhashable."""
    env = _registered() | {key: value}
    problems = envelope.check(env)
    assert isinstance(problems, list)
    if key.endswith("_status") and not isinstance(value, str):
        assert any(key in p for p in problems)


_STRINGS = st.sampled_from(["", "x", "\ud800", "é\udfff", "task-7", SHA, "REGISTERED", "log"])


@settings(max_examples=600, deadline=None)
@given(
    base=st.sampled_from(["built", "registered", "sendfile_only"]),
    changes=st.dictionaries(
        st.sampled_from(sorted(envelope.KEYS)) | st.text(max_size=3),
        _JSON_VALUES | _STRINGS | st.sampled_from([*R, *D, *C, *TaskStatus]),
        max_size=3,
    ),
    drop=st.lists(st.sampled_from(sorted(envelope.KEYS)), max_size=2),
)
@example(base="built", changes={"summary": "a\ud800"}, drop=[])
@example(base="registered", changes={"cron_schedule_id": "\udfff"}, drop=[])
@example(base="registered", changes={"cron_schedule_id": ""}, drop=[])
@example(base="built", changes={"result_sha256": "A" * 64}, drop=[])
@example(base="built", changes={"task_id": "../x"}, drop=[])
def test_the_one_pass_shape_check_agrees_with_the_named_problems(
    base: str, changes: dict[str, Any], drop: list[str]
) -> None:
    """check()'s fast path accepts exactly the envelopes whose shape has no named problem."""
    env = {"built": _built, "registered": _registered, "sendfile_only": _sendfile_only}[base]()
    env |= changes
    for key in drop:
        env.pop(key, None)
    assert envelope._well_formed(env) == (envelope._shape_problems(env) == [])


def test_decode_refuses_a_nesting_bomb_with_a_typed_error() -> None:
    """Brackets nested past the interpreter's recursion limit are an EnvelopeError."""
    with pytest.raises(EnvelopeError, match="not UTF-8 JSON"):
        envelope.decode(b"[" * 20_000)


def _allowed(
    intent: bool, tried: bool, legacy: bool, res: R, dlv: D, rcp: C, sid: bool, at: bool, err: bool
) -> bool:
    """The documented state table, written independently of the rules in envelope.py."""
    quiet = not tried and not legacy and not sid and not at
    if res is R.REGISTERED:
        return (
            intent
            and tried
            and legacy
            and sid
            and at
            and not err
            and dlv is D.DELIVERED
            and rcp in (C.UNCONFIRMED, C.RECEIVED, C.TIMED_OUT)
        )
    if res is R.REGISTER_FAILED:
        return (
            intent
            and tried
            and legacy
            and not sid
            and not at
            and err
            and (dlv, rcp) == (D.UNDELIVERED, C.NOT_APPLICABLE)
        )
    if res is R.NOT_REGISTERED:
        return intent and quiet and dlv in (D.PENDING, D.NOT_APPLICABLE) and rcp is C.NOT_APPLICABLE
    if res is R.SENDFILE_ONLY:
        return intent and quiet and (dlv, rcp) == (D.NOT_APPLICABLE, C.NOT_APPLICABLE)
    return quiet and err and (dlv, rcp) == (D.NOT_APPLICABLE, C.NOT_APPLICABLE)


def test_check_accepts_exactly_the_documented_states() -> None:
    """Over every combination of the axes, check() passes precisely the state table's rows."""
    bools = (False, True)
    for combo in itertools.product(bools, bools, bools, R, D, C, bools, bools, bools):
        intent, tried, legacy, res, dlv, rcp, sid, at, err = combo
        env = _built() | {
            "registration_intent": intent,
            "registration_attempted": tried,
            "attempted_callback_registration": legacy,
            "registration_result_status": str(res),
            "callback_delivery_status": str(dlv),
            "collector_receipt_status": str(rcp),
            "cron_schedule_id": "S1" if sid else None,
            "registered_at_ts": "T" if at else None,
            "error_message": "why" if err else None,
        }
        assert (envelope.check(env) == []) is _allowed(*combo), combo


# -- encode / decode ---------------------------------------------------------------------------


def test_encode_is_compact_utf8_json_in_key_order() -> None:
    """encode() writes compact JSON, non-ASCII as UTF-8, keys in KEY_ORDER."""
    env = _built(_result(summary="한글 😀"))
    body = envelope.encode(env)
    assert b", " not in body and "한글 😀".encode() in body
    assert list(json.loads(body)) == list(envelope.KEY_ORDER)


def test_encode_truncates_the_summary_first_without_splitting_characters() -> None:
    """An oversize summary of 4-byte characters is cut on a code point, marked, to fit exactly."""
    env = _built(_result(summary="😀" * 2000))
    body = envelope.encode(env)
    out = json.loads(body.decode("utf-8"))
    assert len(body) <= MAX_ENVELOPE_BYTES and len(body) > MAX_ENVELOPE_BYTES - 4
    assert out["summary"].endswith(TRUNCATION_MARKER)
    assert set(out["summary"].removesuffix(TRUNCATION_MARKER)) == {"😀"}
    assert out["result_path"] == env["result_path"]


def test_encode_then_truncates_error_message_then_result_path_keeping_its_tail() -> None:
    """When the summary is not enough, error_message goes next, then result_path keeps its tail."""
    path = "/" + "d" * 3500 + "/task-7.result.json"
    failed = envelope.register_failed(
        _built(_result(summary="s" * 900), path=path), error="e" * 3000
    )
    out = json.loads(envelope.encode(failed))
    assert out["summary"] == TRUNCATION_MARKER
    assert out["error_message"] == TRUNCATION_MARKER
    assert out["result_path"].startswith(TRUNCATION_MARKER)
    assert out["result_path"].endswith("/task-7.result.json")
    assert envelope.check(out) == []


def test_encode_keeps_a_short_field_rather_than_growing_it() -> None:
    """A field shorter than the marker is left alone when cutting it cannot help."""
    failed = envelope.register_failed(_built(path="/" + "p" * 5000), error="e")
    out = json.loads(envelope.encode(failed))
    assert out["error_message"] == "e" and out["result_path"].startswith(TRUNCATION_MARKER)


def test_encode_raises_when_the_untruncatable_fields_do_not_fit() -> None:
    """An envelope whose ids alone exceed the limit is a clear EnvelopeError, not a cut id."""
    env = _registered(sid="S" * MAX_ENVELOPE_BYTES)
    with pytest.raises(EnvelopeError, match=r"task-7 is \d+ bytes .* limit is 3900 bytes"):
        envelope.encode(env)


def test_decode_round_trips_and_rejects_bad_bytes() -> None:
    """decode() returns what encode() wrote and refuses non-UTF-8, non-JSON or inconsistent data."""
    env = _registered()
    assert envelope.decode(envelope.encode(env)) == env
    for bad in (b"\xff\xfe", b"{", json.dumps(env | {"cron_schedule_id": None}).encode()):
        with pytest.raises(EnvelopeError):
            envelope.decode(bad)


# -- fixtures (seed 002's ten scenarios) -------------------------------------------------------

_OPS: dict[str, Callable[[Env, dict[str, Any]], Env]] = {
    "registered": lambda env, s: envelope.registered(
        env, schedule_id=s["schedule_id"], registered_at=s["registered_at"]
    ),
    "register_failed": lambda env, s: envelope.register_failed(env, error=s["error"]),
    "not_activated": lambda env, s: envelope.not_activated(env),
    "received": lambda env, s: envelope.received(env),
    "timed_out": lambda env, s: envelope.timed_out(env),
}


def _replay(spec: dict[str, Any]) -> dict[str, Any]:
    """The final envelope of a fixture: a literal, or a built result run through its transitions."""
    if "literal" in spec:
        return dict(spec["literal"])
    res = spec["result"]
    env = envelope.build(Result(**(res | {"status": TaskStatus(res["status"])})), **spec["build"])
    for step in spec["transitions"]:
        env = _OPS[step["op"]](env, step)
        assert env | step.get("expect", {}) == env, (step["op"], step["expect"])
        assert envelope.check(env) == [], step["op"]
    return env


@pytest.mark.parametrize("scenario", sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()))
def test_fixture_scenario_yields_its_expected_envelope(scenario: str) -> None:
    """Each seed-002 scenario replays to its expected envelope, which passes check() and fits."""
    spec = json.loads((FIXTURES / scenario / "input.json").read_text(encoding="utf-8"))
    expected = json.loads((FIXTURES / scenario / "expected.json").read_text(encoding="utf-8"))
    body = envelope.encode(_replay(spec))
    assert len(body) <= MAX_ENVELOPE_BYTES
    assert json.loads(body) == expected
    assert envelope.check(expected) == []
    assert (FIXTURES / scenario / "PROVENANCE.md").is_file()


def test_fixtures_cover_the_ten_seed_scenarios() -> None:
    """The fixture set is exactly seed 002's five new and five updated scenarios."""
    assert {p.name for p in FIXTURES.iterdir() if p.is_dir()} == {
        "registered_schedule_id_present",
        "sendfile_only_not_registered",
        "attempted_but_register_failed",
        "registered_but_not_yet_received",
        "received_by_anu_collector",
        "registered_normal",
        "not_registered_envelope_only",
        "sendfile_only_no_cron",
        "register_failed_cli_error",
        "skipped_explicit_reason_dryrun",
    }


# -- properties --------------------------------------------------------------------------------

_WIDE = st.sampled_from(
    ["😀", "👩", "\u200d", "한", "\u0301", '"', "\\", "\n", "\x00", "\u2028", "a", "\ud83d"]
)


def _huge(alphabet: st.SearchStrategy[str], most: int) -> st.SearchStrategy[str]:
    """Long repetitive text: hypothesis rarely draws long strings on its own."""
    unit = st.text(alphabet, min_size=1, max_size=8)
    return st.builds(lambda u, n: (u * n)[:most], unit, st.integers(most // 8, most))


_SUMMARY = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=2000),
    st.text(_WIDE, max_size=2000),
    _huge(_WIDE, 2000),
)
_ERROR = st.text(_WIDE, max_size=200) | _huge(_WIDE, 6000)
_PATH = st.text(max_size=200) | _huge(st.characters(codec="utf-8"), 4000)
_IDENT = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,63}\Z")

results = st.builds(
    Result,
    task_id=st.from_regex(TASK_ID_RE, fullmatch=True),
    status=st.sampled_from(TaskStatus),
    executor=_IDENT,
    collector=_IDENT,
    finished_at=st.just("2026-05-23T09:13:58Z"),
    summary=_SUMMARY,
)
transitions = st.sampled_from(
    ["built", "registered", "register_failed", "not_activated", "received", "timed_out"]
)


def _advance(env: dict[str, Any], state: str, *, sid: str, error: str) -> dict[str, Any]:
    """``env`` (just built) taken to ``state`` by the daemon's own transitions."""
    if state == "register_failed":
        return envelope.register_failed(env, error=error)
    if state == "not_activated":
        return envelope.not_activated(env)
    if state == "built":
        return env
    env = envelope.registered(env, schedule_id=sid, registered_at="2026-05-23T09:14:07Z")
    then = {"received": envelope.received, "timed_out": envelope.timed_out}
    return then[state](env) if state in then else env


@settings(max_examples=150, deadline=None)
@given(
    result=results,
    path=_PATH,
    error=_ERROR,
    sid=st.text(min_size=1, max_size=128),
    state=transitions,
)
def test_any_valid_result_encodes_to_a_consistent_envelope_within_the_limit(
    result: Result,
    path: str,
    error: str,
    sid: str,
    state: str,
) -> None:
    """Every transition of any valid result encodes to <= 3900 bytes of UTF-8 JSON that checks."""
    env = _advance(_built(result, path="/spool/" + path), state, sid=sid, error=error)
    body = envelope.encode(env)
    out = json.loads(body.decode("utf-8"))
    assert len(body) <= MAX_ENVELOPE_BYTES
    assert envelope.check(out) == []
    untouched = envelope.KEYS - {"summary", "error_message", "result_path"}
    assert {k: out[k] for k in untouched} == {k: env[k] for k in untouched}
