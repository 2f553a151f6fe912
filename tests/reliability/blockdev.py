"""Real failing block devices for the fsync-failure tests (seed 004, issue 6 item 2).

``FailingDisk(kind="thin")``: a small ext4 filesystem on a loop device whose
backing file is sparse and larger than the tmpfs that holds it. ``fail()`` fills
that tmpfs: from then on every write to a block never written before fails in the
loop driver, and ext4 reports it to fsync (EIO; ENOSPC on some kernels) and may
abort its journal (EROFS) — what a thin-provisioned volume running dry does.

``FailingDisk(kind="dm-error")``: the same filesystem on device-mapper's linear
target over the loop device; ``fail()`` swaps the table for ``error`` and every
I/O fails with EIO. Needs a kernel with device-mapper.

``FailingDisk(kind="dm-flakey")``: the same over device-mapper's ``flakey``
target, kept "up" (every I/O passes) until ``cut_power()`` loads
``drop_writes``: from then on every write is acknowledged and silently
dropped, so whatever was not on the device at that instant is lost at the
next mount, as in a power cut (xfstests' dm-flakey recipe).

``crash()`` is the restart observation: unmount (cached pages whose writeback
failed are dropped, as a power cut would), detach, heal (space freed, or the
linear table back), fsck (journal replay), mount again. What remains is what was
durable.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from types import TracebackType

from tests.reliability.harness import fill, umount

ENSURE_TOOLS = Path(__file__).with_name("ensure_tools.sh")
IMAGE_BYTES = 256 << 20
BACKING_TMPFS = "48m"
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def _run(*argv: str) -> str:
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":" + _SBIN}
    done = subprocess.run(list(argv), capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def why_not(kind: str) -> str | None:
    """Why this kernel cannot give us the failing device, or None; installs missing tools."""
    if os.geteuid() != 0:
        return "mounting and loop devices need root"
    if not Path("/dev/loop-control").exists():
        return "the kernel has no loop devices (/dev/loop-control is absent)"
    if kind.startswith("dm-") and not _has_device_mapper():
        return "the kernel has no device-mapper (no 'device-mapper' in /proc/misc)"
    _run(str(ENSURE_TOOLS), *(["dm"] if kind.startswith("dm-") else []))
    if kind == "dm-flakey" and not _has_dm_target("flakey"):
        return "device-mapper has no flakey target (dm_flakey: not built or not loadable)"
    return None


def _has_dm_target(name: str) -> bool:
    with contextlib.suppress(OSError):
        subprocess.run(["modprobe", f"dm_{name}"], capture_output=True, check=False)
    try:
        targets = _run("dmsetup", "targets")
    except RuntimeError:
        return False
    return any(line.split()[:1] == [name] for line in targets.splitlines())


def _has_device_mapper() -> bool:
    if "device-mapper" in Path("/proc/misc").read_text():
        return True
    # A modular kernel may load it on demand; a kernel built without it cannot.
    with contextlib.suppress(OSError):
        subprocess.run(["modprobe", "dm_mod"], capture_output=True, check=False)
    return "device-mapper" in Path("/proc/misc").read_text()


class FailingDisk:
    """An ext4 filesystem mounted at ``mnt`` that fails on demand; a context manager.

    ``workdir`` holds the image (and its tmpfs); keep it off ``mnt``.
    """

    def __init__(self, workdir: Path, mnt: Path, *, kind: str) -> None:
        self.kind = kind
        self.mnt = mnt
        self.backing = workdir / "backing"
        self.image = self.backing / "disk.img"
        self.dm_name = f"anu-watchd-test-{os.getpid()}-{id(self) & 0xFFFF:x}"
        self.loop: str | None = None
        self.device: str | None = None
        self._backing_mounted = False

    def __enter__(self) -> FailingDisk:
        self.backing.mkdir(parents=True)
        self.mnt.mkdir(parents=True)
        try:
            if self.kind == "thin":
                _run(
                    "mount",
                    "-t",
                    "tmpfs",
                    "-o",
                    f"size={BACKING_TMPFS}",
                    "tmpfs",
                    str(self.backing),
                )
                self._backing_mounted = True
            with open(self.image, "wb") as fh:
                fh.truncate(IMAGE_BYTES)  # sparse: no block is backed until it is written
            self._attach()
            assert self.device is not None
            # nodiscard: never-written blocks stay holes; lazy init: nothing is pre-zeroed.
            _run(
                "mkfs.ext4",
                "-q",
                "-F",
                "-E",
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
                self.device,
            )
            _run("mount", self.device, str(self.mnt))
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._teardown()

    def fail(self) -> None:
        """From now on, writes fail."""
        if self.kind == "thin":
            fill(self.backing)
        else:
            sectors = IMAGE_BYTES // 512
            _run("dmsetup", "suspend", "--noflush", self.dm_name)
            _run("dmsetup", "load", self.dm_name, "--table", f"0 {sectors} error")
            _run("dmsetup", "resume", self.dm_name)

    def cut_power(self) -> None:
        """dm-flakey: from now on every write is acknowledged and dropped (a power cut)."""
        assert self.kind == "dm-flakey" and self.loop is not None
        sectors = IMAGE_BYTES // 512
        table = f"0 {sectors} flakey {self.loop} 0 0 180 1 drop_writes"
        _run("dmsetup", "suspend", "--noflush", self.dm_name)
        _run("dmsetup", "load", self.dm_name, "--table", table)
        _run("dmsetup", "resume", self.dm_name)

    def crash(self) -> None:
        """Lose everything not durable, heal the device, replay the journal, mount again."""
        umount(self.mnt)
        self._detach()
        (self.backing / "filler").unlink(missing_ok=True)
        self._attach()
        assert self.device is not None
        fsck = subprocess.run(
            ["e2fsck", "-f", "-y", self.device],
            capture_output=True,
            text=True,
            env={**os.environ, "PATH": os.environ.get("PATH", "") + ":" + _SBIN},
            check=False,
        )
        if fsck.returncode not in (0, 1, 2):  # 1, 2: errors corrected
            raise RuntimeError(f"e2fsck exited {fsck.returncode}: {fsck.stdout}{fsck.stderr}")
        _run("mount", self.device, str(self.mnt))

    def _attach(self) -> None:
        self.loop = _run("losetup", "--find", "--show", str(self.image))
        self.device = self.loop
        if self.kind.startswith("dm-"):
            table = f"0 {IMAGE_BYTES // 512} linear {self.loop} 0"
            _run("dmsetup", "create", self.dm_name, "--table", table)
            self.device = f"/dev/mapper/{self.dm_name}"

    def _detach(self) -> None:
        if self.kind.startswith("dm-") and self.device is not None:
            subprocess.run(
                ["dmsetup", "remove", "--force", self.dm_name], capture_output=True, check=False
            )
        if self.loop is not None:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True, check=False)
        self.loop = self.device = None

    def _teardown(self) -> None:
        umount(self.mnt)
        self._detach()
        if self._backing_mounted:
            umount(self.backing)
            self._backing_mounted = False
