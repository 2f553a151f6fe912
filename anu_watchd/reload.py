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

import json
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anu_watchd.config import Config
from anu_watchd.locks import is_held, read_holder

POLL_S = 0.02
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
    """True if the helper may leave a config it cannot load to the daemon to refuse."""
    return pid is not None and bool(environ.get(RUNTIME_ENV))


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def request_reload(
    config: Config | None, *, pid: int | None, timeout_s: float
) -> tuple[bool, str]:
    """Signal and wait; ``(True, msg)`` if applied, ``(False, msg)`` otherwise.

    ``config`` may be None only with ``pid`` and ``daemon_decides`` true.
    """
    if pid is None:
        if config is None:
            return False, "no daemon runs (no config to find its lock file; give --pid)"
        lock = config.spool.lock_file
        holder = read_holder(lock)
        if not is_held(lock) or holder is None or holder.role != "run":
            return False, f"no daemon runs (lock {lock} is free or held by a one-shot command)"
        pid = holder.pid
    status = reload_status_path(config)
    before = _read(status)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False, f"no daemon runs (pid {pid} is gone)"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        doc = _read(status)
        if doc is not None and doc != before and doc.get("pid") == pid:
            if doc.get("result") == "applied":
                return True, f"reloaded: pid {pid} applied the new config"
            return False, f"refused: {doc.get('reason')}"
        time.sleep(POLL_S)  # polling a file with a deadline; the daemon answers by writing it
    return False, f"timed out: pid {pid} did not answer within {timeout_s:g} s"
