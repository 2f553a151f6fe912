"""Tests for anu_watchd.compactjson: the stdlib's compact bytes, made faster."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anu_watchd import compactjson


def stdlib(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# Every code point but the lone surrogates, which UTF-8 cannot carry.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)))
SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | TEXT
DOCS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


@given(DOCS)
def test_bytes_are_the_stdlibs_for_every_document_without_a_float(doc: Any) -> None:
    """Strings (controls, quotes, U+2028, astral planes), ints, None, lists, dicts: same bytes."""
    assert compactjson.dumps(doc) == stdlib(doc)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_finite_float_parses_back_the_same(x: float) -> None:
    """orjson may spell a small float without an exponent; the value read back is equal."""
    assert json.loads(compactjson.dumps({"x": x})) == {"x": x}


@pytest.mark.parametrize("x", [0.0, 1e-4, 0.123, 12.5, 1234.567, 1e16, 1e300])
def test_floats_from_1e4_up_are_spelled_as_the_stdlib_does(x: float) -> None:
    """Durations and the like (never below 1e-4) read as they always did."""
    assert compactjson.dumps([x, -x]) == stdlib([x, -x])


def test_nan_is_null_not_the_stdlibs_non_json_nan() -> None:
    """A line stays JSON any parser reads."""
    assert compactjson.dumps([math.nan, math.inf]) == b"[null,null]"


@pytest.mark.parametrize(
    "doc",
    [{1: "int key"}, {"big": 2**70}, {"t": ("a", 1)}],
    ids=["non-str-key", "int-past-64-bits", "tuple"],
)
def test_what_orjson_refuses_is_written_by_the_stdlib(doc: Any) -> None:
    """The same bytes as before for documents orjson will not take."""
    assert compactjson.dumps(doc) == stdlib(doc)


def test_a_lone_surrogate_raises_as_the_stdlib_did() -> None:
    """A path from a name that is not UTF-8 still raises UnicodeEncodeError for its caller."""
    with pytest.raises(UnicodeEncodeError):
        compactjson.dumps({"path": "/x/task-\udcff.result.json"})


def test_a_dataclass_or_datetime_is_refused_as_by_the_stdlib() -> None:
    """No silent new encodings: what the stdlib refuses, this refuses too."""
    with pytest.raises(TypeError):
        compactjson.dumps({"at": datetime.datetime(2026, 1, 1)})


@given(DOCS | st.lists(st.text()))
def test_ascii_bytes_are_the_stdlibs_default_escapes(doc: Any) -> None:
    """dumps_ascii is json.dumps(doc, separators=(",", ":")) for any text, surrogates too."""
    assert compactjson.dumps_ascii(doc) == json.dumps(doc, separators=(",", ":")).encode()
