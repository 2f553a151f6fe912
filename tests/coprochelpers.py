"""A real co-process handler for tests, told how to misbehave by a mode file.

    argv = write_coprocess_handler(tmp_path, behaviour="ok")
    sink = CoprocessSink(argv, ...)                      # handlers run this script
    set_handler_behaviour(tmp_path, "crash")             # from the next request on
    read_requests(tmp_path)   # [{"n", "pid", "op", "key", "env", "envelope"}, ...]
    read_starts(tmp_path)     # [{"pid", "env"}, ...]: one per handler process started

The mode file is read again for every request (and at start, for "die-at-start").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.daemonproc import wait_for

SCRIPT_FILE = "coprocess_handler.py"
MODE_FILE = "handler.mode"

# Runs under the sink's clean environment, so it imports nothing from the project.
_SCRIPT = r"""
import fcntl, json, os, signal, sys, time
from pathlib import Path

here = Path(__file__).resolve().parent

def mode():
    return (here / "handler.mode").read_text().strip()

def append(name, doc):
    with open(here / name, "a+") as rec:
        fcntl.flock(rec, fcntl.LOCK_EX)  # concurrent handlers still get distinct numbers
        rec.seek(0)
        n = sum(1 for _ in rec) + 1
        rec.write(json.dumps({"n": n, **doc}) + "\n")
    return n

def say(doc):
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()

append("starts.jsonl", {"pid": os.getpid(), "env": dict(os.environ)})
if mode() == "die-at-start":
    print("cannot load my configuration", file=sys.stderr)
    sys.exit(2)
for line in sys.stdin:
    req = json.loads(line)
    key, m = req["idempotency_key"], mode()
    n = append("requests.jsonl", {"pid": os.getpid(), "op": req["op"], "key": key,
                                  "envelope": req["envelope"], "mode": m})
    if m.startswith("crash-until:"):
        m = "crash" if n <= int(m.split(":", 1)[1]) else "ok"
    if m.startswith("slow:"):
        time.sleep(int(m.split(":", 1)[1]) / 1000)
        m = "ok"
    if m == "ok":
        say({"idempotency_key": key, "schedule_id": f"S-{n}"})
    elif m == "ok-no-updates":
        say({"idempotency_key": key, "schedule_id": f"S-{n}", "updates": False})
    elif m == "answer-then-exit":
        say({"idempotency_key": key, "schedule_id": f"S-{n}"})
        sys.exit(0)
    elif m == "fail":
        say({"idempotency_key": key, "error": "envelope refused", "transient": False})
    elif m == "tempfail":
        say({"idempotency_key": key, "error": "collector busy", "transient": True})
    elif m == "no-id":
        say({"idempotency_key": key})
    elif m == "crash":
        print("handler crashed mid-request", file=sys.stderr)
        sys.exit(3)
    elif m == "signal":
        os.kill(os.getpid(), signal.SIGKILL)
    elif m == "garbage":
        sys.stdout.write("this is not json\n")
        sys.stdout.flush()
    elif m == "wrong-key":
        say({"idempotency_key": key + "-other", "schedule_id": "S-x"})
    elif m == "half-line":
        sys.stdout.write('{"idempotency_key": ')
        sys.stdout.flush()
        sys.exit(0)
    elif m == "leak-key":
        secret = Path(os.environ["ANU_WATCHD_KEY_FILE"]).read_text().strip()
        print("bad key: " + secret, file=sys.stderr)
        say({"idempotency_key": key, "error": "bad key " + secret, "transient": False})
    elif m == "leak-key-crash":
        secret = Path(os.environ["ANU_WATCHD_KEY_FILE"]).read_text().strip()
        print("bad key: " + secret, file=sys.stderr)
        sys.exit(3)
    elif m == "leak-key-cut":  # the key straddles the 500-character cut of an error answer
        secret = Path(os.environ["ANU_WATCHD_KEY_FILE"]).read_text().strip()
        # The sink quotes "<argv[0]> answered: <error>" up to 600 characters.
        prefix = len(sys.executable) + len(" answered: ")
        error = "p" * (600 - prefix - len(secret) // 2) + secret
        say({"idempotency_key": key, "error": error, "transient": False})
    elif m == "leak-key-cut-crash":  # ... and of the stderr tail quoted for a crash
        secret = Path(os.environ["ANU_WATCHD_KEY_FILE"]).read_text().strip()
        print(secret + "s" * (500 - len(secret) // 2), file=sys.stderr)
        sys.exit(3)
    elif m == "hang":
        while True:
            time.sleep(60)
    else:
        print(f"unknown mode {m!r}", file=sys.stderr)
        sys.exit(64)
"""


def write_coprocess_handler(dir: Path, *, behaviour: str = "ok") -> list[str]:
    """Write the handler into ``dir`` and return its argv.

    Modes: "ok" answers ``S-<n>`` (n counts requests from 1); "fail" and
    "tempfail" answer an error (permanent, transient); "no-id" answers without
    an id; "crash" exits 3 mid-request, "signal" SIGKILLs itself; "garbage"
    answers a line that is not JSON, "wrong-key" another request's key,
    "half-line" half a line then exits; "answer-then-exit" answers, then
    exits; "leak-key" echoes the key file on stderr and in a permanent error,
    "leak-key-crash" on stderr, then exits;
    "hang" never answers; "slow:<ms>" answers after that long; "crash-until:<k>"
    crashes on requests 1..k, then behaves as "ok";
    "die-at-start" exits 2 before reading anything.
    """
    dir.mkdir(parents=True, exist_ok=True)
    script = dir / SCRIPT_FILE
    script.write_text(_SCRIPT)
    set_handler_behaviour(dir, behaviour)
    return [sys.executable, str(script)]


def set_handler_behaviour(dir: Path, behaviour: str) -> None:
    """Switch the handlers in ``dir`` to ``behaviour`` from their next request."""
    (dir / MODE_FILE).write_text(behaviour + "\n")


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def read_requests(dir: Path) -> list[dict[str, Any]]:
    """Every request the handlers in ``dir`` have read, oldest first."""
    return _lines(dir / "requests.jsonl")


def read_starts(dir: Path) -> list[dict[str, Any]]:
    """One entry per handler process started in ``dir``, oldest first."""
    return _lines(dir / "starts.jsonl")


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is still a process (and not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], what: str, timeout: float = 10.0) -> None:
    """Wait until none of ``pids`` is alive."""
    wait_for(lambda: not any(pid_alive(p) for p in pids), timeout, what)
