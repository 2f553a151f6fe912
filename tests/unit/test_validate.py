"""Tests for validate: a result file's bytes against the v1 schema and the rules."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anu_watchd.model import QuarantineReason, Rejected, Result, TaskStatus
from anu_watchd.validate import MAX_DEPTH, SCHEMA_FIELDS, Rules, validate

R = QuarantineReason
TASK = "task-7"
# Generated per run: no realistic key literal lives in the source.
KEY = secrets.token_hex(16).encode()
RULES = Rules(collector="anu", executors=("worker", "helper"), key=KEY)
CANARY = "zz-content-canary-zz"
PROPERTY = settings(max_examples=300, deadline=None)


def make_doc(**changes: Any) -> dict[str, Any]:
    """A valid v1 document for TASK; a change of ``...`` deletes the field."""
    doc: dict[str, Any] = {
        "schema": "anu.result/v1",
        "task_id": TASK,
        "status": "DONE",
        "executor": "worker",
        "collector": "anu",
        "finished_at": "2026-01-31T12:00:00Z",
        "summary": "all good",
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not ...}


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def check(doc: Any, rules: Rules = RULES) -> Result | Rejected:
    return validate(encode(doc), task_id=TASK, rules=rules)


def rejected(data: bytes, rules: Rules = RULES) -> Rejected:
    out = validate(data, task_id=TASK, rules=rules)
    assert isinstance(out, Rejected), out
    return out


def escaped(text: str) -> str:
    """``text`` with every character written as a JSON \\u escape."""
    return "".join(f"\\u{ord(c):04x}" for c in text)


# --- accepted -----------------------------------------------------------------


def test_valid_document_gives_a_result_with_every_field() -> None:
    """A valid document becomes a Result carrying its fields and the whole document."""
    doc = make_doc(report_path="reports/r.md", commit="abc1234", extra={"n": [1, 2.5, None]})
    out = check(doc)
    assert isinstance(out, Result)
    assert (out.task_id, out.status, out.executor, out.collector) == (
        TASK,
        TaskStatus.DONE,
        "worker",
        "anu",
    )
    assert (out.finished_at, out.summary, out.report_path, out.commit) == (
        "2026-01-31T12:00:00Z",
        "all good",
        "reports/r.md",
        "abc1234",
    )
    assert out.document == doc


def test_optional_fields_may_be_absent_or_null() -> None:
    """report_path and commit may be left out or set to null; both read as None."""
    for doc in (make_doc(), make_doc(report_path=None, commit=None)):
        out = check(doc)
        assert isinstance(out, Result)
        assert out.report_path is None and out.commit is None


@pytest.mark.parametrize("status", list(TaskStatus))
def test_every_status_is_accepted(status: TaskStatus) -> None:
    """Each of DONE, FAILED, BLOCKED and PARTIAL is a valid status."""
    out = check(make_doc(status=str(status)))
    assert isinstance(out, Result) and out.status is status


def test_key_check_is_skipped_without_a_key() -> None:
    """Rules with no key, or an empty one, do not look for a key at all."""
    for key in (None, b""):
        assert isinstance(check(make_doc(), Rules(collector="anu", key=key)), Result)


def test_rules_repr_never_shows_the_key() -> None:
    """The key is left out of the Rules repr, so logging the rules cannot leak it."""
    assert KEY.decode() not in repr(RULES)
    assert "anu" in repr(RULES)


# --- one test per reason ------------------------------------------------------


def test_oversize_is_checked_first() -> None:
    """A file over max_bytes is OVERSIZE even when it also holds the key."""
    rules = Rules(collector="anu", max_bytes=10, key=KEY)
    out = rejected(b"x" * 11 + KEY, rules)
    assert out.reason is R.OVERSIZE
    assert rejected(b"\x00" * 11, rules).reason is R.OVERSIZE


def test_exactly_max_bytes_is_not_oversize() -> None:
    """A file of exactly max_bytes passes the size check."""
    data = encode(make_doc())
    out = validate(data, task_id=TASK, rules=Rules(collector="anu", max_bytes=len(data)))
    assert isinstance(out, Result)


def test_key_literal_in_raw_bytes() -> None:
    """The key in the raw bytes is KEY_LITERAL; the detail holds neither key nor content."""
    out = rejected(encode(make_doc(summary=f"{CANARY} {KEY.decode()}")))
    assert out.reason is R.KEY_LITERAL
    assert out.detail == "the sealed key appears in the file"


def test_key_literal_outranks_every_later_check() -> None:
    """A file holding the key is KEY_LITERAL even if it is also bad UTF-8, JSON or schema."""
    for data in (b"\xff" + KEY, b"{" + KEY, encode({"x": KEY.decode()}), b"\xef\xbb\xbf" + KEY):
        assert rejected(data).reason is R.KEY_LITERAL


def test_unicode_escaped_key_is_found() -> None:
    """A key written entirely as \\u escapes is found in the decoded strings."""
    body = encode(make_doc(summary="PLACEHOLDER")).replace(
        b"PLACEHOLDER", escaped(KEY.decode()).encode()
    )
    assert KEY not in body
    assert rejected(body).reason is R.KEY_LITERAL


def test_partly_escaped_key_is_found_in_an_object_name() -> None:
    """A key used as an object name, one character escaped, is still KEY_LITERAL."""
    text = KEY.decode()
    name = escaped(text[:1]) + text[1:]
    body = b'{"deep": [{"' + name.encode() + b'": 1}], "schema": "anu.result/v1"}'
    assert rejected(body).reason is R.KEY_LITERAL


def test_escaped_key_is_found_even_in_a_file_that_does_not_parse() -> None:
    """An escaped key in a file with a syntax error or bad UTF-8 is still KEY_LITERAL."""
    lit = f'"{escaped(KEY.decode())}"'.encode()
    assert rejected(b"[" + lit + b", oops").reason is R.KEY_LITERAL
    assert rejected(b"\xff[" + lit + b"]").reason is R.KEY_LITERAL


def test_key_with_an_escaped_slash_is_found() -> None:
    """A key written with \\/ for its slash, as some JSON writers do, is KEY_LITERAL."""
    key = "k/" + secrets.token_hex(8)
    body = b'{"summary": "' + key.replace("/", "\\/").encode() + b'"}'
    assert rejected(body, Rules(collector="anu", key=key.encode())).reason is R.KEY_LITERAL


def test_key_inside_a_nested_value() -> None:
    """The key deep in a nested pass-through value is KEY_LITERAL."""
    doc = make_doc(extra={"a": [1, {"b": ["x", f"pre{KEY.decode()}post"]}]})
    assert check(doc) == Rejected(R.KEY_LITERAL, "the sealed key appears in the file")


def test_short_keys_are_still_checked() -> None:
    """A key shorter than 8 bytes is still looked for."""
    key = b"Q" + secrets.token_hex(2).encode()
    rules = Rules(collector="anu", key=key)
    assert isinstance(check(make_doc(), rules), Result)
    out = check(make_doc(summary="see " + key.decode()), rules)
    assert isinstance(out, Rejected) and out.reason is R.KEY_LITERAL


def test_invalid_utf8_is_encoding() -> None:
    """Bytes that are not UTF-8 are ENCODING, with the byte offset and no content."""
    out = rejected(b'{"summary": "' + b"\xc3\x28" + b'"}')
    assert out.reason is R.ENCODING
    assert "byte 13" in out.detail


@pytest.mark.parametrize(
    "data",
    [b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x80"],
    ids=["utf8-surrogate", "overlong", "above-max", "stray-continuation"],
)
def test_malformed_utf8_forms_are_encoding(data: bytes) -> None:
    """Encoded surrogates, overlong forms, code points past U+10FFFF, stray bytes: ENCODING."""
    assert rejected(b'"' + data + b'"').reason is R.ENCODING


def test_utf8_bom_is_encoding() -> None:
    """A leading UTF-8 byte order mark is ENCODING with a detail that says so."""
    out = rejected(b"\xef\xbb\xbf" + encode(make_doc()))
    assert out.reason is R.ENCODING
    assert "byte order mark" in out.detail


def test_escaped_lone_surrogate_is_encoding() -> None:
    """A \\ud800 escape parses but is not Unicode, so it is ENCODING."""
    body = encode(make_doc(summary="X")).replace(b'"X"', b'"\\ud800"')
    assert rejected(body).reason is R.ENCODING


def test_escaped_surrogate_pair_is_accepted() -> None:
    """A properly paired surrogate escape is a valid character."""
    body = encode(make_doc(summary="X")).replace(b'"X"', b'"\\ud83d\\ude00"')
    out = validate(body, task_id=TASK, rules=RULES)
    assert isinstance(out, Result) and out.summary == "\U0001f600"


@pytest.mark.parametrize("data", [b"", b" \t\r\n "])
def test_empty_or_whitespace_is_invalid_json(data: bytes) -> None:
    """An empty or whitespace-only file is INVALID_JSON."""
    assert rejected(data) == Rejected(R.INVALID_JSON, "the file is empty or only whitespace")


def test_syntax_error_names_line_and_column_without_content() -> None:
    """A syntax error's detail gives json's message with line and column, not the text."""
    out = rejected(f'{{\n  "summary": "{CANARY}",\n  "x": tru\n}}'.encode())
    assert out.reason is R.INVALID_JSON
    assert out.detail == "JSON: Expecting value at line 3, column 8"


def test_unterminated_string_detail_reads_well() -> None:
    """An unterminated string reports where it starts."""
    out = rejected(b'{"summary": "abc')
    assert out.detail == "JSON: Unterminated string starting at line 1, column 13"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_invalid_json(constant: str) -> None:
    """NaN, Infinity and -Infinity are not JSON numbers."""
    body = encode(make_doc(extra=0)).replace(b'"extra": 0', f'"extra": [{constant}]'.encode())
    assert rejected(body).reason is R.INVALID_JSON


def test_float_overflowing_to_infinity_is_invalid_json() -> None:
    """1e999 parses to infinity, which cannot be written back, so it is INVALID_JSON."""
    out = rejected(b'{"x": 1e999}')
    assert out == Rejected(R.INVALID_JSON, "a number is too large for a float")


def test_integer_with_too_many_digits_is_invalid_json() -> None:
    """An integer beyond Python's digit limit is INVALID_JSON, not a crash."""
    out = rejected(b'{"x": ' + b"9" * 5000 + b"}")
    assert out == Rejected(R.INVALID_JSON, "an integer has too many digits")


def test_duplicate_schema_key_is_named() -> None:
    """A duplicated schema field is INVALID_JSON and the detail names it."""
    body = encode(make_doc())[:-1] + b', "status": "FAILED"}'
    assert rejected(body) == Rejected(R.INVALID_JSON, "duplicate 'status'")


def test_duplicate_keys_nested_deep_are_invalid_json() -> None:
    """A duplicate key deep inside a pass-through value is found, and its name is not echoed."""
    inner = '{"' + CANARY + '": 1, "' + CANARY + '": 2}'
    body = encode(make_doc(extra="X")).replace(b'"X"', ("[" * 20 + inner + "]" * 20).encode())
    assert rejected(body) == Rejected(R.INVALID_JSON, "duplicate object key")


def nested_arrays(n: int) -> str:
    return "[" * n + "]" * n


def test_depth_32_is_accepted_and_33_rejected() -> None:
    """A document nested exactly 32 deep is valid; 33 deep is INVALID_JSON."""
    # The top-level object is one level: 31 arrays inside it make 32.
    ok = encode(make_doc(nest="X")).replace(b'"X"', nested_arrays(MAX_DEPTH - 1).encode())
    assert isinstance(validate(ok, task_id=TASK, rules=RULES), Result)
    deep = encode(make_doc(nest="X")).replace(b'"X"', nested_arrays(MAX_DEPTH).encode())
    assert rejected(deep) == Rejected(R.INVALID_JSON, "nesting deeper than 32")


def test_depth_counts_objects_and_arrays_alike() -> None:
    """Mixed object and array nesting past 32 is INVALID_JSON; at 32 a bare array is SCHEMA."""
    mixed = '{"a":[' * 17 + "0" + "]}" * 17
    assert rejected(mixed.encode()).reason is R.INVALID_JSON
    assert rejected(nested_arrays(MAX_DEPTH).encode()).reason is R.SCHEMA


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    """Brackets and escaped quotes inside strings are text, not depth."""
    summary = '[{"\\' * 100
    out = check(make_doc(summary=summary))
    assert isinstance(out, Result) and out.summary == summary


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_100000_nested_brackets_are_invalid_json_not_a_crash(opener: bytes) -> None:
    """100,000 nested openers are INVALID_JSON (no RecursionError)."""
    rules = Rules(collector="anu", max_bytes=10_000_000, key=KEY)
    assert rejected(opener * 100_000, rules).reason is R.INVALID_JSON
    closer = b"]" if opener == b"[" else b"}"
    assert rejected(opener * 100_000 + b"0" + closer * 100_000, rules).reason is R.INVALID_JSON


@pytest.mark.parametrize("value", [[1], "text", 3, None, True])
def test_non_object_top_level_is_schema(value: Any) -> None:
    """Valid JSON whose top level is not an object is SCHEMA."""
    out = check(value)
    assert isinstance(out, Rejected) and out.reason is R.SCHEMA
    assert out.detail.startswith("top level: must be a JSON object")


def test_task_id_mismatch() -> None:
    """A document whose task_id differs from the file name's is TASK_ID_MISMATCH."""
    out = check(make_doc(task_id="task-8"))
    assert isinstance(out, Rejected) and out.reason is R.TASK_ID_MISMATCH
    assert "task-8" not in out.detail


def test_collector_equal_to_executor_is_self_collector() -> None:
    """A worker naming itself as collector is SELF_COLLECTOR."""
    out = check(make_doc(executor="anu", collector="anu"))
    assert out == Rejected(R.SELF_COLLECTOR, "collector: equals the executor")


def test_collector_naming_a_configured_executor_is_self_collector() -> None:
    """A collector that is one of the configured executors is SELF_COLLECTOR."""
    out = check(make_doc(collector="helper"))
    assert out == Rejected(R.SELF_COLLECTOR, "collector: names a configured executor")


def test_other_collector_is_foreign_collector() -> None:
    """A collector other than the configured one is FOREIGN_COLLECTOR."""
    out = check(make_doc(collector="someone-else"))
    assert out == Rejected(R.FOREIGN_COLLECTOR, "collector: not the configured collector")


# --- every bullet of the schema -------------------------------------------------

REQUIRED = ("schema", "task_id", "status", "executor", "collector", "finished_at", "summary")


@pytest.mark.parametrize("field", REQUIRED)
def test_missing_required_field_is_named(field: str) -> None:
    """Leaving out a required field is SCHEMA and the detail names the field."""
    assert check(make_doc(**{field: ...})) == Rejected(R.SCHEMA, f"{field}: required field missing")


@pytest.mark.parametrize("field", [*REQUIRED, "report_path", "commit"])
@pytest.mark.parametrize("value", [True, 7, 1.5, ["x"], {"x": "y"}])
def test_wrong_type_is_schema(field: str, value: Any) -> None:
    """A non-string where a string is expected is SCHEMA naming the field."""
    out = check(make_doc(**{field: value}))
    assert isinstance(out, Rejected) and out.reason is R.SCHEMA
    assert out.detail.startswith(f"{field}: must be a string, not ")


def test_null_required_field_is_schema() -> None:
    """null is not a string for a required field."""
    assert check(make_doc(summary=None)) == Rejected(
        R.SCHEMA, "summary: must be a string, not null"
    )


@pytest.mark.parametrize("value", ["anu.result/v2", "ANU.RESULT/V1", ""])
def test_wrong_schema_id_is_schema(value: str) -> None:
    """Only the exact schema id anu.result/v1 is accepted."""
    assert check(make_doc(schema=value)) == Rejected(R.SCHEMA, 'schema: must be "anu.result/v1"')


@pytest.mark.parametrize("value", ["done", "OK", "", "DONE "])
def test_unknown_status_is_schema(value: str) -> None:
    """A status outside the four values is SCHEMA listing them."""
    out = check(make_doc(status=value))
    assert out == Rejected(R.SCHEMA, "status: must be one of DONE, FAILED, BLOCKED, PARTIAL")


@pytest.mark.parametrize("value", ["w", "0", "a" * 64, "work-er_2", "9lives"])
def test_good_executors_are_accepted(value: str) -> None:
    """Executors matching ^[a-z0-9][a-z0-9_-]{0,63}$ are accepted."""
    assert isinstance(check(make_doc(executor=value)), Result)


@pytest.mark.parametrize("value", ["", "Worker", "-w", "_w", "a" * 65, "w\n", "w.x", "wörk", "w x"])
def test_bad_executors_are_schema(value: str) -> None:
    """Executors not matching the pattern, including a trailing newline, are SCHEMA."""
    out = check(make_doc(executor=value))
    assert out == Rejected(R.SCHEMA, "executor: must match ^[a-z0-9][a-z0-9_-]{0,63}$")


@pytest.mark.parametrize(
    "value",
    [
        "2026-01-31T12:00:00Z",
        "2026-01-31T12:00:00+00:00",
        "2026-01-31T12:00:00.5Z",
        "2026-01-31T12:00:00.123456789+00:00",
        "2024-02-29T23:59:59Z",
        "0001-01-01T00:00:00Z",
    ],
)
def test_utc_timestamps_are_accepted(value: str) -> None:
    """RFC 3339 UTC timestamps, with or without fractional seconds, are accepted."""
    out = check(make_doc(finished_at=value))
    assert isinstance(out, Result) and out.finished_at == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "2026-01-31",
        "2026-01-31T12:00:00",
        "2026-01-31 12:00:00Z",
        "2026-01-31t12:00:00z",
        "2026-01-31T12:00Z",
        "2026-01-31T12:00:00.Z",
        "2026-01-31T12:00:00.1234567890Z",
        "2026-1-31T12:00:00Z",
        "٢٠٢٦-01-31T12:00:00Z",
        "2026-01-31T12:00:00Z\n",
        "1769860800",
    ],
)
def test_malformed_timestamps_are_schema(value: str) -> None:
    """Strings that are not RFC 3339 timestamps are SCHEMA."""
    out = check(make_doc(finished_at=value))
    assert isinstance(out, Rejected) and out.reason is R.SCHEMA
    assert out.detail.startswith("finished_at: must be an RFC 3339 timestamp")


@pytest.mark.parametrize("value", ["2026-01-31T12:00:00+01:00", "2026-01-31T12:00:00-00:00"])
def test_non_utc_offsets_are_schema(value: str) -> None:
    """A timestamp with any offset but Z or +00:00 is SCHEMA."""
    out = check(make_doc(finished_at=value))
    assert out == Rejected(R.SCHEMA, "finished_at: must be UTC (offset Z or +00:00)")


@pytest.mark.parametrize(
    "value",
    [
        "2026-13-01T00:00:00Z",
        "2026-00-10T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2025-02-29T00:00:00Z",
        "2026-01-31T24:00:00Z",
        "2026-01-31T12:60:00Z",
        "2016-12-31T23:59:60Z",
        "0000-01-01T00:00:00Z",
    ],
)
def test_impossible_dates_are_schema(value: str) -> None:
    """Well-formed timestamps naming no real instant (month 13, Feb 30, leap second) are SCHEMA."""
    out = check(make_doc(finished_at=value))
    assert out == Rejected(R.SCHEMA, "finished_at: not a real date and time")


def test_summary_length_is_counted_in_characters() -> None:
    """2000 characters (even multi-byte ones) are accepted; 2001 are SCHEMA."""
    assert isinstance(check(make_doc(summary="é" * 2000)), Result)
    out = check(make_doc(summary="x" * 2001))
    assert out == Rejected(R.SCHEMA, "summary: longer than 2000 characters")


def test_empty_summary_is_accepted() -> None:
    """An empty summary is a string of at most 2000 characters."""
    assert isinstance(check(make_doc(summary="")), Result)


@pytest.mark.parametrize("value", ["r.md", "reports/r.md", "./r.md", "a/..b/c..", "a/.../b"])
def test_relative_report_paths_are_accepted(value: str) -> None:
    """Relative report paths without a '..' segment are accepted."""
    out = check(make_doc(report_path=value))
    assert isinstance(out, Result) and out.report_path == value


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("", "must not be empty"),
        ("/etc/passwd", "must be relative, not absolute"),
        ("//host/x", "must be relative, not absolute"),
        ("..", "must not contain a '..' segment"),
        ("../x", "must not contain a '..' segment"),
        ("a/../b", "must not contain a '..' segment"),
        ("a/..", "must not contain a '..' segment"),
        ("a\x00b", "must not contain a NUL character"),
    ],
)
def test_bad_report_paths_are_schema(value: str, rule: str) -> None:
    """Empty, absolute, '..'-climbing or NUL-holding report paths are SCHEMA."""
    assert check(make_doc(report_path=value)) == Rejected(R.SCHEMA, f"report_path: {rule}")


@pytest.mark.parametrize("value", ["abc1234", "ABCDEF0", "a" * 40, "f" * 64])
def test_hex_commits_are_accepted(value: str) -> None:
    """Commits of 7 to 64 hex characters, either case, are accepted."""
    out = check(make_doc(commit=value))
    assert isinstance(out, Result) and out.commit == value


@pytest.mark.parametrize("value", ["", "abc123", "a" * 65, "abc123g", "abc1234\n", "abc 1234"])
def test_bad_commits_are_schema(value: str) -> None:
    """Commits that are too short, too long or not hex are SCHEMA."""
    out = check(make_doc(commit=value))
    assert out == Rejected(R.SCHEMA, "commit: must be 7 to 64 hexadecimal characters")


def test_unknown_keys_pass_through() -> None:
    """Keys outside the schema are allowed and kept in the document untouched."""
    extra = {"tags": ["a", "b"], "metrics": {"ms": 12.5, "ok": True, "none": None}}
    out = check(make_doc(x_extra=extra))
    assert isinstance(out, Result) and out.document["x_extra"] == extra


def test_schema_checks_come_before_identity_checks() -> None:
    """A document that breaks the schema and names a foreign collector is SCHEMA."""
    out = check(make_doc(collector="other", commit="nothex!"))
    assert isinstance(out, Rejected) and out.reason is R.SCHEMA


# --- properties ----------------------------------------------------------------

# Surrogates included: they must come out as ENCODING, not as a crash.
any_text = st.text(st.characters(exclude_categories=()), max_size=20)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_text, inner, max_size=5),
    max_leaves=25,
)


def assert_well_formed(out: Result | Rejected) -> None:
    """Every verdict is a Result or a short Rejected that never shows the key."""
    assert isinstance(out, Result | Rejected)
    if isinstance(out, Rejected):
        assert isinstance(out.reason, QuarantineReason)
        assert 0 < len(out.detail) <= 200
        assert KEY.decode() not in out.detail
        assert CANARY not in out.detail


@PROPERTY
@given(st.binary(max_size=300))
def test_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    """Any bytes at all get a verdict, never an exception."""
    assert_well_formed(validate(data, task_id=TASK, rules=RULES))


@PROPERTY
@given(json_values, st.booleans())
def test_never_raises_on_arbitrary_json(value: Any, ascii_only: bool) -> None:
    """Any JSON document (NaN included) gets a verdict, never an exception."""
    data = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert_well_formed(validate(data, task_id=TASK, rules=RULES))


@PROPERTY
@given(st.sampled_from(sorted(SCHEMA_FIELDS)), json_values | st.just(...))
def test_never_raises_on_one_mutated_field(field: str, value: Any) -> None:
    """A valid document with one schema field replaced or removed gets a verdict."""
    doc = make_doc(extra=CANARY, **{field: value})
    data = json.dumps(doc).encode()
    assert_well_formed(validate(data, task_id=TASK, rules=RULES))


@PROPERTY
@given(st.sampled_from(sorted(SCHEMA_FIELDS)), st.text(max_size=30), st.text(max_size=30))
def test_mutated_field_with_content_never_echoes_it(field: str, pre: str, post: str) -> None:
    """A field set to arbitrary text around a canary never gets the canary into the detail."""
    assert_well_formed(check(make_doc(**{field: f"{pre}{CANARY}{post}"})))


@PROPERTY
@given(json_values, st.sampled_from(["raw", "escaped", "name"]), st.booleans())
def test_key_anywhere_is_key_literal_and_never_in_detail(
    value: Any, form: str, ascii_only: bool
) -> None:
    """Wherever the key sits, raw or \\u-escaped, value or name, the verdict is KEY_LITERAL."""
    key = KEY.decode()
    holder: Any = {"PLACEHOLDER": value} if form == "name" else [value, "PLACEHOLDER"]
    data = json.dumps(make_doc(extra=holder), ensure_ascii=ascii_only)
    spliced = escaped(key) if form == "escaped" else key
    data = data.replace("PLACEHOLDER", "p" + spliced)
    out = validate(data.encode("utf-8", "surrogatepass"), task_id=TASK, rules=RULES)
    assert isinstance(out, Rejected) and out.reason is R.KEY_LITERAL
    assert_well_formed(out)


@PROPERTY
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_key_spliced_into_arbitrary_bytes_is_key_literal(pre: bytes, post: bytes) -> None:
    """The key between any bytes is KEY_LITERAL with a detail free of it."""
    out = validate(pre + KEY + post, task_id=TASK, rules=RULES)
    assert isinstance(out, Rejected) and out.reason is R.KEY_LITERAL
    assert_well_formed(out)
