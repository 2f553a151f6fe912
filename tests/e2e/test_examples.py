"""The reference programs in examples/ against the real daemon process.

The HTTP receiver runs as its own process on 127.0.0.1 with a SQLite file in
the test's directory; the workers write results into a spool that a real
``python -m anu_watchd run`` watches.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import select
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anu_watchd import envelope
from anu_watchd.model import FourTuple, Result, TaskStatus
from tests.daemonproc import DaemonProc, wait_for
from tests.spool import REPO, Spool

EXAMPLES = REPO / "examples"
DEADLINE_S = 20.0


class Receiver:
    """examples/http_receiver.py as a subprocess; ``url`` once it listens."""

    def __init__(self, key_file: Path, db: Path, *, ack_dir: Path | None = None) -> None:
        argv = [sys.executable, str(EXAMPLES / "http_receiver.py"), "--port", "0"]
        argv += ["--key-file", str(key_file), "--db", str(db)]
        argv += ["--ack-dir", str(ack_dir)] if ack_dir else []
        self.db = db
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], DEADLINE_S)
        assert ready, "the receiver did not start listening"
        self.url = str(json.loads(self.proc.stdout.readline())["listening"])

    def rows(self) -> list[tuple[str, str, str]]:
        with sqlite3.connect(self.db) as db:
            rows = db.execute("SELECT idempotency_key, kind, answer FROM wakes").fetchall()
        return [(str(k), str(kind), str(a)) for k, kind, a in rows]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for r in started:
        r.stop()


def http_config(spool: Spool, url: str) -> None:
    """The http sink at ``url``; a one-second rescan, so the receipt sweep runs every second."""
    spool.write_config(
        sink="http",
        extra="rescan_interval_s = 1.0",
        wake_extra=f"attempts = 2\ntimeout_s = 10.0\nhttp.url = {json.dumps(url)}\n",
    )


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=DEADLINE_S) as resp:  # noqa: S310 (127.0.0.1)
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def signed(key: str, body: bytes, idempotency_key: str) -> dict[str, str]:
    mac = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "Idempotency-Key": idempotency_key,
        "X-Anu-Envelope": "initial",
        "X-Anu-Signature": f"sha256={mac}",
    }


def initial_envelope(task_id: str) -> bytes:
    sha = hashlib.sha256(task_id.encode()).hexdigest()
    result = Result(task_id, TaskStatus.DONE, "dev1", "anu", "2026-01-31T12:00:00Z", "done")
    env = envelope.build(
        result,
        result_path=f"/spool/{task_id}.result.json",
        sha256=sha,
        idempotency_key=FourTuple(task_id, sha, "anu").idempotency_key,
        delivery_method="http",
    )
    return envelope.encode(env)


def started(spool: Spool) -> DaemonProc:
    d = DaemonProc(spool)
    d.wait_notify("READY=1")
    return d


def stopped_cleanly(d: DaemonProc) -> bool:
    code = d.stop()
    if code != 0:
        print(d.log_text())
    return code == 0


def test_http_receiver_registers_one_wake_acks_it_and_keeps_the_final_envelope(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    """The daemon's signed POST is answered with a schedule id, acked, and its update stored."""
    spool = Spool(tmp_path)
    receiver = Receiver(spool.key_file, tmp_path / "wakes.sqlite3", ack_dir=spool.events)
    receivers.append(receiver)
    http_config(spool, receiver.url)
    d = started(spool)
    spool.drop("task-1")
    marker = wait_for(lambda: spool.marker("task-1"), DEADLINE_S, "the done marker")
    key = marker["idempotency_key"]
    rows = wait_for(lambda: len(receiver.rows()) == 2 and receiver.rows(), DEADLINE_S, "update")
    assert sorted(rows) == [
        (key, "initial", json.dumps({"schedule_id": marker["schedule_id"]})),
        (key + ".final", "final", json.dumps({"schedule_id": marker["schedule_id"]})),
    ]
    env_path = spool.events / "task-1.callback-envelope.json"
    wait_for(
        lambda: json.loads(env_path.read_bytes())["collector_receipt_status"] == "RECEIVED",
        DEADLINE_S,
        "the receipt axis RECEIVED",
    )
    assert stopped_cleanly(d)


def test_http_receiver_with_another_key_is_a_permanent_failure(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    """A signature that does not verify is answered 401, which the daemon does not retry."""
    spool = Spool(tmp_path)
    other = tmp_path / "other-key"
    other.write_text(secrets.token_hex(24))
    receiver = Receiver(other, tmp_path / "wakes.sqlite3")
    receivers.append(receiver)
    http_config(spool, receiver.url)
    d = started(spool)
    spool.drop("task-1")
    failed = wait_for(
        lambda: spool.marker("task-1", ".pickup.failed"), DEADLINE_S, "the failed marker"
    )
    assert failed["attempts"] == 1
    assert failed["error"].startswith("HTTP 401")
    assert receiver.rows() == []
    assert stopped_cleanly(d)


def test_http_receiver_answers_a_repeated_delivery_as_the_first_even_after_a_restart(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    """A re-delivered key gets the first answer from the SQLite file, also after a restart."""
    key = secrets.token_hex(24)
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    db = tmp_path / "wakes.sqlite3"
    body = initial_envelope("task-9")
    ik = json.loads(body)["idempotency_key"]
    receivers.append(first := Receiver(key_file, db))
    status, answer = post(first.url, body, signed(key, body, ik))
    assert status == 200
    assert post(first.url, body, signed(key, body, ik)) == (200, answer)
    first.stop()
    receivers.append(second := Receiver(key_file, db))
    assert post(second.url, body, signed(key, body, ik)) == (200, answer)
    assert second.rows() == [(ik, "initial", json.dumps(answer))]


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"X-Anu-Signature": "sha256=" + "0" * 64}, 401),
        ({"X-Anu-Signature": ""}, 401),
        ({"Idempotency-Key": "ik1-" + "0" * 40}, 400),
    ],
)
def test_http_receiver_refuses_a_bad_signature_or_a_key_the_body_does_not_carry(
    tmp_path: Path, receivers: list[Receiver], change: dict[str, str], status: int
) -> None:
    """A wrong signature is 401 and a header key that is not the body's is 400; nothing stored."""
    key = secrets.token_hex(24)
    key_file = tmp_path / "key"
    key_file.write_text(key)
    receivers.append(receiver := Receiver(key_file, tmp_path / "wakes.sqlite3"))
    body = initial_envelope("task-9")
    headers = signed(key, body, json.loads(body)["idempotency_key"]) | change
    assert post(receiver.url, body, headers)[0] == status
    assert receiver.rows() == []


def test_worker_py_result_is_woken_once(tmp_path: Path) -> None:
    """examples/worker.py writes a result the daemon wakes; a bad one is refused with 64."""
    spool = Spool(tmp_path)
    d = started(spool)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, str(EXAMPLES / "worker.py"), "--events-dir", str(spool.events)]
    run = [*base, "--task-id", "task-5", "--status", "DONE", "--executor", "dev1"]
    done = subprocess.run([*run, "--summary", "ok"], env=env, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    marker = wait_for(lambda: spool.marker("task-5"), DEADLINE_S, "the done marker")
    assert marker["verdict"] == "WAKE_BUILT"
    bad = [*base, "--task-id", "task-6", "--status", "DONE", "--executor", "Dev 1", "--summary", ""]
    refused = subprocess.run(bad, env=env, capture_output=True, text=True, check=False)
    assert refused.returncode == 64
    assert "executor" in refused.stderr
    assert not spool.result_path("task-6").exists()
    assert stopped_cleanly(d)


def test_worker_sh_result_is_woken_once_with_its_summary_intact(tmp_path: Path) -> None:
    """examples/worker.sh writes through `emit`; quotes and backslashes survive; bad input is 64."""
    spool = Spool(tmp_path)
    d = started(spool)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ANU_WATCHD_CONFIG": str(spool.config),
        "ANU_WATCHD": f"{sys.executable} -m anu_watchd",
    }
    summary = 'said "hi" \\ and\tleft'
    script = ["sh", str(EXAMPLES / "worker.sh")]
    done = subprocess.run(
        [*script, "task-3", "DONE", "dev1", summary], env=env, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    marker = wait_for(lambda: spool.marker("task-3"), DEADLINE_S, "the done marker")
    assert marker["verdict"] == "WAKE_BUILT"
    assert json.loads(spool.result_path("task-3").read_bytes())["summary"] == summary
    refused = subprocess.run(
        [*script, "task-4", "done", "dev1", "x"], env=env, capture_output=True, check=False
    )
    assert refused.returncode == 64
    assert not spool.result_path("task-4").exists()
    assert stopped_cleanly(d)
