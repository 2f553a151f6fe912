"""The real daemon as a subprocess, with a test-owned NOTIFY_SOCKET.

``DaemonProc`` starts ``python -m anu_watchd run``, collects its sd_notify
datagrams on a real AF_UNIX socket and its JSON log lines from stdout, and
lets a test wait on either with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from tests.deadline import wait_for as wait_for  # re-exported: tests import it from here
from tests.spool import REPO, Spool


class DaemonProc:
    def __init__(
        self, spool: Spool, *, watchdog_usec: int | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.spool = spool
        self.sock_path = spool.root / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.sock.settimeout(0.1)
        self.datagrams: list[str] = []
        self.lines: list[str] = []
        self._lock = threading.Lock()
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": str(self.sock_path)}
        if watchdog_usec is not None:
            full_env["WATCHDOG_USEC"] = str(watchdog_usec)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "anu_watchd", "--config", str(spool.config), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            text=True,
        )
        self._threads = [
            threading.Thread(target=self._read_notify, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_notify(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if self.proc.poll() is not None:
                    return
                continue
            except OSError:
                return
            with self._lock:
                self.datagrams.append(data.decode())

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    # -- waiting ------------------------------------------------------------

    def notified(self, field: str) -> list[str]:
        with self._lock:
            return [d for d in self.datagrams if field in d.splitlines()]

    def notified_prefix(self, prefix: str) -> list[str]:
        with self._lock:
            return [d for d in self.datagrams if any(f.startswith(prefix) for f in d.splitlines())]

    def wait_notify(self, field: str, *, count: int = 1, timeout: float = 20) -> list[str]:
        return wait_for(
            lambda: len(self.notified(field)) >= count and self.notified(field),
            timeout,
            f"{count}x {field}",
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            lines = list(self.lines)
        out = []
        for line in lines:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == name:
                out.append(doc)
        return out

    def wait_event(self, name: str, *, timeout: float = 20) -> dict[str, Any]:
        return wait_for(lambda: self.events(name) and self.events(name)[-1], timeout, name)

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait(10)
        self.sock.close()
        # Leave the path free so a test can start the daemon again on the same spool.
        self.sock_path.unlink(missing_ok=True)
        return code

    def log_text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)
