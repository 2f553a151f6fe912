"""Tests for anu_watchd.ownership: who may write the spool, and the exit-77 line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from anu_watchd import ownership
from anu_watchd.errors import NotWrittenError
from anu_watchd.ownership import Action, NotOwnerError, Owner

SERVICE = Owner(uid=997, gid=997, name="anu-watchd")


@pytest.mark.parametrize(
    ("euid", "owner", "producer", "action"),
    [
        (997, SERVICE, False, Action.PROCEED),
        (0, SERVICE, False, Action.DROP),
        (0, SERVICE, True, Action.DROP),
        (1000, SERVICE, False, Action.REFUSE),
        (1000, SERVICE, True, Action.PROCEED),
        (0, None, False, Action.REFUSE),
        (1000, None, False, Action.PROCEED),
    ],
)
def test_decide_table(euid: int, owner: Owner | None, producer: bool, action: Action) -> None:
    """The owner runs, root drops to the owner, others are refused unless producing."""
    assert ownership.decide(euid, owner, producer=producer) is action


def test_owner_runs_without_changing_identity(tmp_path: Path) -> None:
    """The spool's own owner (here, the test's user) proceeds with its uid unchanged."""
    uid = os.geteuid()
    ownership.assume_owner(tmp_path)
    assert os.geteuid() == uid


def test_root_with_a_missing_spool_root_is_refused(tmp_path: Path) -> None:
    """Root never creates a spool root itself: the refusal says how to make it."""
    if os.geteuid() != 0:
        pytest.skip("root only")
    with pytest.raises(NotOwnerError) as caught:
        ownership.assume_owner(tmp_path / "missing")
    assert "does not exist" in ownership.denied(caught.value)


def test_permission_error_is_found_behind_a_wrapping_error() -> None:
    """An EACCES that caused a write error is found; other errors are not permission problems."""
    try:
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/spool/events/x")
        except PermissionError as exc:
            raise NotWrittenError(errno.EACCES, "create: Permission denied", "/spool/x") from exc
    except NotWrittenError as wrapped:
        assert ownership.permission_error(wrapped) is wrapped
    assert ownership.permission_error(ValueError("nope")) is None
    assert ownership.permission_error(FileNotFoundError(errno.ENOENT, "gone")) is None


def test_denied_names_the_path_and_the_access(tmp_path: Path) -> None:
    """The exit-77 line names the directory a file could not be made in, or the file unread."""
    missing = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "new"))
    assert f"cannot create files in {tmp_path}" in ownership.denied(missing)
    existing = tmp_path / "f"
    existing.write_text("x")
    unread = PermissionError(errno.EACCES, "Permission denied", str(existing))
    assert f"cannot read {existing}" in ownership.denied(unread)
    listing = PermissionError(errno.EACCES, "Permission denied", str(tmp_path))
    assert f"the directory {tmp_path}" in ownership.denied(listing)
