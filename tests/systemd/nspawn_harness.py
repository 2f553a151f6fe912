"""Boot a real systemd as PID 1 of a container, drive it, and leave nothing behind.

The container is ``systemd-nspawn --boot`` over a cached Debian rootfs
(scripts/systemd-rootfs.sh) mounted ``--volatile=overlay``: every boot starts
from the same pristine tree and writes only to a tmpfs that dies with it.

On this project's hosts PID 1 is not systemd and cgroups are a v1/v2 hybrid,
so nothing would clean up after nspawn: the harness gives it a cgroup subtree
of its own in every hierarchy nspawn uses (otherwise it writes into the host's
root cgroup), runs it with ``--register=no --keep-unit`` (no machined, no
system bus), drives the container with ``nsenter ... systemctl`` (PID 1's
private socket, no D-Bus) and on shutdown kills whatever survived by pid and
removes the subtree.

A test process that dies without shutting its container down (SIGKILL) leaves
it running; the next boot reaps every container whose test process is gone.
Files go in and out through ``/proc/<leader>/root``, the container's own view
of its filesystem, so no bind mount is needed for them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

CGROUP_FS = Path("/sys/fs/cgroup")
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Machine and cgroup names: the prefix, the pid of the test process, a random suffix.
PREFIX = "anu-watchd-test-"
BOOT_TIMEOUT_S = 90.0
SHUTDOWN_TIMEOUT_S = 30.0


class CannotBoot(Exception):
    """This host cannot run the container; the tests skip with this reason."""


class HarnessError(Exception):
    """The container misbehaved or left something behind; a test error, not a skip."""


# --- host checks ---------------------------------------------------------


def cgroup_hierarchies() -> list[Path]:
    """The hierarchies nspawn uses: name=systemd and the v2 tree (hybrid), or the v2 root."""
    if (CGROUP_FS / "cgroup.controllers").exists():
        return [CGROUP_FS]
    hybrid = [CGROUP_FS / "systemd", CGROUP_FS / "unified"]
    if all((h / "cgroup.procs").exists() for h in hybrid):
        return hybrid
    return []


def why_cannot_boot() -> str | None:
    """The reason this host cannot boot the container, or None when it can."""
    if os.environ.get("ANU_WATCHD_SYSTEMD_TESTS") == "0":
        return "disabled by ANU_WATCHD_SYSTEMD_TESTS=0"
    if sys.platform != "linux":
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root to run systemd-nspawn"
    if Path("/run/systemd/system").is_dir():
        # A systemd host owns the cgroup tree; creating a subtree by hand would fight it.
        return "host runs systemd as PID 1; this harness targets hosts where it does not"
    hierarchies = cgroup_hierarchies()
    if not hierarchies:
        return "no cgroup v2 or v1/v2 hybrid hierarchy under /sys/fs/cgroup"
    if not all(os.access(h, os.W_OK) for h in hierarchies):
        return "cgroup hierarchies are not writable (no privileges)"
    return None


# --- the container ---------------------------------------------------------------------


@attrs.define
class Container:
    """A booted container: its leader is the container's PID 1, seen from the host."""

    machine: str
    nspawn: subprocess.Popen[bytes]
    leader: int
    cgroups: list[Path]
    log: Path

    def path(self, inside: str) -> Path:
        """The host path of ``inside``, through the container's own root."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        user: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside every namespace of the container, as root or ``user``."""
        prefix = ["runuser", "-u", user, "--"] if user else []
        proc = subprocess.run(
            [*self.nsenter_argv(), *prefix, *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=container_env(),
            check=False,
        )
        if check and proc.returncode != 0:
            raise HarnessError(
                f"{' '.join(argv)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def nsenter_argv(self) -> list[str]:
        return ["nsenter", "-t", str(self.leader), "-a", "-r", "-w", "--"]

    def sh(self, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("/bin/sh", "-ec", script, **kwargs)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show`` properties of ``unit`` as a dict."""
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        """Write a file inside the container atomically (tmp + rename), as root."""
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{secrets.token_hex(4)}")
        tmp.write_text(text)
        tmp.chmod(mode)
        tmp.rename(target)

    def journal_cursor(self) -> str:
        """The journal's current end, for ``journal("--after-cursor=...")`` later."""
        out = self.run("journalctl", "--no-pager", "-n", "0", "--show-cursor").stdout
        return out.strip().rpartition("-- cursor: ")[2]

    def journal(self, *matches: str) -> list[dict[str, Any]]:
        """Journal entries (``journalctl -o json``) matching ``matches``, oldest first."""
        out = self.run("journalctl", "--no-pager", "-o", "json", *matches).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def container_env() -> dict[str, str]:
    """A clean environment for commands inside the container (not the host's PATH)."""
    return {
        "PATH": CONTAINER_PATH,
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "SYSTEMD_PAGER": "",
        "SYSTEMD_COLORS": "0",
    }


def wait_for(
    predicate: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.1
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def boot(rootfs: Path, binds: Mapping[Path, str], log_dir: Path) -> Container:
    """Start the container, wait until its systemd reports the system running."""
    reap_stale()
    machine = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    cgroups = [h / machine for h in cgroup_hierarchies()]
    for cg in cgroups:
        cg.mkdir()
    log = log_dir / f"{machine}.log"
    nspawn = _spawn(rootfs, machine, cgroups, binds, log)
    container = Container(machine=machine, nspawn=nspawn, leader=0, cgroups=cgroups, log=log)
    try:
        container.leader = wait_for(
            lambda: _leader_of(nspawn), "the container's PID 1", timeout=BOOT_TIMEOUT_S
        )
        _wait_running(container)
    except HarnessError as exc:
        shutdown(container)
        raise HarnessError(f"{exc}\n--- {log} (tail):\n{_tail(log)}") from None
    except BaseException:
        shutdown(container)
        raise
    return container


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _spawn(
    rootfs: Path, machine: str, cgroups: list[Path], binds: Mapping[Path, str], log: Path
) -> subprocess.Popen[bytes]:
    # The shell moves itself into our subtree, then becomes nspawn: nspawn starts there,
    # and with --keep-unit it nests the container's cgroups below it.
    join = "".join(f'echo $$ > "{cg}/cgroup.procs"; ' for cg in cgroups)
    argv = [
        "systemd-nspawn",
        "--boot",
        "--register=no",
        "--keep-unit",
        "--volatile=overlay",
        "--private-network",
        "--console=read-only",
        f"--machine={machine}",
        "-D",
        str(rootfs),
        *(f"--bind-ro={host}:{inside}" for host, inside in binds.items()),
    ]
    env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(
            ["/bin/sh", "-c", join + 'exec "$@"', "sh", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _leader_of(nspawn: subprocess.Popen[bytes]) -> int | None:
    """The host pid of the container's PID 1 once it runs systemd, else None."""
    if nspawn.poll() is not None:
        raise HarnessError(f"systemd-nspawn exited {nspawn.returncode} before booting")
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children").read_text().split()
        for pid in map(int, children):
            status = Path(f"/proc/{pid}/status").read_text()
            nspid = next(ln for ln in status.splitlines() if ln.startswith("NSpid:")).split()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if nspid[-1] == "1" and comm == "systemd":
                return pid
    return None


def _wait_running(c: Container) -> None:
    """``is-system-running --wait``, retried: PID 1's socket appears some time into boot."""

    def running() -> bool:
        proc = c.run("systemctl", "is-system-running", "--wait", check=False, timeout=60)
        state = proc.stdout.strip()
        if state == "degraded":
            failed = c.systemctl("--failed", "--plain", "--no-legend", check=False).stdout
            raise HarnessError(f"container booted degraded; failed units:\n{failed}")
        return state == "running"

    wait_for(running, "the container's systemd to report running", timeout=BOOT_TIMEOUT_S)


def shutdown(c: Container) -> None:
    """Power the container off, kill what survived, remove our cgroups; verify it."""
    if c.nspawn.poll() is None and c.leader:
        # What `systemctl poweroff` does once it finds no logind to ask.
        with contextlib.suppress(subprocess.TimeoutExpired, HarnessError):
            c.systemctl("start", "poweroff.target", "--job-mode=replace-irreversibly", "--no-block")
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.nspawn.wait(timeout=SHUTDOWN_TIMEOUT_S)
    survivors = _kill_cgroups(c.cgroups)
    if c.nspawn.poll() is None:
        c.nspawn.kill()
    c.nspawn.wait(timeout=SHUTDOWN_TIMEOUT_S)
    _remove_cgroups(c.cgroups)
    with contextlib.suppress(FileNotFoundError, OSError):
        Path("/run/systemd/nspawn/propagate", c.machine).rmdir()
    leftovers = leftovers_of(c)
    if leftovers or survivors:
        raise HarnessError(f"container left behind {leftovers}; killed survivors {survivors}")


def cgroup_pids(cgroups: list[Path]) -> set[int]:
    pids: set[int] = set()
    for root in cgroups:
        for procs in root.rglob("cgroup.procs") if root.exists() else ():
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def _kill_cgroups(cgroups: list[Path]) -> list[int]:
    """SIGKILL every process still in our subtree; return the pids that had to be killed."""
    killed: list[int] = []
    for pid in cgroup_pids(cgroups):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    if killed:
        wait_for(lambda: not cgroup_pids(cgroups), "killed processes to exit", timeout=10)
    return killed


def _remove_cgroups(cgroups: list[Path]) -> None:
    """rmdir our subtrees bottom-up; an emptied cgroup can stay busy for a moment."""

    def removed() -> bool:
        for root in cgroups:
            if not root.exists():
                continue
            for d in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()
        return not any(root.exists() for root in cgroups)

    wait_for(removed, "the container's cgroups to be removable", timeout=10)


def reap_stale() -> list[Path]:
    """Remove containers of earlier runs whose test process died without shutting them down."""
    reaped = []
    for hierarchy in cgroup_hierarchies():
        for cg in hierarchy.glob(f"{PREFIX}*"):
            owner = int(cg.name.removeprefix(PREFIX).split("-")[0])
            if _alive(owner):
                continue
            _kill_cgroups([cg])
            _remove_cgroups([cg])
            with contextlib.suppress(OSError):
                Path("/run/systemd/nspawn/propagate", cg.name).rmdir()
            reaped.append(cg)
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def leftovers_of(c: Container) -> list[str]:
    """Anything of this container still on the host: processes, cgroups, mounts."""
    found = [f"cgroup {cg}" for cg in c.cgroups if cg.exists()]
    if c.nspawn.poll() is None:
        found.append(f"systemd-nspawn pid {c.nspawn.pid}")
    if c.leader and Path(f"/proc/{c.leader}").exists():
        found.append(f"container PID 1 (host pid {c.leader})")
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    found += [f"mount {m.split()[4]}" for m in mounts if c.machine in m]
    if Path("/run/systemd/nspawn/propagate", c.machine).exists():
        found.append(f"/run/systemd/nspawn/propagate/{c.machine}")
    return found


@contextlib.contextmanager
def booted(rootfs: Path, binds: Mapping[Path, str], log_dir: Path) -> Iterator[Container]:
    """A booted container for the duration of the block, always shut down after."""
    c = boot(rootfs, binds, log_dir)
    try:
        yield c
    finally:
        shutdown(c)
