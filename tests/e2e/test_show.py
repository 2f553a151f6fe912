"""`anu-watchd show TASK` beside the real, running daemon: one task's story and its next step."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.daemonproc import DaemonProc, wait_for
from tests.spool import Spool, python_exec_spool, valid_doc

# Registers every wake, unless the file "broken" exists next to it: then a permanent error.
HANDLER = """\
import os, sys
sys.stdin.read()
if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "broken")):
    sys.exit(1)
print("sched-1")
"""


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return python_exec_spool(tmp_path, HANDLER)


def show(spool: Spool, task: str) -> dict[str, Any]:
    out = spool.cli("show", task, "--json")
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def steps(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["source"], e["what"]) for e in doc["history"]]


def _verdicts(spool: Spool, task: str) -> list[str]:
    return [e["verdict"] for e in spool.evidence() if e["task_id"] == task]


def test_a_woken_task(spool: Spool, daemon: DaemonProc) -> None:
    """A woken task shows its result's sha256, CLAIMED then DONE, its wake, and awaits an ack."""
    path = spool.drop("task-1")
    wait_for(lambda: _verdicts(spool, "task-1") == ["WAKE_BUILT"], 20, "the wake")
    doc = show(spool, "task-1")
    assert doc["result"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    ledger = [e for e in doc["history"] if e["source"] == "ledger"]
    assert [e["what"] for e in ledger] == ["CLAIMED", "DONE"]
    assert ledger[-1]["schedule_id"] == "sched-1"
    assert ("evidence", "WAKE_BUILT") in steps(doc)
    assert ("marker", "done marker") in steps(doc)
    assert doc["receipt"] == "UNCONFIRMED"
    assert doc["next"]["state"] == "awaiting_ack"
    text = spool.cli("show", "task-1").stdout
    assert "next: awaiting_ack" in text and "CLAIMED" in text


def test_a_quarantined_then_fixed_task(spool: Spool, daemon: DaemonProc) -> None:
    """Quarantined: the reason and the release command; fixed and released: woken after it."""
    spool.drop("task-2", raw=b"{not json")
    wait_for(lambda: _verdicts(spool, "task-2") == ["QUARANTINE"], 20, "the quarantine")
    doc = show(spool, "task-2")
    assert doc["result"] is None
    [entry] = [e for e in doc["history"] if e["source"] == "quarantine"]
    assert entry["reason"] == "INVALID_JSON"
    assert doc["next"]["state"] == "quarantined"
    assert f"quarantine release {entry['name']}" in doc["next"]["say"]
    (spool.events / "quarantine" / entry["name"]).write_text(json.dumps(valid_doc("task-2")))
    assert spool.cli("quarantine", "release", entry["name"]).returncode == 0
    wait_for(lambda: _verdicts(spool, "task-2") == ["QUARANTINE", "WAKE_BUILT"], 20, "the wake")
    doc = show(spool, "task-2")
    # The release moved the entry back: the evidence line keeps the quarantine and its reason.
    assert [w for s, w in steps(doc) if s != "marker"] == [
        "QUARANTINE",
        "CLAIMED",
        "DONE",
        "WAKE_BUILT",
    ]
    assert doc["history"][0]["reason"] == "INVALID_JSON"
    assert doc["next"]["state"] == "awaiting_ack"


def test_a_failed_then_retried_task(spool: Spool, daemon: DaemonProc) -> None:
    """FIRE_FAILED says to run `retry`; after the retry the story runs on to DONE."""
    (spool.root / "broken").touch()
    spool.drop("task-3")
    wait_for(lambda: _verdicts(spool, "task-3") == ["FIRE_FAILED"], 20, "the failure")
    doc = show(spool, "task-3")
    assert doc["next"] == {
        "state": "failed",
        "say": "FIRE_FAILED: fix the cause, then run `anu-watchd retry task-3`",
    }
    (spool.root / "broken").unlink()
    assert spool.cli("retry", "task-3").returncode == 0
    wait_for(lambda: _verdicts(spool, "task-3") == ["FIRE_FAILED", "WAKE_BUILT"], 20, "the retry")
    doc = show(spool, "task-3")
    states = [e["what"] for e in doc["history"] if e["source"] == "ledger"]
    assert states == ["CLAIMED", "FAILED", "RETRY", "CLAIMED", "DONE"]
    assert [e["attempt"] for e in doc["history"] if e["source"] == "ledger"][-1] == 2
    assert doc["next"]["state"] == "awaiting_ack"


def test_an_acked_task(spool: Spool, daemon: DaemonProc) -> None:
    """Once the collector acks, the story ends with the ack and nothing more happens."""
    spool.drop("task-4")
    wait_for(lambda: _verdicts(spool, "task-4") == ["WAKE_BUILT"], 20, "the wake")
    assert spool.cli("ack", "task-4").returncode == 0
    wait_for(lambda: show(spool, "task-4")["receipt"] == "RECEIVED", 20, "the receipt")
    doc = show(spool, "task-4")
    assert steps(doc)[-1] == ("marker", "acked marker")
    assert doc["next"]["state"] == "acked"


def test_an_unknown_task_and_a_bad_id(spool: Spool) -> None:
    """A task nothing names is `unknown`; an id that is not a task id is a usage error."""
    assert show(spool, "task-none")["next"]["state"] == "unknown"
    assert spool.cli("show", "../etc").returncode == 64
