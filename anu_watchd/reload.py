"""``anu-watchd reload``: SIGHUP the daemon and wait, bounded, for its answer.

On systemd 252 ``ExecReload=kill -HUP $MAINPID`` races ``systemctl reload``
(Type=notify-reload needs 253). This command is synchronous instead: it
notes the daemon's last reload answer, signals, and waits for a newer one.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from anu_watchd import fsio
from anu_watchd.config import Config
from anu_watchd.errors import ExitCode
from anu_watchd.locks import is_held, read_holder

POLL_S = 0.02
# The daemon's answer is one short line; anything longer is not its answer.
_STATUS_MAX_BYTES = 64 << 10


def reload_status_path(config: Config) -> Path:
    """Where the daemon records the answer to the latest SIGHUP."""
    lock = config.spool.lock_file
    return lock.with_name(lock.stem + ".reload.json")


def _read(path: Path) -> dict[str, Any] | None:
    return fsio.read_json_object(path, _STATUS_MAX_BYTES)


def request_reload(config: Config, *, pid: int | None, timeout_s: float) -> tuple[ExitCode, str]:
    """Signal and wait; ``(ExitCode.OK, msg)`` if applied, else the code that says why.

    TEMPFAIL: no daemon runs; CONFIG: it refused the new config; SOFTWARE: no answer.
    """
    lock = config.spool.lock_file
    holder = read_holder(lock)
    if pid is None:
        if not is_held(lock) or holder is None or holder.role != "run":
            return (
                ExitCode.TEMPFAIL,
                f"no daemon runs (lock {lock} is free or held by a one-shot command)",
            )
        pid = holder.pid
    status = reload_status_path(config)
    before = _read(status)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return ExitCode.TEMPFAIL, f"no daemon runs (pid {pid} is gone)"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        doc = _read(status)
        if doc is not None and doc != before and doc.get("pid") == pid:
            if doc.get("result") == "applied":
                return ExitCode.OK, f"reloaded: pid {pid} applied {config.source}"
            return ExitCode.CONFIG, f"refused: {doc.get('reason')}"
        time.sleep(POLL_S)  # polling a file with a deadline; the daemon answers by writing it
    return ExitCode.SOFTWARE, f"timed out: pid {pid} did not answer within {timeout_s:g} s"
