"""The sealed key never leaks: every wake path in one spool, then a search for the key.

One spool with a random key runs, through the real CLI and the real daemon,
every path issue 4 has: FIRE_NOT_ACTIVATED, exec WAKE_BUILT with an update
command, an exec failure whose stderr echoes the key (FIRE_FAILED +
escalation), retry, HTTP 500-then-200 and a 400 whose body echoes the key,
the log sink, every way of writing the key into a result (KEY_LITERAL), other
quarantines, ack, a receipt timeout with its escalation, reload, status and
quarantine list, and co-process handlers that echo the key in an error answer
and on stderr before crashing. Then every file under the spool root, every line of output
and everything the sinks received is searched for the key. Only the key file
and the results quarantined as KEY_LITERAL may hold it. The nats sink gets
the same search for the key and for its NATS credentials (a token), over a
real nats-server, the messages it stored included.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

from tests.coprochelpers import set_handler_behaviour, write_coprocess_handler
from tests.daemonproc import DaemonProc, wait_for
from tests.integration.test_wake import (
    Recorders,
    assert_all_envelopes_valid,
    exec_wake,
    http_wake,
    toml_list,
    verdicts,
)
from tests.natsserver import NatsServer, add_stream, nats_wake, read_stream
from tests.sinkhelpers import (
    SCRIPT_FILE,
    Reply,
    TestHttpServer,
    read_sink_calls,
    set_sink_behaviour,
)
from tests.spool import Spool, valid_doc

DEADLINE_S = 20.0


class Captured:
    """Everything the commands and the daemon printed, kept for the search."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.texts: list[str] = []

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        res = self.spool.cli(*args)
        self.texts += [res.stdout, res.stderr]
        return res

    def scan(self) -> dict[str, str]:
        res = self.cli("scan", "--once", "--json")
        assert res.returncode == 0, res.stderr
        return verdicts(res.stdout)


def key_bearing_results(spool: Spool) -> dict[str, bytes]:
    """Results that hold the key in every way validation must catch."""
    key = spool.key
    escaped = "".join(f"\\u{ord(c):04x}" for c in key)
    return {
        "task-key-summary": json.dumps(valid_doc("task-key-summary", summary=key)).encode(),
        "task-key-escaped": json.dumps(valid_doc("task-key-escaped"))
        .replace('"summary": "', f'"summary": "{escaped} ', 1)
        .encode(),
        "task-key-name": json.dumps({**valid_doc("task-key-name"), key: 1}).encode(),
        "task-key-binary": b'{"summary": "\xff' + key.encode() + b'"}',
        "task-key-nested": json.dumps(valid_doc("task-key-nested", extra={"a": [key]})).encode(),
    }


def run_cli_paths(spool: Spool, out: Captured) -> Recorders:
    """Not-activated, exec ok/fail/retry, log sink and quarantines, all through the CLI."""
    exec_wake(spool, activated=False)
    spool.drop("task-na")
    assert out.scan() == {"task-na": "FIRE_NOT_ACTIVATED"}
    rec = exec_wake(spool)
    spool.drop("task-ok")
    for task_id, raw in key_bearing_results(spool).items():
        spool.drop(task_id, raw=raw)
    spool.drop("task-bad", raw=b"{not json")
    spool.drop("task-self", valid_doc("task-self", collector="dev2"))
    got = out.scan()
    assert {t: got[t] for t in ("task-na", "task-ok")} == dict.fromkeys(
        ("task-na", "task-ok"), "WAKE_BUILT"
    )
    assert {got[t] for t in key_bearing_results(spool)} == {"QUARANTINE"}
    set_sink_behaviour(rec.sink, "leak-key")  # the command echoes the key file on stderr
    spool.drop("task-leak")
    assert out.scan() == {"task-leak": "FIRE_FAILED"}
    set_sink_behaviour(rec.sink, "ok")
    assert out.cli("retry", "task-leak").returncode == 0
    spool.write_config(sink="log")
    spool.drop("task-logsink")
    assert out.scan() == {"task-logsink": "WAKE_BUILT"}
    for args in (["status", "--json"], ["status"], ["quarantine", "list"]):
        assert out.cli(*args).returncode == 0
    return rec


def run_http_paths(spool: Spool, out: Captured) -> list[bytes]:
    """HTTP 500 then 200, and a 400 whose body quotes the key back."""
    echo = Reply(400, {"error": f"unknown key {spool.key}"})
    with TestHttpServer(key=spool.key, replies=[500, 200, 200, echo]) as server:
        http_wake(spool, server.url)
        spool.drop("task-http")
        assert out.scan() == {"task-http": "WAKE_BUILT"}
        spool.drop("task-http-echo")
        assert out.scan() == {"task-http-echo": "FIRE_FAILED"}
        requests = server.requests
    assert all(r.signature_ok for r in requests) and len(requests) == 4
    return [r.body + json.dumps(r.headers).encode() for r in requests]


def run_coprocess_paths(spool: Spool, out: Captured, rec: Recorders) -> None:
    """Co-process handlers quoting the key in an error answer, then on stderr as they crash."""
    hdir = spool.root / "handler"
    argv = write_coprocess_handler(hdir, behaviour="leak-key")
    spool.write_config(
        sink="exec",
        wake_extra=(
            f"attempts = 2\nexec.argv = {toml_list(argv)}\nexec.process = true\n"
            f"escalate_argv = {toml_list([sys.executable, str(rec.escalate / SCRIPT_FILE)])}\n"
        ),
    )
    spool.drop("task-coproc-answer")
    assert out.scan() == {"task-coproc-answer": "FIRE_FAILED"}
    set_handler_behaviour(hdir, "leak-key-crash")
    spool.drop("task-coproc-crash")
    assert out.scan() == {"task-coproc-crash": "FIRE_FAILED"}
    set_handler_behaviour(hdir, "ok")
    assert out.cli("retry", "task-coproc-crash").returncode == 0
    assert spool.marker("task-coproc-crash") is not None


def run_daemon_paths(spool: Spool, out: Captured) -> None:
    """Ack, receipt timeouts with escalation, a retry request and reload, in the daemon."""
    exec_wake(spool, behaviour="leak-key", more="receipt_ttl_s = 1.0\n")
    assert out.cli("ack", "task-ok").returncode == 0
    d = DaemonProc(spool)
    try:
        d.wait_notify("READY=1")
        spool.drop("task-daemon")
        wait_for(lambda: spool.marker("task-daemon", ".pickup.failed"), DEADLINE_S, "failed")
        set_sink_behaviour(spool.root / "sink", "ok")
        assert out.cli("retry", "task-daemon").returncode == 0
        wait_for(lambda: spool.marker("task-daemon"), DEADLINE_S, "woken after retry")
        assert out.cli("reload").returncode == 0
        wait_for(lambda: receipt_is(spool, "task-daemon", "TIMED_OUT"), DEADLINE_S, "timeout")
        wait_for(lambda: receipt_is(spool, "task-ok", "RECEIVED"), DEADLINE_S, "the ack")
    finally:
        assert d.stop() == 0
        out.texts.append(d.log_text())


def receipt_is(spool: Spool, task_id: str, status: str) -> bool:
    path = spool.events / f"{task_id}.callback-envelope.json"
    return path.exists() and f'"collector_receipt_status":"{status}"'.encode() in path.read_bytes()


def key_literal_quarantined(spool: Spool) -> set[Path]:
    qdir = spool.events / "quarantine"
    return {
        qdir / p.name.removesuffix(".reason.json")
        for p in qdir.glob("*.reason.json")
        if json.loads(p.read_bytes())["reason"] == "KEY_LITERAL"
    }


def files_holding(root: Path, needle: bytes) -> set[Path]:
    """Regular files under ``root`` whose bytes or whose path hold ``needle``."""
    found = set()
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            in_name = needle.decode() in str(path)
            if in_name or (stat.S_ISREG(path.lstat().st_mode) and needle in path.read_bytes()):
                found.add(path)
    return found


def test_the_key_appears_nowhere_but_its_file_and_key_literal_quarantine(tmp_path: Path) -> None:
    """After every wake path, the key is only in the key file and the KEY_LITERAL inputs."""
    spool = Spool(tmp_path)
    out = Captured(spool)
    rec = run_cli_paths(spool, out)
    http_seen = run_http_paths(spool, out)
    run_coprocess_paths(spool, out, rec)
    run_daemon_paths(spool, out)

    key = spool.key.encode()
    quarantined = key_literal_quarantined(spool)
    assert len(quarantined) == len(key_bearing_results(spool))
    holding = files_holding(spool.root, key)
    assert spool.key_file in holding  # the search can find it
    unexpected = holding - {spool.key_file} - quarantined
    assert not unexpected, sorted(str(p.relative_to(spool.root)) for p in unexpected)
    assert holding & quarantined, "a raw-key result was quarantined, so it must hold the key"
    for text in out.texts:
        assert spool.key not in text
    for call in [*rec.calls(), *rec.updates(), *read_sink_calls(rec.escalate)]:
        assert spool.key not in json.dumps(call)
    for seen in http_seen:
        assert key not in seen
    escalated = {(d["task_id"], d["verdict"]) for d in rec.escalations()}
    assert {("task-leak", "FIRE_FAILED"), ("task-daemon", "RECEIPT_TIMED_OUT")} <= escalated
    coproc = {("task-coproc-answer", "FIRE_FAILED"), ("task-coproc-crash", "FIRE_FAILED")}
    assert coproc <= escalated
    for d in rec.escalations():  # the handlers did quote the key, and it was redacted
        if (d["task_id"], d["verdict"]) in coproc:
            assert "[REDACTED]" in str(d["error"])
    assert any("[REDACTED]" in str(d["error"]) for d in rec.escalations())
    assert assert_all_envelopes_valid(tmp_path) >= 6


def test_a_result_named_after_the_key_leaks_nothing(tmp_path: Path) -> None:
    """A result whose file name spells the key is quarantined as KEY_LITERAL under a neutral
    name, and the name is recorded nowhere (output, logs, evidence, sidecar, file names)."""
    spool = Spool(tmp_path)
    task_id = f"task-{spool.key}"
    spool.drop(task_id)
    out = Captured(spool)
    assert out.scan() == {"None": "QUARANTINE"}
    assert [q["reason"] for q in spool.quarantined()] == ["KEY_LITERAL"]
    names = [p.name for p in spool.root.rglob("*")]
    assert not any(spool.key in n for n in names)
    for text in out.texts:
        assert spool.key not in text
    unexpected = files_holding(spool.root, spool.key.encode()) - {spool.key_file}
    assert unexpected <= key_literal_quarantined(spool), sorted(map(str, unexpected))


async def test_nats_wakes_leak_neither_the_key_nor_the_nats_credentials(tmp_path: Path) -> None:
    """Through the nats sink (CLI and daemon wakes, a reload, a refused token with its
    escalation), neither the key nor the NATS token is printed, logged, stored, escalated or
    published: each is only in its own file (and the token in the test server's config)."""
    token, wrong = secrets.token_hex(24), secrets.token_hex(24)
    spool = Spool(tmp_path / "spool")
    creds = spool.root / "nats.creds"
    creds.write_text(token + "\n")
    creds.chmod(0o600)
    wrong_creds = spool.root / "wrong.creds"
    wrong_creds.write_text(wrong + "\n")
    wrong_creds.chmod(0o600)
    out = Captured(spool)
    with NatsServer(tmp_path / "nats", token=token) as server:
        await add_stream([server.url], per_key=False, token=token)
        escalate = nats_wake(spool, [server.url], creds_file=creds)
        spool.drop("task-cli")
        assert out.scan() == {"task-cli": "WAKE_BUILT"}
        d = DaemonProc(spool)
        try:
            d.wait_notify("READY=1")
            spool.drop("task-daemon")
            wait_for(lambda: spool.marker("task-daemon"), DEADLINE_S, "the daemon's wake")
            assert out.cli("reload").returncode == 0
            d.wait_event("config_reloaded")
        finally:
            assert d.stop() == 0
            out.texts.append(d.log_text())
        nats_wake(spool, [server.url], creds_file=wrong_creds)
        spool.drop("task-refused")
        assert out.scan() == {"task-refused": "FIRE_FAILED"}
        published = await read_stream([server.url], token=token)
    assert len(published) == 4  # two wakes and their final envelopes
    own_files = {spool.key_file, creds, wrong_creds}
    for secret in (spool.key, token, wrong):
        for text in out.texts:
            assert secret not in text
        assert files_holding(spool.root, secret.encode()) <= own_files
        for call in read_sink_calls(escalate):
            assert secret not in json.dumps(call)
        for subject, headers, body in published:
            assert secret not in subject + json.dumps(headers) + body.decode()
    assert [json.loads(c["stdin"])["task_id"] for c in read_sink_calls(escalate)] == [
        "task-refused"
    ]


def test_a_schedule_id_holding_the_key_is_refused_and_written_nowhere(tmp_path: Path) -> None:
    """An exec or HTTP sink answering ``sched-<key>`` fails the wake; no file holds the key."""
    spool = Spool(tmp_path)
    out = Captured(spool)
    exec_wake(spool, behaviour="id-key", attempts=1)
    spool.drop("task-exec-id")
    assert out.scan() == {"task-exec-id": "FIRE_FAILED"}
    echo = Reply(200, {"schedule_id": f"sched-{spool.key}"})
    with TestHttpServer(key=spool.key, replies=[echo]) as server:
        http_wake(spool, server.url, attempts=1)
        spool.drop("task-http-id")
        assert out.scan() == {"task-http-id": "FIRE_FAILED"}
    unexpected = files_holding(spool.root, spool.key.encode()) - {spool.key_file}
    assert not unexpected, sorted(str(p.relative_to(spool.root)) for p in unexpected)
    for text in out.texts:
        assert spool.key not in text
    failed = spool.marker("task-http-id", ".pickup.failed")
    assert failed is not None and "holds the sealed key" in failed["error"]
