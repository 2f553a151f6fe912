"""Tests for the re-check schedule of results a rescan left to settle."""

from __future__ import annotations

import os
from pathlib import Path

from anu_watchd.settling import Settling
from anu_watchd.spool import settling_for


async def test_due_returns_only_paths_whose_time_has_come() -> None:
    """A path deferred by 0 s is due at once; one deferred by an hour is not returned with it."""
    settling = Settling()
    settling.defer(Path("late"), 3600.0)
    settling.defer(Path("now"), 0.0)
    assert await settling.due() == [Path("now")]
    assert len(settling) == 1


def test_a_file_changed_just_now_has_its_whole_settle_time_left(tmp_path: Path) -> None:
    """Written now: nearly the settle time left; judged an hour later: none."""
    path = tmp_path / "f"
    path.write_bytes(b"{")
    st = os.stat(path)
    changed = st.st_ctime_ns
    assert 1.9 < settling_for(st, changed, 2.0) <= 2.0
    assert settling_for(st, changed + 3600 * 10**9, 2.0) < 0


def test_a_file_stamped_in_the_future_waits_the_settle_time_at_most(tmp_path: Path) -> None:
    """Another host's clock ahead of ours never makes a file wait longer than settle_s."""
    path = tmp_path / "f"
    path.write_bytes(b"{")
    st = os.stat(path)
    assert settling_for(st, st.st_ctime_ns - 3600 * 10**9, 2.0) == 2.0
