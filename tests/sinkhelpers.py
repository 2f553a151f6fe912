"""Real wake sinks for tests: a recording exec command and a 127.0.0.1 HTTP server.

Exec::

    argv = write_recording_sink(tmp_path, behaviour="ok")
    sink = ExecSink(argv, [], key_file=..., timeout_s=5)
    await sink.register(b"{}", idempotency_key="ik1-x")     # -> "S-1"
    set_sink_behaviour(tmp_path, "tempfail")                # the next call exits 75
    read_sink_calls(tmp_path)   # [{"n", "pid", "argv", "env", "stdin"}, ...]

HTTP::

    with TestHttpServer(key=sealed.value, replies=[500, 200]) as server:
        sink = HttpSink(server.url, key=sealed, timeout_s=5)
        ...                                                 # 500, then 200
        server.requests     # [RecordedRequest(path, headers, body, signature_ok), ...]

Both are bounded: the command is killed by the sink's timeout, the server's
handlers give up after ``HANDLER_TIMEOUT_S`` and delayed replies are released
as soon as the server is closed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import sys
import threading
from collections import deque
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs

RECORD_FILE = "sink-calls.jsonl"
MODE_FILE = "sink.mode"
SCRIPT_FILE = "recording_sink.py"
HANDLER_TIMEOUT_S = 10.0
MAX_BODY_BYTES = 1024 * 1024

# Runs under the sink's clean environment, so it imports nothing from the project.
_SCRIPT = r"""
import fcntl, json, os, signal, subprocess, sys, time
from pathlib import Path

here = Path(__file__).resolve().parent
mode = (here / "sink.mode").read_text().strip()
stdin = sys.stdin.read()
with open(here / "sink-calls.jsonl", "a+") as rec:
    fcntl.flock(rec, fcntl.LOCK_EX)  # concurrent calls still get distinct numbers
    rec.seek(0)
    n = sum(1 for _ in rec) + 1
    call = {"n": n, "pid": os.getpid(), "argv": sys.argv, "env": dict(os.environ), "stdin": stdin,
            "start": time.monotonic()}
    if mode == "hang":
        # A grandchild in the same session: the timeout must kill the whole group.
        kid = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(60)"],
                               stdin=subprocess.DEVNULL)
        call["grandchild_pid"] = kid.pid
    rec.write(json.dumps(call) + "\n")

if mode.startswith("tempfail-then-ok:"):
    mode = "tempfail" if n <= int(mode.split(":", 1)[1]) else "ok"
if mode.startswith("slow:"):
    # A call that lasts: its [start, end] (CLOCK_MONOTONIC, system-wide) shows the overlap.
    time.sleep(int(mode.split(":", 1)[1]) / 1000)
    with open(here / "sink-ends.jsonl", "a") as ends:
        ends.write(json.dumps({"n": n, "end": time.monotonic()}) + "\n")
    mode = "ok"
if mode == "ok":
    print(json.dumps({"schedule_id": f"S-{n}"}))
elif mode == "ok-line":
    print(f"\n   S-{n}  \nsecond line is ignored")
elif mode == "no-id":
    pass
elif mode == "tempfail":
    print("collector busy, try later", file=sys.stderr)
    sys.exit(75)
elif mode == "fail":
    print("envelope refused", file=sys.stderr)
    sys.exit(3)
elif mode == "leak-key":
    print("bad key: " + Path(os.environ["ANU_WATCHD_KEY_FILE"]).read_text(), file=sys.stderr)
    sys.exit(3)
elif mode == "id-key":
    key = Path(os.environ["ANU_WATCHD_KEY_FILE"]).read_text().strip()
    print(json.dumps({"schedule_id": "sched-" + key}))
elif mode == "hang":
    while True:
        time.sleep(60)
elif mode == "signal":
    os.kill(os.getpid(), signal.SIGKILL)
else:
    print(f"unknown mode {mode!r}", file=sys.stderr)
    sys.exit(64)
"""


def write_recording_sink(dir: Path, *, behaviour: str) -> list[str]:
    """Write the recording command into ``dir`` and return its argv.

    Each call appends ``{"n", "pid", "argv", "env", "stdin"}`` to
    ``dir/sink-calls.jsonl`` (``n`` counts from 1; "hang" also records
    ``grandchild_pid``), then behaves per ``dir/sink.mode``, re-read on every
    call: "ok" prints ``{"schedule_id": "S-<n>"}``; "ok-line" prints a bare
    ``S-<n>`` line; "no-id" prints nothing; "tempfail" exits 75; "fail" and
    "leak-key" (echoes the key file to stderr) exit 3; "id-key" answers a
    schedule id holding the key; "hang" sleeps forever
    with a grandchild; "signal" SIGKILLs itself; "tempfail-then-ok:<k>" exits
    75 for calls 1..k, then behaves as "ok"; "slow:<ms>" lasts that long, then
    behaves as "ok" (see ``call_spans``).
    """
    dir.mkdir(parents=True, exist_ok=True)
    script = dir / SCRIPT_FILE
    script.write_text(_SCRIPT)
    set_sink_behaviour(dir, behaviour)
    return [sys.executable, str(script)]


def set_sink_behaviour(dir: Path, behaviour: str) -> None:
    """Switch the recording command in ``dir`` to ``behaviour`` from its next call."""
    (dir / MODE_FILE).write_text(behaviour + "\n")


def read_sink_calls(dir: Path) -> list[dict[str, Any]]:
    """Every call the recording command in ``dir`` has seen, oldest first."""
    path = dir / RECORD_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def call_spans(dir: Path) -> list[tuple[float, float]]:
    """``(start, end)`` of each finished call of the recording command in ``dir`` ("slow:")."""
    starts = {c["n"]: c["start"] for c in read_sink_calls(dir)}
    ends = dir / "sink-ends.jsonl"
    lines = ends.read_text().splitlines() if ends.exists() else []
    return [(starts[e["n"]], e["end"]) for e in map(json.loads, lines)]


def most_at_once(spans: Iterable[tuple[float, float]]) -> int:
    """The largest number of ``spans`` open at one moment."""
    edges = sorted(e for s, t in spans for e in ((s, 1), (t, -1)))  # an end sorts first on a tie
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def unused_port() -> int:
    """A 127.0.0.1 port nobody listens on (bound, then released), for connect-refused tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- HTTP -------------------------------------------------------------------------


@attrs.frozen
class Reply:
    """One programmed answer; ``body=None`` means the default for the status."""

    status: int = 200
    body: bytes | dict[str, Any] | None = None
    delay_s: float = 0.0
    headers: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class RecordedRequest:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    signature_ok: bool | None  # None when the server was given no key


class TestHttpServer:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> that records and answers POSTs.

    Replies come from a queue (ints or ``Reply``); when it is empty the answer is
    200 ``{"schedule_id": "H-<n>"}`` (``n`` = request number from 1). With a
    ``key``, a request whose ``X-Anu-Signature`` does not verify is answered 401
    without consuming the queue.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, *, key: str | None = None, replies: Iterable[int | Reply] = ()) -> None:
        self.key = key
        self._replies: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self.queue(*replies)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        # A short poll interval keeps shutdown (and so each test's teardown) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/wake"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    def queue(self, *replies: int | Reply) -> None:
        """Append answers for the next requests."""
        with self._cond:
            self._replies.extend(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> list[RecordedRequest]:
        """Block until ``count`` requests were recorded; AssertionError past the deadline."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= count, timeout_s):
                raise AssertionError(f"{len(self._requests)} of {count} requests in {timeout_s}s")
            return list(self._requests)

    def __enter__(self) -> TestHttpServer:
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing.set()  # releases delayed replies at once
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=HANDLER_TIMEOUT_S)

    def _answer(self, headers: dict[str, str], path: str, body: bytes) -> Reply:
        ok = self._verify(headers.get("x-anu-signature", ""), body)
        with self._cond:
            self._requests.append(RecordedRequest(path, headers, body, ok))
            n = len(self._requests)
            self._cond.notify_all()
            if ok is False:
                return Reply(401, {"error": "bad signature"})
            reply = self._replies.popleft() if self._replies else Reply()
        if reply.body is None:
            default = {"schedule_id": f"H-{n}"} if reply.status < 300 else {"error": "scripted"}
            reply = attrs.evolve(reply, body=default)
        return reply

    def _verify(self, header: str, body: bytes) -> bool | None:
        if self.key is None:
            return None
        want = "sha256=" + hmac.new(self.key.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(header, want)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: TestHttpServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is expected here; stay quiet about it.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = HANDLER_TIMEOUT_S

    def do_POST(self) -> None:
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY_BYTES)
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        owner = self.server.owner
        reply = owner._answer(headers, self.path, body)
        if reply.delay_s:
            owner._closing.wait(reply.delay_s)
        payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        with contextlib.suppress(ConnectionError):
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def child_is_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


__all__ = [
    "RecordedRequest",
    "Reply",
    "TestHttpServer",
    "child_is_gone",
    "read_sink_calls",
    "set_sink_behaviour",
    "unused_port",
    "write_recording_sink",
]
