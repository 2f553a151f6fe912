"""fsio: durable writes, defensive reads, no-overwrite moves, on real files in tmp_path.

Faults are injected only at the ``anu_watchd.fsio.fsync`` seam (plus os.write
for short writes, and the renameat2 probe for the no-NOREPLACE fallback).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from anu_watchd import fsio
from anu_watchd.errors import (
    InputVanishedError,
    NotWrittenError,
    OutcomeUnknownError,
    UnsafeInputError,
)
from anu_watchd.model import QuarantineReason

# -- the fsync seam -------------------------------------------------------------


@attrs.define
class Synced:
    """One call at the fsync seam: what the descriptor was, seen from inside the call."""

    st: os.stat_result
    target: str

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


@attrs.define
class FsyncSeam:
    """Records every fsync; fails with EIO on the calls whose kind is listed in ``fail_on``."""

    calls: list[Synced] = attrs.Factory(list)
    fail_on: set[str] = attrs.Factory(set)  # "file" and/or "dir"

    def __call__(self, fd: int) -> None:
        st = os.fstat(fd)
        self.calls.append(Synced(st, os.readlink(f"/proc/self/fd/{fd}")))
        if ("dir" if stat.S_ISDIR(st.st_mode) else "file") in self.fail_on:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)


@pytest.fixture
def seam(monkeypatch: pytest.MonkeyPatch) -> Iterator[FsyncSeam]:
    recorder = FsyncSeam()
    monkeypatch.setattr(fsio, "fsync", recorder)
    yield recorder


def same_inode(st: os.stat_result, path: Path) -> bool:
    other = os.stat(path)
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


# -- atomic_write ---------------------------------------------------------------


def test_atomic_write_creates_the_file_with_content_and_mode(tmp_path: Path) -> None:
    """A new file gets exactly the bytes and the requested mode, and no temp file remains."""
    target = tmp_path / "task-1.pickup.done"
    fsio.atomic_write(target, b'{"ok":true}\n', mode=0o600)
    assert target.read_bytes() == b'{"ok":true}\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == [target.name]


def test_atomic_write_replaces_existing_content(tmp_path: Path) -> None:
    """Writing over an existing file leaves only the new bytes."""
    target = tmp_path / "f"
    target.write_bytes(b"old old old old")
    fsio.atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_write_fsyncs_the_temp_file_then_renames_it_then_fsyncs_the_dir(
    tmp_path: Path, seam: FsyncSeam
) -> None:
    """The file fsync hits a same-dir temp that is renamed into place, then the dir is fsynced."""
    target = tmp_path / "task-2.callback-envelope.json"
    fsio.atomic_write(target, b"{}")
    file_call, dir_call = seam.calls
    assert not file_call.is_dir
    assert Path(file_call.target).parent == tmp_path
    assert fsio.is_temp_name(Path(file_call.target).name)
    assert same_inode(file_call.st, target)  # renamed into place, not copied
    assert dir_call.is_dir and same_inode(dir_call.st, tmp_path)


def test_file_fsync_failure_keeps_old_content_and_leaves_no_temp(
    tmp_path: Path, seam: FsyncSeam
) -> None:
    """EIO on the file fsync raises NotWrittenError (errno kept) and the old bytes stay intact."""
    target = tmp_path / "f"
    target.write_bytes(b"old")
    seam.fail_on = {"file"}
    with pytest.raises(NotWrittenError) as info:
        fsio.atomic_write(target, b"new")
    assert info.value.errno == errno.EIO
    assert isinstance(info.value.__cause__, OSError)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]
    assert len(seam.calls) == 1  # never retried, and no rename happened


def test_file_fsync_failure_leaves_nothing_at_a_new_path(tmp_path: Path, seam: FsyncSeam) -> None:
    """A failed first write of a file leaves no trace at all in the directory."""
    seam.fail_on = {"file"}
    with pytest.raises(NotWrittenError):
        fsio.atomic_write(tmp_path / "task-3.result.json", b"{}")
    assert os.listdir(tmp_path) == []


def test_write_failing_midway_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills after a partial write raises NotWrittenError with no partial file left."""
    target = tmp_path / "f"
    target.write_bytes(b"old")
    real_write = os.write

    def filling_write(fd: int, data: bytes | memoryview) -> int:
        if os.fstat(fd).st_size > 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, bytes(data[:4]))

    monkeypatch.setattr(os, "write", filling_write)
    with pytest.raises(NotWrittenError) as info:
        fsio.atomic_write(target, b"0123456789")
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_short_writes_are_continued_until_all_bytes_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that accepts only a few bytes at a time still yields the whole content."""
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    payload = bytes(range(256)) * 4
    fsio.atomic_write(tmp_path / "f", payload)
    assert (tmp_path / "f").read_bytes() == payload


def test_dir_fsync_failure_is_outcome_unknown_with_new_content_in_place(
    tmp_path: Path, seam: FsyncSeam
) -> None:
    """EIO on the directory fsync after the rename raises OutcomeUnknownError; the file is new."""
    target = tmp_path / "f"
    target.write_bytes(b"old")
    seam.fail_on = {"dir"}
    with pytest.raises(OutcomeUnknownError) as info:
        fsio.atomic_write(target, b"new")
    assert info.value.errno == errno.EIO
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_write_into_a_missing_directory_is_not_written(tmp_path: Path) -> None:
    """A missing parent directory raises NotWrittenError carrying ENOENT."""
    with pytest.raises(NotWrittenError) as info:
        fsio.atomic_write(tmp_path / "nope" / "f", b"x")
    assert info.value.errno == errno.ENOENT


def test_atomic_write_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    """A symlink at the target is replaced by the file; the link's target is not touched."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "f").symlink_to(victim)
    fsio.atomic_write(tmp_path / "f", b"new")
    assert victim.read_bytes() == b"keep me"
    assert not (tmp_path / "f").is_symlink()
    assert (tmp_path / "f").read_bytes() == b"new"


def test_temp_names_fit_name_max_even_for_the_longest_final_name(tmp_path: Path) -> None:
    """A 255-byte final name still gets a temp name within NAME_MAX, recognised as ours."""
    long_name = "é" * 127 + "x"  # 255 bytes of UTF-8
    tmp = fsio.temp_name(long_name)
    assert len(os.fsencode(tmp)) <= fsio.NAME_MAX
    assert fsio.is_temp_name(tmp)
    fsio.atomic_write(tmp_path / long_name, b"x")
    assert os.listdir(tmp_path) == [long_name]


def test_is_temp_name_only_matches_our_prefix() -> None:
    """Only names starting with .tmp- are our temp files."""
    assert fsio.is_temp_name(".tmp-task-1.result.json.0a1b2c")
    assert not fsio.is_temp_name("task-1.result.json")
    assert not fsio.is_temp_name("x.tmp")


# -- read_input -----------------------------------------------------------------


def returns_within(seconds: float, fn: Callable[[], object]) -> BaseException | None:
    """Run ``fn`` in a daemon thread and return what it raised; fail if it is still blocked."""
    box: list[BaseException | None] = [None]

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            box[0] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked"
    return box[0]


def reason_of(path: Path, max_bytes: int = 65536) -> UnsafeInputError:
    with pytest.raises(UnsafeInputError) as info:
        fsio.read_input(path, max_bytes)
    return info.value


def test_read_input_returns_bytes_and_the_fstat(tmp_path: Path) -> None:
    """A plain regular file is read whole, with its fstat, and its repr hides the content."""
    marker = os.urandom(8).hex()
    path = tmp_path / "task-1.result.json"
    path.write_text(marker)
    got = fsio.read_input(path, 65536)
    assert got.data == marker.encode()
    assert got.st.st_size == 16 and same_inode(got.st, path)
    assert marker not in repr(got)  # the content never reaches a log line through a repr


def test_read_input_rejects_a_symlink_without_following_it(tmp_path: Path) -> None:
    """A symlink, even to a valid file, is NOT_REGULAR_FILE."""
    real = tmp_path / "real"
    real.write_bytes(b"{}")
    (tmp_path / "link").symlink_to(real)
    err = reason_of(tmp_path / "link")
    assert err.reason is QuarantineReason.NOT_REGULAR_FILE
    assert "symlink" in err.detail


def test_read_input_rejects_a_fifo_without_blocking(tmp_path: Path) -> None:
    """A FIFO with no writer is NOT_REGULAR_FILE, decided without a blocking open."""
    fifo = tmp_path / "task-1.result.json"
    os.mkfifo(fifo)
    err = returns_within(5.0, lambda: fsio.read_input(fifo, 65536))
    assert isinstance(err, UnsafeInputError)
    assert err.reason is QuarantineReason.NOT_REGULAR_FILE
    assert "FIFO" in err.detail


def test_read_input_rejects_a_directory(tmp_path: Path) -> None:
    """A directory is NOT_REGULAR_FILE."""
    (tmp_path / "d").mkdir()
    err = reason_of(tmp_path / "d")
    assert err.reason is QuarantineReason.NOT_REGULAR_FILE
    assert "directory" in err.detail


def test_read_input_rejects_a_unix_socket(tmp_path: Path) -> None:
    """A bound unix socket is NOT_REGULAR_FILE."""
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        err = reason_of(path)
    assert err.reason is QuarantineReason.NOT_REGULAR_FILE
    assert "socket" in err.detail


def test_read_input_rejects_a_character_device() -> None:
    """A device node (/dev/null) is NOT_REGULAR_FILE."""
    err = reason_of(Path("/dev/null"))
    assert err.reason is QuarantineReason.NOT_REGULAR_FILE
    assert "device" in err.detail


def test_read_input_rejects_a_hard_linked_file_without_leaking_content(tmp_path: Path) -> None:
    """A file with a second link is NOT_REGULAR_FILE, and the detail holds no content."""
    marker = os.urandom(8).hex()
    path = tmp_path / "task-1.result.json"
    path.write_text(marker)
    os.link(path, tmp_path / "other")
    err = reason_of(path)
    assert err.reason is QuarantineReason.NOT_REGULAR_FILE
    assert err.detail == "2 hard links"
    assert marker not in str(err)


def test_read_input_decides_oversize_from_fstat_without_reading(tmp_path: Path) -> None:
    """An 8 MiB file against a 64 KiB limit is OVERSIZE at once, its size named in the detail."""
    path = tmp_path / "task-1.result.json"
    with path.open("wb") as fh:
        fh.write(b"\0" * (8 << 20))
    started = time.monotonic()
    err = reason_of(path, 65536)
    assert time.monotonic() - started < 1.0
    assert err.reason is QuarantineReason.OVERSIZE
    assert err.detail == f"{8 << 20} bytes, limit 65536"


def test_read_input_limit_is_inclusive(tmp_path: Path) -> None:
    """A file of exactly max_bytes is read; one byte more is OVERSIZE."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert fsio.read_input(path, 100).data == b"x" * 100
    assert reason_of(path, 99).reason is QuarantineReason.OVERSIZE


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_read_input_stops_at_the_limit_when_the_file_is_larger_than_fstat_says() -> None:
    """A regular file reporting size 0 but yielding more (like growth) is OVERSIZE, not read on."""
    err = reason_of(Path("/proc/self/status"), 16)
    assert err.reason is QuarantineReason.OVERSIZE
    assert err.detail == "grew past 16 bytes"


def test_read_input_of_a_vanished_file_raises_input_vanished(tmp_path: Path) -> None:
    """A file that is gone raises InputVanishedError, also a FileNotFoundError."""
    with pytest.raises(InputVanishedError) as info:
        fsio.read_input(tmp_path / "task-1.result.json", 65536)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.errno == errno.ENOENT


# -- atomic_move ----------------------------------------------------------------


def test_atomic_move_moves_and_fsyncs_both_directories(tmp_path: Path, seam: FsyncSeam) -> None:
    """A move between directories fsyncs the destination dir and then the source dir."""
    src_dir, dst_dir = tmp_path / "a", tmp_path / "b"
    src_dir.mkdir()
    dst_dir.mkdir()
    (src_dir / "f").write_bytes(b"x")
    fsio.atomic_move(src_dir / "f", dst_dir / "g")
    assert (dst_dir / "g").read_bytes() == b"x"
    assert not (src_dir / "f").exists()
    assert [c.is_dir for c in seam.calls] == [True, True]
    assert same_inode(seam.calls[0].st, dst_dir) and same_inode(seam.calls[1].st, src_dir)


def test_atomic_move_within_one_directory_fsyncs_it_once(tmp_path: Path, seam: FsyncSeam) -> None:
    """A rename inside one directory fsyncs that directory exactly once."""
    (tmp_path / "f").write_bytes(b"x")
    fsio.atomic_move(tmp_path / "f", tmp_path / "g")
    assert len(seam.calls) == 1 and same_inode(seam.calls[0].st, tmp_path)


def test_atomic_move_never_overwrites(tmp_path: Path) -> None:
    """An existing destination raises FileExistsError and both files stay as they were."""
    (tmp_path / "src").write_bytes(b"src")
    (tmp_path / "dst").write_bytes(b"dst")
    with pytest.raises(FileExistsError):
        fsio.atomic_move(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "src").read_bytes() == b"src"
    assert (tmp_path / "dst").read_bytes() == b"dst"


def test_atomic_move_never_replaces_an_empty_directory(tmp_path: Path) -> None:
    """Moving a directory onto an empty directory is refused (plain rename would replace it)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    with pytest.raises(FileExistsError):
        fsio.atomic_move(tmp_path / "src", tmp_path / "dst")


def test_fallback_without_noreplace_still_refuses_to_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where renameat2 answers EINVAL, the fallback still moves and still never overwrites."""
    monkeypatch.setattr(fsio, "_renameat2_noreplace", lambda src, dst: errno.EINVAL)
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    with pytest.raises(FileExistsError):
        fsio.atomic_move(tmp_path / "a", tmp_path / "b")
    fsio.atomic_move(tmp_path / "a", tmp_path / "c")
    assert (tmp_path / "c").read_bytes() == b"a"
    assert (tmp_path / "b").read_bytes() == b"b"


def test_atomic_move_moves_links_fifos_and_directories_as_they_are(tmp_path: Path) -> None:
    """A dangling symlink, a FIFO and a directory are moved without following or opening them."""
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inner").write_bytes(b"i")
    for name in ("link", "fifo", "dir"):
        fsio.atomic_move(tmp_path / name, tmp_path / f"{name}.moved")
    assert os.readlink(tmp_path / "link.moved") == str(tmp_path / "nowhere")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo.moved").st_mode)
    assert (tmp_path / "dir.moved" / "inner").read_bytes() == b"i"


def test_atomic_move_of_a_missing_source_is_not_written(tmp_path: Path) -> None:
    """A vanished source raises NotWrittenError carrying ENOENT."""
    with pytest.raises(NotWrittenError) as info:
        fsio.atomic_move(tmp_path / "gone", tmp_path / "dst")
    assert info.value.errno == errno.ENOENT


def test_atomic_move_dir_fsync_failure_is_outcome_unknown(tmp_path: Path, seam: FsyncSeam) -> None:
    """EIO on the directory fsync after a move raises OutcomeUnknownError; the move happened."""
    (tmp_path / "f").write_bytes(b"x")
    seam.fail_on = {"dir"}
    with pytest.raises(OutcomeUnknownError):
        fsio.atomic_move(tmp_path / "f", tmp_path / "g")
    assert (tmp_path / "g").read_bytes() == b"x"


# -- removals and directories ----------------------------------------------------


def test_remove_durably_unlinks_then_fsyncs_the_directory(tmp_path: Path, seam: FsyncSeam) -> None:
    """Removing a file fsyncs its directory and reports True; an absent file reports False."""
    (tmp_path / "f").write_bytes(b"x")
    assert fsio.remove_durably(tmp_path / "f") is True
    assert not (tmp_path / "f").exists()
    assert len(seam.calls) == 1 and same_inode(seam.calls[0].st, tmp_path)
    assert fsio.remove_durably(tmp_path / "f") is False


def test_remove_stale_temps_removes_only_our_regular_temp_files(
    tmp_path: Path, seam: FsyncSeam
) -> None:
    """Only .tmp-* regular files go; other names and non-regular .tmp-* entries stay."""
    for name in (".tmp-task-1.result.json.0a1b", ".tmp-x.ff", "task-2.result.json", "y.tmp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".tmp-dir").mkdir()
    (tmp_path / ".tmp-link").symlink_to(tmp_path / "task-2.result.json")
    removed = fsio.remove_stale_temps(tmp_path)
    assert removed == [".tmp-task-1.result.json.0a1b", ".tmp-x.ff"]
    assert sorted(os.listdir(tmp_path)) == [".tmp-dir", ".tmp-link", "task-2.result.json", "y.tmp"]
    assert len(seam.calls) == 1 and same_inode(seam.calls[0].st, tmp_path)


def test_remove_stale_temps_without_temps_does_not_fsync(tmp_path: Path, seam: FsyncSeam) -> None:
    """A directory with nothing to remove is left alone, not even fsynced."""
    (tmp_path / "task-1.result.json").write_bytes(b"x")
    assert fsio.remove_stale_temps(tmp_path) == []
    assert seam.calls == []


def test_remove_stale_temps_spares_temps_younger_than_min_age(tmp_path: Path) -> None:
    """A temp file a live writer may still rename is kept when it is younger than min_age_s."""
    (tmp_path / ".tmp-fresh.ab").write_bytes(b"x")
    old = tmp_path / ".tmp-old.cd"
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert fsio.remove_stale_temps(tmp_path, min_age_s=60.0) == [".tmp-old.cd"]
    assert os.listdir(tmp_path) == [".tmp-fresh.ab"]


def test_ensure_dir_creates_missing_parents_durably(tmp_path: Path, seam: FsyncSeam) -> None:
    """Each created directory is followed by an fsync of its parent; an existing one is a no-op."""
    target = tmp_path / "a" / "b"
    assert fsio.ensure_dir(target) is True
    assert target.is_dir()
    parents = (tmp_path, tmp_path / "a")
    assert all(same_inode(c.st, p) for c, p in zip(seam.calls, parents, strict=True))
    assert fsio.ensure_dir(target) is False


# -- read_state: our small state files, in directories others can write to -------------


def test_read_state_reads_a_regular_file_up_to_its_limit(tmp_path: Path) -> None:
    """A marker-sized file comes back whole; a longer one only up to ``max_bytes``."""
    path = tmp_path / "task-1.pickup.done"
    path.write_bytes(b'{"verdict":"WAKE_BUILT"}\n')
    assert fsio.read_state(path, 1024) == b'{"verdict":"WAKE_BUILT"}\n'
    assert fsio.read_state(path, 4) == b'{"ve'


def test_read_state_refuses_a_fifo_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """A FIFO with no writer is refused at once (a plain open() would block forever)."""
    fifo = tmp_path / "task-1.pickup.done"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        fsio.read_state(fifo, 1024)


def test_read_state_refuses_a_symlink_and_a_directory(tmp_path: Path) -> None:
    """A symlink is not followed (ELOOP); a directory is not a state file."""
    target = tmp_path / "elsewhere"
    target.write_bytes(b"{}")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OSError) as link:
        fsio.read_state(tmp_path / "link", 1024)
    assert link.value.errno == errno.ELOOP
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError):
        fsio.read_state(tmp_path / "dir", 1024)


def test_read_state_follows_a_symlink_only_when_asked(tmp_path: Path) -> None:
    """The operator's enable flag may be a symlink to a regular file; a FIFO behind one is
    still refused without blocking."""
    (tmp_path / "flag-target").write_bytes(b"true\n")
    (tmp_path / "flag").symlink_to(tmp_path / "flag-target")
    assert fsio.read_state(tmp_path / "flag", 64, follow=True) == b"true\n"
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "to-fifo").symlink_to(tmp_path / "fifo")
    with pytest.raises(OSError, match="not a regular file"):
        fsio.read_state(tmp_path / "to-fifo", 64, follow=True)


def _replace_once(path: Path, data: bytes, *, after_open: bool) -> Callable[[Path], int]:
    """An ``_open_input`` that, on its first call only, renames a new version over ``path``."""
    real = fsio._open_input
    calls: list[Path] = []

    def open_input(p: Path) -> int:
        calls.append(p)
        first = len(calls) == 1
        if first and not after_open:
            _rename_over(path, data)
        fd = real(p)
        if first and after_open:
            _rename_over(path, data)
        return fd

    return open_input


def _rename_over(path: Path, data: bytes) -> None:
    tmp = path.with_name(".new-" + path.name)
    tmp.write_bytes(data)
    os.rename(tmp, path)


@pytest.mark.parametrize("after_open", [False, True], ids=["before-open", "after-open"])
def test_an_atomic_replace_under_the_reader_is_read_again_not_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after_open: bool
) -> None:
    """A rename over the input between lstat and open (or leaving the opened inode 0 links)
    makes the reader read the path again and return the new version, never refuse it."""
    path = tmp_path / "task-1.result.json"
    path.write_bytes(b"old")
    monkeypatch.setattr(fsio, "_open_input", _replace_once(path, b"new", after_open=after_open))
    got = fsio.read_input(path, 1024)
    assert got.data == b"new"
    assert got.st.st_ino == os.stat(path).st_ino


def test_an_input_replaced_at_every_read_is_vanished_not_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename storm that outlasts every re-read ends as a vanished input (its last rename
    brings its own event), never as a quarantine of the replacement."""
    path = tmp_path / "task-1.result.json"
    path.write_bytes(b"v0")
    real = fsio._open_input

    def always_replaced(p: Path) -> int:
        _rename_over(path, b"v")
        return real(p)

    monkeypatch.setattr(fsio, "_open_input", always_replaced)
    with pytest.raises(InputVanishedError):
        fsio.read_input(path, 1024)
    assert path.read_bytes() == b"v"
