"""The nats sink's pure parts: config, host ids, credentials, stream facts, error mapping."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Any

import nkeys
import pytest
from nats import errors
from nats.js.api import DiscardPolicy, StorageType, StreamConfig, StreamInfo, StreamState
from nats.js.errors import APIError, BadRequestError, ServiceUnavailableError

from anu_watchd.config import normalise_host_id, parse_config
from anu_watchd.errors import ConfigError, PermanentWakeError, SecretError, TransientWakeError
from anu_watchd.sinks.natsauth import CredsKind, NatsAuth, creds_kind, load_auth
from anu_watchd.sinks.natserrors import classify
from anu_watchd.sinks.natsstream import dedupe_at_risk, facts_of, render_subject


def new_seed() -> str:
    """A random user nkey seed, made per test (never a fixture)."""
    return nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode()


SEED = new_seed()
# The shape of a .creds file; the JWT is a placeholder, the seed random per run.
JWT_CREDS = f"""-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.{secrets.token_hex(8)}
------END NATS USER JWT------

-----BEGIN USER NKEY SEED-----
{SEED}
------END USER NKEY SEED------
"""


def nats_config(tmp_path: Path, **nats: Any) -> Any:
    return parse_config({"wake": {"sink": "nats", "nats": nats}}, base=tmp_path)


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.write(fd, text.encode())
    os.close(fd)
    return path


# -- config -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "want"),
    [("web1", "web1"), ("Web1.Example.COM", "web1-example-com"), ("a b__c", "a-b__c")],
)
def test_a_host_name_is_normalised_to_a_host_id(name: str, want: str) -> None:
    """Lower case; every run of characters outside [a-z0-9_-] becomes one dash."""
    assert normalise_host_id(name) == want


def test_host_id_defaults_to_the_normalised_host_name(tmp_path: Path) -> None:
    """An empty wake.nats.host_id is resolved at load from the host name."""
    cfg = nats_config(tmp_path)
    assert cfg.wake.nats.host_id == normalise_host_id(socket.gethostname())


def test_relative_credential_paths_resolve_against_root(tmp_path: Path) -> None:
    """creds_file and tls_ca_file are relative to root, like every other path."""
    cfg = nats_config(tmp_path, creds_file="nats.creds", tls_ca_file="ca.pem")
    assert cfg.wake.nats.creds_file == str(tmp_path / "nats.creds")
    assert cfg.wake.nats.tls_ca_file == str(tmp_path / "ca.pem")


@pytest.mark.parametrize(
    ("nats", "key"),
    [
        ({"host_id": "Web1"}, "wake.nats.host_id"),
        ({"host_id": "a.b"}, "wake.nats.host_id"),
        ({"subject": "anu.*.{host}"}, "wake.nats.subject"),
        ({"subject": "anu.wake.>"}, "wake.nats.subject"),
        ({"subject": "anu..{host}"}, "wake.nats.subject"),
        ({"subject": "anu.wake"}, "wake.nats.subject"),
        ({"servers": []}, "wake.nats.servers"),
        ({"servers": ["http://x:4222"]}, "wake.nats.servers"),
        ({"stream": "A.B"}, "wake.nats.stream"),
        ({"min_dedupe_s": 0}, "wake.nats.min_dedupe_s"),
        ({"bogus": 1}, "wake.nats.bogus"),
    ],
)
def test_bad_nats_settings_are_refused_naming_the_key(
    tmp_path: Path, nats: dict[str, Any], key: str
) -> None:
    """Each invalid [wake.nats] value is a ConfigError naming its dotted key."""
    with pytest.raises(ConfigError) as caught:
        nats_config(tmp_path, **nats)
    assert caught.value.key == key


def test_the_subject_template_fills_host_and_key() -> None:
    """{host} and {key} are replaced; the rest of the template is kept."""
    assert render_subject("anu.wake.{host}.{key}", host="h1", key="ik1-x") == "anu.wake.h1.ik1-x"


# -- credentials ------------------------------------------------------------------------


def test_the_creds_kind_is_read_from_the_content() -> None:
    """A JWT block is a .creds file, an SU line an nkey seed, anything else a token."""
    seed = new_seed()
    assert creds_kind(JWT_CREDS) is CredsKind.CREDS
    assert creds_kind(seed) is CredsKind.NKEY
    assert creds_kind(secrets.token_hex(16)) is CredsKind.TOKEN


def test_credentials_never_show_in_repr_and_are_scrubbed_from_text(tmp_path: Path) -> None:
    """repr hides the value; scrub removes the value and each of its lines from any text."""
    token = secrets.token_hex(16)
    auth = NatsAuth(tmp_path / "t", CredsKind.TOKEN, token)
    assert token not in repr(auth) and token not in str(auth)
    assert auth.scrub(f"error: bad {token}!") == "error: bad [REDACTED]!"
    creds = NatsAuth(tmp_path / "c", CredsKind.CREDS, JWT_CREDS.strip())
    assert SEED not in creds.scrub(f"the seed {SEED} leaked")


def test_each_kind_becomes_its_connect_option(tmp_path: Path) -> None:
    """A token -> token=, an nkey seed -> nkeys_seed_str=, a .creds file -> user_credentials=."""
    seed = new_seed()
    assert NatsAuth(tmp_path, CredsKind.TOKEN, "t0ken").connect_options() == {"token": "t0ken"}
    assert NatsAuth(tmp_path, CredsKind.NKEY, seed).connect_options() == {"nkeys_seed_str": seed}
    opts = NatsAuth(tmp_path, CredsKind.CREDS, JWT_CREDS).connect_options()
    assert str(opts["user_credentials"]) == JWT_CREDS


def test_credentials_come_from_the_file_else_the_credentials_directory_else_none(
    tmp_path: Path,
) -> None:
    """creds_file wins; "" means $CREDENTIALS_DIRECTORY/nats.creds when present; else no auth."""
    token = secrets.token_hex(16)
    creds_dir = tmp_path / "creds"
    creds_dir.mkdir()
    assert load_auth("", environ={}) is None
    assert load_auth("", environ={"CREDENTIALS_DIRECTORY": str(creds_dir)}) is None
    private(creds_dir / "nats.creds", token + "\n", 0o440)
    auth = load_auth("", environ={"CREDENTIALS_DIRECTORY": str(creds_dir)})
    assert auth is not None and (auth.kind, auth.value) == (CredsKind.TOKEN, token)
    own = private(tmp_path / "mine", JWT_CREDS)
    auth = load_auth(str(own), environ={"CREDENTIALS_DIRECTORY": str(creds_dir)})
    assert auth is not None and auth.kind is CredsKind.CREDS


def test_an_open_or_missing_creds_file_is_refused_without_its_content(tmp_path: Path) -> None:
    """Group- or world-readable, or absent: SecretError on wake.nats.creds_file, no content."""
    token = secrets.token_hex(16)
    loose = private(tmp_path / "loose", token, 0o644)
    with pytest.raises(SecretError) as caught:
        load_auth(str(loose), environ={})
    assert caught.value.key == "wake.nats.creds_file" and token not in str(caught.value)
    with pytest.raises(SecretError):
        load_auth(str(tmp_path / "absent"), environ={})


# -- the stream check -------------------------------------------------------------------


def stream(**cfg: Any) -> StreamInfo:
    config = StreamConfig(name="ANU_WAKES", subjects=["anu.wake.>"], **cfg)
    return StreamInfo(config=config, state=StreamState(0, 0, 0, 0, 0, 0))


def test_a_per_key_stream_with_a_per_key_subject_is_per_key_deduped() -> None:
    """One message a subject, discard new per subject, {key} in the subject: no time limit."""
    info = stream(
        max_msgs_per_subject=1,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        storage=StorageType.FILE,
        num_replicas=3,
        duplicate_window=120.0,
    )
    facts = facts_of(info, "anu.wake.{host}.{key}")
    assert facts.per_key_dedupe and facts.replicas == 3 and facts.storage == "file"
    assert not dedupe_at_risk(facts, 3600.0)
    assert not facts_of(info, "anu.wake.{host}").per_key_dedupe  # no {key}: windowed


def test_a_window_shorter_than_min_dedupe_is_at_risk() -> None:
    """A windowed stream is at risk below min_dedupe_s and safe at or above it."""
    assert dedupe_at_risk(facts_of(stream(duplicate_window=120.0), "anu.wake.{host}"), 3600.0)
    assert not dedupe_at_risk(facts_of(stream(duplicate_window=7200.0), "x.{host}"), 3600.0)


# -- the error mapping ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ServiceUnavailableError(code=503, err_code=10077, description="max"), TransientWakeError),
        (ServiceUnavailableError(code=503, err_code=10008, description="x"), TransientWakeError),
        (APIError(code=400, err_code=10158, description="in process"), TransientWakeError),
        (APIError(code=500, err_code=10000, description="server"), TransientWakeError),
        (BadRequestError(code=400, err_code=10060, description="stream"), PermanentWakeError),
        (errors.TimeoutError(), TransientWakeError),
        (errors.NoServersError(), TransientWakeError),
        (errors.ConnectionClosedError(), TransientWakeError),
        (ConnectionRefusedError(111, "refused"), TransientWakeError),
        (errors.AuthorizationError(), PermanentWakeError),
        (errors.Error("nats: 'Authorization Violation'"), PermanentWakeError),
        (errors.MaxPayloadError(), PermanentWakeError),
    ],
)
def test_failures_map_to_transient_or_permanent(exc: Exception, kind: type) -> None:
    """The table of docs/operations.md: what is retried and what is FIRE_FAILED at once.

    (10077 reaching classify at all is a 503: the sink answers it before, as registered.)
    """
    assert type(classify(exc, "described")) is kind


def test_a_reconnect_tries_the_least_failed_server_after_a_doubling_jittered_pause() -> None:
    """The seed with the fewest failures first; the pause doubles with them, capped, jittered."""
    from urllib.parse import urlparse

    from nats.aio.client import Server

    from anu_watchd.sinks.nats import MAX_RECONNECT_WAIT_S, RECONNECT_WAIT_S, reconnect_choice

    down = Server(uri=urlparse("nats://127.0.0.1:1"), reconnects=3)
    up = Server(uri=urlparse("nats://127.0.0.1:2"), reconnects=0)
    server, pause = reconnect_choice([down, up], {})
    assert server is up and RECONNECT_WAIT_S / 2 <= pause <= RECONNECT_WAIT_S
    server, pause = reconnect_choice([down], {})
    assert server is down and 4 * RECONNECT_WAIT_S <= pause <= 8 * RECONNECT_WAIT_S
    _, pause = reconnect_choice([Server(uri=down.uri, reconnects=50)], {})
    assert MAX_RECONNECT_WAIT_S / 2 <= pause <= MAX_RECONNECT_WAIT_S
