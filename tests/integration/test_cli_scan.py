"""The one-shot pipeline through the real CLI over a real spool (issue 2's done-when)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.spool import Spool, json_lines, valid_doc


def _by_task(out: str) -> dict[str, dict[str, object]]:
    return {str(line["task_id"] or line["path"]): line for line in json_lines(out)}


def test_scan_prints_the_verdict_and_reason_for_each_file(spool: Spool) -> None:
    """scan --once --json: WAKE_BUILT for valid results, QUARANTINE with a reason otherwise."""
    spool.drop("task-ok1")
    spool.drop("task-ok2", valid_doc("task-ok2", status="PARTIAL", commit="abcdef1"))
    spool.drop("task-bad", raw=b"{not json")
    spool.drop("task-mis", valid_doc("task-other"))
    spool.drop("task-foreign", valid_doc("task-foreign", collector="someone"))
    spool.drop("task-self", valid_doc("task-self", collector="dev2"))
    spool.drop("task-key", raw=json.dumps(valid_doc("task-key", summary=spool.key)).encode())
    res = spool.cli("scan", "--once", "--json")
    assert res.returncode == 0, res.stderr
    got = {k: (v["verdict"], v["reason"]) for k, v in _by_task(res.stdout).items()}
    assert got == {
        "task-ok1": ("WAKE_BUILT", None),
        "task-ok2": ("WAKE_BUILT", None),
        "task-bad": ("QUARANTINE", "INVALID_JSON"),
        "task-mis": ("QUARANTINE", "TASK_ID_MISMATCH"),
        "task-foreign": ("QUARANTINE", "FOREIGN_COLLECTOR"),
        "task-self": ("QUARANTINE", "SELF_COLLECTOR"),
        "task-key": ("QUARANTINE", "KEY_LITERAL"),
    }
    assert spool.marker("task-ok1") is not None
    assert (spool.events / "task-ok1.callback-envelope.json").exists()
    assert not (spool.events / "task-bad.result.json").exists()
    assert {q["reason"] for q in spool.quarantined()} >= {"INVALID_JSON", "KEY_LITERAL"}
    assert spool.key not in res.stdout + res.stderr


def test_second_scan_wakes_nothing_new(spool: Spool) -> None:
    """A second scan over settled results runs nothing and adds no ledger line."""
    spool.drop("task-1")
    spool.drop("task-2")
    assert spool.cli("scan", "--once", "--json").returncode == 0
    ledger_before, evidence_before = spool.ledger_lines(), spool.evidence()
    res = spool.cli("scan", "--once", "--json")
    assert res.returncode == 0 and res.stdout == ""
    assert spool.ledger_lines() == ledger_before
    assert spool.evidence() == evidence_before


def test_rewritten_result_with_new_bytes_is_woken_again(spool: Spool) -> None:
    """New bytes make a new 4-tuple: woken again, the done marker replaced."""
    spool.drop("task-1")
    spool.cli("scan", "--once")
    first = spool.marker("task-1")
    spool.drop("task-1", valid_doc("task-1", summary="second try"))
    res = spool.cli("scan", "--once", "--json")
    assert [line["verdict"] for line in json_lines(res.stdout)] == ["WAKE_BUILT"]
    second = spool.marker("task-1")
    assert first and second and first["sha256"] != second["sha256"]
    done = [e for e in spool.ledger_lines() if e["state"] == "DONE"]
    assert len(done) == 2 and done[0]["key"] != done[1]["key"]


def test_same_bytes_again_are_skipped_and_lost_projections_are_rebuilt(spool: Spool) -> None:
    """pickup of a woken result says PICKUP_SKIP and rebuilds a deleted marker and envelope."""
    path = spool.drop("task-1")
    spool.cli("scan", "--once")
    envelope_file = spool.events / "task-1.callback-envelope.json"
    original_envelope = json.loads(envelope_file.read_text())
    (spool.events / "task-1.pickup.done").unlink()
    envelope_file.unlink()
    res = spool.cli("pickup", str(path), "--json")
    assert res.returncode == 0, res.stderr
    assert json_lines(res.stdout)[0]["verdict"] == "PICKUP_SKIP"
    marker = spool.marker("task-1")
    assert marker is not None and marker["inode"] == path.stat().st_ino
    assert sum(e["state"] == "DONE" for e in spool.ledger_lines()) == 1
    assert json.loads(envelope_file.read_text()) == original_envelope


def test_ledger_survives_a_torn_last_line(spool: Spool) -> None:
    """A half-written last ledger line is truncated on start and the scan carries on."""
    spool.drop("task-1")
    spool.cli("scan", "--once")
    ledger = spool.events / "callback_4tuple_index.jsonl"
    good = ledger.read_bytes()
    with open(ledger, "ab") as fh:
        fh.write(b'{"v":1,"key":"ik1-torn","task_')
    spool.drop("task-2")
    res = spool.cli("scan", "--once", "--json")
    assert res.returncode == 0, res.stderr
    assert [line["task_id"] for line in json_lines(res.stdout)] == ["task-2"]
    assert ledger.read_bytes().startswith(good)
    assert all(line.endswith("}") for line in ledger.read_text().splitlines())


def test_corrupt_middle_ledger_line_is_fatal_and_named(spool: Spool) -> None:
    """A corrupt complete line in the middle of the ledger stops with exit 70 naming the line."""
    spool.drop("task-1")
    spool.cli("scan", "--once")
    ledger = spool.events / "callback_4tuple_index.jsonl"
    lines = ledger.read_text().splitlines()
    ledger.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    res = spool.cli("scan", "--once")
    assert res.returncode == 70
    assert ":2" in res.stderr


def test_disabled_driver_touches_nothing(tmp_path: Path) -> None:
    """With the enable flag absent, a scan leaves the spool exactly as it was."""
    spool = Spool(tmp_path, enabled=False)
    spool.drop("task-1")
    spool.drop("task-bad", raw=b"nope")
    before = sorted(os.listdir(spool.events))
    res = spool.cli("scan", "--once", "--json")
    assert res.returncode == 0 and res.stdout == ""
    assert sorted(os.listdir(spool.events)) == before


def test_not_activated_builds_the_envelope_but_writes_only_evidence(tmp_path: Path) -> None:
    """activated = false gives FIRE_NOT_ACTIVATED: evidence only; it fires once activated."""
    spool = Spool(tmp_path, activated=False)
    spool.drop("task-1")
    res = spool.cli("scan", "--once", "--json")
    assert [line["verdict"] for line in json_lines(res.stdout)] == ["FIRE_NOT_ACTIVATED"]
    assert spool.ledger_lines() == [] and spool.marker("task-1") is None
    assert not (spool.events / "task-1.callback-envelope.json").exists()
    assert [e["verdict"] for e in spool.evidence()] == ["FIRE_NOT_ACTIVATED"]
    spool.write_config(activated=True)
    res = spool.cli("scan", "--once", "--json")
    assert [line["verdict"] for line in json_lines(res.stdout)] == ["WAKE_BUILT"]


def test_scan_refuses_while_the_lock_is_held(spool: Spool) -> None:
    """scan --once exits 75 while another process holds the instance lock."""
    from anu_watchd.locks import InstanceLock

    with InstanceLock(spool.root / "memory" / "state" / "anu-watchd.lock", role="run"):
        res = spool.cli("scan", "--once")
    assert res.returncode == 75
    assert "another instance" in res.stderr


def test_invalid_config_exits_78(spool: Spool) -> None:
    """check-config and scan both exit 78 on an invalid config, naming the key."""
    spool.config.write_text('[wake]\nattempts = "three"\n')
    for args in (["check-config"], ["scan", "--once"]):
        res = spool.cli(*args)
        assert res.returncode == 78
        assert "wake.attempts" in res.stderr


def test_hostile_files_at_marker_paths_neither_block_nor_stop_a_scan(spool: Spool) -> None:
    """A FIFO (no writer) at one task's done marker and a nesting bomb at another's: the scan
    reads neither as a marker, wakes both results and replaces both with real markers."""
    os.mkfifo(spool.events / "task-1.pickup.done")
    (spool.events / "task-2.pickup.done").write_text("[" * 20_000)
    spool.drop("task-1")
    spool.drop("task-2")
    res = spool.cli("scan", "--once", "--json", timeout=30)
    assert res.returncode == 0, res.stderr
    assert {t: line["verdict"] for t, line in _by_task(res.stdout).items()} == {
        "task-1": "WAKE_BUILT",
        "task-2": "WAKE_BUILT",
    }
    for task in ("task-1", "task-2"):
        marker = spool.marker(task)
        assert marker is not None and marker["verdict"] == "WAKE_BUILT"


def test_an_ack_for_an_envelope_with_an_object_status_is_ignored_not_fatal(spool: Spool) -> None:
    """An envelope file whose collector_receipt_status is an object (planted, not ours) is
    unreadable to the receipt sweep: an ack for it changes nothing and the scan exits 0."""
    spool.drop("task-1")
    assert spool.cli("scan", "--once").returncode == 0
    stored = spool.events / "task-1.callback-envelope.json"
    doc = json.loads(stored.read_bytes())
    doc["collector_receipt_status"] = {"planted": True}
    planted = json.dumps(doc)
    stored.write_text(planted)
    assert spool.cli("ack", "task-1").returncode == 0
    res = spool.cli("scan", "--once", "--json")
    assert res.returncode == 0, res.stderr
    assert stored.read_text() == planted


@pytest.mark.parametrize("attempts", ["{}", '"x"', "1e400", "-3", "null"])
def test_a_planted_marker_with_a_bad_attempts_field_is_repaired_not_fatal(
    spool: Spool, attempts: str
) -> None:
    """A done marker carrying the wake's key but an ``attempts`` that is no count is
    rewritten from the ledger (attempts from the ledger), and the scan exits 0."""
    spool.drop("task-1")
    assert spool.cli("scan", "--once").returncode == 0
    marker = spool.marker("task-1")
    assert marker is not None
    planted = f'{{"idempotency_key": "{marker["idempotency_key"]}", "attempts": {attempts}}}'
    (spool.events / "task-1.pickup.done").write_text(planted)
    res = spool.cli("scan", "--once", "--json")
    assert res.returncode == 0, res.stderr
    assert _by_task(res.stdout)["task-1"]["verdict"] == "PICKUP_SKIP"
    repaired = spool.marker("task-1")
    assert repaired is not None
    assert (repaired["verdict"], repaired["attempts"]) == ("WAKE_BUILT", 1)


def test_directories_planted_at_state_paths_are_quarantined_and_the_result_woken(
    spool: Spool,
) -> None:
    """Directories where the done and failed markers, the envelope and the ack go would make
    every rename or unlink there fail (exit 70 at every start): each is quarantined as
    NOT_REGULAR_FILE, and the result is woken as usual."""
    suffixes = (".pickup.done", ".pickup.failed", ".callback-envelope.json", ".pickup.acked")
    for suffix in suffixes:
        (spool.events / f"task-1{suffix}").mkdir()
        (spool.events / f"task-1{suffix}" / "inside").write_text("kept")
    spool.drop("task-1")
    res = spool.cli("scan", "--once", "--json")
    assert res.returncode == 0, res.stderr
    assert _by_task(res.stdout)["task-1"]["verdict"] == "WAKE_BUILT"
    marker = spool.marker("task-1")
    assert marker is not None and marker["verdict"] == "WAKE_BUILT"
    reasons = [q["reason"] for q in spool.quarantined()]
    assert reasons == ["NOT_REGULAR_FILE"] * len(suffixes)
    moved = [p for p in (spool.events / "quarantine").iterdir() if p.is_dir()]
    assert sorted((p / "inside").read_text() for p in moved) == ["kept"] * len(suffixes)
