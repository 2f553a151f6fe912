"""quarantine: move + reason sidecar, listing and release, on real files in tmp_path."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from anu_watchd import fsio, quarantine
from anu_watchd.errors import InputVanishedError
from anu_watchd.model import QuarantineReason
from anu_watchd.quarantine import QuarantineEntry

NOW = datetime(2026, 11, 22, 4, 4, 5, 123456, tzinfo=UTC)
STAMP = "20261122T040405.123456Z"
R = QuarantineReason


@attrs.frozen
class Spool:
    events: Path
    qdir: Path


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    events = tmp_path / "memory" / "events"
    events.mkdir(parents=True)
    return Spool(events, events / "quarantine")


def put(spool: Spool, name: str, data: bytes = b"{}") -> Path:
    path = spool.events / name
    path.write_bytes(data)
    return path


def qput(spool: Spool, name: str, data: bytes = b"{}", detail: str = "x") -> Path:
    """Drop a file into the events dir and quarantine it (SCHEMA) at NOW."""
    return quarantine.quarantine(put(spool, name, data), spool.qdir, R.SCHEMA, detail, now=NOW)


def sidecar(dest: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(quarantine.sidecar_path(dest).read_bytes())
    return doc


def same_file(st: os.stat_result, path: Path) -> bool:
    other = os.stat(path)
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def test_quarantine_moves_the_file_and_writes_the_sidecar(spool: Spool) -> None:
    """The file lands at <name>.<utc-ts> beside a sidecar with reason, detail, path and ts."""
    src = put(spool, "task-7.result.json", b"not json")
    dest = quarantine.quarantine(src, spool.qdir, R.INVALID_JSON, "syntax error", now=NOW)
    assert dest == spool.qdir / f"task-7.result.json.{STAMP}"
    assert dest.read_bytes() == b"not json"
    assert not src.exists()
    assert sidecar(dest) == {
        "reason": "INVALID_JSON",
        "detail": "syntax error",
        "original_path": str(src),
        "ts": "2026-11-22T04:04:05.123456Z",
    }


def test_quarantine_creates_a_missing_directory_durably(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing quarantine dir is created and its parent fsynced before the move."""
    synced: list[os.stat_result] = []

    def recording_fsync(fd: int) -> None:
        synced.append(os.fstat(fd))
        os.fsync(fd)

    monkeypatch.setattr(fsio, "fsync", recording_fsync)
    qput(spool, "task-1.result.json")
    assert same_file(synced[0], spool.events)
    assert stat.S_IMODE(os.stat(spool.qdir).st_mode) & 0o007 == 0  # no access for others


def test_quarantine_moves_a_symlink_itself(spool: Spool, tmp_path: Path) -> None:
    """A symlink is moved as a link; its target is neither followed nor touched."""
    target = tmp_path / "secret"
    target.write_bytes(b"do not touch")
    src = spool.events / "task-1.result.json"
    src.symlink_to(target)
    dest = quarantine.quarantine(src, spool.qdir, R.NOT_REGULAR_FILE, "symlink", now=NOW)
    assert os.readlink(dest) == str(target)
    assert target.read_bytes() == b"do not touch"
    assert not os.path.lexists(src)


def test_quarantine_moves_a_fifo_without_opening_it(spool: Spool) -> None:
    """A FIFO is moved as a FIFO (opening it would block)."""
    src = spool.events / "task-1.result.json"
    os.mkfifo(src)
    dest = quarantine.quarantine(src, spool.qdir, R.NOT_REGULAR_FILE, "FIFO", now=NOW)
    assert stat.S_ISFIFO(os.lstat(dest).st_mode)


def test_quarantine_moves_a_directory_with_its_contents(spool: Spool) -> None:
    """A directory named like a result is moved whole."""
    src = spool.events / "task-1.result.json"
    src.mkdir()
    (src / "inner").write_bytes(b"i")
    dest = quarantine.quarantine(src, spool.qdir, R.NOT_REGULAR_FILE, "directory", now=NOW)
    assert (dest / "inner").read_bytes() == b"i"


def test_quarantine_moves_one_name_of_a_hard_linked_file(spool: Spool, tmp_path: Path) -> None:
    """Only the event's name is moved; the other link keeps its name and content."""
    src = put(spool, "task-1.result.json", b"shared")
    os.link(src, tmp_path / "other")
    dest = quarantine.quarantine(src, spool.qdir, R.NOT_REGULAR_FILE, "2 hard links", now=NOW)
    assert os.stat(dest).st_ino == os.stat(tmp_path / "other").st_ino
    assert (tmp_path / "other").read_bytes() == b"shared"


def test_quarantine_handles_newlines_and_unicode_in_names(spool: Spool) -> None:
    """Names with a newline and non-ASCII survive into the entry name and the sidecar."""
    name = "task-\nö✓.result.json"
    dest = qput(spool, name)
    assert dest.name == f"{name}.{STAMP}"
    assert sidecar(dest)["original_path"] == str(spool.events / name)
    assert [e.name for e in quarantine.list_quarantined(spool.qdir)] == [dest.name]


def test_quarantine_never_overwrites_an_earlier_entry(spool: Spool) -> None:
    """The same name at the same instant gets -1, -2 …, and earlier entries keep their bytes."""
    dests = [qput(spool, "task-1.result.json", bytes([i]), detail=f"#{i}") for i in range(3)]
    assert [d.name for d in dests] == [
        f"task-1.result.json.{STAMP}",
        f"task-1.result.json.{STAMP}-1",
        f"task-1.result.json.{STAMP}-2",
    ]
    assert [d.read_bytes() for d in dests] == [b"\0", b"\1", b"\2"]
    assert [sidecar(d)["detail"] for d in dests] == ["#0", "#1", "#2"]


def test_quarantine_of_a_vanished_file_raises_input_vanished(spool: Spool) -> None:
    """A source that is already gone raises InputVanishedError and leaves no sidecar."""
    with pytest.raises(InputVanishedError):
        quarantine.quarantine(
            spool.events / "task-1.result.json", spool.qdir, R.SCHEMA, "x", now=NOW
        )
    assert os.listdir(spool.qdir) == []


def test_overlong_names_are_clipped_and_released_whole(spool: Spool) -> None:
    """A 250-byte name is clipped to fit stamp and sidecar, and released under its full name."""
    name = "task-" + "x" * 233 + ".result.json"
    dest = qput(spool, name)
    assert len(os.fsencode(quarantine.sidecar_path(dest).name)) <= fsio.NAME_MAX
    assert quarantine.release(spool.qdir, dest.name, spool.events) == spool.events / name


# -- list -----------------------------------------------------------------------


def test_list_quarantined_reads_sidecars_and_skips_non_entries(spool: Spool) -> None:
    """Entries come sorted with their sidecar fields; sidecars and temp files are not entries."""
    b = qput(spool, "task-b.result.json", detail="big")
    a = qput(spool, "task-a.result.json", detail="small")
    (spool.qdir / ".tmp-x.reason.json.abcd").write_bytes(b"{}")
    ts = "2026-11-22T04:04:05.123456Z"
    assert quarantine.list_quarantined(spool.qdir) == [
        QuarantineEntry(a.name, "SCHEMA", "small", str(spool.events / "task-a.result.json"), ts),
        QuarantineEntry(b.name, "SCHEMA", "big", str(spool.events / "task-b.result.json"), ts),
    ]


def test_list_quarantined_without_a_readable_sidecar_has_no_reason(spool: Spool) -> None:
    """A missing or corrupt sidecar yields an entry whose fields are None."""
    missing = spool.qdir / f"task-1.result.json.{STAMP}"
    corrupt = spool.qdir / f"task-2.result.json.{STAMP}"
    spool.qdir.mkdir()
    missing.write_bytes(b"x")
    corrupt.write_bytes(b"x")
    quarantine.sidecar_path(corrupt).write_bytes(b"{not json")
    assert quarantine.list_quarantined(spool.qdir) == [
        QuarantineEntry(missing.name, None, None, None, None),
        QuarantineEntry(corrupt.name, None, None, None, None),
    ]


def test_list_quarantined_of_a_missing_directory_is_empty(spool: Spool) -> None:
    """No quarantine directory yet means nothing quarantined."""
    assert quarantine.list_quarantined(spool.qdir) == []


# -- release --------------------------------------------------------------------


def test_release_round_trip(spool: Spool) -> None:
    """A released file is back under its original name, its sidecar gone, the list empty."""
    dest = qput(spool, "task-7.result.json", b"fixed")
    (entry,) = quarantine.list_quarantined(spool.qdir)
    src = quarantine.release(spool.qdir, entry.name, spool.events)
    assert src == spool.events / "task-7.result.json"
    assert src.read_bytes() == b"fixed"
    assert not os.path.lexists(dest)
    assert not quarantine.sidecar_path(dest).exists()
    assert quarantine.list_quarantined(spool.qdir) == []


def test_release_of_a_collision_entry_strips_the_counter(spool: Spool) -> None:
    """An entry with a -n suffix is released under the plain original name."""
    qput(spool, "task-1.result.json")
    second = qput(spool, "task-1.result.json")
    assert second.name.endswith("-1")
    assert quarantine.release(spool.qdir, second.name, spool.events).name == "task-1.result.json"


def test_release_refuses_to_overwrite_the_original_name(spool: Spool) -> None:
    """If the original name exists again, release raises FileExistsError and changes nothing."""
    dest = qput(spool, "task-1.result.json", b"old")
    put(spool, "task-1.result.json", b"new")
    with pytest.raises(FileExistsError):
        quarantine.release(spool.qdir, dest.name, spool.events)
    assert (spool.events / "task-1.result.json").read_bytes() == b"new"
    assert dest.read_bytes() == b"old"
    assert quarantine.sidecar_path(dest).exists()


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../x",
        f"a/b.{STAMP}",
        f"../task-1.result.json.{STAMP}",
        f"task-1.result.json.{STAMP}.reason.json",
        "task-1.result.json",
        f"...{STAMP}",
    ],
)
def test_release_rejects_names_that_are_not_plain_entries(spool: Spool, name: str) -> None:
    """Paths, dot names, sidecars and names without a stamp raise ValueError."""
    with pytest.raises(ValueError):
        quarantine.release(spool.qdir, name, spool.events)


def test_release_of_an_unknown_entry_raises_file_not_found(spool: Spool) -> None:
    """A well-formed name that is not in quarantine raises FileNotFoundError."""
    spool.qdir.mkdir()
    with pytest.raises(FileNotFoundError):
        quarantine.release(spool.qdir, f"task-1.result.json.{STAMP}", spool.events)


def test_release_ignores_a_sidecar_that_disagrees_with_the_entry_name(spool: Spool) -> None:
    """A sidecar naming another file cannot redirect a release; the entry name decides."""
    dest = qput(spool, "task-1.result.json")
    doc = sidecar(dest) | {"original_path": str(spool.events / "task-9.pickup.done")}
    quarantine.sidecar_path(dest).write_text(json.dumps(doc))
    released = quarantine.release(spool.qdir, dest.name, spool.events)
    assert released == spool.events / "task-1.result.json"


def test_a_quarantine_dir_swapped_for_a_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    """A quarantine dir replaced by a symlink after start is a fatal error naming it; nothing
    is moved through the link."""
    from anu_watchd.errors import StatePathError

    elsewhere, qdir = tmp_path / "elsewhere", tmp_path / "q"
    elsewhere.mkdir()
    qdir.symlink_to(elsewhere)
    bad = tmp_path / "task-1.result.json"
    bad.write_text("{")
    with pytest.raises(StatePathError, match="q: cannot quarantine into it: it is a symlink"):
        quarantine.quarantine(bad, qdir, QuarantineReason.INVALID_JSON, "x", now=NOW)
    assert bad.exists() and list(elsewhere.iterdir()) == []
