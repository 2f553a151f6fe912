"""Tests for anu_watchd.preflight: check-config checks the key source the start will read."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from anu_watchd.config import Config, KeyConfig
from anu_watchd.errors import ConfigError
from anu_watchd.preflight import check_key_source


def _key(path: Path, value: str, mode: int = 0o600) -> Path:
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def _config(tmp_path: Path, file: str = "") -> Config:
    return Config(root=tmp_path, key=KeyConfig(file=file))


def test_a_key_file_that_would_start_passes(tmp_path: Path) -> None:
    """A private key file of a sound length is where the start reads the key."""
    path = _key(tmp_path / "k", secrets.token_hex(16))
    assert check_key_source(_config(tmp_path, str(path)), environ={}) == path


@pytest.mark.parametrize(
    ("value", "mode", "says"),
    [
        ("short", 0o600, "fewer than 16"),
        (secrets.token_hex(16), 0o644, "too open"),
        (None, 0o600, "cannot open"),
    ],
)
def test_a_key_file_the_start_would_refuse_is_refused(
    tmp_path: Path, value: str | None, mode: int, says: str
) -> None:
    """Missing, group/other-readable or short: check-config fails as the start would (78)."""
    path = tmp_path / "k"
    if value is not None:
        _key(path, value, mode)
    with pytest.raises(ConfigError, match=says):
        check_key_source(_config(tmp_path, str(path)), environ={})


def test_from_a_shell_the_units_credential_source_is_checked(tmp_path: Path) -> None:
    """An empty [key] file without $CREDENTIALS_DIRECTORY checks LoadCredential='s source."""
    source = tmp_path / "anu-key"
    with pytest.raises(ConfigError, match="cannot open"):
        check_key_source(_config(tmp_path), environ={}, credential_source=source)
    _key(source, "five!")
    with pytest.raises(ConfigError, match="fewer than 16"):
        check_key_source(_config(tmp_path), environ={}, credential_source=source)
    _key(source, secrets.token_hex(16))
    assert check_key_source(_config(tmp_path), environ={}, credential_source=source) == source


def test_under_the_unit_the_credential_itself_is_checked(tmp_path: Path) -> None:
    """With $CREDENTIALS_DIRECTORY set, the credential copy is what is checked."""
    creds = tmp_path / "creds"
    creds.mkdir()
    path = _key(creds / "anu-key", secrets.token_hex(16), 0o440)
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert check_key_source(_config(tmp_path), environ=env) == path
