"""Quarantine: move rejected input aside with a reason sidecar, and give it back (docs/protocol.md).

A quarantined file is ``<qdir>/<name>.<utc-ts>[-n]`` (``-n`` only when that
name is taken: an earlier quarantined file is never overwritten) beside
``<that name>.reason.json`` = ``{"reason", "detail", "original_path", "ts"}``.
The file is moved, never opened or followed, so symlinks, FIFOs, directories
and hard links are moved as they are. Every change goes through fsio, so it
is durable or raises.

Neither name can match the result glob again (both end after ``.result.json``),
so nothing here feeds back into the pipeline.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from anu_watchd import fsio
from anu_watchd.errors import (
    InputError,
    InputReplacedError,
    InputVanishedError,
    NotWrittenError,
)
from anu_watchd.model import QuarantineReason, iso

SIDECAR_SUFFIX = ".reason.json"
_STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"
_ENTRY_RE = re.compile(r"(?P<base>.+)\.\d{8}T\d{6}\.\d{6}Z(?:-[1-9][0-9]*)?", re.DOTALL)
# Room for ".<stamp>-<n>", the sidecar suffix and margin within NAME_MAX (255 bytes);
# only names that are not valid task ids can be this long, and the sidecar keeps them whole.
_BASE_MAX_BYTES = 200
_MAX_COLLISIONS = 10_000
_SIDECAR_MAX_BYTES = 65_536


def quarantine(
    path: Path,
    qdir: Path,
    reason: QuarantineReason,
    detail: str,
    *,
    now: datetime,
    as_name: str | None = None,
    judged: tuple[int, int] | None = None,
) -> Path:
    """Move ``path`` into ``qdir`` with a reason sidecar; return where it went.

    ``as_name`` replaces the file's own name in the quarantine (and its
    ``original_path``): for a name that itself must not be repeated anywhere,
    such as one holding the sealed key. ``now`` must be timezone-aware.
    Raises InputVanishedError if ``path`` is gone, and fsio's write errors if
    the move or the sidecar is not durable.

    ``judged`` (st_dev, st_ino) is the file that was found bad: the move takes only
    that file. If the path holds another one (a worker's replace landed since) before
    the move, InputReplacedError; if after it, the file is renamed back first.
    """
    fsio.ensure_dir(qdir)
    fsio.check_real_dir(qdir, "quarantine into it")
    stamp = now.astimezone(UTC).strftime(_STAMP_FORMAT)
    _check_judged(path, judged)
    dest = _move_in(path, qdir, stamp, as_name or path.name)
    _check_moved(dest, path, judged)
    original = (
        os.path.abspath(path)
        if as_name is None
        else os.path.join(os.path.abspath(path.parent), as_name)
    )
    doc = {
        "reason": str(reason),
        "detail": detail,
        "original_path": original,
        "ts": iso(now),
    }
    body = json.dumps(doc, sort_keys=True).encode() + b"\n"
    fsio.atomic_write(sidecar_path(dest), body, mode=0o640)
    return dest


def _check_judged(path: Path, judged: tuple[int, int] | None) -> None:
    if judged is None:
        return
    try:
        now = fsio.identity(os.lstat(path))
    except FileNotFoundError as exc:
        raise InputVanishedError(errno.ENOENT, "vanished before quarantine", str(path)) from exc
    if now != judged:
        raise InputReplacedError(f"{path}: replaced after it was judged")


def _check_moved(dest: Path, path: Path, judged: tuple[int, int] | None) -> None:
    """A replace that landed between the check and the move: give the newer file back.

    Renamed back without replacing (a yet newer file at the path stays; then the one
    we took stays here, moved but without a sidecar: ``quarantine list`` shows it).
    """
    if judged is None or fsio.identity(os.lstat(dest)) == judged:
        return
    with contextlib.suppress(FileExistsError):
        fsio.atomic_move(dest, path)
    raise InputReplacedError(f"{path}: replaced while it was moved to quarantine")


def sidecar_path(entry: Path) -> Path:
    return entry.with_name(entry.name + SIDECAR_SUFFIX)


def _move_in(path: Path, qdir: Path, stamp: str, name: str) -> Path:
    base = _clip(name)
    for n in range(_MAX_COLLISIONS):
        dest = qdir / (f"{base}.{stamp}" + (f"-{n}" if n else ""))
        try:
            fsio.atomic_move(path, dest)
        except FileExistsError:
            continue
        except NotWrittenError as exc:
            if exc.errno == errno.ENOENT and not os.path.lexists(path):
                raise InputVanishedError(
                    errno.ENOENT, "vanished before quarantine", str(path)
                ) from exc
            raise
        return dest
    raise FileExistsError(errno.EEXIST, f"{_MAX_COLLISIONS} quarantined files share one stamp")


def _clip(name: str) -> str:
    raw = os.fsencode(name)
    return name if len(raw) <= _BASE_MAX_BYTES else os.fsdecode(raw[:_BASE_MAX_BYTES])


# -- inspection -----------------------------------------------------------------


@attrs.frozen
class QuarantineEntry:
    """One quarantined file as ``quarantine list`` shows it; None where the sidecar is silent."""

    name: str
    reason: str | None
    detail: str | None
    original_path: str | None
    ts: str | None


def list_quarantined(qdir: Path) -> list[QuarantineEntry]:
    """Every quarantined file in ``qdir``, sorted by name; sidecars and temp files are not."""
    try:
        names = os.listdir(qdir)
    except FileNotFoundError:
        return []
    return [_entry(qdir, name) for name in sorted(names) if _ENTRY_RE.fullmatch(name)]


def _entry(qdir: Path, name: str) -> QuarantineEntry:
    doc = _read_sidecar(sidecar_path(qdir / name))

    def field(key: str) -> str | None:
        value = doc.get(key)
        return value if isinstance(value, str) else None

    return QuarantineEntry(
        name, field("reason"), field("detail"), field("original_path"), field("ts")
    )


def _read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar's object, or {} if it is missing or unreadable (never fatal for a listing)."""
    try:
        doc = json.loads(fsio.read_input(path, _SIDECAR_MAX_BYTES).data)
    except (InputError, OSError, ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


# -- release --------------------------------------------------------------------


def release(qdir: Path, name: str, events_dir: Path) -> Path:
    """Move quarantined ``name`` back into ``events_dir`` under its original name.

    Raises ValueError for a name that is not a plain quarantine entry,
    FileNotFoundError if there is no such entry, FileExistsError if the
    original name is taken again in ``events_dir``.
    """
    base = _entry_base(name)
    src = qdir / name
    if not os.path.lexists(src):
        raise FileNotFoundError(errno.ENOENT, "no such quarantined file", str(src))
    dst = events_dir / _original_name(src, base)
    fsio.atomic_move(src, dst)
    fsio.remove_durably(sidecar_path(src))
    return dst


def _entry_base(name: str) -> str:
    """The entry name minus its stamp; ValueError unless ``name`` is a plain entry."""
    if "/" in name or "\0" in name or name in ("", ".", ".."):
        raise ValueError(f"not a plain file name: {name!r}")
    match = _ENTRY_RE.fullmatch(name)
    if match is None or name.endswith(SIDECAR_SUFFIX):
        raise ValueError(f"not a quarantined file name: {name!r}")
    base = match["base"]
    if base in (".", ".."):
        raise ValueError(f"not a quarantined file name: {name!r}")
    return base


def _original_name(src: Path, base: str) -> str:
    """The sidecar's original basename when it agrees with the entry (it survives clipping)."""
    original = _read_sidecar(sidecar_path(src)).get("original_path")
    if not isinstance(original, str):
        return base
    full = os.path.basename(original)
    return full if full not in ("", ".", "..") and _clip(full) == base else base
