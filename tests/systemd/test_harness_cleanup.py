"""The harness itself: a boot and shutdown leave no process, cgroup or mount on the host."""

from __future__ import annotations

from pathlib import Path

import pytest
from nspawn_harness import booted, cgroup_hierarchies, cgroup_pids, leftovers_of

pytestmark = pytest.mark.systemd


def _host_mounts() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def test_boot_and_shutdown_leave_nothing_behind(rootfs: Path, tmp_path: Path) -> None:
    """After poweroff the container's processes, cgroup subtrees and mounts are all gone."""
    mounts_before = _host_mounts()
    with booted(rootfs, {}, tmp_path) as c:
        assert c.run("systemctl", "is-system-running").stdout.strip() == "running"
        # While it runs, everything of it sits in our subtree, none in the host's root cgroup.
        assert all(cg.parent in cgroup_hierarchies() for cg in c.cgroups)
        assert {c.nspawn.pid, c.leader} <= cgroup_pids(c.cgroups)
        root_pids = {
            int(p) for h in cgroup_hierarchies() for p in (h / "cgroup.procs").read_text().split()
        }
        assert c.leader not in root_pids and c.nspawn.pid not in root_pids
    assert leftovers_of(c) == []
    assert c.nspawn.returncode == 0
    # Only mounts of ours count: other processes on the host may mount meanwhile.
    new_mounts = _host_mounts() - mounts_before
    assert [m for m in new_mounts if c.machine in m or "nspawn" in m or str(rootfs) in m] == []
