"""The exception tree, typed by what the caller must do about each error.

Expected outcomes (a rejected result, a duplicate) are values, not exceptions;
these are for the exceptional::

    AnuWatchdError
    ├── ConfigError            fix the configuration; exit 78 (ExitCode.CONFIG)
    │   └── SecretError        the sealed key file is missing, empty or too open
    ├── LockHeldError          another instance runs; try later, exit 75
    ├── DurabilityError        daemon state could not be made durable: stop, exit 70
    │   ├── LedgerCorruptError a ledger line in the middle does not parse
    │   └── StatePathError     a state path is a symlink, FIFO, directory...: never opened
    ├── WatchLostError         the watched events directory went away: stop, exit 70
    ├── CheckpointError        a ledger checkpoint cannot be used: parse the whole ledger
    ├── WriteError             the producer's atomic write (fsio) failed
    │   ├── NotWrittenError    failed before the rename: nothing is left behind
    │   └── OutcomeUnknownError  the directory fsync failed: it may or may not survive
    ├── InputError             an input file cannot be read safely
    │   ├── UnsafeInputError   quarantine it with .reason
    │   ├── InputReplacedError the path no longer holds the file judged: read it again
    │   └── InputVanishedError it went away between event and open: log, ignore
    ├── WakeError              the sink could not register the wake
    │   ├── TransientWakeError retry with backoff (bounded)
    │   └── PermanentWakeError do not retry: FIRE_FAILED
    ├── WakeFailed             retries exhausted or permanent: FIRE_FAILED (wraps a WakeError)
    ├── EnvelopeError          an envelope is contradictory or cannot fit: FIRE_FAILED
    ├── UsageError             the command line is wrong; exit 64
    ├── NoInputError           a file the command was given does not exist; exit 66
    └── NotOwnerError          this user must not write the spool's state; exit 77

Error messages never carry the sealed key or a result's content. Every
process exit code is an ``ExitCode`` (sysexits), defined here and nowhere else.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from anu_watchd.model import QuarantineReason


class ExitCode(enum.IntEnum):
    """The process exit codes, sysexits(3) values (docs/operations.md, "Exit codes")."""

    OK = 0
    USAGE = 64  # EX_USAGE: the command line is wrong
    NOINPUT = 66  # EX_NOINPUT: a file the command was given does not exist
    SOFTWARE = 70  # EX_SOFTWARE: fatal; a durability failure, a corrupt ledger, the watch lost
    TEMPFAIL = 75  # EX_TEMPFAIL: try again later; the instance lock is held
    NOPERM = 77  # EX_NOPERM: this user must not write the spool's state (ownership.py)
    CONFIG = 78  # EX_CONFIG: invalid configuration or key file; systemd does not restart


class AnuWatchdError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AnuWatchdError, ValueError):
    """The configuration is invalid; ``key`` is the dotted key path at fault."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}" if key else reason)


class SecretError(ConfigError):
    """The sealed key could not be loaded; the message names the file, never the key."""


class LockHeldError(AnuWatchdError):
    """Another process holds the single-instance lock."""


class DurabilityError(AnuWatchdError, OSError):
    """Daemon state could not be written durably; the only safe move is to stop."""


class LedgerCorruptError(DurabilityError):
    """A complete ledger line does not parse; never skipped silently."""

    def __init__(self, path: str, lineno: int, reason: str) -> None:
        self.path = path
        self.lineno = lineno
        self.reason = reason
        super().__init__(f"{path}:{lineno}: corrupt ledger line: {reason}")


class WatchLostError(AnuWatchdError):
    """The watched events directory was deleted, moved or unmounted."""


class CheckpointError(AnuWatchdError, ValueError):
    """The ledger checkpoint cannot be used; the message says why."""
class StatePathError(DurabilityError):
    """A state path is not what the daemon keeps there (a symlink, a FIFO, a directory).

    The message names the path and the operation: ``<path>: cannot <op>: <reason>``.
    """

    def __init__(self, path: object, op: str, reason: str) -> None:
        super().__init__(f"{path}: cannot {op}: {reason}")


class NotOwnerError(AnuWatchdError, PermissionError):
    """This user must not write the spool's state; the message names the user to run as (77)."""


class WriteError(AnuWatchdError, OSError):
    """An atomic write did not complete."""


class NotWrittenError(WriteError):
    """The write failed before the rename; the target is untouched, no temp file remains."""


class OutcomeUnknownError(WriteError):
    """The rename happened but the directory fsync failed; a crash may undo it."""


class InputError(AnuWatchdError):
    """An input file cannot be read safely."""


class UnsafeInputError(InputError):
    """The input must be quarantined for ``reason``.

    ``judged`` is the (st_dev, st_ino) of the file that was judged, when known: the
    quarantine moves the path only while it still holds that file.
    """

    def __init__(
        self, reason: QuarantineReason, detail: str, judged: tuple[int, int] | None = None
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.judged = judged
        super().__init__(f"{reason}: {detail}")


class InputReplacedError(InputError):
    """The path no longer holds the file that was judged: judge what is there now."""


class InputVanishedError(InputError, FileNotFoundError):
    """The input disappeared between the event and the open."""


class WakeError(AnuWatchdError):
    """The sink could not register the wake."""


class TransientWakeError(WakeError):
    """Worth retrying: a timeout, a 5xx, EX_TEMPFAIL.

    ``retry_after_s``: how long the other side asked us to wait (an HTTP
    ``Retry-After``), or None; the retry policy bounds it.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentWakeError(WakeError):
    """Retrying cannot help: a 4xx, a non-zero exit, a malformed answer."""


@attrs.frozen
class WakeFailed(AnuWatchdError):
    """Retries are exhausted, or the error was permanent."""

    error: WakeError
    attempts: int

    def __str__(self) -> str:
        return f"{type(self.error).__name__} after {self.attempts} attempt(s): {self.error}"


class EnvelopeError(AnuWatchdError, ValueError):
    """An envelope is contradictory or cannot be made to fit."""


class UsageError(AnuWatchdError):
    """The command line is wrong."""


class NoInputError(AnuWatchdError):
    """A file named on the command line does not exist (EX_NOINPUT)."""
