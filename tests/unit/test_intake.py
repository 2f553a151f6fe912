"""Tests for intake's pure name classification."""

from __future__ import annotations

import pytest

from anu_watchd.intake import Kind, classify

GLOB = "task-*.result.json"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("task-7.result.json", (Kind.RESULT, None)),
        ("task-7.pickup.acked", (Kind.ACKED, "task-7")),
        ("task-7.pickup.retry", (Kind.RETRY, "task-7")),
        ("task-.pickup.acked", None),
        ("task-\n.pickup.retry", None),
        ("task-7.pickup.done", None),
        ("task-7.pickup.failed", None),
        ("task-7.callback-envelope.json", None),
        (".tmp-task-7.result.json.0123456789ab", None),
        (".tmp-task-7.pickup.acked.0123456789ab", None),
        ("ledger.jsonl", None),
        ("other.json", None),
    ],
)
def test_classify(name: str, expected: tuple[Kind, str | None] | None) -> None:
    """Results, acks and retry requests are work; the daemon's own files and temps are not."""
    assert classify(name, GLOB) == expected


def test_classify_follows_the_configured_glob() -> None:
    """A name outside the result glob is not a result, whatever it ends with."""
    assert classify("task-7.result.json", "job-*.result.json") is None
