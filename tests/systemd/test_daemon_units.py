"""anu-watchd under its units in a real systemd: readiness, journal, reload, restarts, drivers.

Each test starts from a stopped service, an empty spool, the example config
(activated, with a recording exec sink) and ``systemctl reset-failed``, since the
starts a test makes count against StartLimitBurst.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from anu_install import CONFIG, REPO, SPOOL, UNIT_DIR
from nspawn_harness import Container, wait_for


def _daemon_built() -> bool:
    proc = subprocess.run(
        [sys.executable, "-c", "import anu_watchd.daemon"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


pytestmark = [
    pytest.mark.systemd,
    pytest.mark.skipif(not _daemon_built(), reason="daemon not built yet"),
]

SERVICE = "anu-watchd.service"
SCAN = "anu-watchd-scan.service"
PATH_UNIT = "anu-watchd.path"
EVENTS = f"{SPOOL}/memory/events"
STATE = f"{SPOOL}/memory/state"
WAKES = f"{SPOOL}/wakes"
RECORDER = "/usr/local/bin/anu-test-wake"
KEY = "/etc/anu-watchd/anu-key"
# The catalog id of PID 1's "Started <unit>" / "Finished <unit>" message.
UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"
# sd-daemon priorities of the structlog levels (syslog numbering).
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "critical": 2}

GATE = f"{SPOOL}/wake-gate"
# The exec sink's command: keeps the envelope it is handed, answers with a schedule id.
# If the test set a gate (a FIFO), the first wake takes it and waits until it is opened.
RECORDER_SCRIPT = f"""#!/bin/sh
set -e
if [ -p {GATE} ]; then
    /bin/mv {GATE} {GATE}.taken
    read -r _ < {GATE}.taken
    /bin/rm -f {GATE}.taken
fi
tmp=$(/usr/bin/mktemp {WAKES}/.wake-XXXXXX)
/bin/cat > "$tmp"
/bin/mv "$tmp" "{WAKES}/wake-$(/bin/date +%s%N).json"
echo '{{"schedule_id": "sched-test"}}'
"""


def _config(*, key_file: str = "") -> str:
    """The shipped example, switched on: activated, exec sink to the recorder."""
    text = (REPO / "units" / "anu-watchd.toml.example").read_text()
    for old, new in [
        ("activated = false", "activated = true"),
        ('sink = "log"', 'sink = "exec"'),
        ("\nargv = []", f'\nargv = ["{RECORDER}"]'),
        ('\nfile = ""', f'\nfile = "{key_file}"'),
    ]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def _broken_config() -> str:
    """The test config with an unknown top-level key, which the loader must refuse."""
    return "not_a_key = 1\n" + _config()


@pytest.fixture
def anu(container: Container) -> Iterator[Container]:
    """The container with every anu-watchd unit stopped, failures reset and a fresh spool."""
    c = container
    _reset(c)
    yield c
    _reset(c)


def _reset(c: Container) -> None:
    c.systemctl("stop", PATH_UNIT, SCAN, SERVICE, check=False)
    c.sh(
        f"rm -rf {UNIT_DIR}/{SERVICE}.d {SPOOL}/memory {WAKES}"
        " && systemd-tmpfiles --create anu-watchd.conf"
        f" && install -d -o anu-watchd -g anu-watchd -m 0750 {STATE} {WAKES}"
    )
    c.write(f"{STATE}/p0b_driver_enabled", "true")
    c.write(RECORDER, RECORDER_SCRIPT, mode=0o755)
    c.write(CONFIG, _config())
    c.systemctl("daemon-reload")
    c.systemctl("reset-failed")


def _drop_result(c: Container, task_id: str) -> None:
    """A worker's atomic drop: write a temp file, fsync, rename into the events dir."""
    doc = {
        "schema": "anu.result/v1",
        "task_id": task_id,
        "status": "DONE",
        "executor": "worker-1",
        "collector": "anu",
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "summary": f"{task_id} finished",
    }
    events = c.path(EVENTS)
    tmp = events / f".tmp-{task_id}"
    with tmp.open("w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(events / f"{task_id}.result.json")


def _done_marker(c: Container, task_id: str) -> dict[str, Any] | None:
    try:
        marker: dict[str, Any] = json.loads(c.path(f"{EVENTS}/{task_id}.pickup.done").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return marker


def _wait_woken(c: Container, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    marker: dict[str, Any] = wait_for(
        lambda: _done_marker(c, task_id), f"{task_id}.pickup.done", timeout
    )
    assert marker["verdict"] == "WAKE_BUILT", marker
    return marker


def _wakes(c: Container) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(c.path(WAKES).glob("wake-*.json"))]


def _main_pid(c: Container) -> int:
    return int(c.show(SERVICE, "MainPID")["MainPID"])


def _running_again(c: Container, old_pid: int) -> int | None:
    """The new main pid once the service is back up under a different process."""
    props = c.show(SERVICE, "MainPID", "ActiveState", "SubState")
    pid = int(props["MainPID"])
    running = (props["ActiveState"], props["SubState"]) == ("active", "running")
    return pid if running and pid not in (0, old_pid) else None


def _daemon_lines(c: Container, *matches: str) -> list[dict[str, Any]]:
    """The journal entries of the running daemon process (not of ExecReload= or the sink)."""
    props = c.show(SERVICE, "InvocationID", "MainPID")
    return c.journal(
        f"_SYSTEMD_INVOCATION_ID={props['InvocationID']}", f"_PID={props['MainPID']}", *matches
    )


def test_start_returns_after_ready(anu: Container) -> None:
    """systemctl start returns once the daemon sent READY=1: the unit is active at once."""
    anu.systemctl("start", SERVICE)
    props = anu.show(SERVICE, "ActiveState", "SubState", "MainPID", "Type", "NotifyAccess")
    assert props == {
        "ActiveState": "active",
        "SubState": "running",
        "MainPID": props["MainPID"],
        "Type": "notify",
        "NotifyAccess": "main",
    }
    assert int(props["MainPID"]) > 0
    user = anu.run("ps", "-o", "user=", "-p", props["MainPID"]).stdout.strip()
    assert user == "anu-watchd"


def test_dropped_result_is_woken(anu: Container, sealed_key: str) -> None:
    """A result renamed into the events dir is woken once through the exec sink."""
    anu.systemctl("start", SERVICE)
    _drop_result(anu, "task-sd-1")
    marker = _wait_woken(anu, "task-sd-1")
    assert marker["schedule_id"] == "sched-test"
    wakes = _wakes(anu)
    assert [w["task_id"] for w in wakes] == ["task-sd-1"]
    envelope = anu.path(f"{EVENTS}/task-sd-1.callback-envelope.json").read_text()
    assert sealed_key not in envelope and all(sealed_key not in json.dumps(w) for w in wakes)


def test_journal_messages_are_json_with_mapped_priority(anu: Container, sealed_key: str) -> None:
    """Every daemon line in the journal is pure JSON with PRIORITY taken from its <N> prefix."""
    anu.systemctl("start", SERVICE)
    _drop_result(anu, "task-sd-good")
    anu.path(f"{EVENTS}/task-sd-bad.result.json").write_text("{not json")
    _wait_woken(anu, "task-sd-good")
    quarantine = anu.path(f"{EVENTS}/quarantine")
    wait_for(lambda: quarantine.is_dir() and any(quarantine.iterdir()), "the quarantined file")
    wait_for(
        lambda: any("task-sd-bad" in e.get("MESSAGE", "") for e in _daemon_lines(anu)),
        "the quarantine line in the journal",
    )
    entries = _daemon_lines(anu)
    levels = set()
    for entry in entries:
        message = json.loads(entry["MESSAGE"])
        assert isinstance(message, dict) and "event" in message, entry["MESSAGE"]
        assert int(entry["PRIORITY"]) == PRIORITY[message["level"]], entry["MESSAGE"]
        assert sealed_key not in entry["MESSAGE"]
        levels.add(message["level"])
    assert "info" in levels and levels & {"warning", "error"}, levels
    errors = _daemon_lines(anu, "-p", "warning")
    assert errors and all(json.loads(e["MESSAGE"])["level"] != "info" for e in errors)


def test_reload_applies_and_refuses_synchronously(anu: Container) -> None:
    """systemctl reload succeeds for a valid config, fails for a broken one; the daemon lives."""
    anu.systemctl("start", SERVICE)
    pid = _main_pid(anu)
    anu.write(CONFIG, _config().replace('level = "info"', 'level = "debug"'))
    anu.systemctl("reload", SERVICE)
    anu.write(CONFIG, _broken_config())
    refused = anu.systemctl("reload", SERVICE, check=False)
    assert refused.returncode != 0
    props = anu.show(SERVICE, "ActiveState", "SubState", "MainPID")
    assert props == {"ActiveState": "active", "SubState": "running", "MainPID": str(pid)}
    anu.write(CONFIG, _config())
    anu.systemctl("reload", SERVICE)
    _drop_result(anu, "task-sd-after-reload")
    _wait_woken(anu, "task-sd-after-reload")


def test_kill_9_is_restarted(anu: Container) -> None:
    """SIGKILL of the main process is a failure: systemd restarts the daemon."""
    anu.systemctl("start", SERVICE)
    pid = _main_pid(anu)
    anu.run("kill", "-9", str(pid))
    wait_for(lambda: _running_again(anu, pid), "the daemon to be restarted")
    assert anu.show(SERVICE, "NRestarts")["NRestarts"] == "1"
    _drop_result(anu, "task-sd-after-kill")
    _wait_woken(anu, "task-sd-after-kill")


def test_stalled_daemon_is_killed_by_watchdog(anu: Container) -> None:
    """A SIGSTOPped daemon stops pinging; the watchdog kills it and systemd restarts it."""
    anu.write(f"{UNIT_DIR}/{SERVICE}.d/watchdog.conf", "[Service]\nWatchdogSec=2s\n")
    anu.systemctl("daemon-reload")
    anu.systemctl("start", SERVICE)
    pid = _main_pid(anu)
    anu.run("kill", "-STOP", str(pid))
    wait_for(lambda: _running_again(anu, pid), "the watchdog restart", timeout=45)
    log = anu.run("journalctl", "--no-pager", "-u", SERVICE, "-o", "cat").stdout
    assert re.search(r"Watchdog timeout", log), log


def test_broken_config_exits_78_without_restart_loop(anu: Container) -> None:
    """An invalid config fails the start with exit 78 and systemd does not schedule a restart."""
    anu.write(CONFIG, _broken_config())
    assert anu.systemctl("start", SERVICE, check=False).returncode != 0
    props = anu.show(SERVICE, "ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
    assert props == {
        "ActiveState": "failed",
        "SubState": "failed",  # not auto-restart: RestartPreventExitStatus=78
        "Result": "exit-code",
        "ExecMainStatus": "78",
        "NRestarts": "0",
    }


@pytest.mark.parametrize(
    ("break_it", "status"),
    [
        (f"mv {KEY} {KEY}.away", "243"),  # systemd's CREDENTIALS: LoadCredential= source missing
        (f"chown -R root: {STATE} && chmod 0700 {STATE}", "77"),  # state a root shell left
    ],
)
def test_no_restart_loop_for_a_missing_credential_or_a_foreign_spool(
    anu: Container, break_it: str, status: str
) -> None:
    """A missing key source (243) or state the service may not write (77) fails once."""
    anu.sh(break_it)
    try:
        assert anu.systemctl("start", SERVICE, check=False).returncode != 0
        props = anu.show(SERVICE, "SubState", "ExecMainStatus", "NRestarts")
        assert props == {"SubState": "failed", "ExecMainStatus": status, "NRestarts": "0"}
    finally:
        anu.sh(f"[ ! -e {KEY}.away ] || mv {KEY}.away {KEY}")


def test_credential_readable_by_service_user_only(anu: Container, sealed_key: str) -> None:
    """The key reaches the service as a credential only its user reads; never argv or env."""
    anu.systemctl("start", SERVICE)
    cred = "/run/credentials/anu-watchd.service/anu-key"
    assert anu.run("cat", cred, user="anu-watchd").stdout.strip() == sealed_key
    denied = anu.run("cat", cred, user="nobody", check=False)
    assert denied.returncode != 0 and sealed_key not in denied.stdout
    original = anu.run("cat", "/etc/anu-watchd/anu-key", user="anu-watchd", check=False)
    assert original.returncode != 0
    pid = _main_pid(anu)
    environ = anu.run("cat", f"/proc/{pid}/environ").stdout
    cmdline = anu.run("cat", f"/proc/{pid}/cmdline").stdout
    assert sealed_key not in environ and sealed_key not in cmdline
    assert "CREDENTIALS_DIRECTORY=/run/credentials/anu-watchd.service" in environ.split("\0")


def test_path_unit_drives_scans(anu: Container) -> None:
    """With the path unit instead of the daemon, each dropped result is scanned and woken."""
    anu.systemctl("start", PATH_UNIT)
    for task_id in ("task-sd-path-1", "task-sd-path-2"):
        _drop_result(anu, task_id)
        _wait_woken(anu, task_id)
    wait_for(
        lambda: anu.show(SCAN, "ActiveState")["ActiveState"] == "inactive", "the scan to finish"
    )
    assert anu.show(SCAN, "Result")["Result"] == "success"
    assert anu.show(PATH_UNIT, "ActiveState")["ActiveState"] == "active"
    assert sorted(w["task_id"] for w in _wakes(anu)) == ["task-sd-path-1", "task-sd-path-2"]


def test_scan_repeats_for_a_result_that_lands_mid_pass(anu: Container) -> None:
    """A result renamed in while a path-triggered scan runs is woken by that same run."""
    os.mkfifo(anu.path(GATE))
    cursor = anu.journal_cursor()
    anu.systemctl("start", PATH_UNIT)
    _drop_result(anu, "task-sd-first")
    taken = anu.path(f"{GATE}.taken")
    wait_for(taken.exists, "the first wake to hold the scan at the gate")
    _drop_result(anu, "task-sd-mid-pass")  # the path unit does not watch during a run
    with taken.open("w") as gate:
        gate.write("go\n")
    _wait_woken(anu, "task-sd-first")
    _wait_woken(anu, "task-sd-mid-pass")
    wait_for(
        lambda: anu.show(SCAN, "ActiveState")["ActiveState"] == "inactive", "the scan to finish"
    )
    started = [
        e
        for e in anu.journal(f"--after-cursor={cursor}", "-u", SCAN)
        if e.get("MESSAGE_ID") == UNIT_STARTED
    ]
    assert len(started) == 1


def test_starting_the_daemon_waits_for_a_scan_in_progress(anu: Container) -> None:
    """The switch back from the path unit while a scan holds the instance lock: the daemon's
    start waits for the scan to end (the unit is ordered after it), then starts once, with
    no failed start and no restart."""
    os.mkfifo(anu.path(GATE))
    anu.systemctl("start", PATH_UNIT)
    _drop_result(anu, "task-sd-held")
    taken = anu.path(f"{GATE}.taken")
    wait_for(taken.exists, "the scan held at the gate, holding the lock")
    anu.systemctl("stop", PATH_UNIT)
    cursor = anu.journal_cursor()
    anu.systemctl("start", "--no-block", SERVICE)
    wait_for(
        lambda: SERVICE in anu.run("systemctl", "list-jobs", "--no-legend").stdout,
        "the daemon's start job queued",
    )
    assert anu.show(SERVICE, "ActiveState", "NRestarts") == {
        "ActiveState": "inactive",
        "NRestarts": "0",
    }
    with taken.open("w") as gate:
        gate.write("go\n")
    _wait_woken(anu, "task-sd-held")
    wait_for(
        lambda: anu.show(SERVICE, "SubState")["SubState"] == "running", "the daemon running"
    )
    assert anu.show(SERVICE, "NRestarts")["NRestarts"] == "0"
    assert anu.show(SCAN, "Result")["Result"] == "success"
    lines = anu.journal(f"--after-cursor={cursor}", "-u", SERVICE)
    assert not [e for e in lines if "lock_held" in str(e.get("MESSAGE", ""))]
    assert [w["task_id"] for w in _wakes(anu)] == ["task-sd-held"]


def _cron_job() -> tuple[dict[str, str], str, str]:
    """(environment, user, command) of the job line in units/anu-watchd.cron."""
    env: dict[str, str] = {}
    jobs = []
    for line in (REPO / "units" / "anu-watchd.cron").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, eq, value = line.partition("=")
        if eq and re.fullmatch(r"[A-Z_]+", name):
            env[name] = value
        else:
            jobs.append(line.split(None, 6))
    [[*_when, user, command]] = jobs
    return env, user, command


def test_cron_line_scans_and_skips_while_locked(anu: Container, sealed_key: str) -> None:
    """The cron job scans as root with the root-only key, leaves only anu-watchd's files, and
    does nothing while its flock is held."""
    env, user, command = _cron_job()
    assert user == "root"
    anu.write(CONFIG, _config(key_file=KEY))
    as_cron = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), env["SHELL"], "-c", command]

    _drop_result(anu, "task-sd-cron-1")
    anu.run(*as_cron, user=user)
    _wait_woken(anu, "task-sd-cron-1", timeout=1)
    root_owned = set(anu.run("find", f"{SPOOL}/memory", "-user", "root").stdout.split())
    # Only what the test itself wrote as root: the flag and the dropped result.
    assert root_owned == {f"{STATE}/p0b_driver_enabled", f"{EVENTS}/task-sd-cron-1.result.json"}

    lock = re.search(r"flock -n (\S+)", command)
    assert lock, command
    _drop_result(anu, "task-sd-cron-2")
    with anu.path(lock.group(1)).open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        skipped = anu.run(*as_cron, user=user, check=False)
    assert skipped.returncode == 1, shlex.join(as_cron)
    assert _done_marker(anu, "task-sd-cron-2") is None


def test_metrics_endpoint_answers_on_loopback(anu: Container) -> None:
    """With `[metrics] listen` on loopback, the hardened unit serves /metrics there: a scrape
    from the host side of the unit's network rules counts the woken result."""
    config = anu.path(CONFIG).read_text()
    anu.write(CONFIG, config.replace('# listen = "127.0.0.1:9464"', 'listen = "127.0.0.1:9464"'))
    anu.systemctl("start", SERVICE)
    _drop_result(anu, "task-sd-metrics")
    _wait_woken(anu, "task-sd-metrics")
    scrape = (
        "import urllib.request as u;"
        "print(u.urlopen('http://127.0.0.1:9464/metrics', timeout=5).read().decode())"
    )
    text = anu.run("python3", "-c", scrape).stdout
    assert 'anu_watchd_results_total{verdict="WAKE_BUILT"} 1.0' in text
    assert "anu_watchd_build_info{" in text
