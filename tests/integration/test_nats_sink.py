"""The nats sink against a real single-node ``nats-server`` (issue 15, single node).

Each test starts its own server on a free 127.0.0.1 port with a temp store
(``tests.natsserver``), creates the stream the docs describe and drives the
real CLI (``scan --once``) or the sink in process. Credentials and the key are
generated per test and never written anywhere but their files and the
server's 0600 config.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nkeys
import pytest
import structlog

from anu_watchd.config import NatsConfig
from anu_watchd.errors import PermanentWakeError, TransientWakeError
from anu_watchd.secret import SealedKey
from anu_watchd.sinks.nats import NatsSink
from anu_watchd.sinks.natsauth import CredsKind, NatsAuth
from tests.daemonproc import wait_for
from tests.integration.test_wake import assert_all_envelopes_valid, log_events, verdicts
from tests.natsserver import NatsServer, add_stream, nats_wake, read_stream
from tests.sinkhelpers import read_sink_calls
from tests.spool import REPO, Spool

PER_KEY = "anu.wake.{host}.{key}"


def private_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    return path


def signed(key: str, body: bytes) -> str:
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as srv:
        yield srv


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool(tmp_path / "spool")
    yield spool
    assert_all_envelopes_valid(spool.root)


def sink_for(server: NatsServer, *, subject: str = "anu.wake.{host}") -> NatsSink:
    key = SealedKey(Path("/unused"), secrets.token_hex(24))
    cfg = NatsConfig(servers=(server.url,), subject=subject, host_id="h1")
    return NatsSink(cfg, key=key, auth=None, timeout_s=5.0)


# -- through the CLI ----------------------------------------------------------------------


async def test_a_wake_is_one_signed_message_and_its_final_envelope_a_second(
    server: NatsServer, spool: Spool
) -> None:
    """WAKE_BUILT: the subject names the host, the headers carry the key, the kind and a valid
    HMAC of the body, the schedule id is <stream>:<seq>, and <subject>.final holds the final."""
    await add_stream([server.url], per_key=False)
    nats_wake(spool, [server.url])
    spool.drop("task-1")
    res = spool.cli("scan", "--once", "--json")
    assert verdicts(res.stdout) == {"task-1": "WAKE_BUILT"}, res.stderr
    [(subject, headers, body), (fsubject, fheaders, fbody)] = await read_stream([server.url])
    key = spool.ledger_lines()[0]["key"]
    assert (subject, fsubject) == ("anu.wake.h1", "anu.wake.h1.final")
    assert headers["Nats-Msg-Id"] == key and headers["Anu-Envelope"] == "initial"
    assert headers["Anu-Signature"] == signed(spool.key, body)
    assert fheaders["Nats-Msg-Id"] == key + ".final" and fheaders["Anu-Envelope"] == "final"
    assert fheaders["Anu-Signature"] == signed(spool.key, fbody)
    initial, final = json.loads(body), json.loads(fbody)
    assert initial["delivery_method"] == "nats" and initial["idempotency_key"] == key
    assert final["registration_result_status"] == "REGISTERED"
    assert final["cron_schedule_id"] == "ANU_WAKES:1"
    [evidence] = spool.evidence()
    assert evidence["host_id"] == "h1" and evidence["schedule_id"] == "ANU_WAKES:1"
    [done] = log_events(res.stderr, "pickup_finished")
    assert done["host_id"] == "h1"
    [checked] = log_events(res.stderr, "nats_stream_checked")
    # The default stream keeps ids 2 minutes, less than min_dedupe_s: a warning says so.
    assert checked["level"] == "warning" and checked["per_key_dedupe"] is False
    assert checked["duplicate_window_s"] == 120.0 and checked["replicas"] == 1


async def test_a_subject_no_stream_captures_is_permanent_after_one_attempt(
    server: NatsServer, spool: Spool
) -> None:
    """No stream for the subject: FIRE_FAILED at the first attempt, escalated, nothing stored."""
    await add_stream([server.url], per_key=False)
    escalate = nats_wake(spool, [server.url], subject="elsewhere.{host}")
    spool.drop("task-1")
    res = spool.cli("scan", "--once", "--json")
    assert verdicts(res.stdout) == {"task-1": "FIRE_FAILED"}, res.stderr
    failed = spool.marker("task-1", ".pickup.failed")
    assert failed is not None and failed["attempts"] == 1
    assert "no JetStream stream captures the subject elsewhere.h1" in failed["error"]
    assert [json.loads(c["stdin"])["verdict"] for c in read_sink_calls(escalate)] == [
        "FIRE_FAILED"
    ]
    assert await read_stream([server.url]) == []


async def test_a_broker_down_at_the_wake_is_retried_until_it_comes_back(
    tmp_path: Path, spool: Spool
) -> None:
    """The broker is down when the wake starts: transient retries, then WAKE_BUILT once it is
    back, inside the attempts, with exactly one message in the stream."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        await add_stream([server.url], per_key=False)
        server.stop()
        nats_wake(spool, [server.url], attempts=40, timeout_s=1.0)
        spool.drop("task-1")
        err = spool.root / "scan.err"
        argv = [sys.executable, "-m", "anu_watchd", "--config", str(spool.config), "scan"]
        with open(err, "w") as fh:
            scan = subprocess.Popen(
                [*argv, "--once", "--json"],
                stdout=subprocess.PIPE,
                stderr=fh,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        wait_for(lambda: "wake_retrying" in err.read_text(), 30, "a transient failure")
        server.start()
        out, _ = scan.communicate(timeout=60)
        assert verdicts(out) == {"task-1": "WAKE_BUILT"}, err.read_text()[-3000:]
        done = spool.marker("task-1")
        assert done is not None and done["attempts"] > 1
        msgs = await read_stream([server.url])
        assert [s for s, _h, _b in msgs].count("anu.wake.h1") == 1
    finally:
        server.stop()


def test_a_broker_down_for_every_attempt_is_fire_failed_and_escalated(
    tmp_path: Path, spool: Spool
) -> None:
    """No broker at all: `attempts` transient failures, FIRE_FAILED, one escalation."""
    server = NatsServer(tmp_path / "nats")  # configured, never started: nothing listens
    escalate = nats_wake(spool, [server.url], attempts=3, timeout_s=1.0)
    spool.drop("task-1")
    res = spool.cli("scan", "--once", "--json")
    assert verdicts(res.stdout) == {"task-1": "FIRE_FAILED"}, res.stderr
    failed = spool.marker("task-1", ".pickup.failed")
    assert failed is not None and failed["attempts"] == 3
    assert len(log_events(res.stderr, "wake_retrying")) == 2
    [doc] = [json.loads(c["stdin"]) for c in read_sink_calls(escalate)]
    assert (doc["verdict"], doc["attempts"]) == ("FIRE_FAILED", 3)
    assert log_events(res.stderr, "nats_stream_check_failed")


async def test_token_credentials_authenticate_and_a_wrong_token_is_permanent_and_unprinted(
    tmp_path: Path, spool: Spool
) -> None:
    """A token from $CREDENTIALS_DIRECTORY/nats.creds is accepted; a wrong token in
    wake.nats.creds_file fails at once (permanent) and neither token is printed or stored."""
    token, wrong = secrets.token_hex(24), secrets.token_hex(24)
    with NatsServer(tmp_path / "nats", token=token) as server:
        await add_stream([server.url], per_key=False, token=token)
        creds_dir = tmp_path / "credentials"
        creds_dir.mkdir()
        private_file(creds_dir / "nats.creds", token)
        nats_wake(spool, [server.url])
        spool.drop("task-ok")
        ok = spool.cli("scan", "--once", "--json", env={"CREDENTIALS_DIRECTORY": str(creds_dir)})
        assert verdicts(ok.stdout) == {"task-ok": "WAKE_BUILT"}, ok.stderr
        nats_wake(spool, [server.url], creds_file=private_file(tmp_path / "wrong", wrong))
        spool.drop("task-bad")
        bad = spool.cli("scan", "--once", "--json")
        assert verdicts(bad.stdout) == {"task-bad": "FIRE_FAILED"}, bad.stderr
        failed = spool.marker("task-bad", ".pickup.failed")
        assert failed is not None and failed["attempts"] == 1
        assert "Authorization Violation" in failed["error"]
        assert len(await read_stream([server.url], token=token)) == 2
    for text in (ok.stdout, ok.stderr, bad.stdout, bad.stderr):
        assert token not in text and wrong not in text
    for path in spool.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert token.encode() not in data and wrong.encode() not in data, path


async def test_an_nkey_seed_file_authenticates(tmp_path: Path, spool: Spool) -> None:
    """A creds file holding an nkey seed (a line starting SU) signs the server's nonce."""
    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode()
    public = nkeys.from_seed(bytearray(seed.encode())).public_key.decode()
    extra = f'authorization {{ users: [ {{ nkey: "{public}" }} ] }}'
    with NatsServer(tmp_path / "nats", extra=extra) as server:
        await add_stream([server.url], per_key=False, nkeys_seed_str=seed)
        creds = private_file(tmp_path / "user.nk", seed)
        nats_wake(spool, [server.url], creds_file=creds)
        spool.drop("task-1")
        res = spool.cli("scan", "--once", "--json")
        assert verdicts(res.stdout) == {"task-1": "WAKE_BUILT"}, res.stderr
        assert seed not in res.stderr + res.stdout


# -- the sink in process ------------------------------------------------------------------


async def test_the_same_key_twice_is_registered_once_with_the_first_sequence(
    server: NatsServer,
) -> None:
    """A re-fire inside the duplicate window: PubAck.duplicate, the first seq, one message, and
    wake_duplicate_suppressed logged with the host id."""
    await add_stream([server.url], per_key=False)
    sink = sink_for(server)
    try:
        first = await sink.register(b'{"n":1}', idempotency_key="ik1-abc")
        with structlog.testing.capture_logs() as logs:
            again = await sink.register(b'{"n":1}', idempotency_key="ik1-abc")
    finally:
        await sink.aclose()
    assert first == again == "ANU_WAKES:1"
    assert len(await read_stream([server.url])) == 1
    [event] = [e for e in logs if e["event"] == "wake_duplicate_suppressed"]
    assert event["schedule_id"] == "ANU_WAKES:1" and event["idempotency_key"] == "ik1-abc"


@pytest.mark.parametrize("direct", [False, True], ids=["msg-get", "direct-get"])
async def test_a_per_key_stream_refusal_10077_is_registered_with_the_held_message(
    server: NatsServer, direct: bool
) -> None:
    """A per-key stream refuses a second message on the subject (10077) whatever its msg id:
    registered, with the schedule id of the message already there (read by a direct get when
    the stream allows it, else the API's get), and nothing added."""
    import nats

    nc = await nats.connect(server.url)
    try:
        await nc.jsm().add_stream(
            name="ANU_WAKES",
            subjects=["anu.wake.>"],
            max_msgs_per_subject=1,
            discard="new",
            discard_new_per_subject=True,
            allow_direct=direct,
        )
        await nc.jetstream().publish("anu.wake.h1.ik1-held", b"{}", headers={"Nats-Msg-Id": "x"})
        await nc.jetstream().publish("anu.wake.h1.ik1-other", b"{}")
    finally:
        await nc.close()
    sink = sink_for(server, subject=PER_KEY)
    try:
        await asyncio.wait_for(_checked(sink), 10)
        assert sink.facts is not None and sink.facts.allow_direct is direct
        with structlog.testing.capture_logs() as logs:
            schedule_id = await sink.register(b'{"n":1}', idempotency_key="ik1-held")
        await sink.update(b'{"n":2}', idempotency_key="ik1-held")
        await sink.update(b'{"n":2}', idempotency_key="ik1-held")  # the .final is held too
    finally:
        await sink.aclose()
    assert schedule_id == "ANU_WAKES:1"
    assert [e["event"] for e in logs].count("wake_duplicate_suppressed") == 1
    subjects = [s for s, _h, _b in await read_stream([server.url])]
    held = "anu.wake.h1.ik1-held"
    assert subjects == [held, "anu.wake.h1.ik1-other", held + ".final"]


async def test_the_stream_check_reads_per_key_dedupe_and_logs_it_at_info(
    server: NatsServer,
) -> None:
    """A per-key subject on a per-key stream: nats_stream_checked at info, per_key_dedupe."""
    await add_stream([server.url], per_key=True)
    with structlog.testing.capture_logs() as logs:
        sink = sink_for(server, subject=PER_KEY)
        try:
            await sink.register(b"{}", idempotency_key="ik1-a")
            await asyncio.wait_for(_checked(sink), 10)
        finally:
            await sink.aclose()
    [checked] = [e for e in logs if e["event"] == "nats_stream_checked"]
    assert checked["log_level"] == "info" and checked["per_key_dedupe"] is True
    assert checked["stream"] == "ANU_WAKES" and checked["storage"] == "file"


async def _checked(sink: NatsSink) -> None:
    while sink.facts is None:
        await asyncio.sleep(0.01)


async def test_pipelined_publishes_all_land_once(server: NatsServer) -> None:
    """Many publishes in flight on the one connection: each key one message, in any order."""
    await add_stream([server.url], per_key=False)
    sink = sink_for(server)
    try:
        ids = await asyncio.gather(
            *(sink.register(b"x" * 1500, idempotency_key=f"ik1-{i:04d}") for i in range(500))
        )
    finally:
        await sink.aclose()
    assert len(set(ids)) == 500
    msgs = await read_stream([server.url])
    assert sorted(h["Nats-Msg-Id"] for _s, h, _b in msgs) == [f"ik1-{i:04d}" for i in range(500)]


async def test_connect_refusals_and_timeouts_map_to_typed_errors(tmp_path: Path) -> None:
    """Nothing listening: transient at once (no hang); a wrong token: permanent, unquoted."""
    token = secrets.token_hex(24)
    idle = NatsServer(tmp_path / "idle")
    cfg = NatsConfig(servers=(idle.url,), host_id="h1")
    key = SealedKey(Path("/unused"), secrets.token_hex(24))
    sink = NatsSink(cfg, key=key, auth=None, timeout_s=5.0)
    t0 = time.monotonic()
    with pytest.raises(TransientWakeError):
        await sink.register(b"{}", idempotency_key="ik1-a")
    assert time.monotonic() - t0 < 4.0
    await sink.aclose()
    with NatsServer(tmp_path / "auth", token=token) as server:
        wrong = NatsAuth(Path("/unused"), CredsKind.TOKEN, secrets.token_hex(24))
        sink = NatsSink(
            NatsConfig(servers=(server.url,), host_id="h1"), key=key, auth=wrong, timeout_s=5.0
        )
        with pytest.raises(PermanentWakeError) as caught:
            await sink.register(b"{}", idempotency_key="ik1-a")
        await sink.aclose()
    assert wrong.value not in str(caught.value) and token not in str(caught.value)


async def test_a_reload_with_unreadable_credentials_is_refused_and_the_old_sink_kept(
    tmp_path: Path, spool: Spool
) -> None:
    """The running daemon keeps publishing with its credentials when a reload names a creds
    file it cannot read (exit 78, config_reload_refused); a readable one is applied."""
    from tests.daemonproc import DaemonProc

    token = secrets.token_hex(24)
    with NatsServer(tmp_path / "nats", token=token) as server:
        await add_stream([server.url], per_key=False, token=token)
        creds = private_file(tmp_path / "nats.creds", token)
        nats_wake(spool, [server.url], creds_file=creds)
        d = DaemonProc(spool)
        try:
            d.wait_notify("READY=1")
            nats_wake(spool, [server.url], creds_file=tmp_path / "absent.creds")
            refused = spool.cli("reload")
            assert refused.returncode == 78, refused.stderr
            assert "wake.nats.creds_file" in d.wait_event("config_reload_refused")["error"]
            spool.drop("task-1")
            wait_for(lambda: spool.marker("task-1"), 30, "a wake with the running sink")
            nats_wake(spool, [server.url], creds_file=creds, host_id="h2")
            assert spool.cli("reload").returncode == 0
            spool.drop("task-2")
            wait_for(lambda: spool.marker("task-2"), 30, "a wake with the rebuilt sink")
        finally:
            assert d.stop() == 0
        subjects = [s for s, h, _b in await read_stream([server.url], token=token)]
    assert subjects.count("anu.wake.h1") == 1 and subjects.count("anu.wake.h2") == 1
    assert token not in d.log_text()


async def test_a_publish_permissions_violation_is_permanent(tmp_path: Path, spool: Spool) -> None:
    """A user denied publishing to the subject: FIRE_FAILED at the first attempt, naming the
    permissions violation (the server only answers -ERR; the attempt's timeout ends it)."""
    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode()
    public = nkeys.from_seed(bytearray(seed.encode())).public_key.decode()
    deny = '{ publish: { deny: ["anu.wake.h1"] } }'
    extra = f'authorization {{ users: [ {{ nkey: "{public}", permissions: {deny} }} ] }}'
    with NatsServer(tmp_path / "nats", extra=extra) as server:
        await add_stream([server.url], per_key=False, nkeys_seed_str=seed)
        creds = private_file(tmp_path / "u.nk", seed)
        nats_wake(spool, [server.url], creds_file=creds, timeout_s=2.0)
        spool.drop("task-1")
        res = spool.cli("scan", "--once", "--json")
    assert verdicts(res.stdout) == {"task-1": "FIRE_FAILED"}, res.stderr
    failed = spool.marker("task-1", ".pickup.failed")
    assert failed is not None and failed["attempts"] == 1
    assert "permissions violation" in failed["error"].lower()


async def test_a_payload_over_the_servers_limit_is_permanent(tmp_path: Path, spool: Spool) -> None:
    """An envelope larger than the server's max_payload: FIRE_FAILED at the first attempt."""
    with NatsServer(tmp_path / "nats", extra="max_payload: 512") as server:
        await add_stream([server.url], per_key=False)
        nats_wake(spool, [server.url])
        spool.drop("task-1")
        res = spool.cli("scan", "--once", "--json")
    assert verdicts(res.stdout) == {"task-1": "FIRE_FAILED"}, res.stderr
    failed = spool.marker("task-1", ".pickup.failed")
    assert failed is not None and failed["attempts"] == 1
    assert "MaxPayloadError" in failed["error"]


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl); (ca, cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificates for the TLS test")
    directory.mkdir()
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sign = ["-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "1", "-extfile", ext]
    for argv in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=t"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-out", cert, *sign],
    ):
        subprocess.run(["openssl", *map(str, argv)], check=True, capture_output=True, timeout=60)
    return ca, cert, key


async def test_tls_with_the_configured_ca_is_woken_and_without_it_is_permanent(
    tmp_path: Path, spool: Spool
) -> None:
    """A tls:// server whose certificate the tls_ca_file vouches for: WAKE_BUILT; the same
    server without the CA: the certificate is refused, FIRE_FAILED at the first attempt."""
    ca, cert, key = make_tls(tmp_path / "tls")
    extra = f'tls {{ cert_file: "{cert}", key_file: "{key}" }}'
    with NatsServer(tmp_path / "nats", extra=extra) as server:
        url = server.url.replace("nats://", "tls://")
        await add_stream([url], per_key=False, tls=ssl.create_default_context(cafile=str(ca)))
        nats_wake(spool, [url], tls_ca_file=ca)
        spool.drop("task-ok")
        ok = spool.cli("scan", "--once", "--json")
        assert verdicts(ok.stdout) == {"task-ok": "WAKE_BUILT"}, ok.stderr
        nats_wake(spool, [url])
        spool.drop("task-untrusted")
        bad = spool.cli("scan", "--once", "--json")
    assert verdicts(bad.stdout) == {"task-untrusted": "FIRE_FAILED"}, bad.stderr
    failed = spool.marker("task-untrusted", ".pickup.failed")
    assert failed is not None and failed["attempts"] == 1
    assert "CERTIFICATE_VERIFY_FAILED" in failed["error"]
