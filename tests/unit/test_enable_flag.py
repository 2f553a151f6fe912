"""Tests for the operator's enable flag as read on every run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from anu_watchd import fsio, spool


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every read of a flag's bytes, in order."""
    seen: list[Path] = []
    real = fsio.read_state

    def counting(path: Path, max_bytes: int, *, follow: bool = False) -> bytes:
        seen.append(path)
        return real(path, max_bytes, follow=follow)

    monkeypatch.setattr(fsio, "read_state", counting)
    return seen


def test_a_flag_changed_just_now_is_read_at_every_ask(tmp_path: Path, reads: list[Path]) -> None:
    """Within the quiet time of its last change, the flag's bytes are read each time."""
    flag = tmp_path / "enabled"
    flag.write_text("true\n")
    assert spool.is_enabled(flag) and spool.is_enabled(flag)
    assert len(reads) == 2


def test_a_quiet_flag_is_read_once_until_it_changes(
    tmp_path: Path, reads: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flag left alone is answered from its stat; a rewrite (new size, times) is read again."""
    monkeypatch.setattr(spool, "_FLAG_QUIET_NS", -(10**12))  # every flag counts as quiet
    flag = tmp_path / "enabled"
    flag.write_text("true\n")
    assert spool.is_enabled(flag) and spool.is_enabled(flag)
    assert len(reads) == 1
    flag.write_text("false\n")
    assert not spool.is_enabled(flag)
    assert len(reads) == 2


def test_a_flag_replaced_by_a_fifo_is_off(
    tmp_path: Path, reads: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remembered answer does not outlive the file: a FIFO in its place reads as off."""
    monkeypatch.setattr(spool, "_FLAG_QUIET_NS", -(10**12))
    flag = tmp_path / "enabled"
    flag.write_text("true\n")
    assert spool.is_enabled(flag)
    flag.unlink()
    os.mkfifo(flag)
    assert not spool.is_enabled(flag)


def test_a_missing_flag_is_off(tmp_path: Path) -> None:
    """No file, no wakes."""
    assert not spool.is_enabled(tmp_path / "enabled")
