"""A real spool on a temp dir, shared by integration and end-to-end tests.

``Spool`` writes a config, a random key (mode 0600; generated per test, never a
fixture) and the enable flag, and can drop results the way a worker does
(tmp + fsync + rename) or in hostile ways.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def valid_doc(task_id: str, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": "anu.result/v1",
        "task_id": task_id,
        "status": "DONE",
        "executor": "dev1",
        "collector": "anu",
        "finished_at": "2026-11-22T04:04:05Z",
        "summary": f"finished {task_id}",
    }
    doc.update(over)
    return doc


class Spool:
    def __init__(
        self,
        root: Path,
        *,
        activated: bool = True,
        enabled: bool = True,
        extra: str = "",
        sink: str = "log",
    ) -> None:
        self.root = root
        self.events = root / "memory" / "events"
        self.events.mkdir(parents=True)
        self.key = secrets.token_hex(24)
        self.key_file = root / "anu-key"
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, self.key.encode() + b"\n")
        os.close(fd)
        self.config = root / "anu-watchd.toml"
        self.write_config(activated=activated, sink=sink, extra=extra)
        if enabled:
            self.enable()

    def write_config(
        self, *, activated: bool = True, sink: str = "log", extra: str = "", wake_extra: str = ""
    ) -> None:
        self.config.write_text(
            f'root = "{self.root}"\n{extra}\n'
            f'[spool]\ncollector = "anu"\nexecutors = ["dev1", "dev2"]\n'
            f'[wake]\nactivated = {"true" if activated else "false"}\nsink = "{sink}"\n'
            f"backoff_initial_s = 0.01\nbackoff_max_s = 0.05\n{wake_extra}\n"
            f'[key]\nfile = "{self.key_file}"\n'
            f'[log]\nlevel = "debug"\n'
        )

    @property
    def flag(self) -> Path:
        return self.root / "memory" / "state" / "p0b_driver_enabled"

    def enable(self) -> None:
        self.flag.parent.mkdir(parents=True, exist_ok=True)
        self.flag.write_text("true\n")

    def result_path(self, task_id: str) -> Path:
        return self.events / f"{task_id}.result.json"

    def drop(
        self,
        task_id: str,
        doc: dict[str, Any] | None = None,
        *,
        raw: bytes | None = None,
        name: str | None = None,
    ) -> Path:
        """Write like a worker: tmp + fsync + rename into place."""
        data = raw if raw is not None else json.dumps(doc or valid_doc(task_id)).encode()
        final = self.events / (name or f"{task_id}.result.json")
        tmp = self.events / f".tmp-drop-{secrets.token_hex(4)}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, final)
        return final

    def cli(
        self,
        *args: str,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(["--config", str(self.config), *args], stdin=stdin, env=env, timeout=timeout)

    def ledger_lines(self) -> list[dict[str, Any]]:
        path = self.events / "callback_4tuple_index.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def evidence(self) -> list[dict[str, Any]]:
        path = self.events / "p0b_driver_runs.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def marker(self, task_id: str, suffix: str = ".pickup.done") -> dict[str, Any] | None:
        p = self.events / f"{task_id}{suffix}"
        return json.loads(p.read_text()) if p.exists() else None

    def quarantined(self) -> list[dict[str, Any]]:
        q = self.events / "quarantine"
        if not q.exists():
            return []
        return [json.loads(p.read_text()) for p in sorted(q.glob("*.reason.json"))]


def python_exec_spool(root: Path, handler: str, *, extra: str = "") -> Spool:
    """A spool whose exec sink runs ``handler`` (Python source) a wake, one attempt each."""
    script = root / "handler.py"
    script.write_text(handler)
    sp = Spool(root, sink="exec")
    sp.write_config(
        sink="exec",
        extra=extra,
        wake_extra=f'attempts = 1\n[wake.exec]\nargv = ["{sys.executable}", "{script}"]\n',
    )
    return sp


def run_cli(
    args: Sequence[str],
    *,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-m", "anu_watchd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
