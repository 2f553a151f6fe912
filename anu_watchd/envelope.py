"""The callback envelope (docs/protocol.md, seed 002): build, update, fit, check.

Pure: values in, values out; no I/O, no clock (timestamps are passed in).
An envelope is a plain JSON dict with exactly the keys of ``KEYS``. The
order is build -> register -> update, so the envelope the sink sees records
only what is known *before* registering, and the final one the real outcome:

======================  =====  =====  ==========================  ===========  ================
transition              intent tried  registration_result_status  delivery     receipt
======================  =====  =====  ==========================  ===========  ================
build                   true   false  NOT_REGISTERED              PENDING      NOT_APPLICABLE
registered              true   true   REGISTERED (+ schedule id)  DELIVERED    UNCONFIRMED
 -> received            true   true   REGISTERED                  DELIVERED    RECEIVED
 -> timed_out           true   true   REGISTERED                  DELIVERED    TIMED_OUT
register_failed         true   true   REGISTER_FAILED (+ error)   UNDELIVERED  NOT_APPLICABLE
not_activated           true   false  SKIPPED_WITH_EXPLICIT_...   NOT_APPL.    NOT_APPLICABLE
(literal only)          true   false  SENDFILE_ONLY               NOT_APPL.    NOT_APPLICABLE
(literal only)          true   false  NOT_REGISTERED (env. only)  NOT_APPL.    NOT_APPLICABLE
======================  =====  =====  ==========================  ===========  ================

``check`` accepts exactly those states (plus ``registration_intent`` false
for an explicit SKIPPED exemption) and names every contradiction:

Shape (reported alone; the rules below need well-typed values):
 - not an object; a missing or unknown key; ``schema`` is not ``SCHEMA``;
 - a text field is not a string, a flag is not a bool, an optional field is
   neither null nor a non-empty string, a string holds a lone surrogate
   (not encodable as UTF-8);
 - an unknown enum value (the three status axes, ``status``,
   ``delivery_method``); ``task_id`` or ``result_sha256`` malformed.

Consistency:
 1. ``cron_schedule_id`` set unless REGISTERED (e.g. NOT_REGISTERED with one);
 2. REGISTERED without ``cron_schedule_id``;
 3. ``registered_at_ts`` set unless REGISTERED; 4. REGISTERED without it;
 5. not attempted but REGISTERED or REGISTER_FAILED;
 6. attempted but NOT_REGISTERED, SENDFILE_ONLY or SKIPPED (an attempt has
    an outcome);
 7. ``attempted_callback_registration`` != ``registration_attempted`` (the
    legacy field mirrors the axis);
 8. SENDFILE_ONLY with ``attempted_callback_registration`` true;
 9. ``registration_intent`` false but attempted; 10. intent false unless
    SKIPPED_WITH_EXPLICIT_REASON (an exemption is explicit);
 11. delivery vs result: DELIVERED unless REGISTERED, UNDELIVERED unless
     REGISTER_FAILED, PENDING unless NOT_REGISTERED (so never after an
     attempt), NOT_APPLICABLE with REGISTERED or REGISTER_FAILED;
 12. receipt vs delivery: RECEIVED, UNCONFIRMED or TIMED_OUT unless
     DELIVERED; NOT_APPLICABLE once DELIVERED;
 13. REGISTER_FAILED without ``error_message``; 14. SKIPPED without one
     (the reason); 15. REGISTERED with one.

``encode`` refuses an envelope that fails ``check`` and fits the rest into
``MAX_ENVELOPE_BYTES`` by truncating, marked, ``summary``, then
``error_message``, then ``result_path`` (keeping its tail: the file name is
the useful part). Nothing else is ever cut: ids, hashes and axes must stay
exact for the collector to act on them.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from anu_watchd import compactjson
from anu_watchd.errors import EnvelopeError
from anu_watchd.model import TASK_ID_RE, Result, TaskStatus

SCHEMA = "anu.callback-envelope/v1"
MAX_ENVELOPE_BYTES = 3900
SUMMARY_MAX_CHARS = 1000
TRUNCATION_MARKER = "…[truncated]"
NOT_ACTIVATED_REASON = "wake not activated"
DELIVERY_METHODS = ("exec", "http", "nats", "log")
# (field, keep the tail?) in the order encode gives them up.
TRUNCATABLE: tuple[tuple[str, bool], ...] = (
    ("summary", False),
    ("error_message", False),
    ("result_path", True),
)
Envelope = dict[str, Any]


class RegistrationResult(enum.StrEnum):
    """What the registration attempt (or the decision not to make one) came to."""

    REGISTERED = "REGISTERED"
    NOT_REGISTERED = "NOT_REGISTERED"
    REGISTER_FAILED = "REGISTER_FAILED"
    SENDFILE_ONLY = "SENDFILE_ONLY"
    SKIPPED_WITH_EXPLICIT_REASON = "SKIPPED_WITH_EXPLICIT_REASON"


class DeliveryStatus(enum.StrEnum):
    """Whether the wake reached the sink."""

    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    UNDELIVERED = "UNDELIVERED"
    NOT_APPLICABLE = "NOT_APPLICABLE"


class ReceiptStatus(enum.StrEnum):
    """Whether the collector acknowledged the wake."""

    UNCONFIRMED = "UNCONFIRMED"
    RECEIVED = "RECEIVED"
    TIMED_OUT = "TIMED_OUT"
    NOT_APPLICABLE = "NOT_APPLICABLE"


R = RegistrationResult
D = DeliveryStatus
C = ReceiptStatus
# Dense vocabulary tables read better than one name per line.
# fmt: off
_TEXT = ("schema", "task_id", "status", "executor", "collector", "summary", "result_path",
         "result_sha256", "idempotency_key", "delivery_method")
_OPTIONAL = ("cron_schedule_id", "registered_at_ts", "error_message")
_FLAGS = ("attempted_callback_registration", "registration_intent", "registration_attempted")
_AXES: Mapping[str, type[enum.StrEnum]] = {
    "registration_result_status": R,
    "callback_delivery_status": D,
    "collector_receipt_status": C,
}
# The order build() writes and encode() keeps, so files read naturally.
KEY_ORDER = (*_TEXT, "cron_schedule_id", "registered_at_ts", "attempted_callback_registration",
             "error_message", "registration_intent", "registration_attempted", *_AXES)
# fmt: on
KEYS = frozenset(KEY_ORDER)
# Which results each delivery state, and which deliveries each receipt state, may go with.
_DELIVERY_NEEDS: Mapping[D, frozenset[R]] = {
    D.DELIVERED: frozenset({R.REGISTERED}),
    D.UNDELIVERED: frozenset({R.REGISTER_FAILED}),
    D.PENDING: frozenset({R.NOT_REGISTERED}),
    D.NOT_APPLICABLE: frozenset(
        {R.NOT_REGISTERED, R.SENDFILE_ONLY, R.SKIPPED_WITH_EXPLICIT_REASON}
    ),
}
_RECEIPT_NEEDS: Mapping[C, frozenset[D]] = {
    C.UNCONFIRMED: frozenset({D.DELIVERED}),
    C.RECEIVED: frozenset({D.DELIVERED}),
    C.TIMED_OUT: frozenset({D.DELIVERED}),
    C.NOT_APPLICABLE: frozenset({D.PENDING, D.UNDELIVERED, D.NOT_APPLICABLE}),
}
_ATTEMPTED = frozenset({R.REGISTERED, R.REGISTER_FAILED})
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


# -- transitions -------------------------------------------------------------------------------


def build(
    result: Result, *, result_path: str, sha256: str, idempotency_key: str, delivery_method: str
) -> Envelope:
    """The envelope handed to the sink, before registering; never raises for a valid Result."""
    return {
        "schema": SCHEMA,
        "task_id": _clean(result.task_id),
        "status": str(result.status),
        "executor": _clean(result.executor),
        "collector": _clean(result.collector),
        "summary": _cut(_clean(result.summary), SUMMARY_MAX_CHARS, tail=False),
        "result_path": _clean(result_path),
        "result_sha256": sha256,
        "idempotency_key": idempotency_key,
        "delivery_method": delivery_method,
        "cron_schedule_id": None,
        "registered_at_ts": None,
        "attempted_callback_registration": False,
        "error_message": None,
        "registration_intent": True,
        "registration_attempted": False,
        "registration_result_status": str(R.NOT_REGISTERED),
        "callback_delivery_status": str(D.PENDING),
        "collector_receipt_status": str(C.NOT_APPLICABLE),
    }


def registered(env: Envelope, *, schedule_id: str, registered_at: str) -> Envelope:
    """The sink answered with a schedule id: REGISTERED, DELIVERED, receipt UNCONFIRMED."""
    _require_pending(env, "registered")
    if not schedule_id:
        raise EnvelopeError("REGISTERED needs a real schedule id; the sink returned none")
    if not registered_at:
        raise EnvelopeError("REGISTERED needs the registration time")
    return _attempt(
        env,
        R.REGISTERED,
        D.DELIVERED,
        C.UNCONFIRMED,
        cron_schedule_id=schedule_id,
        registered_at_ts=registered_at,
    )


def register_failed(env: Envelope, *, error: str) -> Envelope:
    """The sink gave up: REGISTER_FAILED with the error, UNDELIVERED."""
    _require_pending(env, "register_failed")
    # REGISTER_FAILED without a message is a contradiction; never lose the failure over it.
    message = _clean(error) or "registration failed without an error message"
    return _attempt(env, R.REGISTER_FAILED, D.UNDELIVERED, C.NOT_APPLICABLE, error_message=message)


def not_activated(env: Envelope) -> Envelope:
    """``wake.activated`` is false: explicitly skipped, nothing attempted or delivered."""
    _require_pending(env, "not_activated")
    return {
        **env,
        "registration_result_status": str(R.SKIPPED_WITH_EXPLICIT_REASON),
        "callback_delivery_status": str(D.NOT_APPLICABLE),
        "collector_receipt_status": str(C.NOT_APPLICABLE),
        "error_message": NOT_ACTIVATED_REASON,
    }


def received(env: Envelope) -> Envelope:
    """The collector acked: receipt RECEIVED (a late ack after TIMED_OUT still counts)."""
    receipt = env.get("collector_receipt_status")
    if env.get("callback_delivery_status") != D.DELIVERED or receipt == C.NOT_APPLICABLE:
        raise EnvelopeError(f"cannot mark {env.get('task_id')} RECEIVED: it was never delivered")
    return {**env, "collector_receipt_status": str(C.RECEIVED)}


def timed_out(env: Envelope) -> Envelope:
    """No ack within the TTL: receipt TIMED_OUT, only from DELIVERED + UNCONFIRMED."""
    delivered = env.get("callback_delivery_status") == D.DELIVERED
    if not (delivered and env.get("collector_receipt_status") == C.UNCONFIRMED):
        raise EnvelopeError(
            f"cannot time out {env.get('task_id')}: receipt is not UNCONFIRMED on a delivered wake"
        )
    return {**env, "collector_receipt_status": str(C.TIMED_OUT)}


def _attempt(env: Envelope, result: R, delivery: D, receipt: C, **fields: Any) -> Envelope:
    return {
        **env,
        "registration_attempted": True,
        "attempted_callback_registration": True,
        "registration_result_status": str(result),
        "callback_delivery_status": str(delivery),
        "collector_receipt_status": str(receipt),
        **fields,
    }


def _require_pending(env: Envelope, transition: str) -> None:
    # Only the envelope from build() may be settled; anything else is a pipeline bug.
    pending = env.get("callback_delivery_status") == D.PENDING
    if not (pending and env.get("registration_result_status") == R.NOT_REGISTERED):
        raise EnvelopeError(f"{transition}: the envelope is already settled, not pre-registration")


# -- check -------------------------------------------------------------------------------------


@attrs.frozen
class _Axes:
    """The well-typed fields the consistency rules look at."""

    intent: bool
    attempted: bool
    legacy_attempted: bool
    result: R
    delivery: D
    receipt: C
    schedule_id: str | None
    registered_at: str | None
    error: str | None

    @classmethod
    def of(cls, env: Envelope) -> _Axes:
        return cls(
            env["registration_intent"],
            env["registration_attempted"],
            env["attempted_callback_registration"],
            R(env["registration_result_status"]),
            D(env["callback_delivery_status"]),
            C(env["collector_receipt_status"]),
            env["cron_schedule_id"],
            env["registered_at_ts"],
            env["error_message"],
        )


def check(env: Any) -> list[str]:
    """Every contradiction in ``env`` as a sentence; ``[]`` means consistent."""
    problems = [] if _well_formed(env) else _shape_problems(env)
    if problems:
        return problems
    axes = _Axes.of(env)
    return [msg for rule in _RULES if (msg := rule(axes)) is not None]


def _well_formed(env: Any) -> bool:
    """True only when ``_shape_problems`` finds nothing: one pass, no sentences built.

    Every wake checks two envelopes; nearly all are well formed, and building the
    lists that say so cost ~40 us a check. Anything else takes the long way, which
    names the problems (a dict subclass too, which the long way may accept).
    """
    if type(env) is not dict or env.keys() != KEYS:
        return False
    for k in _TEXT:
        v = env[k]
        if not isinstance(v, str) or (not v.isascii() and _SURROGATE_RE.search(v)):
            return False
    for k in _OPTIONAL:
        v = env[k]
        if v is not None and not (
            isinstance(v, str) and v and (v.isascii() or not _SURROGATE_RE.search(v))
        ):
            return False
    for k in _FLAGS:
        if not isinstance(env[k], bool):
            return False
    for k, allowed in _ALLOWED_SETS.items():
        v = env[k]
        if not isinstance(v, str) or v not in allowed:
            return False
    return bool(TASK_ID_RE.fullmatch(env["task_id"])) and bool(
        _SHA256_RE.fullmatch(env["result_sha256"])
    )


def _shape_problems(env: Any) -> list[str]:
    if not isinstance(env, dict):
        return [f"an envelope is a JSON object, got {type(env).__name__}"]
    problems = [f"missing key {k!r}" for k in sorted(KEYS - env.keys())]
    problems += [f"unknown key {k!r}" for k in sorted(env.keys() - KEYS, key=str)]
    if problems:
        return problems
    problems += [f"{k} must be a string" for k in _TEXT if not isinstance(env[k], str)]
    problems += [
        f"{k} must be null or a non-empty string"
        for k in _OPTIONAL
        if env[k] is not None and not (isinstance(env[k], str) and env[k])
    ]
    problems += [f"{k} must be true or false" for k in _FLAGS if not isinstance(env[k], bool)]
    return problems or _value_problems(env)


# The closed vocabularies, built once: check() runs twice on every wake.
_ALLOWED: dict[str, tuple[str, ...]] = {k: tuple(e) for k, e in _AXES.items()} | {
    "status": tuple(TaskStatus),
    "delivery_method": DELIVERY_METHODS,
    "schema": (SCHEMA,),
}
_ALLOWED_SETS = {k: frozenset(v) for k, v in _ALLOWED.items()}


def _value_problems(env: Envelope) -> list[str]:
    problems = [
        f"{k} {env[k]!r} is not one of {', '.join(_ALLOWED[k])}"
        for k, v in _ALLOWED_SETS.items()
        if not isinstance(env[k], str) or env[k] not in v  # a list or object is unhashable
    ]
    if not TASK_ID_RE.fullmatch(env["task_id"]):
        problems.append("task_id is not a valid task id")
    if not _SHA256_RE.fullmatch(env["result_sha256"]):
        problems.append("result_sha256 is not a 64-character lowercase hex digest")
    problems += [
        f"{k} holds a lone surrogate (not encodable as UTF-8)"
        for k in (*_TEXT, *_OPTIONAL)
        if isinstance(env[k], str) and _SURROGATE_RE.search(env[k])
    ]
    return problems


def _schedule_id_only_if_registered(a: _Axes) -> str | None:
    if a.schedule_id is not None and a.result is not R.REGISTERED:
        return (
            f"cron_schedule_id is set but registration_result_status is {a.result}: "
            "only REGISTERED has a schedule id"
        )
    if a.schedule_id is None and a.result is R.REGISTERED:
        return "registration_result_status is REGISTERED without a cron_schedule_id"
    return None


def _registered_at_only_if_registered(a: _Axes) -> str | None:
    if a.registered_at is not None and a.result is not R.REGISTERED:
        return f"registered_at_ts is set but registration_result_status is {a.result}"
    if a.registered_at is None and a.result is R.REGISTERED:
        return "registration_result_status is REGISTERED without a registered_at_ts"
    return None


def _attempt_has_outcome(a: _Axes) -> str | None:
    if not a.attempted and a.result in _ATTEMPTED:
        return f"registration_attempted is false but registration_result_status is {a.result}"
    if a.attempted and a.result not in _ATTEMPTED:
        return (
            f"registration_attempted is true but registration_result_status is {a.result}: "
            "an attempt ends REGISTERED or REGISTER_FAILED"
        )
    return None


def _legacy_flag_mirrors_axis(a: _Axes) -> str | None:
    if a.legacy_attempted != a.attempted:
        return (
            f"attempted_callback_registration ({str(a.legacy_attempted).lower()}) "
            f"contradicts registration_attempted ({str(a.attempted).lower()})"
        )
    return None


def _sendfile_only_never_attempted(a: _Axes) -> str | None:
    if a.result is R.SENDFILE_ONLY and a.legacy_attempted:
        return "registration_result_status is SENDFILE_ONLY but attempted_callback_registration"
    return None


def _intent(a: _Axes) -> str | None:
    if not a.intent and a.attempted:
        return "registration_intent is false but a registration was attempted"
    if not a.intent and a.result is not R.SKIPPED_WITH_EXPLICIT_REASON:
        return (
            f"registration_intent is false but registration_result_status is {a.result}: "
            "an exemption is SKIPPED_WITH_EXPLICIT_REASON"
        )
    return None


def _delivery_matches_result(a: _Axes) -> str | None:
    needs = _DELIVERY_NEEDS[a.delivery]
    if a.result in needs:
        return None
    return (
        f"callback_delivery_status {a.delivery} contradicts registration_result_status "
        f"{a.result}: {a.delivery} requires {' or '.join(sorted(needs))}"
    )


def _receipt_matches_delivery(a: _Axes) -> str | None:
    needs = _RECEIPT_NEEDS[a.receipt]
    if a.delivery in needs:
        return None
    return (
        f"collector_receipt_status {a.receipt} contradicts callback_delivery_status "
        f"{a.delivery}: {a.receipt} requires {' or '.join(sorted(needs))}"
    )


def _error_message(a: _Axes) -> str | None:
    if a.error is None and a.result is R.REGISTER_FAILED:
        return "registration_result_status is REGISTER_FAILED without an error_message"
    if a.error is None and a.result is R.SKIPPED_WITH_EXPLICIT_REASON:
        return "SKIPPED_WITH_EXPLICIT_REASON without the reason in error_message"
    if a.error is not None and a.result is R.REGISTERED:
        return "registration_result_status is REGISTERED but error_message is set"
    return None


_RULES: tuple[Callable[[_Axes], str | None], ...] = (
    _schedule_id_only_if_registered,
    _registered_at_only_if_registered,
    _attempt_has_outcome,
    _legacy_flag_mirrors_axis,
    _sendfile_only_never_attempted,
    _intent,
    _delivery_matches_result,
    _receipt_matches_delivery,
    _error_message,
)


# -- encode / decode ---------------------------------------------------------------------------


def encode(env: Envelope) -> bytes:
    """Compact UTF-8 JSON of a consistent envelope, text truncated to fit the byte limit."""
    problems = check(env)
    if problems:
        raise EnvelopeError("inconsistent envelope: " + "; ".join(problems))
    canon = {k: env[k] for k in KEY_ORDER}
    body = _dump(canon)
    for field, tail in TRUNCATABLE:
        if len(body) <= MAX_ENVELOPE_BYTES:
            break
        canon = _fit_field(canon, field, tail=tail)
        body = _dump(canon)
    if len(body) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(
            f"envelope for {env['task_id']} is {len(body)} bytes after truncating summary, "
            f"error_message and result_path; the limit is {MAX_ENVELOPE_BYTES} bytes"
        )
    return body


def decode(data: bytes) -> Envelope:
    """Parse an envelope written by ``encode``; EnvelopeError if unreadable or inconsistent."""
    try:
        env = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EnvelopeError(f"envelope is not UTF-8 JSON: {exc}") from None
    problems = check(env)
    if problems:
        raise EnvelopeError("inconsistent envelope: " + "; ".join(problems))
    return dict(env)


def _dump(env: Envelope) -> bytes:
    return compactjson.dumps(env)


def _fit_field(env: Envelope, field: str, *, tail: bool) -> Envelope:
    """Cut ``field`` to the most code points that fit; its smallest form if none do."""
    text = env[field]
    if text is None:
        return env

    def size(keep: int) -> int:
        return len(_dump({**env, field: _cut(text, keep, tail=tail)}))

    if size(0) > MAX_ENVELOPE_BYTES:
        # This field alone cannot save it: leave it at its smallest and let the next one try.
        return env if size(len(text)) <= size(0) else {**env, field: TRUNCATION_MARKER}
    lo, hi = 0, len(text)
    while lo < hi:  # the largest keep that fits; size() grows with keep
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size(mid) <= MAX_ENVELOPE_BYTES else (lo, mid - 1)
    return {**env, field: _cut(text, lo, tail=tail)}


def _cut(text: str, keep: int, *, tail: bool) -> str:
    """``text`` shortened to ``keep`` code points plus the marker (never mid-character)."""
    if len(text) <= keep:
        return text
    return TRUNCATION_MARKER + text[len(text) - keep :] if tail else text[:keep] + TRUNCATION_MARKER


def _clean(text: str) -> str:
    # A JSON \ud800 escape or a surrogateescape'd path would make the envelope unencodable.
    return _SURROGATE_RE.sub("\ufffd", text)
