"""Tests for the configuration loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from anu_watchd.config import Config, config_path, load_config, parse_config
from anu_watchd.errors import ConfigError


def _err(data: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base=Path("/srv/anu"))
    return str(info.value)


def test_empty_document_gives_the_spec_defaults() -> None:
    """An empty file yields every default the example config shows, paths resolved against root."""
    cfg = parse_config({}, base=Path("/srv/anu"))
    assert cfg.root == Path("/srv/anu")
    assert cfg.spool.events_dir == Path("/srv/anu/memory/events")
    assert cfg.spool.ledger == Path("/srv/anu/memory/events/callback_4tuple_index.jsonl")
    assert cfg.spool.max_result_bytes == 65536
    assert cfg.spool.settle_s == 2.0
    assert cfg.wake.activated is False
    assert cfg.wake.sink == "log"
    assert (cfg.wake.attempts, cfg.wake.concurrency) == (3, 4)
    assert cfg.drain_timeout_s == 10.0 and cfg.rescan_interval_s == 300.0
    assert cfg.log.format == "json"
    assert cfg.wake.exec.process is False


def test_relative_root_resolves_against_the_config_directory(tmp_path: Path) -> None:
    """A relative root is relative to the config file, and spool paths to root."""
    f = tmp_path / "c.toml"
    f.write_text('root = "spool"\n[spool]\nevents_dir = "ev"\nledger = "/abs/ledger.jsonl"\n')
    cfg = load_config(f)
    assert cfg.root == tmp_path / "spool"
    assert cfg.spool.events_dir == tmp_path / "spool" / "ev"
    assert cfg.spool.ledger == Path("/abs/ledger.jsonl")
    assert cfg.source == f


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"wake": {"exec": {"argv": "notify"}}}, "wake.exec.argv: expected a list of strings"),
        ({"wake": {"exec": {"argv": ["a", 1]}}}, "wake.exec.argv: expected a list of strings"),
        ({"wake": {"attempts": "3"}}, "wake.attempts: expected an integer"),
        ({"wake": {"attempts": True}}, "wake.attempts: expected an integer, got a boolean"),
        ({"wake": {"attempts": 0}}, "wake.attempts: must be greater than 0"),
        ({"spool": {"settle_s": -1}}, "spool.settle_s: must be 0 or greater"),
        ({"wake": {"activated": "yes"}}, "wake.activated: expected true or false"),
        ({"wake": {"sink": "smtp"}}, "wake.sink: expected one of exec, http, nats, log"),
        ({"wake": {"colour": 1}}, "wake.colour: unknown key"),
        ({"spool": {"events_dir": 3}}, "spool.events_dir: expected a path string"),
        ({"colour": 1}, "colour: unknown key"),
        ({"log": {"format": "xml"}}, "log.format: expected one of json, console"),
        ({"spool": {"executors": ["anu"]}}, "spool.executors: must not contain the collector"),
        ({"wake": {"sink": "exec"}}, "wake.exec.argv: required"),
        ({"wake": {"sink": "http"}}, "wake.http.url: required"),
        ({"wake": {"exec": {"process": 1}}}, "wake.exec.process: expected true or false"),
        (
            {"wake": {"exec": {"argv": ["h"], "update_argv": ["u"], "process": True}}},
            "wake.exec.update_argv: not used when wake.exec.process = true",
        ),
        ({"drain_timeout_s": -1}, "drain_timeout_s: must be greater than 0"),
    ],
)
def test_every_error_names_the_key_path_and_reason(data: dict[str, object], message: str) -> None:
    """Bad values and unknown keys are refused with the dotted key path first."""
    assert _err(data).startswith(message)


def test_integers_are_accepted_for_float_settings() -> None:
    """`drain_timeout_s = 3` is a number, so it is accepted as 3.0."""
    assert parse_config({"drain_timeout_s": 3}, base=Path("/")).drain_timeout_s == 3.0


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not TOML is refused with its path in the message."""
    f = tmp_path / "bad.toml"
    f.write_text("root = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing config file is a configuration error, not a crash."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    """--config wins over $ANU_WATCHD_CONFIG, which wins over the system default."""
    monkeypatch.setenv("ANU_WATCHD_CONFIG", "/env.toml")
    assert config_path("/cli.toml") == Path("/cli.toml")
    assert config_path(None) == Path("/env.toml")
    monkeypatch.delenv("ANU_WATCHD_CONFIG")
    assert config_path(None) == Path("/etc/anu-watchd/anu-watchd.toml")


def test_config_is_frozen() -> None:
    """Config values cannot be mutated; reload builds a new one."""
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.drain_timeout_s = 1.0  # type: ignore[misc]


_FLOAT_KEYS = [
    ("", "drain_timeout_s"),
    ("", "rescan_interval_s"),
    ("wake", "backoff_initial_s"),
    ("wake", "backoff_max_s"),
    ("wake", "timeout_s"),
    ("wake", "receipt_ttl_s"),
    ("spool", "settle_s"),
]


@pytest.mark.parametrize("literal", ["nan", "inf", "-inf", "+nan"])
@pytest.mark.parametrize(("table", "name"), _FLOAT_KEYS)
def test_nan_or_infinity_in_a_float_key_is_refused(
    tmp_path: Path, table: str, name: str, literal: str
) -> None:
    """A NaN or infinite value for any float key is a configuration error naming the key."""
    path = tmp_path / "c.toml"
    body = f"{name} = {literal}\n"
    path.write_text(f"[{table}]\n{body}" if table else body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{'.'.join(p for p in (table, name) if p)}: ")
    assert "finite" in str(info.value)
