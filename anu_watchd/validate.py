"""A result file's bytes against the v1 schema (docs/protocol.md).

Pure: bytes and ``Rules`` in, ``Result`` or ``Rejected`` out; no I/O, clock
or logger. ``validate`` never raises: every input, however hostile, gets a
verdict. The checks run in a fixed order and the first failure wins::

    OVERSIZE -> KEY_LITERAL -> ENCODING -> INVALID_JSON -> SCHEMA
      -> TASK_ID_MISMATCH -> SELF_COLLECTOR -> FOREIGN_COLLECTOR

KEY_LITERAL comes before every other content check, so no later detail can
be about a file that holds the key. Details are fixed phrases that name a
schema field and the rule it broke; they never quote the file's content,
which may be anything, the key included.

Internally each check raises ``_Reject``; ``validate`` is the one place that
turns it back into a value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any, NoReturn

import attrs

from anu_watchd.model import QuarantineReason, Rejected, Result, TaskStatus

SCHEMA_ID = "anu.result/v1"
MAX_DEPTH = 32
MAX_SUMMARY_CHARS = 2000

# The only field names a detail may echo: anything else came from the file.
SCHEMA_FIELDS = frozenset(
    [
        "schema",
        "task_id",
        "status",
        "executor",
        "collector",
        "finished_at",
        "summary",
        "report_path",
        "commit",
    ]
)

_EXECUTOR_PATTERN = "^[a-z0-9][a-z0-9_-]{0,63}$"
_EXECUTOR_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_COMMIT_RE = re.compile(r"[0-9a-fA-F]{7,64}")
# ASCII digits only ([0-9], not \d, which matches any Unicode digit). Upper-case
# T and Z only, though RFC 3339 allows t and z: Python 3.11's fromisoformat, and
# so every consumer of ours, rejects a lower-case z. Leap second 60 is refused
# by datetime below, deliberately: no consumer can represent it either.
_TIMESTAMP_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]{1,9})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})"
)
_UTC_OFFSETS = ("Z", "+00:00")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")

# The pre-parse scans, each one regex pass: every match is a string literal,
# a bracket, or a quote that opens an unterminated string and swallows the rest
# (retrying at every later quote instead would be quadratic). Group 1 holds
# what the scan wants: brackets outside strings, or literals with an escape.
_STRING = r'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_BRACKET_RE = re.compile(rf'([\[\]{{}}])|{_STRING}|".*', re.DOTALL)
_ESCAPED_LITERAL_RE = re.compile(r'"[^"\\]*+"|(' + _STRING + r')|".*', re.DOTALL)
_JSON_WHITESPACE = " \t\r\n"

# json's own error messages; anything else is replaced, as it might quote content.
_JSON_MESSAGES = frozenset(
    {
        "Expecting value",
        "Expecting ',' delimiter",
        "Expecting ':' delimiter",
        "Expecting property name enclosed in double quotes",
        "Extra data",
        "Unterminated string starting at",
        "Invalid control character at",
        "Invalid \\escape",
        "Invalid \\uXXXX escape",
        "Illegal trailing comma before end of object",
        "Illegal trailing comma before end of array",
    }
)


@attrs.frozen
class Rules:
    """What a valid result must satisfy beyond the schema; ``key`` is never shown."""

    collector: str
    executors: tuple[str, ...] = ()
    max_bytes: int = 65536
    # The sealed key's bytes, already stripped; None or b"" skips the KEY_LITERAL check.
    key: bytes | None = attrs.field(default=None, repr=False)


class _Reject(Exception):
    """Carries a Rejected out of a nested check; never escapes this module."""

    def __init__(self, reason: QuarantineReason, detail: str) -> None:
        super().__init__(reason)
        self.rejected = Rejected(reason, detail)


def _reject(reason: QuarantineReason, detail: str) -> NoReturn:
    raise _Reject(reason, detail)


def validate(data: bytes, *, task_id: str, rules: Rules) -> Result | Rejected:
    """Decide whether ``data`` is a valid result for ``task_id`` under ``rules``."""
    try:
        doc = _parse(data, rules)
        result = _check_schema(doc)
        _check_identity(result, task_id, rules)
    except _Reject as exc:
        return exc.rejected
    return result


# --- bytes to a JSON object -------------------------------------------------


def _parse(data: bytes, rules: Rules) -> dict[str, Any]:
    if len(data) > rules.max_bytes:
        _reject(QuarantineReason.OVERSIZE, f"larger than {rules.max_bytes} bytes")
    key = rules.key or None
    if key is not None and key in data:
        _reject_key()
    text = _decode(data, key)
    _check_depth(text)
    value = _loads(text)
    _check_strings(value, key)
    if not isinstance(value, dict):
        _reject(QuarantineReason.SCHEMA, f"top level: must be a JSON object, not {_kind(value)}")
    return value


def _reject_key() -> NoReturn:
    _reject(QuarantineReason.KEY_LITERAL, "the sealed key appears in the file")


def _decode(data: bytes, key: bytes | None) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Look for a \u-escaped key even here: KEY_LITERAL outranks ENCODING.
        _check_escaped_key(data.decode("utf-8", errors="replace"), key)
        _reject(QuarantineReason.ENCODING, f"not valid UTF-8 (at byte {exc.start})")
    _check_escaped_key(text, key)
    # A BOM is valid UTF-8 but not JSON (RFC 8259 section 8.1: MUST NOT add
    # one); refusing it names the real problem instead of a column-1 syntax error.
    if text.startswith("\ufeff"):
        _reject(
            QuarantineReason.ENCODING, "starts with a UTF-8 byte order mark; write it without one"
        )
    return text


def _check_escaped_key(text: str, key: bytes | None) -> None:
    """Decode every string literal holding an escape, even in a file that will not parse.

    A literal that does not decode on its own (a bad escape, an unterminated
    tail) is skipped: the file is quarantined as INVALID_JSON all the same.
    """
    needle = _key_text(key)
    if needle is None or "\\" not in text:
        return  # without an escape the raw-bytes check has already seen every string
    for literal in _ESCAPED_LITERAL_RE.findall(text):
        if literal and needle in _decode_literal(literal):
            _reject_key()


def _key_text(key: bytes | None) -> str | None:
    # A key that is not UTF-8 cannot be what a decoded JSON string spells; the
    # raw-bytes check is the one that can find it.
    try:
        return key.decode("utf-8") if key else None
    except UnicodeDecodeError:
        return None


def _decode_literal(token: str) -> str:
    try:
        value = _LITERAL_DECODER.decode(token)
    except ValueError:
        return ""
    return value if isinstance(value, str) else ""


def _check_depth(text: str) -> None:
    """Refuse deep nesting before json.loads, whose recursion would otherwise blow up."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return  # cannot be too deep: the common case skips the scan
    depth = 0
    for bracket in _BRACKET_RE.findall(text):  # "" for each string literal
        if bracket in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                _reject(QuarantineReason.INVALID_JSON, f"nesting deeper than {MAX_DEPTH}")
        elif bracket:
            depth -= 1


def _loads(text: str) -> Any:
    if not text.strip(_JSON_WHITESPACE):
        _reject(QuarantineReason.INVALID_JSON, "the file is empty or only whitespace")
    try:
        return _STRICT_DECODER.decode(text)
    except json.JSONDecodeError as exc:
        message = exc.msg if exc.msg in _JSON_MESSAGES else "syntax error"
        detail = f"JSON: {message.removesuffix(' at')} at line {exc.lineno}, column {exc.colno}"
        _reject(QuarantineReason.INVALID_JSON, detail)
    except RecursionError:
        # Unreachable while _check_depth holds; kept so validate still never raises.
        _reject(QuarantineReason.INVALID_JSON, f"nesting deeper than {MAX_DEPTH}")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        name = _first_duplicate(pairs)
        shown = repr(name) if name in SCHEMA_FIELDS else "object key"
        _reject(QuarantineReason.INVALID_JSON, f"duplicate {shown}")
    return obj


def _first_duplicate(pairs: list[tuple[str, Any]]) -> str:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            return name
        seen.add(name)
    return ""


def _no_constant(name: str) -> NoReturn:
    _reject(QuarantineReason.INVALID_JSON, "NaN and Infinity are not JSON numbers")


def _finite_float(literal: str) -> float:
    # 1e999 is valid syntax but parses to inf, which no JSON writer can emit again.
    value = float(literal)
    if not math.isfinite(value):
        _reject(QuarantineReason.INVALID_JSON, "a number is too large for a float")
    return value


def _bounded_int(literal: str) -> int:
    try:
        return int(literal)
    except ValueError:  # beyond sys.get_int_max_str_digits()
        _reject(QuarantineReason.INVALID_JSON, "an integer has too many digits")


# Built once: json.loads with any keyword argument builds a new decoder per call.
# Sharing one is safe across threads; the json module shares its own default.
_STRICT_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_object,
    parse_constant=_no_constant,
    parse_float=_finite_float,
    parse_int=_bounded_int,
)
# Lenient (control characters allowed): it only reads literals to look for the key.
_LITERAL_DECODER = json.JSONDecoder(strict=False)


def _check_strings(value: Any, key: bytes | None) -> None:
    """Every decoded string, names included: the key first, then unpaired surrogates."""
    strings = list(_strings(value))
    needle = _key_text(key)
    if needle is not None and any(needle in s for s in strings):
        _reject_key()
    # "\ud800" is valid JSON syntax but not Unicode: it could not be written
    # back out as UTF-8 (the envelope, the logs), so it is an encoding error.
    if _SURROGATE_RE.search("".join(strings)):
        _reject(QuarantineReason.ENCODING, "a string holds an unpaired UTF-16 surrogate")


def _strings(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            yield from item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _kind(value: Any) -> str:
    """The JSON type name of a parsed value, for details."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


# --- the v1 schema ----------------------------------------------------------


def _check_schema(doc: dict[str, Any]) -> Result:
    if _required(doc, "schema") != SCHEMA_ID:
        _schema_error(f'schema: must be "{SCHEMA_ID}"')
    task_id = _required(doc, "task_id")
    status = _status(_required(doc, "status"))
    executor = _required(doc, "executor")
    if not _EXECUTOR_RE.fullmatch(executor):
        _schema_error(f"executor: must match {_EXECUTOR_PATTERN}")
    collector = _required(doc, "collector")
    finished_at = _timestamp(_required(doc, "finished_at"))
    summary = _required(doc, "summary")
    if len(summary) > MAX_SUMMARY_CHARS:
        _schema_error(f"summary: longer than {MAX_SUMMARY_CHARS} characters")
    return Result(
        task_id=task_id,
        status=status,
        executor=executor,
        collector=collector,
        finished_at=finished_at,
        summary=summary,
        report_path=_report_path(_optional(doc, "report_path")),
        commit=_commit(_optional(doc, "commit")),
        document=doc,
    )


def _schema_error(detail: str) -> NoReturn:
    _reject(QuarantineReason.SCHEMA, detail)


def _required(doc: dict[str, Any], name: str) -> str:
    if name not in doc:
        _schema_error(f"{name}: required field missing")
    value = doc[name]
    if not isinstance(value, str):
        _schema_error(f"{name}: must be a string, not {_kind(value)}")
    return value


def _optional(doc: dict[str, Any], name: str) -> str | None:
    # null counts as absent: writers in other languages often serialise an
    # unset optional field that way, and it carries no value to check.
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        _schema_error(f"{name}: must be a string, not {_kind(value)}")
    return value


def _status(value: str) -> TaskStatus:
    try:
        return TaskStatus(value)
    except ValueError:
        _schema_error(f"status: must be one of {', '.join(TaskStatus)}")


def _timestamp(value: str) -> str:
    m = _TIMESTAMP_RE.fullmatch(value)
    if m is None:
        _schema_error("finished_at: must be an RFC 3339 timestamp like 2026-01-31T12:00:00Z")
    if m.group(7) not in _UTC_OFFSETS:
        _schema_error("finished_at: must be UTC (offset Z or +00:00)")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        datetime(year, month, day, hour, minute, second)
    except ValueError:
        _schema_error("finished_at: not a real date and time")
    return value


def _report_path(value: str | None) -> str | None:
    if value is None:
        return None
    if not value:
        _schema_error("report_path: must not be empty")
    if "\x00" in value:
        _schema_error("report_path: must not contain a NUL character")
    if value.startswith("/"):
        _schema_error("report_path: must be relative, not absolute")
    if ".." in value.split("/"):
        _schema_error("report_path: must not contain a '..' segment")
    return value


def _commit(value: str | None) -> str | None:
    if value is not None and not _COMMIT_RE.fullmatch(value):
        _schema_error("commit: must be 7 to 64 hexadecimal characters")
    return value


# --- who may be woken -------------------------------------------------------


def _check_identity(result: Result, task_id: str, rules: Rules) -> None:
    if result.task_id != task_id:
        _reject(QuarantineReason.TASK_ID_MISMATCH, "task_id: differs from the file name's task id")
    if result.collector == result.executor:
        _reject(QuarantineReason.SELF_COLLECTOR, "collector: equals the executor")
    if result.collector in rules.executors:
        _reject(QuarantineReason.SELF_COLLECTOR, "collector: names a configured executor")
    if result.collector != rules.collector:
        _reject(QuarantineReason.FOREIGN_COLLECTOR, "collector: not the configured collector")
