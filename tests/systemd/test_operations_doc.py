"""docs/operations.md, followed literally in a fresh Debian 12 under systemd 252.

One container for the module, installed only by the doc's own command blocks
(the package from wheels, offline; then the system part), with a root CLI call
before the first start. The tests then run in order, as an operator's day would:
workers drop results, the logs are shipped by rsyslog, a reload is refused, the
scan service runs, the daemon crashes at start-up, the spool is deleted - and
every line the units wrote to the journal must parse as one JSON object.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anu_install import (
    CONFIG,
    SPOOL,
    WHEELS_IN_CONTAINER,
    build_wheels,
    copy_checkout,
    run_doc,
)
from doc_blocks import file_block
from nspawn_harness import Container, booted, wait_for

pytestmark = pytest.mark.systemd

SERVICE = "anu-watchd.service"
SCAN = "anu-watchd-scan.service"
EVENTS = f"{SPOOL}/memory/events"
EVIDENCE = f"{EVENTS}/p0b_driver_runs.jsonl"
WORKER = "worker1"
SINK = "/usr/local/bin/anu-doc-wake"
RSYSLOG_CONF = "/etc/rsyslog.d/anu-watchd.conf"
SHIPPED = "/var/log/anu-watchd.json"
# The exec sink's command: a task whose id says "fail" is refused (exit 1: FIRE_FAILED).
SINK_SCRIPT = """#!/bin/sh
if grep -q fail; then echo refused >&2; exit 1; fi
echo '{"schedule_id": "sched-doc"}'
"""


@pytest.fixture(scope="module")
def wheels(rootfs: Path) -> Path:
    """What the doc's offline install installs from: anu-watchd and its dependencies."""
    return build_wheels()


@pytest.fixture(scope="module")
def host(
    rootfs: Path, wheels: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    """A fresh container installed by the doc's blocks, then `enable` as root, then started."""
    logs = tmp_path_factory.mktemp("nspawn-doc")
    with booted(rootfs, {wheels: WHEELS_IN_CONTAINER}, logs) as c:
        copy_checkout(c)
        run_doc(c, "install-package", WHEELS=WHEELS_IN_CONTAINER)
        run_doc(c, "install-system")
        run_doc(c, "first-start")
        yield c


def _evidence(c: Container, task_id: str) -> dict[str, Any] | None:
    try:
        lines = c.path(EVIDENCE).read_text().splitlines()
    except FileNotFoundError:
        return None
    runs = [json.loads(line) for line in lines if task_id in line]
    return runs[-1] if runs else None


def _emit(c: Container, task_id: str) -> None:
    """A worker's drop through `anu-watchd emit`, as the non-service user WORKER."""
    c.run(
        "anu-watchd", "emit", "--task-id", task_id, "--status", "DONE",
        "--executor", "worker-1", "--summary", f"{task_id} done", user=WORKER,
    )  # fmt: skip


def _verdict(c: Container, task_id: str, timeout: float = 30.0) -> str:
    run = wait_for(lambda: _evidence(c, task_id), f"the evidence line of {task_id}", timeout)
    return str(run["verdict"])


def _activate(c: Container) -> None:
    """The operator's edit: activated, the exec sink; then `systemctl reload`."""
    text = c.path(CONFIG).read_text()
    for old, new in [
        ("activated = false", "activated = true"),
        ('sink = "log"', 'sink = "exec"'),
        ("\nargv = []", f'\nargv = ["{SINK}"]'),
    ]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    c.write(SINK, SINK_SCRIPT, mode=0o755)
    c.write(CONFIG, text)
    c.systemctl("reload", SERVICE)


def _main_pid(c: Container) -> int:
    return int(c.show(SERVICE, "MainPID")["MainPID"])


def _running_again(c: Container, old_pid: int) -> int | None:
    props = c.show(SERVICE, "MainPID", "ActiveState", "SubState")
    pid = int(props["MainPID"])
    up = (props["ActiveState"], props["SubState"]) == ("active", "running")
    return pid if up and pid not in (0, old_pid) else None


def test_installed_as_documented_with_a_root_call_before_the_first_start(host: Container) -> None:
    """The doc's install with `enable` as root first: active, every state file anu-watchd's."""
    assert host.show(SERVICE, "ActiveState")["ActiveState"] == "active"
    strays = host.run("find", SPOOL, "!", "-user", "anu-watchd").stdout.split()
    assert strays == []
    assert host.path(f"{SPOOL}/memory/state/p0b_driver_enabled").read_text().strip() == "true"
    events = host.run("stat", "-c", "%a %U %G", EVENTS).stdout.split()
    assert events == ["3770", "anu-watchd", "anu-producers"]
    for unit in (SERVICE, SCAN, "anu-watchd.path"):
        [doc] = host.show(unit, "Documentation")["Documentation"].split()
        assert host.path(doc.removeprefix("file:")).is_file(), (unit, doc)
    binary = host.run("readlink", "-f", "/usr/local/bin/anu-watchd").stdout.strip()
    assert binary == "/opt/anu-watchd/bin/anu-watchd"  # the venv's, from the wheels


def test_a_worker_in_the_producers_group_drops_results(host: Container) -> None:
    """A non-service user added as the doc says writes a result with emit; the daemon runs it."""
    host.run("useradd", "--create-home", WORKER)
    run_doc(host, "add-worker", WORKER=WORKER)
    _emit(host, "task-doc-1")
    assert _verdict(host, "task-doc-1") == "FIRE_NOT_ACTIVATED"
    owner = host.run("stat", "-c", "%U %G", f"{EVENTS}/task-doc-1.result.json").stdout.split()
    assert owner == [WORKER, "anu-producers"]


def test_permission_problems_are_one_line_and_exit_77(host: Container) -> None:
    """A worker's `enable` is refused naming the user to run as; `status` and `emit` by a user
    without access name the path; each one line, exit 77, no traceback."""
    cases = [
        (WORKER, ["enable"], "run it as that user (sudo -u anu-watchd"),
        ("nobody", ["status"], f"{EVENTS}"),
        ("nobody", ["emit", "--task-id", "task-x", "--status", "DONE", "--executor", "w",
                    "--summary", "s"], f"cannot create files in {EVENTS}"),
    ]  # fmt: skip
    for user, argv, says in cases:
        proc = host.run("anu-watchd", *argv, user=user, check=False)
        assert (proc.returncode, proc.stdout) == (77, ""), (argv, proc.stderr)
        assert says in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_rsyslog_ships_parsed_fields(host: Container) -> None:
    """rsyslog with the doc's config writes event, level, task_id, verdict and reason, parsed,
    for a woken, a quarantined and a failed result."""
    host.write(RSYSLOG_CONF, file_block(RSYSLOG_CONF))
    host.systemctl("restart", "rsyslog")
    _activate(host)
    _emit(host, "task-doc-woken")
    _emit(host, "task-doc-fail")
    host.run(
        "sh", "-c", f"printf 'not json' > {EVENTS}/.tmp && mv {EVENTS}/.tmp "
        f"{EVENTS}/task-doc-bad.result.json", user=WORKER,
    )  # fmt: skip
    verdicts = {t: _verdict(host, t) for t in ("task-doc-woken", "task-doc-fail", "task-doc-bad")}
    assert verdicts == {
        "task-doc-woken": "WAKE_BUILT",
        "task-doc-fail": "FIRE_FAILED",
        "task-doc-bad": "QUARANTINE",
    }

    def shipped() -> dict[str, dict[str, Any]] | None:
        try:
            lines = host.path(SHIPPED).read_text().splitlines()
        except FileNotFoundError:
            return None
        finished = [json.loads(x) for x in lines if '"pickup_finished"' in x]
        by_task = {d["task_id"]: d for d in finished}
        return by_task if set(verdicts) <= set(by_task) else None

    got = wait_for(shipped, f"pickup_finished of all three in {SHIPPED}", timeout=30)
    for task_id, verdict in verdicts.items():
        line = got[task_id]
        assert (line["event"], line["verdict"], line["unit"]) == (
            "pickup_finished",
            verdict,
            SERVICE,
        )
        assert line["level"] in ("info", "warning", "error", "critical")
    assert got["task-doc-bad"]["reason"] == "INVALID_JSON"
    assert not got["task-doc-woken"].get("reason")  # null in the daemon's line


def test_refused_reload_answers_at_once_and_is_logged_by_the_daemon(host: Container) -> None:
    """A TOML error is refused by the daemon itself (config_reload_refused), and so is a new
    lock file, answered at once; systemctl says 1 and the daemon keeps running."""
    good = host.path(CONFIG).read_text()
    host.write(CONFIG, good + "\nthis is not toml\n")
    refused = host.systemctl("reload", SERVICE, check=False)
    assert refused.returncode == 1
    host.write(CONFIG, good.replace("anu-watchd.lock", "other.lock"))
    t0 = time.monotonic()
    assert host.systemctl("reload", SERVICE, check=False).returncode == 1
    assert time.monotonic() - t0 < 10  # not the helper's 30 s wait at the new path
    host.write(CONFIG, good)
    pid = _main_pid(host)
    lines = [
        json.loads(e["MESSAGE"])
        for e in host.journal(f"_SYSTEMD_UNIT={SERVICE}", f"_PID={pid}")
        if "config_reload_refused" in e["MESSAGE"]
    ]
    assert len(lines) == 2 and {line["level"] for line in lines} == {"error"}
    assert host.show(SERVICE, "ActiveState")["ActiveState"] == "active"


def test_the_scan_service_and_the_documented_one_shot(host: Container) -> None:
    """The scan service while the daemon runs (75, counted as success), then alone; and the
    doc's systemd-run command for a one-shot scan from a shell."""
    host.systemctl("start", SCAN)  # lock held: exits 75, a success
    host.systemctl("stop", SERVICE)
    _emit(host, "task-doc-scan")
    host.systemctl("start", SCAN)
    assert _verdict(host, "task-doc-scan", timeout=5) == "WAKE_BUILT"
    _emit(host, "task-doc-oneshot")
    run_doc(host, "one-shot")
    assert _verdict(host, "task-doc-oneshot", timeout=5) == "WAKE_BUILT"
    strays = host.run("find", SPOOL, "!", "-user", "anu-watchd", "!", "-user", WORKER).stdout
    assert strays.split() == []
    host.systemctl("start", SERVICE)


def test_switching_to_the_path_unit_and_back(host: Container) -> None:
    """The doc's switch to the path unit: a worker's result is scanned and woken; then back."""
    run_doc(host, "switch-to-path")
    assert host.show(SERVICE, "ActiveState")["ActiveState"] == "inactive"
    _emit(host, "task-doc-path")
    assert _verdict(host, "task-doc-path") == "WAKE_BUILT"
    host.sh("systemctl disable --now anu-watchd.path && systemctl enable --now anu-watchd")


def test_start_up_failure_is_one_critical_line_and_exit_70(host: Container) -> None:
    """A fatal start-up failure (a ledger corrupt in the middle) is one critical JSON line
    (PRIORITY 2) and exit 70, never a traceback; the cause is in `journalctl -p err`."""
    host.systemctl("stop", SERVICE)
    ledger = f"{EVENTS}/callback_4tuple_index.jsonl"
    host.sh(f"cp -p {ledger} {ledger}.bak && printf 'not json\\n{{}}\\n' >> {ledger}")
    cursor = host.journal_cursor()
    host.systemctl("start", SERVICE, check=False)

    def crashed() -> list[dict[str, Any]]:
        return [
            e
            for e in host.journal(f"--after-cursor={cursor}", f"_SYSTEMD_UNIT={SERVICE}")
            if "durability_failure" in e.get("MESSAGE", "")
        ]

    [first, *_] = wait_for(crashed, "the critical line of the failure", timeout=20)
    line = json.loads(first["MESSAGE"])
    assert (line["level"], first["PRIORITY"]) == ("critical", "2")
    assert "corrupt" in line["error"] and "Traceback" not in first["MESSAGE"]
    wait_for(lambda: host.show(SERVICE, "ExecMainStatus")["ExecMainStatus"] == "70", "exit 70")
    host.systemctl("stop", SERVICE)
    host.sh(f"mv {ledger}.bak {ledger}")
    host.systemctl("reset-failed", SERVICE)
    host.systemctl("start", SERVICE)


def test_deleted_state_directory_recovers(host: Container) -> None:
    """Deleting /var/lib/anu-watchd under the running daemon: it is restarted, the spool and
    the producers' access come back, and after `enable` a worker's result is woken."""
    old = _main_pid(host)
    host.run("rm", "-rf", SPOOL)
    wait_for(lambda: _running_again(host, old), "the restarted daemon", timeout=30)
    events = host.run("stat", "-c", "%a %U %G", EVENTS).stdout.split()
    assert events == ["3770", "anu-watchd", "anu-producers"]
    host.run("anu-watchd", "enable")  # as root: drops to anu-watchd
    _emit(host, "task-doc-after")
    assert _verdict(host, "task-doc-after") == "WAKE_BUILT"


def test_the_unit_weight_and_the_documented_drop_in_that_lowers_it(host: Container) -> None:
    """The shipped CPUWeight=200 reaches systemd; the doc's drop-in makes it 100 and the
    restarted daemon still wakes a worker's result; without the drop-in it is 200 again."""
    assert host.show(SERVICE, "CPUWeight")["CPUWeight"] == "200"
    old = _main_pid(host)
    assert "CPUWeight=100" in run_doc(host, "lower-cpu-weight").stdout
    wait_for(lambda: _running_again(host, old), "the daemon restarted by the drop-in", 30)
    _emit(host, "task-doc-weight")
    assert _verdict(host, "task-doc-weight") == "WAKE_BUILT"
    host.sh(
        "rm /etc/systemd/system/anu-watchd.service.d/cpu-weight.conf && "
        "systemctl daemon-reload && systemctl restart anu-watchd"
    )
    assert host.show(SERVICE, "CPUWeight")["CPUWeight"] == "200"


def test_every_line_the_units_wrote_is_json(host: Container) -> None:
    """The whole session's journal of both services: every stdout line is one JSON object."""
    entries = host.journal(f"_SYSTEMD_UNIT={SERVICE}", f"_SYSTEMD_UNIT={SCAN}")
    lines = [e for e in entries if e.get("_TRANSPORT") == "stdout"]
    assert len(lines) > 20
    bad = []
    for e in lines:
        try:
            ok = isinstance(json.loads(e["MESSAGE"]), dict)
        except (ValueError, TypeError):
            ok = False
        if not ok:
            bad.append((e.get("_SYSTEMD_UNIT"), e.get("_COMM"), e.get("MESSAGE")))
    assert bad == []
    events = {json.loads(e["MESSAGE"]).get("event") for e in lines}
    for seen in ("config_reload_refused", "durability_failure", "lock_held", "pickup_finished"):
        assert seen in events, seen
    run_doc(host, "read-logs")
