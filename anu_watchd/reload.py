"""``anu-watchd reload``: SIGHUP the daemon and wait, bounded, for its answer.

On systemd 252 ``ExecReload=kill -HUP $MAINPID`` races ``systemctl reload``
(Type=notify-reload needs 253). This command is synchronous instead: it
notes the daemon's last reload answer, signals, and waits for a newer one.

Under the unit the answer lands in ``$RUNTIME_DIRECTORY`` (``RuntimeDirectory=``),
a path no config names: so a reload that changes ``spool.lock_file`` is
answered where the helper looks, and a config the helper cannot even load is
still handed to the daemon, which refuses it and logs ``config_reload_refused``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anu_watchd import fsio
from anu_watchd.config import Config
from anu_watchd.errors import ExitCode
from anu_watchd.locks import flock_holders, is_held, read_holder

POLL_S = 0.02
# The daemon's answer is one short line; anything longer is not its answer.
_STATUS_MAX_BYTES = 64 << 10
RUNTIME_ENV = "RUNTIME_DIRECTORY"


def reload_status_path(config: Config | None, environ: Mapping[str, str] = os.environ) -> Path:
    """Where the daemon records the answer to the latest SIGHUP."""
    runtime = environ.get(RUNTIME_ENV, "").split(":")[0]
    if runtime:
        return Path(runtime) / "reload.json"
    if config is None:
        raise ValueError(f"no config and no ${RUNTIME_ENV}: nowhere to look for the answer")
    lock = config.spool.lock_file
    return lock.with_name(lock.stem + ".reload.json")


def daemon_decides(pid: int | None, environ: Mapping[str, str] = os.environ) -> bool:
    """True if the helper may leave a config it cannot load to the daemon to refuse.

    Only under the unit: systemd passes the daemon's own pid (``$MAINPID``) and
    the runtime directory where its answer lands.
    """
    return pid is not None and bool(environ.get(RUNTIME_ENV))


def _read(path: Path) -> dict[str, Any] | None:
    # Non-blocking and never through a symlink: a FIFO planted here must not hang reload.
    return fsio.read_json_object(path, _STATUS_MAX_BYTES)


def _daemon_pid(lock: Path, pid: int | None) -> tuple[int | None, str]:
    """The pid to signal: only a process that holds the instance lock as the daemon.

    The lock file's content names the holder, but anyone may write it, so the
    kernel's lock table must agree that this pid holds the flock (where it
    can be read); a ``--pid`` that is not that process is never signalled.
    """
    holder = read_holder(lock)
    if not is_held(lock) or holder is None or holder.role != "run":
        why = f"no daemon runs (the instance lock {lock} is free or held by a one-shot command)"
        return None, why if pid is None else f"{why}; pid {pid} was not signalled"
    if pid is not None and pid != holder.pid:
        return None, (
            f"no daemon runs as pid {pid}: the instance lock {lock} is held by pid {holder.pid}; "
            "nothing was signalled"
        )
    holders = flock_holders(lock)
    if holders is not None and holder.pid not in holders:
        return None, (
            f"no daemon runs as pid {holder.pid}: it does not hold the instance lock {lock} "
            "(per /proc/locks); nothing was signalled"
        )
    return holder.pid, ""


def request_reload(
    config: Config | None, *, pid: int | None, timeout_s: float
) -> tuple[ExitCode, str]:
    """Signal and wait; ``(ExitCode.OK, msg)`` if applied, else the code that says why.

    TEMPFAIL: no daemon runs, or it did not answer in time; CONFIG: it refused the
    new config. Under the unit (``daemon_decides``) the pid is systemd's own
    ``$MAINPID``, trusted as it is: the lock file the new config names may not be
    the daemon's, and ``config`` may be None (a file the helper cannot load).
    """
    if config is not None and not daemon_decides(pid):
        pid, why_not = _daemon_pid(config.spool.lock_file, pid)
    elif pid is None:
        pid, why_not = None, "no daemon runs (no config to find its lock file; give --pid)"
    if pid is None:
        return ExitCode.TEMPFAIL, why_not
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
                return ExitCode.OK, f"reloaded: pid {pid} applied the new config"
            return ExitCode.CONFIG, f"refused: {doc.get('reason')}"
        time.sleep(POLL_S)  # polling a file with a deadline; the daemon answers by writing it
    return ExitCode.TEMPFAIL, f"timed out: pid {pid} did not answer within {timeout_s:g} s"
