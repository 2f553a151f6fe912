"""The bodies of the one-shot commands, each a function returning a typed answer.

``cli`` parses arguments, calls one of these and prints what it returns;
nothing here parses argv or prints. Expected refusals are ``UsageError``;
the exit code of every answer is an ``errors.ExitCode``.

The commands that run results (``scan --once``, ``pickup``, ``retry`` with no
daemon) take the instance lock and wire through ``runtime``, like the daemon.
Disabled is a full no-op for them: no lock file, no ledger, no evidence line.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs

from anu_watchd import fsio, markers, ownership, producer, quarantine, reconcile, status
from anu_watchd.config import Config
from anu_watchd.errors import ExitCode, NoInputError, UsageError
from anu_watchd.locks import InstanceLock, is_held
from anu_watchd.model import TASK_ID_RE, Outcome, iso, utc_now
from anu_watchd.pipeline import Pipeline
from anu_watchd.quarantine import QuarantineEntry
from anu_watchd.receipts import ReceiptWatch
from anu_watchd.runtime import open_pipeline, rules_for
from anu_watchd.secret import SealedKey
from anu_watchd.spool import TaskFiles, is_enabled
from anu_watchd.terminal import shown

Work = Callable[[Pipeline], Awaitable[list[Outcome]]]


@attrs.frozen
class Runs:
    """What a one-shot command that runs results did; ``disabled`` means nothing ran."""

    outcomes: list[Outcome] = attrs.field(factory=list)
    disabled: bool = False


@attrs.frozen
class RetryAnswer:
    """``requested``: a running daemon will take the request; else ``runs`` holds the re-run."""

    requested: bool
    runs: Runs = attrs.field(factory=Runs)


@attrs.frozen
class ReloadAnswer:
    """The running daemon's answer to a reload, or why there was none."""

    code: ExitCode
    message: str

    @property
    def ok(self) -> bool:
        return self.code is ExitCode.OK


# -- files an operator or collector writes --------------------------------------------


def task_files(config: Config, task_id: str) -> TaskFiles:
    """The task's files; UsageError for an id the daemon would never accept."""
    if not TASK_ID_RE.fullmatch(task_id):
        raise UsageError(f"task id must match {TASK_ID_RE.pattern}")
    return TaskFiles(config.spool.events_dir, task_id)


def ack(config: Config, task_id: str) -> Path:
    """Write the task's ``.pickup.acked`` marker (for collectors); its path."""
    files = task_files(config, task_id)
    ownership.assume_owner(config.root)
    doc = {"task_id": task_id, "ts": iso(utc_now())}
    fsio.atomic_write(files.acked, markers.encode_json(doc))
    return files.acked


def enable(config: Config) -> Path:
    """Write the enable flag; its path."""
    ownership.assume_owner(config.root)
    flag = config.spool.enable_flag
    flag.parent.mkdir(parents=True, exist_ok=True)
    fsio.atomic_write(flag, b"true\n")
    return flag


def disable(config: Config) -> Path:
    """Remove the enable flag, durably; its path."""
    ownership.assume_owner(config.root)
    fsio.remove_durably(config.spool.enable_flag)
    return config.spool.enable_flag


def emit(config: Config, doc: dict[str, Any]) -> Path:
    """Check and write a result document as the producer would; the result's path."""
    ownership.assume_owner(config.root, producer=True)
    return producer.write_result(config.spool.events_dir, doc, rules=rules_for(config, None))


# -- quarantine -------------------------------------------------------------------------


def quarantined(config: Config) -> list[QuarantineEntry]:
    return quarantine.list_quarantined(config.spool.quarantine_dir)


def release(config: Config, name: str) -> Path:
    """Move a quarantined entry back, by the name ``quarantine list`` shows or its exact name."""
    sp = config.spool
    # Listed forms are one-to-one (a backslash is doubled), but one entry's exact name can be
    # another's listed form: then refuse.
    named = {e.name for e in quarantined(config) if name in (e.name, shown(e.name))}
    if len(named) > 1:
        raise UsageError(
            f"{name!r} is one entry's name and another's listed form; "
            "give the form `quarantine list` shows"
        )
    exact = named.pop() if named else name
    ownership.assume_owner(config.root)
    try:
        return quarantine.release(sp.quarantine_dir, exact, sp.events_dir)
    except FileNotFoundError:
        raise UsageError(f"no quarantined entry named {name!r}") from None
    except FileExistsError:
        raise UsageError(f"{name!r}: the events directory already has that result") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# -- commands that run results ------------------------------------------------------------


def run_locked(config: Config, key: SealedKey, role: str, work: Work) -> Runs:
    """Hold the instance lock, wire a pipeline and run ``work``; nothing at all when disabled.

    The key was read before (root may read a root-only key file); from here on
    every state file belongs to the spool's owner (ownership.py).
    """
    ownership.assume_owner(config.root)
    if not is_enabled(config.spool.enable_flag):
        return Runs(disabled=True)

    async def wired() -> list[Outcome]:
        async with open_pipeline(config, key) as pipeline:
            return await work(pipeline)

    with InstanceLock(config.spool.lock_file, role=role):
        return Runs(asyncio.run(wired()))


def scan_once(config: Config, key: SealedKey) -> Runs:
    """Recovery, one reconcile pass and one receipt sweep, as a daemon start-up does."""

    async def work(pipeline: Pipeline) -> list[Outcome]:
        outcomes = [
            *await reconcile.recover(pipeline),
            *await reconcile.reconcile(pipeline),
        ]
        await ReceiptWatch().sweep(pipeline.stages)
        return outcomes

    return run_locked(config, key, "scan", work)


def pickup(config: Config, key: SealedKey, path: Path) -> Runs:
    """Run one result file of the events directory through the pipeline."""

    async def work(pipeline: Pipeline) -> list[Outcome]:
        events_dir = config.spool.events_dir
        if path.absolute().parent.resolve() != events_dir.resolve():
            raise UsageError(f"{path} is not in the events directory {events_dir}")
        out = await pipeline.pickup(events_dir / path.name, scan=False)
        return [out] if out is not None else []

    return run_locked(config, key, "pickup", work)


def retry(config: Config, key: Callable[[], SealedKey], task_id: str) -> RetryAnswer:
    """Clear a FIRE_FAILED: a request for the running daemon, else done here at once.

    ``key`` is called only when no daemon runs (the request needs no key).
    """
    files = task_files(config, task_id)
    if is_held(config.spool.lock_file):
        if not os.path.lexists(files.result):
            raise _no_result(files)
        ownership.assume_owner(config.root)
        reconcile.request_retry(files, iso(utc_now()))
        return RetryAnswer(requested=True)

    async def work(pipeline: Pipeline) -> list[Outcome]:
        verdict = await reconcile.consume_retry(pipeline.stages, task_id)
        if verdict is reconcile.RetryVerdict.NOT_FAILED:
            raise UsageError(f"{task_id} is not FIRE_FAILED; nothing to retry")
        if verdict is reconcile.RetryVerdict.NO_RESULT:
            raise _no_result(files)
        out = await pipeline.pickup(files.result, scan=False)
        return [out] if out is not None else []

    return RetryAnswer(requested=False, runs=run_locked(config, key(), "retry", work))


def _no_result(files: TaskFiles) -> NoInputError:
    """A retry needs the result: without it the task would be RETRY forever, never re-run."""
    return NoInputError(f"{files.result}: no such file; {files.task_id} stays FIRE_FAILED")


# -- the running daemon, and the spool as it is ----------------------------------------------


def reload(config: Config | None, *, pid: int | None, timeout_s: float) -> ReloadAnswer:
    """SIGHUP the daemon and wait, bounded, for its answer (``config`` None: see reload.py)."""
    from anu_watchd.reload import request_reload

    code, message = request_reload(config, pid=pid, timeout_s=timeout_s)
    return ReloadAnswer(code, message)


def spool_status(config: Config) -> dict[str, Any]:
    """The document ``status --json`` prints."""
    return status.collect(config)
