"""Hostile input against the RUNNING daemon, driven by hypothesis (issue 6, item 4).

Each example plants a few hostile entries in the watched directory — random bytes,
crafted invalid documents, names with newlines, non-UTF-8 bytes or 255 bytes, a
result swapped for a symlink right after its event, hard links, files deleted at
once, directories, FIFOs, sockets, a device node, a 2 GiB sparse file, a file that
keeps growing while it is read — waits until the daemon has dealt with each, and
drops a canary that must be woken. Throughout: the daemon never crashes or blocks,
never follows a link (no target is moved or woken), reads at most the size limit
per file (its rchar stays small though a 2 GiB file passed by), leaks no
descriptor, and quarantines each entry with the reason it deserves.

Knob: ANU_HOSTILE_EXAMPLES (default 60).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import json
import os
import secrets
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anu_watchd.model import QuarantineReason as Q
from anu_watchd.model import Rejected
from anu_watchd.validate import Rules, validate
from tests.daemonproc import DaemonProc, wait_for
from tests.reliability.harness import LedgerView, finish, start
from tests.spool import Spool, valid_doc

EXAMPLES = int(os.environ.get("ANU_HOSTILE_EXAMPLES", "60"))
MAX = 65536
SPARSE_BYTES = 2 << 30
NOT_REGULAR = frozenset({Q.NOT_REGULAR_FILE})


@attrs.frozen
class Expect:
    """What must become of one planted entry."""

    name: str
    reasons: frozenset[Q] = frozenset()  # quarantined with one of these ...
    may_wake: bool = False  # ... or (also) woken, for bytes that were valid at some instant
    may_vanish: bool = False  # we deleted it ourselves


class Campaign:
    """One running daemon, and the hostile entries thrown at it."""

    def __init__(self, root: Path) -> None:
        self.spool = Spool(root / "spool", extra="rescan_interval_s = 0.5")
        self.events = self.spool.events
        self.outside = root / "outside"  # link targets: never moved, never woken
        self.outside.mkdir()
        self.rules = Rules(
            collector="anu", executors=("dev1", "dev2"), max_bytes=MAX, key=self.spool.key.encode()
        )
        self.n = 0
        self.canaries = 0
        self.targets: dict[Path, str] = {}  # outside file -> sha256 at creation
        self.writers: list[threading.Thread] = []
        self._seen: set[str] = set()
        self._reasons: dict[str, Q] = {}
        self.d: DaemonProc = start(self.spool)
        self.d.wait_notify("READY=1")
        self.rchar0 = self.rchar()
        self.fds0 = self.fds()

    # -- observing the daemon ---------------------------------------------------------

    def rchar(self) -> int:
        io = Path(f"/proc/{self.d.proc.pid}/io").read_text()
        return int(next(x for x in io.splitlines() if x.startswith("rchar:")).split()[1])

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.d.proc.pid}/fd"))

    def alive(self) -> bool:
        if self.d.proc.poll() is not None:
            tail = "\n".join(self.d.log_text().splitlines()[-40:])
            raise AssertionError(f"the daemon died ({self.d.proc.returncode}):\n{tail}")
        return True

    # -- planting -------------------------------------------------------------------

    def fresh(self, stem: str = "h") -> str:
        self.n += 1
        return f"task-{stem}{self.n}"

    def place(self, make: Callable[[Path], object], name: str) -> Path:
        """Create the entry beside its final name, then rename it in: one MOVED_TO event."""
        tmp = self.events / f".tmp-plant-{secrets.token_hex(4)}"
        make(tmp)
        final = self.events / name
        os.rename(tmp, final)
        return final

    def write(self, name: str, data: bytes) -> Path:
        def make(p: Path) -> None:
            p.write_bytes(data)

        return self.place(make, name)

    def target(self, task_id: str) -> Path:
        """A valid result outside the spool, for links to point at."""
        path = self.outside / f"{task_id}-{secrets.token_hex(3)}.json"
        data = json.dumps(valid_doc(task_id, summary=f"outside {path.name}")).encode()
        path.write_bytes(data)
        self.targets[path] = hashlib.sha256(data).hexdigest()
        return path

    def expect_bytes(self, name: str, task_id: str, data: bytes) -> Expect:
        verdict = validate(data, task_id=task_id, rules=self.rules)
        if isinstance(verdict, Rejected):
            return Expect(name, frozenset({verdict.reason}))
        return Expect(name, may_wake=True)

    # -- waiting and checking ---------------------------------------------------------

    def settled(self, e: Expect) -> bool:
        path = self.events / e.name
        if os.path.lexists(path):
            return e.may_wake and not e.reasons and self.woken(e.name)
        # Moved: settled once its sidecar is written too (the move comes first).
        return e.may_vanish or str(path) in self.sidecars()

    def woken(self, name: str) -> bool:
        marker = self.events / name.replace(".result.json", ".pickup.done")
        try:
            doc = json.loads(marker.read_text())
            data = (self.events / name).read_bytes()
        except (OSError, ValueError):
            return False
        return bool(doc["sha256"] == hashlib.sha256(data).hexdigest())

    def check(self, expects: list[Expect]) -> None:
        for t in self.writers:
            t.join(30)
        self.writers.clear()
        wait_for(
            lambda: self.alive() and all(self.settled(e) for e in expects),
            30,
            f"the daemon to deal with {[e.name for e in expects if not self.settled(e)]!r}",
        )
        sidecars = self.sidecars()
        for e in expects:
            got = sidecars.get(str(self.events / e.name))
            if got is not None:
                assert got in e.reasons, f"{e.name!r} quarantined as {got}, not {set(e.reasons)}"
            elif not os.path.lexists(self.events / e.name):
                assert e.may_vanish, f"{e.name!r} disappeared without a quarantine sidecar"
        self.canary()

    def sidecars(self) -> dict[str, Q]:
        """original path -> reason, from every quarantine sidecar (each parsed once)."""
        for p in (self.events / "quarantine").glob("*.reason.json"):
            if p.name not in self._seen:
                doc = json.loads(p.read_text())
                self._seen.add(p.name)
                self._reasons[doc["original_path"]] = Q(doc["reason"])
        return self._reasons

    def canary(self) -> None:
        """A plain result after the hostile ones: the daemon still serves, at once."""
        self.canaries += 1
        name = f"task-canary{self.canaries}.result.json"
        self.write(name, json.dumps(valid_doc(f"task-canary{self.canaries}")).encode())
        wait_for(lambda: self.alive() and self.woken(name), 20, f"canary {name}")

    def final_checks(self) -> None:
        assert self.alive()
        read = self.rchar() - self.rchar0
        # Each input is read at most MAX + 1 bytes; the 2 GiB sparse file was never read.
        assert read < 256 << 20, f"the daemon read {read} bytes"
        assert self.fds() <= self.fds0 + 2, "descriptors leaked"
        followed = {sha for sha in self.targets.values()}
        ledger = {e.sha256 for e in LedgerView.read(self.events).entries}
        assert not followed & ledger, "a link's target was woken: a link was followed"
        for path, sha in self.targets.items():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha, f"{path} touched"
        # Hostile input is expected input: a warning at most, never an error or a traceback.
        bad = [
            line
            for line in self.d.log_text().splitlines()
            if _log_level(line) in ("error", "critical") or "Traceback" in line
        ]
        assert not bad, bad[:5]
        # One evidence line per run, whatever the name (docs/protocol.md): every quarantine.
        evidence = (self.events / "p0b_driver_runs.jsonl").read_bytes().splitlines()
        runs = {doc["path"] for doc in map(json.loads, evidence) if doc["verdict"] == "QUARANTINE"}
        assert set(self.sidecars()) <= runs, set(self.sidecars()) - runs
        left = [n for n in os.listdir(self.events) if n.endswith(".result.json")]
        assert all(self.woken(n) for n in left), f"unsettled inputs left: {left}"
        reasons = sorted(collections.Counter(map(str, self.sidecars().values())).items())
        print(f"hostile: {self.n} entries, {self.canaries} canaries, read {read} bytes; {reasons}")


# -- the actions -------------------------------------------------------------------------


def random_bytes(c: Campaign, data: bytes) -> Expect:
    task_id = c.fresh()
    name = f"{task_id}.result.json"
    c.write(name, data)
    return c.expect_bytes(name, task_id, data)


def crafted(c: Campaign, kind: str) -> Expect:
    task_id = c.fresh()
    doc = valid_doc(task_id)
    data = {
        "bad-utf8": b'{"summary": "\xff\xfe"}',
        "empty": b"",
        "not-object": b"[1, 2]",
        "nan": json.dumps(doc).replace('"DONE"', "NaN").encode(),
        "duplicate-key": json.dumps(doc)[:-1].encode() + b', "status": "DONE"}',
        "deep": b"[" * 40 + b"]" * 40,
        "mismatch": json.dumps(valid_doc("task-someone-else")).encode(),
        "foreign": json.dumps(valid_doc(task_id, collector="zeus")).encode(),
        "self": json.dumps(valid_doc(task_id, executor="anu")).encode(),
        "key": json.dumps(valid_doc(task_id, note=f"k={c.spool.key}")).encode(),
        "oversize": b" " * (MAX + 1),
        "valid": json.dumps(doc).encode(),
    }[kind]
    name = f"{task_id}.result.json"
    c.write(name, data)
    if kind == "oversize":
        return Expect(name, frozenset({Q.OVERSIZE}))
    return c.expect_bytes(name, task_id, data)


def odd_name(c: Campaign, kind: str) -> Expect:
    n = c.fresh("")
    if kind == "newline":
        name = f"task-nl\n{n}.result.json"
    elif kind == "unicode":
        name = f"task-ü{n}-한.result.json"
    elif kind == "non-utf8":
        name = os.fsdecode(b"task-\xff\xfe" + n.encode() + b".result.json")
    elif kind == "255-ascii":
        name = f"task-{n}-".ljust(255 - len(".result.json"), "a") + ".result.json"
    elif kind == "255-multibyte":
        head = f"task-{n}-"
        room = 255 - len(head) - len(".result.json")
        name = head + "é" * (room // 2) + "a" * (room % 2) + ".result.json"
    else:  # the longest valid task id: woken like any other
        task_id = f"task-{n}-".ljust(133, "v")
        name = f"{task_id}.result.json"
        c.write(name, json.dumps(valid_doc(task_id)).encode())
        return Expect(name, may_wake=True)
    assert len(os.fsencode(name)) <= 255
    c.write(name, json.dumps(valid_doc("task-x")).encode())
    return Expect(name, frozenset({Q.SCHEMA}))


def special(c: Campaign, kind: str) -> Expect:
    task_id = c.fresh()
    name = f"{task_id}.result.json"
    valid = json.dumps(valid_doc(task_id)).encode()
    if kind == "symlink":
        c.place(lambda p: p.symlink_to(c.target(task_id)), name)
    elif kind == "swap-to-symlink":
        c.write(name, valid)  # its MOVED_TO is queued; the open must not follow what replaces it
        c.place(lambda p: p.symlink_to(c.target(task_id)), name)
        return Expect(name, NOT_REGULAR, may_wake=True)
    elif kind == "hardlink":
        c.place(lambda p: os.link(c.target(task_id), p), name)
    elif kind == "deleted":
        os.unlink(c.write(name, valid))
        return Expect(name, may_wake=True, may_vanish=True)
    elif kind == "directory":
        c.place(lambda p: _directory_with(p, valid), name)
    elif kind == "fifo":
        c.place(os.mkfifo, name)
    elif kind == "socket":
        c.place(_bind_socket, name)
    elif kind == "device":
        c.place(_device_node, name)
    elif kind == "sparse-2GiB":
        c.place(lambda p: os.truncate(_touch(p), SPARSE_BYTES), name)
        return Expect(name, frozenset({Q.OVERSIZE}))
    else:  # "growing": valid when its event fires, past the limit by the time it is read
        path = c.write(name, valid)
        grower = threading.Thread(target=_grow, args=(path,), daemon=True)
        grower.start()
        c.writers.append(grower)
        return Expect(name, frozenset({Q.OVERSIZE}), may_wake=True)
    return Expect(name, NOT_REGULAR)


def _directory_with(p: Path, data: bytes) -> None:
    p.mkdir()
    (p / "inner.json").write_bytes(data)


def _touch(p: Path) -> Path:
    p.write_bytes(b"{}")
    return p


def _grow(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        for _ in range(2 * MAX // 4096 + 1):
            os.write(fd, b" " * 4096)  # JSON whitespace: still valid until it is too big
            os.sched_yield()
    finally:
        os.close(fd)


def _bind_socket(p: Path) -> None:
    # sun_path holds ~108 bytes: bind under /tmp (same filesystem), then move it here.
    short = Path("/tmp") / f"anu-sk-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(short))
    os.rename(short, p)


def _device_node(p: Path) -> None:
    try:  # /dev/zero's numbers: endless bytes for anyone who reads it
        os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except PermissionError:
        os.mkfifo(p)
    except OSError as exc:  # a nodev mount
        if exc.errno != errno.EPERM:
            raise
        os.mkfifo(p)


ACTIONS = st.one_of(
    st.binary(max_size=2048).map(lambda b: (random_bytes, b)),
    st.sampled_from(
        [
            "bad-utf8", "empty", "not-object", "nan", "duplicate-key", "deep", "mismatch",
            "foreign", "self", "key", "oversize", "valid",
        ]
    ).map(lambda k: (crafted, k)),
    st.sampled_from(
        ["newline", "unicode", "non-utf8", "255-ascii", "255-multibyte", "longest-valid"]
    ).map(lambda k: (odd_name, k)),
    st.sampled_from(
        [
            "symlink", "swap-to-symlink", "hardlink", "deleted", "directory", "fifo", "socket",
            "device", "sparse-2GiB", "growing",
        ]
    ).map(lambda k: (special, k)),
)  # fmt: skip


def test_hostile_campaign_against_the_running_daemon(tmp_path: Path) -> None:
    """EXAMPLES generated batches of hostile entries: each quarantined with its reason (or
    woken if it was valid), a canary woken after every batch, and in the end no crash, no
    link followed, no read past the limit, no descriptor leaked."""
    c = Campaign(tmp_path)
    try:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(ACTIONS, min_size=1, max_size=6))
        def batch(actions: list[tuple[Callable[[Campaign, object], Expect], object]]) -> None:
            c.check([act(c, arg) for act, arg in actions])

        batch()
        # Every kind at least once, whatever hypothesis chose.
        c.check([special(c, k) for k in ("sparse-2GiB", "swap-to-symlink", "growing", "fifo")])
        c.check([odd_name(c, k) for k in ("newline", "non-utf8", "255-multibyte")])
        c.check([crafted(c, k) for k in ("key", "self", "foreign", "mismatch", "bad-utf8")])
        c.final_checks()
    finally:
        code = finish(c.d)
    assert code == 0, c.d.log_text()[-3000:]


def _log_level(line: str) -> str | None:
    """The level of one JSON log line; None for a line that is not one (a traceback's)."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    return doc.get("level") if isinstance(doc, dict) else None
