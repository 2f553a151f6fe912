"""``reload --pid N`` signals only the daemon that holds the instance lock, and says why not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.spool import REPO, Spool

# Holds the spool's instance lock as the daemon would ("run"), and never answers a SIGHUP.
_MUTE_DAEMON = """
import signal, sys
from pathlib import Path
from anu_watchd.locks import InstanceLock
signal.signal(signal.SIGHUP, signal.SIG_IGN)
with InstanceLock(Path(sys.argv[1]), role="run"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process that a SIGHUP would kill (the default action)."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


def test_reload_pid_of_an_unrelated_process_is_refused_and_sends_nothing(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    """``reload --pid`` of a process that does not hold the lock as the daemon exits 75 with
    the reason and leaves that process alone."""
    spool = Spool(tmp_path)
    res = spool.cli("reload", "--pid", str(bystander.pid), "--timeout", "2")
    assert res.returncode == 75, res.stderr
    assert str(bystander.pid) in res.stderr and "instance lock" in res.stderr
    with pytest.raises(subprocess.TimeoutExpired):  # a SIGHUP would have ended it by now
        bystander.wait(timeout=0.5)


def test_reload_with_no_answer_in_time_is_75_not_70(tmp_path: Path) -> None:
    """A daemon that holds the lock but does not answer the SIGHUP in time is 75 (try later)."""
    spool = Spool(tmp_path)
    lock = spool.flag.parent / "anu-watchd.lock"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _MUTE_DAEMON, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        res = spool.cli("reload", "--pid", str(holder.pid), "--timeout", "0.5")
        assert res.returncode == 75, res.stderr
        assert "timed out" in res.stderr
        assert holder.poll() is None
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(10)
