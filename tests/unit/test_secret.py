"""Tests for anu_watchd.secret: loading the sealed key, refusing bad key files, redaction."""

from __future__ import annotations

import collections
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import pytest

from anu_watchd.errors import ConfigError, SecretError
from anu_watchd.secret import (
    REDACTED,
    SealedKey,
    generate_key_file,
    load_key,
    redact_cut,
    redact_processor,
)


@pytest.fixture
def key_value() -> str:
    return secrets.token_hex(24)


def write_key(path: Path, content: str, mode: int = 0o600) -> Path:
    path.write_text(content)
    path.chmod(mode)
    return path


def refusal(file: str, **kw: Any) -> SecretError:
    with pytest.raises(SecretError) as info:
        load_key(file, **kw)
    return info.value


# -- loading ----------------------------------------------------------------------


def test_loads_and_strips_surrounding_whitespace(tmp_path: Path, key_value: str) -> None:
    """The key is the file's content with surrounding whitespace stripped."""
    path = write_key(tmp_path / "k", f"\n  {key_value} \t\n\n")
    key = load_key(str(path), environ={})
    assert key.value == key_value
    assert key.bytes == key_value.encode()
    assert key.path == path


def test_empty_file_means_credentials_directory(tmp_path: Path, key_value: str) -> None:
    """An empty key.file reads $CREDENTIALS_DIRECTORY/anu-key."""
    write_key(tmp_path / "anu-key", key_value + "\n", 0o400)
    key = load_key("", environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert key.value == key_value
    assert key.path == tmp_path / "anu-key"


def test_empty_file_without_credentials_directory_is_refused() -> None:
    """Without CREDENTIALS_DIRECTORY the default key file is a config error naming both settings."""
    err = refusal("", environ={})
    assert isinstance(err, ConfigError)
    assert err.key == "key.file"
    assert "CREDENTIALS_DIRECTORY" in str(err)


def test_relative_path_resolves_against_root(tmp_path: Path, key_value: str) -> None:
    """A relative key.file is relative to the given root, not the working directory."""
    write_key(tmp_path / "anu-key", key_value)
    assert load_key("anu-key", environ={}, root=tmp_path).value == key_value


def test_missing_file_is_refused(tmp_path: Path) -> None:
    """A key file that does not exist is a SecretError naming the path."""
    err = refusal(str(tmp_path / "nope"), environ={})
    assert err.key == "key.file"
    assert str(tmp_path / "nope") in str(err)


def test_directory_is_refused(tmp_path: Path) -> None:
    """A directory is not a key file."""
    (tmp_path / "d").mkdir(mode=0o700)
    assert "not a regular file" in str(refusal(str(tmp_path / "d"), environ={}))


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO is refused at once rather than blocking the open until a writer appears."""
    os.mkfifo(tmp_path / "f", 0o600)
    assert "not a regular file" in str(refusal(str(tmp_path / "f"), environ={}))


@pytest.mark.parametrize("content", ["", "   \n\t\n"])
def test_empty_key_is_refused(tmp_path: Path, content: str) -> None:
    """A key file that is empty after stripping is refused."""
    path = write_key(tmp_path / "k", content)
    assert "empty" in str(refusal(str(path), environ={}))


def test_invalid_utf8_is_refused(tmp_path: Path) -> None:
    """A key file that is not UTF-8 is refused, since the HMAC key is its UTF-8 bytes."""
    path = tmp_path / "k"
    path.write_bytes(b"\xff\xfe" + secrets.token_bytes(8))
    path.chmod(0o600)
    assert "UTF-8" in str(refusal(str(path), environ={}))


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    """A file far larger than any key is refused as the wrong path."""
    path = write_key(tmp_path / "k", secrets.token_hex(4096))
    assert "larger than" in str(refusal(str(path), environ={}))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666, 0o610])
def test_group_or_other_access_is_refused(tmp_path: Path, key_value: str, mode: int) -> None:
    """Outside CREDENTIALS_DIRECTORY any group or other permission is refused, content unsaid."""
    path = write_key(tmp_path / "k", key_value, mode)
    err = refusal(str(path), environ={})
    assert f"{mode:04o}" in str(err)
    assert str(path) in str(err)
    assert key_value not in str(err)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_are_accepted(tmp_path: Path, key_value: str, mode: int) -> None:
    """Owner-only files load."""
    path = write_key(tmp_path / "k", key_value, mode)
    assert load_key(str(path), environ={}).value == key_value


def test_credential_may_be_group_readable(tmp_path: Path, key_value: str) -> None:
    """systemd's 0440 credential inside CREDENTIALS_DIRECTORY is accepted."""
    write_key(tmp_path / "anu-key", key_value, 0o440)
    key = load_key("", environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert key.value == key_value


def test_explicit_path_inside_credentials_directory_counts(tmp_path: Path, key_value: str) -> None:
    """An explicit key.file under CREDENTIALS_DIRECTORY gets the credential mode rule too."""
    path = write_key(tmp_path / "other-key", key_value, 0o440)
    assert load_key(str(path), environ={"CREDENTIALS_DIRECTORY": str(tmp_path)}).value == key_value


@pytest.mark.parametrize("mode", [0o444, 0o460, 0o404])
def test_credential_other_access_or_group_write_is_refused(
    tmp_path: Path, key_value: str, mode: int
) -> None:
    """Even in CREDENTIALS_DIRECTORY, other access or group write is refused."""
    write_key(tmp_path / "anu-key", key_value, mode)
    err = refusal("", environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert "too open" in str(err)


def test_symlink_is_followed_and_target_checked(tmp_path: Path, key_value: str) -> None:
    """A symlink is followed; the mode rule applies to the file it points at."""
    target = write_key(tmp_path / "target", key_value)
    (tmp_path / "link").symlink_to(target)
    assert load_key(str(tmp_path / "link"), environ={}).value == key_value
    target.chmod(0o644)
    assert "too open" in str(refusal(str(tmp_path / "link"), environ={}))


def test_repr_and_str_hide_the_value(tmp_path: Path, key_value: str) -> None:
    """repr, str and f-strings of a SealedKey show the path and never the value."""
    key = SealedKey(path=tmp_path / "k", value=key_value)
    for shown in (repr(key), str(key), f"{key}", repr([key])):
        assert key_value not in shown
        assert REDACTED in shown
        assert "k" in shown


def test_generate_creates_private_random_key(tmp_path: Path) -> None:
    """generate_key_file writes a fresh random key with mode 0600 and no temp file left."""
    key = generate_key_file(tmp_path / "anu-key")
    assert stat.S_IMODE((tmp_path / "anu-key").stat().st_mode) == 0o600
    assert len(key.value) >= 32
    assert load_key(str(tmp_path / "anu-key"), environ={}) == key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anu-key"]


def test_generate_keeps_an_existing_key(tmp_path: Path, key_value: str) -> None:
    """A second generate_key_file loads the key already there instead of replacing it."""
    first = generate_key_file(tmp_path / "anu-key")
    assert generate_key_file(tmp_path / "anu-key") == first
    write_key(tmp_path / "mine", key_value)
    assert generate_key_file(tmp_path / "mine").value == key_value


def test_generate_makes_different_keys(tmp_path: Path) -> None:
    """Two new key files get two different keys."""
    assert generate_key_file(tmp_path / "a").value != generate_key_file(tmp_path / "b").value


# -- redaction ----------------------------------------------------------------------


def redact(key: SealedKey | None, event: dict[str, Any]) -> Any:
    return redact_processor(key)(None, "info", event)


def test_redacts_strings_nested_containers_and_keys(tmp_path: Path, key_value: str) -> None:
    """The key is replaced everywhere in the event dict: values, nested containers and dict keys."""
    key = SealedKey(tmp_path / "k", key_value)
    Pair = collections.namedtuple("Pair", "a b")
    event = {
        "event": f"saw {key_value}",
        "nested": {"deep": [({"x": f"pre{key_value}post"},)], key_value: 1},
        "tuple": (key_value, 2),
        "set": {key_value},
        "bytes": key_value.encode(),
        "named": Pair(key_value, 1),
        "sealed": key,
        "count": 3,
        "none": None,
    }
    out = redact(key, event)
    assert key_value not in repr(out)
    assert out["event"] == f"saw {REDACTED}"
    assert out["nested"]["deep"][0][0]["x"] == f"pre{REDACTED}post"
    assert out["nested"][REDACTED] == 1
    assert out["tuple"] == (REDACTED, 2)
    assert out["sealed"] == REDACTED
    assert out["count"] == 3
    assert out["none"] is None


def test_redacts_exceptions_and_opaque_objects(tmp_path: Path, key_value: str) -> None:
    """An object whose repr or str shows the key (an exception) is replaced by a redacted repr."""
    key = SealedKey(tmp_path / "k", key_value)
    out = redact(key, {"error": ValueError(f"bad {key_value}"), "path": tmp_path})
    assert key_value not in repr(out)
    assert "ValueError" in out["error"]
    assert out["path"] == tmp_path


def test_redacts_escaped_forms(tmp_path: Path) -> None:
    """A key that JSON or repr would escape is caught in its escaped form too."""
    value = secrets.token_hex(8) + '"\\é' + secrets.token_hex(8)
    key = SealedKey(tmp_path / "k", value)
    escaped = json.dumps(value)[1:-1]
    out = redact(key, {"doc": f'{{"k": "{escaped}"}}', "raw": value})
    assert escaped not in out["doc"]
    assert out["raw"] == REDACTED


def test_no_key_passes_through(key_value: str) -> None:
    """Without a key the processor returns the event untouched."""
    event = {"event": key_value, "n": [1]}
    assert redact(None, dict(event)) == event


def test_deep_nesting_is_bounded(tmp_path: Path, key_value: str) -> None:
    """Nesting past the depth bound is flattened to a redacted repr instead of recursing forever."""
    key = SealedKey(tmp_path / "k", key_value)
    deep: Any = key_value
    for _ in range(200):
        deep = [deep]
    out = redact(key, {"deep": deep})
    assert key_value not in repr(out)


def test_a_short_key_is_refused_without_showing_it(tmp_path: Path) -> None:
    """A key under 16 characters is a config error that gives its length, never its value."""
    short = secrets.token_hex(7)  # 14 characters
    path = write_key(tmp_path / "k", short + "\n")
    err = refusal(str(path), environ={})
    assert isinstance(err, ConfigError) and err.key == "key.file"
    assert "14 characters" in str(err) and short not in str(err)
    write_key(tmp_path / "k16", secrets.token_hex(8))
    assert len(load_key(str(tmp_path / "k16"), environ={}).value) == 16


def test_redact_cut_leaves_no_prefix_or_suffix_at_a_cut_edge(tmp_path: Path) -> None:
    """A key split by a cut at either end of a piece loses its surviving part too."""
    value = secrets.token_hex(16)
    sealed = SealedKey(path=tmp_path / "k", value=value)
    assert redact_cut("abc " + value[:10], sealed, head=False, tail=True) == "abc [REDACTED]"
    assert redact_cut(value[-10:] + " abc", sealed, head=True, tail=False) == "[REDACTED] abc"
    assert redact_cut("x" + value + "y", sealed, head=False, tail=False) == "x[REDACTED]y"
