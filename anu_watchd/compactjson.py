"""Compact JSON for the lines and files written on every wake.

``dumps(doc)`` gives ``json.dumps(doc, ensure_ascii=False, separators=(",",
":"))`` in UTF-8, the form the ledger, the evidence log, markers and envelope
files have always had, made by orjson: ~4 us a ledger line with the stdlib,
~0.3 us with orjson, and a wake writes eight JSON documents. For strings,
ints, None, bools, lists and dicts the bytes are the stdlib's (a test holds
the two to it). A finite float parses back the same, but below 1e-4 orjson
writes it without an exponent (``0.00009999`` for ``9.999e-05``); NaN and
infinity, which the stdlib writes as the non-JSON ``NaN``, become ``null``.

What orjson refuses and the stdlib takes (a lone surrogate from a file name
that is not UTF-8, a non-str dict key, an int past 64 bits) goes to the
stdlib, so its caller sees the stdlib's bytes or the stdlib's exception, as
before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

# Types orjson serializes natively but the stdlib does not: left to the stdlib's TypeError
# (or to the caller's ``default``, as the stdlib would hand them).
_STDLIB_LIKE = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def dumps(doc: Any) -> bytes:
    """``doc`` as compact UTF-8 JSON."""
    try:
        return orjson.dumps(doc, option=_STDLIB_LIKE)
    except orjson.JSONEncodeError:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def dumps_ascii(doc: Any, *, default: Callable[[Any], Any] | None = None) -> bytes:
    """``json.dumps(doc, separators=(",", ":"), default=default)``: compact, ASCII, anything
    else escaped ``\\uXXXX`` (the log lines, the bytes an idempotency key hashes).

    orjson has no ASCII mode, but whenever its bytes are ASCII they are the stdlib's; a
    document with a non-ASCII character, or one orjson refuses, is the stdlib's.
    """
    try:
        out = orjson.dumps(doc, default=default, option=_STDLIB_LIKE)
        if out.isascii():
            return out
    except orjson.JSONEncodeError:
        pass
    return json.dumps(doc, default=default, separators=(",", ":")).encode("ascii")
