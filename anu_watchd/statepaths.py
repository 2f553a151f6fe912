"""The spool's state paths checked against the filesystem, once the config is parsed.

Every command loads the config before it touches a state path, so these
checks turn a wrong path into one line naming the config key and exit 78,
instead of a crash (a regular file where a directory goes), a hang (a FIFO
ledger or evidence log) or writes through a planted symlink::

    a state directory reached through a symlink   refused unless the config
                                                  names the resolved path
    a state directory that is not a directory     refused
    a state file that is a symlink, FIFO, ...     refused
    quarantine_dir on another filesystem than     refused: a quarantine move is a
    events_dir                                    rename, atomic only within one

Paths that do not exist yet pass: the daemon creates them. Paths this user may
not look at pass too (a worker running ``emit`` cannot search the state
directory): a command that needs one fails where it opens it (exit 77). What is planted
after this check is caught where the file is opened (``fsio.open_state``,
exit 70). docs/operations.md lists the refusals.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from anu_watchd.config import SpoolConfig
from anu_watchd.errors import ConfigError
from anu_watchd.fsio import describe_mode


def check_state_paths(spool: SpoolConfig) -> None:
    """Raise ConfigError (key and reason) for the first state path that is wrong."""
    for key, directory, resolved in _directories(spool):
        if resolved:
            _check_resolved(key, directory)
        _check_directory(key, directory)
    for key, file in _files(spool):
        _check_file(key, file)
    _check_one_filesystem(spool)


def _directories(spool: SpoolConfig) -> Iterator[tuple[str, Path, bool]]:
    """(key, directory, must be named resolved); the enable flag is the operator's own."""
    yield "spool.events_dir", spool.events_dir, True
    yield "spool.quarantine_dir", spool.quarantine_dir, True
    yield "spool.ledger", spool.ledger.parent, True
    yield "spool.evidence_log", spool.evidence_log.parent, True
    yield "spool.lock_file", spool.lock_file.parent, True
    yield "spool.enable_flag", spool.enable_flag.parent, False


def _files(spool: SpoolConfig) -> Iterator[tuple[str, Path]]:
    yield "spool.ledger", spool.ledger
    yield "spool.evidence_log", spool.evidence_log
    yield "spool.lock_file", spool.lock_file


def _check_resolved(key: str, directory: Path) -> None:
    real = os.path.realpath(directory)
    if real != os.path.normpath(directory):
        raise ConfigError(
            key,
            f"{directory} goes through a symlink (it resolves to {real}); "
            "state is never kept behind a link: name the resolved path",
        )


def _check_directory(key: str, directory: Path) -> None:
    existing = _nearest_existing(directory)
    found = _stat(key, existing)
    if found is None:
        return
    mode = found.st_mode
    if not stat.S_ISDIR(mode):
        raise ConfigError(key, f"{existing} is a {describe_mode(mode)}, not a directory")


def _check_file(key: str, file: Path) -> None:
    try:
        mode = os.lstat(file).st_mode
    except FileNotFoundError:
        return
    except PermissionError:
        return  # this user may not look here (a worker): whoever opens it will say so (77)
    except OSError as exc:
        raise ConfigError(key, f"{file}: cannot stat: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(key, f"{file} is a {describe_mode(mode)}, not a regular file")


def _check_one_filesystem(spool: SpoolConfig) -> None:
    events = _stat("spool.events_dir", _nearest_existing(spool.events_dir))
    quarantine = _stat("spool.quarantine_dir", _nearest_existing(spool.quarantine_dir))
    if events is not None and quarantine is not None and events.st_dev != quarantine.st_dev:
        raise ConfigError(
            "spool.quarantine_dir",
            f"{spool.quarantine_dir} is on another filesystem than spool.events_dir "
            f"{spool.events_dir}; a quarantine move is a rename, atomic only within one "
            "filesystem: put both on the same one",
        )


def _stat(key: str, path: Path) -> os.stat_result | None:
    """``path``'s stat; None where this user may not look (a worker, for the state dir)."""
    try:
        return os.stat(path)
    except PermissionError:
        return None  # whoever opens it will say so (exit 77, ownership.py)
    except OSError as exc:  # a dangling symlink, a loop
        raise ConfigError(key, f"{path}: cannot stat: {exc.strerror or exc}") from None


def _nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its closest existing ancestor."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path("/")
