"""Issue 4 through the real CLI: exec and HTTP sinks, bounded retries, escalation, retry, acks.

Every sink here is real: the recording exec command from ``tests.sinkhelpers``
runs as a subprocess under the sink's clean environment, and the HTTP sink
talks to a ThreadingHTTPServer on 127.0.0.1 that verifies the signature.
After every test, every ``*.callback-envelope.json`` the test produced must
pass ``envelope.check``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from anu_watchd import envelope, fsio, reconcile
from anu_watchd.config import load_config
from anu_watchd.model import LedgerState
from anu_watchd.pipeline import Pipeline
from anu_watchd.receipts import ReceiptWatch
from anu_watchd.runtime import open_pipeline
from anu_watchd.secret import load_key
from anu_watchd.spool import TaskFiles
from anu_watchd.stages import Stages
from tests.deadline import until
from tests.fsyncgate import FsyncGate
from tests.sinkhelpers import (
    TestHttpServer,
    call_spans,
    child_is_gone,
    most_at_once,
    read_sink_calls,
    set_sink_behaviour,
)
from tests.sinkhelpers import write_recording_sink as write_sink
from tests.spool import Spool, json_lines, valid_doc

# What the exec sink's child may see: built from nothing, never inherited (docs/protocol.md).
CHILD_ENV_KEYS = {"PATH", "LANG", "ANU_WATCHD_KEY_FILE", "ANU_WATCHD_IDEMPOTENCY_KEY"}
ESCALATION_KEYS = {"task_id", "verdict", "reason", "error", "attempts", "idempotency_key", "ts"}


@attrs.frozen
class Recorders:
    """Where each recording command keeps its calls."""

    sink: Path
    update: Path
    escalate: Path

    def calls(self) -> list[dict[str, Any]]:
        return read_sink_calls(self.sink)

    def updates(self) -> list[dict[str, Any]]:
        return read_sink_calls(self.update)

    def escalations(self) -> list[dict[str, Any]]:
        return [json.loads(c["stdin"]) for c in read_sink_calls(self.escalate)]


def toml_list(argv: list[str]) -> str:
    return json.dumps(argv)  # a JSON array of plain strings is a TOML array


def exec_wake(
    spool: Spool,
    *,
    behaviour: str = "ok",
    attempts: int = 3,
    activated: bool = True,
    update: bool = True,
    timeout_s: float = 10.0,
    escalate_argv: list[str] | None = None,
    more: str = "",
) -> Recorders:
    """Configure the exec sink (and update and escalation commands) as recording scripts."""
    rec = Recorders(spool.root / "sink", spool.root / "update", spool.root / "escalate")
    argv = write_sink(rec.sink, behaviour=behaviour)
    update_argv = write_sink(rec.update, behaviour="ok") if update else []
    if escalate_argv is None:
        escalate_argv = write_sink(rec.escalate, behaviour="ok")
    spool.write_config(
        activated=activated,
        sink="exec",
        wake_extra=(
            f"attempts = {attempts}\ntimeout_s = {timeout_s}\n"
            f"escalate_argv = {toml_list(escalate_argv)}\n"
            f"exec.argv = {toml_list(argv)}\nexec.update_argv = {toml_list(update_argv)}\n{more}"
        ),
    )
    return rec


def http_wake(spool: Spool, url: str, *, attempts: int = 3) -> Recorders:
    """Configure the HTTP sink against ``url`` with a recording escalation command."""
    rec = Recorders(spool.root / "sink", spool.root / "update", spool.root / "escalate")
    escalate_argv = write_sink(rec.escalate, behaviour="ok")
    spool.write_config(
        sink="http",
        wake_extra=(
            f"attempts = {attempts}\ntimeout_s = 10.0\n"
            f"escalate_argv = {toml_list(escalate_argv)}\nhttp.url = {json.dumps(url)}\n"
        ),
    )
    return rec


def stored_envelope(spool: Spool, task_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        (spool.events / f"{task_id}.callback-envelope.json").read_bytes()
    )
    return doc


def verdicts(stdout: str) -> dict[str, str]:
    return {str(line["task_id"]): str(line["verdict"]) for line in json_lines(stdout)}


def log_events(stderr: str, name: str) -> list[dict[str, Any]]:
    out = []
    for line in stderr.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("event") == name:
            out.append(doc)
    return out


def assert_all_envelopes_valid(root: Path) -> int:
    """Every envelope file under ``root`` passes the validator; returns how many there were."""
    found = sorted(root.rglob("*.callback-envelope.json"))
    for path in found:
        assert envelope.check(json.loads(path.read_bytes())) == [], path
    return len(found)


@pytest.fixture(autouse=True)
def every_envelope_passes_check(tmp_path: Path) -> Iterator[None]:
    yield
    assert_all_envelopes_valid(tmp_path)


# -- exec: the happy path ----------------------------------------------------------------


def test_exec_sink_gets_the_envelope_on_stdin_and_only_a_clean_environment(spool: Spool) -> None:
    """scan --once with the exec sink: WAKE_BUILT, envelope on stdin, nothing inherited."""
    rec = exec_wake(spool)
    spool.drop("task-1")
    res = spool.cli("scan", "--once", "--json", env={"ANU_TEST_CANARY": "inherited-canary"})
    assert res.returncode == 0, res.stderr
    assert verdicts(res.stdout) == {"task-1": "WAKE_BUILT"}
    [call] = rec.calls()
    sent = json.loads(call["stdin"])
    assert envelope.check(sent) == []
    assert sent["registration_result_status"] == "NOT_REGISTERED"
    assert sent["callback_delivery_status"] == "PENDING"
    assert set(call["env"]) <= CHILD_ENV_KEYS
    assert call["env"]["ANU_WATCHD_KEY_FILE"] == str(spool.key_file)
    assert "inherited-canary" not in json.dumps(call["env"])
    ledger = spool.ledger_lines()
    key = ledger[0]["key"]
    assert [e["state"] for e in ledger] == ["CLAIMED", "DONE"]
    assert ledger[1]["schedule_id"] == "S-1"
    assert sent["idempotency_key"] == key == call["env"]["ANU_WATCHD_IDEMPOTENCY_KEY"]


def test_schedule_id_lands_in_marker_ledger_envelope_and_update(spool: Spool) -> None:
    """The sink's schedule id is in the marker and the REGISTERED envelope, pushed to update."""
    rec = exec_wake(spool)
    spool.drop("task-1")
    assert spool.cli("scan", "--once").returncode == 0
    marker = spool.marker("task-1")
    assert marker is not None
    assert marker["verdict"] == "WAKE_BUILT"
    assert (marker["schedule_id"], marker["attempts"]) == ("S-1", 1)
    final = stored_envelope(spool, "task-1")
    assert final["registration_result_status"] == "REGISTERED"
    assert final["callback_delivery_status"] == "DELIVERED"
    assert final["collector_receipt_status"] == "UNCONFIRMED"
    assert final["cron_schedule_id"] == "S-1" and final["registered_at_ts"]
    assert final["idempotency_key"] == marker["idempotency_key"]
    [update] = rec.updates()
    assert json.loads(update["stdin"]) == final
    assert set(update["env"]) <= CHILD_ENV_KEYS


# -- retries and failure -----------------------------------------------------------------


def test_transient_failures_then_success_is_woken_on_the_last_attempt(spool: Spool) -> None:
    """Exit 75 twice, then ok, with attempts = 3: WAKE_BUILT after 3 calls, same key each time."""
    rec = exec_wake(spool, behaviour="tempfail-then-ok:2", attempts=3)
    spool.drop("task-1")
    res = spool.cli("scan", "--once", "--json")
    assert verdicts(res.stdout) == {"task-1": "WAKE_BUILT"}
    calls = rec.calls()
    assert len(calls) == 3
    assert len({c["env"]["ANU_WATCHD_IDEMPOTENCY_KEY"] for c in calls}) == 1
    [evidence] = spool.evidence()
    assert (evidence["verdict"], evidence["attempts"]) == ("WAKE_BUILT", 3)
    marker = spool.marker("task-1")
    assert marker is not None and (marker["attempts"], marker["schedule_id"]) == (3, "S-3")
    assert len(log_events(res.stderr, "wake_retrying")) == 2
    assert rec.escalations() == []


def test_always_transient_fails_after_exactly_attempts_calls_and_escalates_once(
    spool: Spool,
) -> None:
    """Exit 75 every time: `attempts` calls, FIRE_FAILED, failed marker, critical log, one
    escalation with the documented JSON on stdin, and a later scan repeats none of it."""
    rec = exec_wake(spool, behaviour="tempfail", attempts=4)
    spool.drop("task-1")
    res = spool.cli("scan", "--once", "--json")
    assert verdicts(res.stdout) == {"task-1": "FIRE_FAILED"}
    assert len(rec.calls()) == 4
    ledger = spool.ledger_lines()
    assert [e["state"] for e in ledger] == ["CLAIMED", "FAILED"]
    failed = spool.marker("task-1", ".pickup.failed")
    assert failed is not None and spool.marker("task-1") is None
    assert failed["verdict"] == "FIRE_FAILED" and failed["attempts"] == 4
    assert "exited 75" in failed["error"] and "collector busy" in failed["error"]
    [critical] = log_events(res.stderr, "wake_failed")
    assert critical["level"] == "critical" and critical["task_id"] == "task-1"
    env = stored_envelope(spool, "task-1")
    assert env["registration_result_status"] == "REGISTER_FAILED"
    assert env["callback_delivery_status"] == "UNDELIVERED"
    assert env["cron_schedule_id"] is None and "exited 75" in env["error_message"]
    [doc] = rec.escalations()
    assert set(doc) == ESCALATION_KEYS
    assert (doc["task_id"], doc["verdict"], doc["attempts"]) == ("task-1", "FIRE_FAILED", 4)
    assert doc["idempotency_key"] == ledger[0]["key"] and "exited 75" in doc["error"]
    assert doc["reason"] and doc["ts"].endswith("Z")
    again = spool.cli("scan", "--once", "--json")
    assert again.returncode == 0 and again.stdout == ""
    assert len(rec.calls()) == 4 and len(rec.escalations()) == 1


def test_permanent_failure_is_not_retried(spool: Spool) -> None:
    """A non-zero exit other than 75 is permanent: one call, FIRE_FAILED, one escalation."""
    rec = exec_wake(spool, behaviour="fail", attempts=3)
    spool.drop("task-1")
    res = spool.cli("scan", "--once", "--json")
    assert verdicts(res.stdout) == {"task-1": "FIRE_FAILED"}
    assert len(rec.calls()) == 1
    failed = spool.marker("task-1", ".pickup.failed")
    assert failed is not None and failed["attempts"] == 1 and "exited 3" in failed["error"]
    assert [d["attempts"] for d in rec.escalations()] == [1]
    assert rec.updates() == []  # a failed registration has nothing to update


def test_a_hanging_command_times_out_is_retried_then_fails(spool: Spool) -> None:
    """A command past timeout_s is transient: retried up to attempts, then FIRE_FAILED, and
    neither it nor its grandchild is left running."""
    rec = exec_wake(spool, behaviour="hang", attempts=2, timeout_s=2.0)
    spool.drop("task-1")
    res = spool.cli("scan", "--once", "--json")
    assert verdicts(res.stdout) == {"task-1": "FIRE_FAILED"}, res.stderr
    calls = rec.calls()
    assert len(calls) == 2
    assert all(child_is_gone(c["pid"]) and child_is_gone(c["grandchild_pid"]) for c in calls)
    failed = spool.marker("task-1", ".pickup.failed")
    assert failed is not None and failed["attempts"] == 2 and "timed out" in failed["error"]


# -- retry TASK --------------------------------------------------------------------------


def test_retry_without_a_daemon_reruns_the_failed_task_with_the_same_key(spool: Spool) -> None:
    """retry TASK: ledger RETRY, failed marker removed, re-run with the same key, WAKE_BUILT."""
    rec = exec_wake(spool, behaviour="fail")
    spool.drop("task-1")
    spool.cli("scan", "--once")
    set_sink_behaviour(rec.sink, "ok")
    res = spool.cli("retry", "task-1", "--json")
    assert res.returncode == 0, res.stderr
    assert verdicts(res.stdout) == {"task-1": "WAKE_BUILT"}
    ledger = spool.ledger_lines()
    assert [e["state"] for e in ledger] == ["CLAIMED", "FAILED", "RETRY", "CLAIMED", "DONE"]
    assert len({e["key"] for e in ledger}) == 1
    first, second = rec.calls()
    assert json.loads(first["stdin"])["idempotency_key"] == ledger[0]["key"]
    assert json.loads(second["stdin"])["idempotency_key"] == ledger[0]["key"]
    assert spool.marker("task-1", ".pickup.failed") is None
    assert not (spool.events / "task-1.pickup.retry").exists()
    done = spool.marker("task-1")
    assert done is not None and done["idempotency_key"] == ledger[0]["key"]
    assert stored_envelope(spool, "task-1")["registration_result_status"] == "REGISTERED"


def test_retry_of_a_task_that_is_not_failed_is_a_usage_error(spool: Spool) -> None:
    """retry of a woken task, or of an unknown one, exits 64 and writes nothing."""
    exec_wake(spool)
    spool.drop("task-1")
    spool.cli("scan", "--once")
    before = spool.ledger_lines()
    for task in ("task-1", "task-unknown"):
        res = spool.cli("retry", task)
        assert res.returncode == 64, res.stderr
        assert "not FIRE_FAILED" in res.stderr
    assert spool.ledger_lines() == before
    assert not list(spool.events.glob("*.pickup.retry"))


def test_retry_of_a_task_whose_result_file_is_gone_exits_66_and_stays_failed(
    spool: Spool,
) -> None:
    """retry of a FIRE_FAILED task whose result was deleted: 66 naming the path; the ledger
    keeps FAILED, the failed marker stays, and no RETRY is left to re-fire at every start."""
    exec_wake(spool, behaviour="fail")
    path = spool.drop("task-1")
    spool.cli("scan", "--once")
    path.unlink()
    res = spool.cli("retry", "task-1")
    assert res.returncode == 66, res.stderr
    assert str(path) in res.stderr
    assert [e["state"] for e in spool.ledger_lines()] == ["CLAIMED", "FAILED"]
    assert spool.marker("task-1", ".pickup.failed") is not None
    assert not (spool.events / "task-1.pickup.retry").exists()


async def test_a_retry_request_for_a_vanished_result_leaves_the_task_failed(spool: Spool) -> None:
    """The daemon's side: a retry request consumed after the result was deleted is refused
    (logged), removed, and the task stays FAILED with its marker."""
    exec_wake(spool, behaviour="fail")
    path = spool.drop("task-1")
    spool.cli("scan", "--once")
    path.unlink()
    files = TaskFiles(spool.events, "task-1")
    reconcile.request_retry(files, "2026-01-01T00:00:00Z")
    config = load_config(spool.config)
    async with open_pipeline(config, load_key(str(spool.key_file))) as pipeline:
        assert await reconcile.pending_retry_paths(pipeline.stages) == []
    assert [e["state"] for e in spool.ledger_lines()] == ["CLAIMED", "FAILED"]
    assert spool.marker("task-1", ".pickup.failed") is not None
    assert not files.retry.exists()


async def test_a_retry_stuck_with_its_result_gone_is_settled_failed_at_start(
    spool: Spool,
) -> None:
    """A RETRY line whose result vanished before its re-run (an older version's leftover)
    is settled back to FAILED at start-up recovery, its failed marker rebuilt: not
    re-fired and reported vanished at every start."""
    rec = exec_wake(spool, behaviour="fail")
    path = spool.drop("task-1")
    spool.cli("scan", "--once")
    set_sink_behaviour(rec.sink, "ok")
    config = load_config(spool.config)
    async with open_pipeline(config, load_key(str(spool.key_file))) as pipeline:
        latest = pipeline.stages.ledger.latest_for_task("task-1")
        assert latest is not None
        await pipeline.stages.ledger.record(attrs.evolve(latest, state=LedgerState.RETRY))
    (spool.events / "task-1.pickup.failed").unlink()
    path.unlink()
    async with open_pipeline(config, load_key(str(spool.key_file))) as pipeline:
        await reconcile.recover_markers(pipeline.stages)
        assert reconcile.refire_paths(pipeline.stages) == []
    assert [e["state"] for e in spool.ledger_lines()][-1] == "FAILED"
    assert spool.marker("task-1", ".pickup.failed") is not None


# -- acks without a daemon -----------------------------------------------------------------


def test_ack_then_scan_marks_the_stored_envelope_received(spool: Spool) -> None:
    """With no daemon running, the next scan turns an ack into RECEIVED."""
    exec_wake(spool)
    spool.drop("task-1")
    spool.cli("scan", "--once")
    assert spool.cli("ack", "task-1").returncode == 0
    assert spool.cli("scan", "--once").returncode == 0
    assert stored_envelope(spool, "task-1")["collector_receipt_status"] == "RECEIVED"


# -- http ------------------------------------------------------------------------------------


def test_http_500_then_200_is_signed_keyed_and_woken_on_the_second_attempt(spool: Spool) -> None:
    """HTTP 500 then 200: WAKE_BUILT after 2 signed POSTs whose Idempotency-Key is the
    ledger key; the final envelope follows as a third, marked POST."""
    with TestHttpServer(key=spool.key, replies=[500]) as server:
        http_wake(spool, server.url)
        spool.drop("task-1")
        res = spool.cli("scan", "--once", "--json")
        requests = server.requests
    assert verdicts(res.stdout) == {"task-1": "WAKE_BUILT"}, res.stderr
    key = spool.ledger_lines()[0]["key"]
    assert [r.signature_ok for r in requests] == [True, True, True]
    assert [r.headers["idempotency-key"] for r in requests] == [key, key, key + ".final"]
    assert [r.headers["x-anu-envelope"] for r in requests] == ["initial", "initial", "final"]
    first = json.loads(requests[0].body)
    assert envelope.check(first) == [] and first["delivery_method"] == "http"
    final = stored_envelope(spool, "task-1")
    assert json.loads(requests[2].body) == final and final["cron_schedule_id"] == "H-2"
    [evidence] = spool.evidence()
    assert (evidence["verdict"], evidence["attempts"]) == ("WAKE_BUILT", 2)


def test_http_400_is_permanent_after_one_attempt(spool: Spool) -> None:
    """HTTP 400: FIRE_FAILED after one attempt, the status in the marker and the escalation."""
    with TestHttpServer(key=spool.key, replies=[400]) as server:
        rec = http_wake(spool, server.url)
        spool.drop("task-1")
        res = spool.cli("scan", "--once", "--json")
        requests = server.requests
    assert verdicts(res.stdout) == {"task-1": "FIRE_FAILED"}, res.stderr
    assert len(requests) == 1 and requests[0].signature_ok
    failed = spool.marker("task-1", ".pickup.failed")
    assert failed is not None and failed["attempts"] == 1 and "HTTP 400" in failed["error"]
    assert [d["verdict"] for d in rec.escalations()] == ["FIRE_FAILED"]
    assert stored_envelope(spool, "task-1")["registration_result_status"] == "REGISTER_FAILED"


# -- wake.concurrency bounds every call out ------------------------------------------------


def test_wake_concurrency_bounds_sink_and_update_commands_together(spool: Spool) -> None:
    """concurrency = 2: of the register and update commands, never more than two at once."""
    rec = exec_wake(spool, behaviour="slow:300", more="concurrency = 2\n")
    set_sink_behaviour(rec.update, "slow:300")
    for i in range(6):
        spool.drop(f"task-{i}")
    res = spool.cli("scan", "--once", "--json")
    assert res.returncode == 0, res.stderr
    assert verdicts(res.stdout) == {f"task-{i}": "WAKE_BUILT" for i in range(6)}
    spans = call_spans(rec.sink) + call_spans(rec.update)
    assert len(spans) == 12
    assert most_at_once(spans) == 2


def test_wake_concurrency_bounds_escalations_too(spool: Spool) -> None:
    """Failed wakes escalate under the same bound: never more than two commands at once."""
    rec = exec_wake(spool, behaviour="fail", attempts=1, update=False, more="concurrency = 2\n")
    set_sink_behaviour(rec.escalate, "slow:300")
    for i in range(6):
        spool.drop(f"task-{i}")
    res = spool.cli("scan", "--once", "--json")
    assert verdicts(res.stdout) == {f"task-{i}": "FIRE_FAILED" for i in range(6)}
    spans = call_spans(rec.escalate)
    assert len(spans) == 6
    assert most_at_once(spans) == 2


async def test_a_reload_that_lowers_concurrency_binds_runs_already_in_flight(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs claimed before a reload to concurrency = 1 and runs after it share one bound:
    the old and the new value never alternate into fresh, open semaphores."""
    rec = exec_wake(spool, behaviour="slow:300", update=False, more="concurrency = 2\n")
    gate = FsyncGate()
    async with open_stages(spool) as pipeline:
        monkeypatch.setattr(fsio, "fsync", gate)
        start = pipeline.pickup
        before = [asyncio.ensure_future(start(spool.drop(f"task-a{i}"))) for i in range(3)]
        await asyncio.to_thread(gate.entered.wait, 10)  # their CLAIMED lines are being written
        st = pipeline.stages
        wake = attrs.evolve(st.config.wake, concurrency=1)
        pipeline.stages = attrs.evolve(st, config=attrs.evolve(st.config, wake=wake))
        after = [asyncio.ensure_future(start(spool.drop(f"task-b{i}"))) for i in range(3)]
        gate.release.set()
        outcomes = await asyncio.gather(*before, *after)
    assert [o.verdict if o else None for o in outcomes] == ["WAKE_BUILT"] * 6
    spans = call_spans(rec.sink)
    assert len(spans) == 6
    assert most_at_once(spans) == 1


async def test_a_reload_that_lowers_concurrency_binds_runs_already_waiting(spool: Spool) -> None:
    """concurrency 2 -> 1 while two sink calls are out and two runs wait for a slot, then
    two more runs arrive: never more than the two calls already out, one at a time after."""
    rec = exec_wake(spool, behaviour="slow:400", update=False, more="concurrency = 2\n")
    async with open_stages(spool) as pipeline:
        start = pipeline.pickup
        before = [asyncio.ensure_future(start(spool.drop(f"task-a{i}"))) for i in range(4)]
        await until(lambda: len(read_sink_calls(rec.sink)) == 2)
        st = pipeline.stages
        wake = attrs.evolve(st.config.wake, concurrency=1)
        pipeline.stages = attrs.evolve(st, config=attrs.evolve(st.config, wake=wake))
        after = [asyncio.ensure_future(start(spool.drop(f"task-b{i}"))) for i in range(2)]
        outcomes = await asyncio.gather(*before, *after)
    assert [o.verdict if o else None for o in outcomes] == ["WAKE_BUILT"] * 6
    spans = sorted(call_spans(rec.sink))
    assert len(spans) == 6
    assert most_at_once(spans) == 2
    assert most_at_once(spans[2:]) == 1  # every call that started after the reload


# -- receipts, in process: the sweep the daemon runs, against real files --------------------


@asynccontextmanager
async def open_stages(spool: Spool) -> AsyncIterator[Pipeline]:
    config = load_config(spool.config)
    async with open_pipeline(config, load_key(config.key.file, root=config.root)) as pipeline:
        yield pipeline


def two_days_later(pipeline: Pipeline) -> Stages:
    """The pipeline's stages, its clock moved past any receipt TTL used here (from now on)."""
    pipeline.stages = attrs.evolve(
        pipeline.stages, clock=lambda: datetime.now(UTC) + timedelta(days=2)
    )
    return pipeline.stages


def receipt(spool: Spool, task_id: str) -> str:
    return str(stored_envelope(spool, task_id)["collector_receipt_status"])


async def test_an_envelope_stored_after_the_sweep_saw_the_marker_still_times_out(
    spool: Spool,
) -> None:
    """A sweep between the done marker and the envelope write does not forget the task."""
    rec = exec_wake(spool, update=False)
    path = spool.drop("task-1")
    stored = spool.events / "task-1.callback-envelope.json"
    async with open_stages(spool) as pipeline:
        watch = ReceiptWatch()
        await pipeline.pickup(path)
        stored.rename(spool.root / "envelope-not-yet-written")
        assert await watch.sweep(two_days_later(pipeline)) == 0
        (spool.root / "envelope-not-yet-written").rename(stored)
        assert await watch.sweep(two_days_later(pipeline)) == 1
    assert receipt(spool, "task-1") == "TIMED_OUT"
    assert [d["verdict"] for d in rec.escalations()] == ["RECEIPT_TIMED_OUT"]


async def test_a_rewritten_result_gets_its_own_receipt_not_the_old_ack(spool: Spool) -> None:
    """After an acked wake, new bytes are a new wake: UNCONFIRMED, and it times out alone."""
    rec = exec_wake(spool, update=False)
    path = spool.drop("task-1")
    async with open_stages(spool) as pipeline:
        watch = ReceiptWatch()
        await pipeline.pickup(path)
        assert spool.cli("ack", "task-1").returncode == 0
        assert await watch.sweep(pipeline.stages) == 1
        assert receipt(spool, "task-1") == "RECEIVED"
        spool.drop("task-1", valid_doc("task-1", summary="second result"))
        out = await pipeline.pickup(path)
        assert out is not None and out.verdict == "WAKE_BUILT"
        assert await watch.sweep(pipeline.stages) == 0
        assert receipt(spool, "task-1") == "UNCONFIRMED"
        assert await ReceiptWatch().sweep(pipeline.stages) == 0  # a restart agrees
        assert await watch.sweep(two_days_later(pipeline)) == 1
    assert receipt(spool, "task-1") == "TIMED_OUT"
    [doc] = rec.escalations()
    assert doc["idempotency_key"] == out.idempotency_key
