"""The shipped result schema against validate.py, in both directions.

Documents are drawn field by field from a mix of valid and invalid values;
for each one the daemon's verdict and a stock draft 2020-12 validator's must
agree: accepted exactly when schema-valid (and the identity rules no schema
can state hold), and a schema-invalid document refused with the reason that
docs/protocol.md gives for the broken rule.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from anu_watchd import cli, schemas
from anu_watchd.model import QuarantineReason, Rejected, Result, TaskStatus
from anu_watchd.validate import SCHEMA_ID, Rules, validate

R = QuarantineReason
TASK = "task-7"
RULES = Rules(collector="anu", executors=("worker", "helper"))
SCHEMA = schemas.load("result")
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
PROPERTY = settings(max_examples=400, deadline=None)

# -- strategies ----------------------------------------------------------------------------

non_strings = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
)
# Drawn to land near every boundary: months 0-13, days 0-32, leap years, offsets, case.
timestamps = st.builds(
    lambda y, mo, d, h, mi, s, frac, sep, off, tail: (
        f"{y}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{off}{tail}"
    ),
    st.sampled_from(["0000", "0001", "0004", "1900", "2000", "2024", "2026", "2100", "2400"])
    | st.from_regex(r"[0-9]{4}", fullmatch=True),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 24),
    st.integers(0, 60),
    st.integers(0, 61),
    st.sampled_from(["", "."]) | st.from_regex(r"\.[0-9]{1,10}", fullmatch=True),
    st.sampled_from(["T", "T", "T", "t", " "]),
    st.sampled_from(["Z", "Z", "+00:00", "z", "-00:00", "+01:00", "", "+0000", "Z "]),
    st.sampled_from(["", "", "", "\n"]),
)


def _stamp(dt: datetime, digits: int, offset: str) -> str:
    fraction = f".{dt.microsecond:06d}000"[: digits + 1] if digits else ""
    return dt.isoformat(timespec="seconds") + fraction + offset


real_timestamps = st.builds(
    _stamp,
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.integers(0, 9),
    st.sampled_from(["Z", "+00:00"]),
)
path_text = st.text(alphabet="ab/.\x00\n", max_size=8)
hex_text = st.text(alphabet="0123456789abcdefABCDEFg", min_size=5, max_size=66)
ABSENT: Any = ...

# Per field: values the daemon accepts, and values drawn to break it (some still valid).
valid_values: dict[str, st.SearchStrategy[Any]] = {
    "schema": st.just(SCHEMA_ID),
    "task_id": st.just(TASK),
    "status": st.sampled_from([str(s) for s in TaskStatus]),
    "executor": st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True),
    "collector": st.just("anu"),
    "finished_at": real_timestamps,
    "summary": st.text(max_size=2000) | st.just("é" * 2000),
    "report_path": st.just(ABSENT) | st.none() | st.sampled_from(["reports/r.md", "a/..b", "..a"]),
    "commit": st.just(ABSENT) | st.none() | st.from_regex(r"[0-9a-fA-F]{7,64}", fullmatch=True),
}
any_values: dict[str, st.SearchStrategy[Any]] = {
    "schema": st.sampled_from(["anu.result/v2", "", SCHEMA_ID + "\n"]) | non_strings,
    "task_id": st.sampled_from([TASK + "\n", "task-", "task-8", "task-7 ", "x" * 200])
    | st.from_regex(r"task-[A-Za-z0-9][A-Za-z0-9._-]{0,130}", fullmatch=True)
    | non_strings,
    "status": st.sampled_from(["done", "DONE\n", ""]) | non_strings,
    "executor": st.sampled_from(["dev1\n", "Dev1", "-dev", "", "d" * 65, "worker", "anu"])
    | st.from_regex(r"[a-zA-Z0-9_. -]{0,70}", fullmatch=True)
    | non_strings,
    "collector": non_strings,
    "finished_at": timestamps | non_strings,
    "summary": st.integers(1995, 2005).map(lambda n: "é" * n) | non_strings,
    "report_path": path_text
    | st.sampled_from(["", "/abs", "../up", "a/../b", "a/..", "..", "a//b", "./a"])
    | non_strings,
    "commit": hex_text | st.sampled_from(["abc1234\n", ""]) | non_strings,
}


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with up to two fields redrawn to break it, or left out."""
    broken = draw(st.sets(st.sampled_from(sorted(valid_values)), max_size=2))
    doc: dict[str, Any] = {}
    for name in valid_values:
        values = (any_values[name] | st.just(ABSENT)) if name in broken else valid_values[name]
        value = draw(values)
        if value is not ABSENT:
            doc[name] = value
    extra = draw(st.dictionaries(st.text(max_size=5), st.integers(0, 9) | st.text(), max_size=3))
    return {**{k: v for k, v in extra.items() if k not in valid_values}, **doc}


# -- the expectation, from the schema's answer -----------------------------------------------


def expected_reason(doc: Any) -> QuarantineReason | None:
    """What docs/protocol.md says the daemon decides, given the schema's errors."""
    errors = list(VALIDATOR.iter_errors(doc))
    if any(list(e.absolute_path)[:1] != ["task_id"] or e.validator == "type" for e in errors):
        return R.SCHEMA  # every schema check runs before the identity checks
    if errors or doc["task_id"] != TASK:
        return R.TASK_ID_MISMATCH  # a task_id string that is not the file's name
    if doc["collector"] == doc["executor"] or doc["collector"] in RULES.executors:
        return R.SELF_COLLECTOR
    if doc["collector"] != RULES.collector:
        return R.FOREIGN_COLLECTOR
    return None


def daemon_reason(doc: Any) -> QuarantineReason | None:
    verdict = validate(json.dumps(doc).encode(), task_id=TASK, rules=RULES)
    return verdict.reason if isinstance(verdict, Rejected) else None


# -- tests ---------------------------------------------------------------------------------


def test_result_schema_is_a_valid_draft_2020_12_schema() -> None:
    """The shipped file is itself a valid draft 2020-12 schema."""
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_schema_command_prints_the_shipped_files(capsys: pytest.CaptureFixture[str]) -> None:
    """`anu-watchd schema NAME` prints the packaged file unchanged, and needs no config."""
    for name in schemas.NAMES:
        assert cli.main(["schema", name]) == 0
        assert capsys.readouterr().out == schemas.text(name)


def test_schema_command_refuses_an_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown schema name is a usage error (64)."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["schema", "ledger"])
    assert exc.value.code == 64
    assert "invalid choice" in capsys.readouterr().err


@PROPERTY
@given(documents())
@example({"schema": SCHEMA_ID, "task_id": TASK, "status": "DONE", "executor": "dev1",
          "collector": "anu", "finished_at": "2024-02-29T23:59:59.123456789+00:00",
          "summary": "", "report_path": None, "commit": None})  # fmt: skip
@example({"schema": SCHEMA_ID, "task_id": TASK + "\n", "status": "DONE", "executor": "dev1",
          "collector": "anu", "finished_at": "2026-01-31T12:00:00Z", "summary": ""})  # fmt: skip
def test_daemon_and_schema_agree_on_every_drawn_document(doc: dict[str, Any]) -> None:
    """The daemon accepts exactly the schema-valid ones, else refuses with the documented reason."""
    reason = daemon_reason(doc)
    event(f"verdict: {reason or 'accepted'}")
    assert reason == expected_reason(doc)


@PROPERTY
@given(real_timestamps | timestamps | st.text(max_size=40))
@example("2023-02-29T00:00:00Z")
@example("2100-02-29T00:00:00Z")
@example("2400-02-29T00:00:00Z")
@example("0000-01-01T00:00:00Z")
@example("2026-01-31T12:00:00Z\n")
def test_finished_at_pattern_is_the_daemons_timestamp_rule(value: str) -> None:
    """The timestamp pattern alone accepts exactly the finished_at values the daemon does."""
    doc = {**_valid(), "finished_at": value}
    assert (daemon_reason(doc) is None) == VALIDATOR.is_valid(doc)


def test_leap_days_follow_the_gregorian_rule() -> None:
    """February 29th is a valid finished_at in leap years only, in the schema as in the daemon."""
    for year in range(1, 2500):
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        doc = {**_valid(), "finished_at": f"{year:04d}-02-29T00:00:00Z"}
        assert VALIDATOR.is_valid(doc) is leap, year
        assert (daemon_reason(doc) is None) is leap, year


@PROPERTY
@given(st.datetimes(timezones=st.just(UTC)))
def test_every_document_the_producer_builds_validates(when: datetime) -> None:
    """What `emit` and write_result build (finished_at with microseconds and Z) validates."""
    from anu_watchd.producer import result_document

    doc = result_document(
        task_id=TASK, status="DONE", executor="dev1", summary="s", collector="anu", finished_at=when
    )
    assert isinstance(validate(json.dumps(doc).encode(), task_id=TASK, rules=RULES), Result)
    assert VALIDATOR.is_valid(doc)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"schema": "anu.result/v1", "schema": "anu.result/v1"}', R.INVALID_JSON),
        (b'{"n": NaN}', R.INVALID_JSON),
        (b"[" * 33 + b"]" * 33, R.INVALID_JSON),
        (b'{"s": "\\ud800"}', R.ENCODING),
    ],
)
def test_what_no_schema_can_see_is_left_to_the_daemon(raw: bytes, reason: QuarantineReason) -> None:
    """Duplicate keys, NaN, deep nesting and lone surrogates are refused before any schema check."""
    verdict = validate(raw, task_id=TASK, rules=RULES)
    assert isinstance(verdict, Rejected)
    assert verdict.reason is reason


def _valid() -> dict[str, Any]:
    return {
        "schema": SCHEMA_ID,
        "task_id": TASK,
        "status": "DONE",
        "executor": "dev1",
        "collector": "anu",
        "finished_at": "2026-01-31T12:00:00Z",
        "summary": "ok",
    }
