#!/usr/bin/env python3
"""A reference receiver for anu-watchd's http sink: verify, dedupe durably, answer.

Standard library only, so it reads as a recipe for any language
(docs/protocol.md, "The http sink"). For every POST it:

1. reads the body (at most 64 KiB) and checks ``X-Anu-Signature`` against
   HMAC-SHA256 of the raw body, keyed with the key file's content stripped of
   surrounding whitespace, compared in constant time: 401 if it does not match;
2. checks that the body is a JSON object whose ``idempotency_key`` agrees with
   the ``Idempotency-Key`` header (the header of a final envelope is the key
   plus ``.final``): 400 if not;
3. looks the header's key up in a SQLite table and, if it was seen, answers
   exactly what it answered the first time, doing nothing again;
4. otherwise schedules the work (here: records it), commits the row with
   ``synchronous=FULL`` (fsync before the commit returns), and only then
   answers ``200 {"schedule_id": …}``. A storage failure answers 503, which
   the daemon retries with the same key.

The daemon delivers at least once with a stable key, so step 3 is what makes
a repeated delivery (a re-fire after a daemon crash, a retry after a lost
answer) harmless. With ``--ack-dir EVENTS_DIR`` (a receiver on the daemon's
host) it also writes ``task-<id>.pickup.acked`` once a wake is stored, which
moves the envelope's receipt axis to RECEIVED.

    python3 examples/http_receiver.py --key-file /run/credentials/anu-key \\
        --db /var/lib/anu-receiver/wakes.sqlite3 --port 8080

It prints one JSON line, ``{"listening": "http://127.0.0.1:PORT/"}``, once it
accepts connections, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import signal
import sqlite3
import sys
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_BODY = 64 * 1024
TASK_ID = re.compile(r"task-[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Store:
    """Answers by idempotency key, durable once ``remember`` returns."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # every commit is fsynced
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS wakes (idempotency_key TEXT PRIMARY KEY,"
            " kind TEXT NOT NULL, task_id TEXT NOT NULL, answer TEXT NOT NULL,"
            " envelope TEXT NOT NULL, received_at TEXT NOT NULL)"
        )
        self._lock = threading.Lock()

    def answer_for(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT answer FROM wakes WHERE idempotency_key = ?", (key,)
            ).fetchone()
        return None if row is None else str(row[0])

    def remember(
        self, key: str, kind: str, envelope: dict[str, Any], answer: str
    ) -> tuple[str, bool]:
        """Store the first answer for ``key``: (the answer stored, whether it was this one).

        Two deliveries of one key racing each other both get the first answer.
        A real collector schedules its work in this same transaction.
        """
        now = datetime.now(UTC).isoformat()
        with self._lock:
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO wakes VALUES (?, ?, ?, ?, ?, ?)",
                (key, kind, envelope["task_id"], answer, json.dumps(envelope), now),
            ).rowcount
            row = self._db.execute(
                "SELECT answer FROM wakes WHERE idempotency_key = ?", (key,)
            ).fetchone()
        return str(row[0]), inserted == 1


def signature_ok(key: bytes, body: bytes, header: str | None) -> bool:
    expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    return header is not None and hmac.compare_digest(expected.encode(), header.encode())


def write_ack(events_dir: Path, task_id: str) -> None:
    """``task-<id>.pickup.acked``, written like every spool file: tmp, fsync, rename, fsync dir."""
    final = events_dir / f"{task_id}.pickup.acked"
    tmp = events_dir / f".tmp-{final.name}.{uuid.uuid4().hex}"
    body = json.dumps({"task_id": task_id, "ts": datetime.now(UTC).isoformat()}).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, body + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, final)
    dfd = os.open(events_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            return self._reply(413 if length else 400, {"error": "body size"})
        body = self.rfile.read(length)
        if not signature_ok(self.server.key, body, self.headers.get("X-Anu-Signature")):
            return self._reply(401, {"error": "bad signature"})  # the daemon does not retry 4xx
        key = self.headers.get("Idempotency-Key") or ""
        final = self.headers.get("X-Anu-Envelope") == "final"
        envelope = _envelope(body)
        if envelope is None or key != envelope["idempotency_key"] + (".final" if final else ""):
            return self._reply(400, {"error": "not an envelope for this Idempotency-Key"})
        try:
            answer = self.server.store.answer_for(key)
            if answer is None:
                answer = self._accept(key, envelope, final)
        except (sqlite3.Error, OSError):
            return self._reply(503, {"error": "storage unavailable, retry"})  # transient
        self._reply(200, json.loads(answer))

    def _accept(self, key: str, envelope: dict[str, Any], final: bool) -> str:
        """First delivery of ``key``: schedule the work, durably, then answer."""
        if final:
            # The final envelope records the outcome (REGISTERED, its schedule id).
            answer = json.dumps({"schedule_id": envelope.get("cron_schedule_id")})
            return self.server.store.remember(key, "final", envelope, answer)[0]
        # The id names the collector's schedule for this wake.
        answer = json.dumps({"schedule_id": "sched-" + uuid.uuid4().hex[:16]})
        stored, first = self.server.store.remember(key, "initial", envelope, answer)
        if first and self.server.ack_dir is not None:
            write_ack(self.server.ack_dir, envelope["task_id"])
        return stored

    def _reply(self, status: int, doc: dict[str, Any]) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(json.dumps({"event": "request", "line": format % args}) + "\n")


def _envelope(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    ok = (
        isinstance(doc, dict)
        and doc.get("schema") == "anu.callback-envelope/v1"
        and isinstance(doc.get("idempotency_key"), str)
        and isinstance(doc.get("task_id"), str)
        and TASK_ID.fullmatch(doc["task_id"]) is not None
    )
    return doc if ok else None


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], key: bytes, store: Store, ack_dir: Path | None):
        super().__init__(addr, Handler)
        self.key = key
        self.store = store
        self.ack_dir = ack_dir


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--key-file", type=Path, required=True, help="the daemon's key file")
    p.add_argument("--db", type=Path, required=True, help="SQLite file of answered wakes")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    p.add_argument("--ack-dir", type=Path, help="events dir: write .pickup.acked per wake")
    args = p.parse_args()
    key = args.key_file.read_text("utf-8").strip().encode("utf-8")
    server = Receiver((args.host, args.port), key, Store(args.db), args.ack_dir)

    def stop(_sig: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    print(json.dumps({"listening": f"http://{host}:{port}/"}), flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
