"""A collector for a fleet: a durable JetStream pull consumer that verifies and acks wakes.

Every host's anu-watchd publishes its wakes to one stream (docs/operations.md,
"Fleet"). This reads them with a durable pull consumer, so a restarted
collector resumes where it stopped and several collectors can share the
work (same ``--durable``). For each message it checks
``Anu-Signature: sha256=<hex HMAC-SHA256(key, body)>`` against the shared
key, prints one JSON line and acks. A message whose signature does not
verify is reported and terminated (``term``: never redelivered, never
trusted). Delivery is at least once: a collector that must act once per
wake dedupes on ``Nats-Msg-Id`` (the idempotency key), as this one does
within a run.

    python examples/nats_consumer.py --server nats://10.0.0.5:4222 \\
        --key-file /run/credentials/collector.service/anu-key \\
        [--creds-file nats.creds] [--stream ANU_WAKES] [--durable collector] [--once]

``--once`` stops after the stream has been idle for ``--idle-s`` seconds.
While the cluster elects a new leader for the stream or the consumer (a node
restarted), JetStream answers a fetch with 503: the messages are still there,
so this waits (0.1 s, doubling to 2 s) and fetches again, and gives up with
the error only after ``unavailable_s`` seconds of nothing else.
Needs only nats-py (``pip install nats-py``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import nats.js.errors


def verify(key: bytes, headers: dict[str, str] | None, body: bytes) -> bool:
    """True when the message carries the HMAC of its body under ``key``."""
    got = (headers or {}).get("Anu-Signature", "")
    want = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(got, want)


def describe(subject: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The line printed for one verified wake."""
    env = json.loads(body)
    return {
        "subject": subject,
        "envelope": headers.get("Anu-Envelope"),
        "idempotency_key": env.get("idempotency_key"),
        "task_id": env.get("task_id"),
        "status": env.get("status"),
        "registration_result_status": env.get("registration_result_status"),
    }


async def consume(
    nc: nats.NATS,
    *,
    key: bytes,
    stream: str,
    durable: str,
    handle: Callable[[dict[str, Any]], None],
    filter_subject: str = "anu.wake.>",
    batch: int = 256,
    idle_s: float = 2.0,
    once: bool = False,
    unavailable_s: float = 60.0,
) -> int:
    """Fetch, verify, hand over and ack until idle (``once``) or cancelled; return the count."""
    js = nc.jetstream()
    sub = await js.pull_subscribe(filter_subject, durable=durable, stream=stream)
    seen: set[str] = set()
    count = 0
    loop = asyncio.get_running_loop()
    unavailable_since, delay = None, 0.1
    while True:
        try:
            msgs = await sub.fetch(batch, timeout=idle_s)
        except TimeoutError:  # nats-py raises its own subclass or asyncio's, by code path
            if once:
                return count
            continue
        except nats.js.errors.ServiceUnavailableError:
            unavailable_since = unavailable_since or loop.time()
            if loop.time() - unavailable_since > unavailable_s:
                raise
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
            continue
        unavailable_since, delay = None, 0.1
        for msg in msgs:
            headers = dict(msg.headers or {})
            if not verify(key, headers, msg.data):
                handle({"subject": msg.subject, "error": "bad signature"})
                await msg.term()
                continue
            msg_id = headers.get("Nats-Msg-Id", "")
            if msg_id not in seen:  # a redelivery after a lost ack is not a second wake
                seen.add(msg_id)
                handle(describe(msg.subject, headers, msg.data))
                count += 1
            await msg.ack()


def connect_options(creds_file: str | None) -> dict[str, Any]:
    """Credentials as the daemon reads them: a .creds file, an nkey seed or a token."""
    if not creds_file:
        return {}
    text = Path(creds_file).read_text().strip()
    if "-----BEGIN NATS USER JWT-----" in text:
        return {"user_credentials": creds_file}
    seeds = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("SU")]
    return {"nkeys_seed_str": seeds[0]} if seeds else {"token": text}


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", action="append", required=True, help="repeat for each seed")
    p.add_argument("--key-file", required=True, help="the shared key (the daemon's key.file)")
    p.add_argument("--creds-file", default=None)
    p.add_argument("--stream", default="ANU_WAKES")
    p.add_argument("--durable", default="collector")
    p.add_argument("--filter", default="anu.wake.>")
    p.add_argument("--idle-s", type=float, default=2.0)
    p.add_argument("--once", action="store_true", help="exit once the stream is idle")
    args = p.parse_args(argv)
    key = Path(args.key_file).read_text().strip().encode()
    nc = await nats.connect(args.server, **connect_options(args.creds_file))
    try:
        await consume(
            nc,
            key=key,
            stream=args.stream,
            durable=args.durable,
            handle=lambda line: print(json.dumps(line), flush=True),
            filter_subject=args.filter,
            idle_s=args.idle_s,
            once=args.once,
        )
    finally:
        await nc.close()  # every message handled is acked already
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
