"""The units under a real systemd 252, without needing the daemon to work."""

from __future__ import annotations

import re
import subprocess

import pytest
from anu_install import UNIT_DIR, UNIT_FILES
from nspawn_harness import Container, HarnessError, wait_for

pytestmark = pytest.mark.systemd

# A notify service that reports READY=1 only once the test opens its gate (a FIFO).
PROBE = "anu-notify-probe.service"
GATE = "/run/anu-notify-probe.gate"
PROBE_UNIT = f"""[Unit]
Description=Type=notify probe: READY only when the test says so

[Service]
Type=notify
# systemd-notify is a child of the shell, not the main process.
NotifyAccess=all
ExecStartPre=/usr/bin/mkfifo -m 0600 {GATE}
ExecStart=/bin/sh -c 'read -r _ < {GATE}; exec systemd-notify --ready'
ExecStopPost=/bin/rm -f {GATE}
RemainAfterExit=yes
TimeoutStartSec=60s
"""


def test_units_verify_clean_with_the_real_binary(container: Container) -> None:
    """systemd-analyze verify prints nothing for the installed units, binary and user real."""
    units = [f"{UNIT_DIR}/{name}" for name in UNIT_FILES]
    proc = container.run("systemd-analyze", "verify", "--man=no", *units, check=False)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_units_load_without_warnings(container: Container) -> None:
    """PID 1 loads every unit and logs no complaint about any of them."""
    for name in UNIT_FILES:
        assert container.show(name, "LoadState")["LoadState"] == "loaded"
    complaints = [
        e["MESSAGE"]
        for e in container.journal("_PID=1", "-p", "warning")
        if any(name in str(e.get("MESSAGE", "")) for name in UNIT_FILES)
    ]
    assert complaints == []


@pytest.mark.parametrize("unit", ["anu-watchd.service", "anu-watchd-scan.service"])
def test_exposure_at_most_1_2_inside(container: Container, unit: str) -> None:
    """systemd-analyze security on each loaded service reports an exposure of 1.2 or less."""
    out = container.run("systemd-analyze", "security", "--no-pager", unit).stdout
    found = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+)", out)
    assert found, out
    print(f"{unit} exposure (loaded by PID 1): {found.group(1)}")
    assert float(found.group(1)) <= 1.2


def test_start_returns_only_after_ready(container: Container) -> None:
    """systemctl start of a Type=notify unit blocks while activating and returns on READY=1."""
    container.write(f"{UNIT_DIR}/{PROBE}", PROBE_UNIT)
    container.systemctl("daemon-reload")
    start = subprocess.Popen(
        [*container.nsenter_argv(), "systemctl", "start", PROBE],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: container.path(GATE).exists(), "the probe's gate")
        state = container.show(PROBE, "ActiveState")["ActiveState"]
        assert (state, start.poll()) == ("activating", None)
        with container.path(GATE).open("w") as gate:  # blocks until the probe reads
            gate.write("go\n")
        assert start.wait(timeout=30) == 0, start.stdout.read() if start.stdout else ""
        assert container.show(PROBE, "ActiveState")["ActiveState"] == "active"
    finally:
        if start.poll() is None:
            start.kill()
            start.wait()
        if start.stdout:
            start.stdout.close()
        container.systemctl("stop", PROBE, check=False)


def test_harness_errors_name_the_failing_command(container: Container) -> None:
    """A failing command inside the container raises with its exit status and output."""
    with pytest.raises(HarnessError, match="exited 3"):
        container.sh("echo boom >&2; exit 3")


# Stands in for the daemon inside the real unit: does what the daemon must be allowed
# to do under the sandbox, and reports READY=1 only if all of it worked.
SANDBOX_PROBE = """
import asyncio, os, socket, sys
sys.path.insert(0, "/opt/anu-watchd/site")
import asyncinotify, attrs, cattrs, structlog, tenacity  # noqa: F401 - they must import

def write_access(path):
    try:
        open(path, "w").close()
    except OSError:
        return "denied"
    return "allowed"

async def main():
    key = open(os.path.join(os.environ["CREDENTIALS_DIRECTORY"], "anu-key")).read().strip()
    events = "/var/lib/anu-watchd/memory/events"
    with asyncinotify.Inotify() as inotify:
        inotify.add_watch(events, asyncinotify.Mask.CLOSE_WRITE)
        open(os.path.join(events, "probe"), "w").close()
        event = await asyncio.wait_for(inotify.get(), 10)
    status = (
        f"inotify={event.name} key={len(key)} etc={write_access('/etc/anu-probe')}"
        f" home={write_access('/root/anu-probe')} tmp={write_access('/tmp/anu-probe')}"
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = os.environ["NOTIFY_SOCKET"]
    address = "\\0" + address[1:] if address.startswith("@") else address
    notify.sendto(f"READY=1\\nSTATUS={status}".encode(), address)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_sandbox_lets_the_daemon_work(container: Container, sealed_key: str) -> None:
    """Under the real unit's hardening Python, inotify, the credential and the spool all work."""
    container.write("/usr/local/lib/anu-sandbox-probe.py", SANDBOX_PROBE)
    dropin = f"{UNIT_DIR}/anu-watchd.service.d/probe.conf"
    container.write(
        dropin,
        "[Service]\nExecStart=\nExecStart=/usr/bin/python3 /usr/local/lib/anu-sandbox-probe.py\n",
    )
    container.systemctl("daemon-reload")
    try:
        container.systemctl("start", "anu-watchd.service")
        status = container.show("anu-watchd.service", "StatusText", "MainPID")
        assert status["StatusText"] == (
            f"inotify=probe key={len(sealed_key)} etc=denied home=denied tmp=allowed"
        )
        user = container.run("ps", "-o", "user=", "-p", status["MainPID"]).stdout.strip()
        assert user == "anu-watchd"
    finally:
        container.systemctl("stop", "anu-watchd.service", check=False)
        container.sh(f"rm -f {dropin} /var/lib/anu-watchd/memory/events/probe")
        container.systemctl("daemon-reload")
        container.systemctl("reset-failed", check=False)
