"""One result through validate -> quarantine -> dedupe -> wake.

``Pipeline.pickup`` runs a single file and returns its ``Outcome`` (or None
when there was nothing to do: not an input, vanished, already settled in a
scan, driver disabled). Every run that decides something writes exactly one
evidence line and one canonical log line.

Order of effects for a wake, so that a crash anywhere is recoverable from
the ledger alone: ledger CLAIMED (durable) -> sink -> ledger DONE/FAILED
(durable) -> marker -> envelope file. Markers and envelopes are projections;
recovery rebuilds them. A failure to write any of them is a DurabilityError
and stops the daemon (SPEC section 7).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import attrs
import structlog

from anu_watchd import envelope, fsio, markers, quarantine
from anu_watchd.appendlog import AppendLog
from anu_watchd.config import Config
from anu_watchd.errors import (
    DurabilityError,
    EnvelopeError,
    InputVanishedError,
    UnsafeInputError,
)
from anu_watchd.escalate import escalate
from anu_watchd.ledger import Ledger
from anu_watchd.markers import FileStamp, TaskFiles
from anu_watchd.metrics import Metrics
from anu_watchd.model import (
    TASK_ID_RE,
    FourTuple,
    LedgerEntry,
    LedgerState,
    Outcome,
    QuarantineReason,
    Rejected,
    Result,
    Verdict,
    task_id_from_name,
)
from anu_watchd.projections import ProjectionWriter
from anu_watchd.sinks.base import RetryPolicy, Sink, Sleep, WakeFailed, register_with_retries
from anu_watchd.slots import Slots
from anu_watchd.validate import Rules, validate

_log = structlog.get_logger("anu_watchd.pipeline")
# What a file whose name holds the sealed key is called everywhere after it is seen.
KEY_IN_NAME = "key-literal-in-name"
# Pipeline runs in flight at once (daemon workers, a scan's fan-out). Sink calls are bounded
# separately by wake.concurrency; more runs than sink slots lets the durable writes of many
# runs share group commits (docs/design.md, "Runs and wake slots").
RUNS_IN_FLIGHT = 32
T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``: the one timestamp format on disk."""
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    # isoformat is several times cheaper than strftime, and this runs ~5 times a wake.
    return dt.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


@attrs.frozen
class Stages:
    """Everything one run needs, wired once by the daemon or the CLI; swapped on reload."""

    config: Config
    ledger: Ledger
    evidence: AppendLog
    sink: Sink
    rules: Rules
    clock: Callable[[], datetime] = utc_now
    sleep: Sleep = asyncio.sleep
    projections: ProjectionWriter = attrs.field(factory=ProjectionWriter)
    metrics: Metrics = attrs.field(factory=Metrics)


def is_enabled(flag: Path) -> bool:
    """The operator's enable flag: present and exactly ``true`` (whitespace aside)."""
    try:
        # The operator's file, which may be a symlink; never a FIFO that blocks the loop.
        return fsio.read_state(flag, 64, follow=True).strip() == b"true"
    except OSError:
        return False


def is_result_name(name: str, glob: str) -> bool:
    """Only names matching the result glob are inputs; our own temp files never are."""
    return fnmatch.fnmatchcase(name, glob) and not fsio.is_temp_name(name)


class _Run:
    """One run: the stages it started with (a reload never changes them mid-run), id, clock."""

    def __init__(self, st: Stages, path: Path, task_id: str | None) -> None:
        self.st = st
        self.run_id = uuid.uuid4().hex[:16]
        self.t0 = time.perf_counter()
        self.renamed_ns: int | None = None  # the result's ctime: its rename, for the latency
        self.log = _log.bind(run_id=self.run_id, path=str(path), task_id=task_id)

    @property
    def duration_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000.0


class Pipeline:
    """Runs results through the stages; at most one run per task id at a time."""

    def __init__(self, stages: Stages) -> None:
        self._stages = stages
        self._locks: dict[str, list[Any]] = {}
        self._slots = Slots(stages.config.wake.concurrency)

    @property
    def stages(self) -> Stages:
        return self._stages

    @stages.setter
    def stages(self, new: Stages) -> None:
        """Swap the stages (a reload); a new ``wake.concurrency`` binds every waiting call."""
        self._slots.resize(new.config.wake.concurrency)
        self._stages = new

    # -- entry points -----------------------------------------------------------

    async def pickup(self, path: Path, *, scan: bool = False) -> Outcome | None:
        """Run one file; ``scan=True`` skips, silently and unhashed, a file already settled."""
        st = self.stages
        if not is_enabled(st.config.spool.enable_flag):
            _log.debug("pickup_disabled", path=str(path))
            return None
        if not is_result_name(path.name, st.config.spool.result_glob):
            return None
        if _name_holds_key(path.name, st.rules.key):
            return await self._reject_key_in_name(path)
        task_id = task_id_from_name(path.name)
        async with self.task_lock(task_id or path.name):
            if task_id is None:
                return await self._reject_name(path)
            return await self._run(path, task_id, scan=scan)

    # -- the stages -------------------------------------------------------------

    async def _run(self, path: Path, task_id: str, *, scan: bool) -> Outcome | None:
        run = _Run(self.stages, path, task_id)
        st = run.st
        files = TaskFiles(path.parent, task_id)
        try:
            # On the loop, not in a thread: a just-written result of a few KiB is in the page
            # cache, opened O_NONBLOCK, and a thread hop costs more than the read (~0.14 ms).
            inp = _read_unless_settled(path, files, st.config.spool.max_result_bytes, scan)
        except InputVanishedError:
            run.log.info("result_vanished")
            return None
        except UnsafeInputError as exc:
            return await self._quarantine(
                run, path, task_id, None, Rejected(exc.reason, exc.detail)
            )
        except OSError as exc:
            rej = Rejected(QuarantineReason.UNREADABLE, f"cannot read: {exc.strerror or exc}")
            return await self._quarantine(run, path, task_id, None, rej)
        if inp is None:
            return None
        run.renamed_ns = inp.st.st_ctime_ns
        sha = hashlib.sha256(inp.data).hexdigest()
        run.log = run.log.bind(sha256=sha)
        checked = validate(inp.data, task_id=task_id, rules=st.rules)
        if isinstance(checked, Rejected):
            return await self._quarantine(run, path, task_id, sha, checked)
        return await self._dedupe_and_wake(run, path, checked, sha, FileStamp.of(inp.st))

    async def _reject_name(self, path: Path) -> Outcome | None:
        run = _Run(self.stages, path, None)
        detail = f"file name's task id does not match {TASK_ID_RE.pattern}"
        return await self._quarantine(
            run, path, None, None, Rejected(QuarantineReason.SCHEMA, detail)
        )

    async def _reject_key_in_name(self, path: Path) -> Outcome | None:
        """The name itself holds the key: quarantine under a neutral name, log no name."""
        run = _Run(self.stages, path.parent / KEY_IN_NAME, None)
        rej = Rejected(QuarantineReason.KEY_LITERAL, "the sealed key appears in the file name")
        return await self._quarantine(run, path, None, None, rej, as_name=KEY_IN_NAME)

    async def _quarantine(
        self,
        run: _Run,
        path: Path,
        task_id: str | None,
        sha: str | None,
        rej: Rejected,
        as_name: str | None = None,
    ) -> Outcome | None:
        qdir = run.st.config.spool.quarantine_dir
        now = run.st.clock()
        try:
            dest = await _durable(
                quarantine.quarantine, path, qdir, rej.reason, rej.detail, now=now, as_name=as_name
            )
        except InputVanishedError:
            run.log.info("result_vanished")
            return None
        run.log.warning(
            "result_quarantined",
            reason=str(rej.reason),
            detail=rej.detail,
            quarantined_as=dest.name,
        )
        shown = path if as_name is None else path.parent / as_name
        out = self._outcome(
            run,
            shown,
            task_id,
            Verdict.QUARANTINE,
            sha=sha,
            reason=str(rej.reason),
            error=rej.detail,
        )
        return await self._finish(run, out)

    async def _dedupe_and_wake(
        self, run: _Run, path: Path, result: Result, sha: str, stamp: FileStamp
    ) -> Outcome:
        cfg = run.st.config
        four = FourTuple(result.task_id, sha, cfg.spool.collector)
        key = four.idempotency_key
        run.log = run.log.bind(idempotency_key=key)
        files = TaskFiles(path.parent, result.task_id)
        await self._clear_way(run, files)
        prior = run.st.ledger.get(key)
        if prior is not None and prior.state.terminal:
            error = await self._repair_marker(files, prior, stamp)
            await self._repair_envelope(run, files, prior, result, sha, error)
            verdict_prior = "WAKE_BUILT" if prior.state is LedgerState.DONE else "FIRE_FAILED"
            out = self._outcome(
                run,
                path,
                result.task_id,
                Verdict.PICKUP_SKIP,
                sha=sha,
                reason=f"already {verdict_prior}",
                schedule_id=prior.schedule_id,
                key=key,
            )
            return await self._finish(run, out)
        env = envelope.build(
            result,
            result_path=str(path),
            sha256=sha,
            idempotency_key=key,
            delivery_method=run.st.sink.delivery_method,
        )
        if not cfg.wake.activated:
            return await self._not_activated(run, path, result, sha, key, env)
        attempt = prior.attempt + 1 if prior is not None else 1
        if prior is None and files.acked.exists():
            # A new wake of this task (new bytes): an ack already here answered an earlier one.
            # Checked inline (one lstat): a thread hop on every wake's latency path costs more.
            await _durable(fsio.remove_durably, files.acked)
        claimed = self._entry(run, four, LedgerState.CLAIMED, attempt)
        await run.st.ledger.record(claimed)
        try:
            body = envelope.encode(env)
        except EnvelopeError as exc:
            failed = await self._settle(run, claimed, LedgerState.FAILED)
            return await self._fire_failed(run, files, failed, env, stamp, str(exc), 0)
        terminal, attempts, error = await self._wake(run, claimed, body)
        if error is not None:
            return await self._fire_failed(run, files, terminal, env, stamp, error, attempts)
        return await self._wake_built(run, files, terminal, env, stamp, attempts)

    async def _clear_way(self, run: _Run, files: TaskFiles) -> None:
        """Quarantine a directory planted where this task's markers or envelope go.

        We never make one there, and a rename or unlink onto a directory fails (EISDIR):
        left in place it would stop the daemon at every start. Other kinds of file are
        simply replaced by the rename. Four lstats a wake, on the loop: ~2 us each.
        """
        for path in (files.done, files.failed, files.envelope, files.acked):
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    continue
            except OSError:
                continue
            dest = await _durable(
                quarantine.quarantine,
                path,
                run.st.config.spool.quarantine_dir,
                QuarantineReason.NOT_REGULAR_FILE,
                "a directory where the daemon writes this task's state",
                now=run.st.clock(),
            )
            run.log.warning(
                "state_path_quarantined", state_path=path.name, quarantined_as=dest.name
            )

    async def _wake(
        self, run: _Run, claimed: LedgerEntry, body: bytes
    ) -> tuple[LedgerEntry, int, str | None]:
        """Register with retries and record the outcome: (DONE or FAILED entry, attempts, error).

        The wake slot is held until the outcome is durable, so a crash repeats at most
        ``wake.concurrency`` sink calls however many runs are in flight (docs/durability.md).
        """
        wake = run.st.config.wake
        policy = RetryPolicy(wake.attempts, wake.backoff_initial_s, wake.backoff_max_s)
        async with self._slots:
            try:
                schedule_id, attempts = await register_with_retries(
                    run.st.sink,
                    body,
                    idempotency_key=claimed.key,
                    policy=policy,
                    sleep=run.st.sleep,
                    on_retry=lambda n, e: run.log.warning("wake_retrying", attempt=n, error=str(e)),
                )
            except WakeFailed as failed:
                entry = await self._settle(run, claimed, LedgerState.FAILED)
                return entry, failed.attempts, str(failed.error)
            return await self._settle(run, claimed, LedgerState.DONE, schedule_id), attempts, None

    async def _settle(
        self, run: _Run, claimed: LedgerEntry, state: LedgerState, schedule_id: str | None = None
    ) -> LedgerEntry:
        """Record the terminal ledger line of a claimed wake (durable when this returns)."""
        entry = attrs.evolve(claimed, state=state, schedule_id=schedule_id, ts=iso(run.st.clock()))
        await run.st.ledger.record(entry)
        return entry

    async def _not_activated(
        self, run: _Run, path: Path, result: Result, sha: str, key: str, env: dict[str, Any]
    ) -> Outcome:
        final = envelope.not_activated(env)
        try:
            envelope.encode(final)
        except EnvelopeError as exc:
            run.log.error("envelope_invalid", error=str(exc))
        run.log.info("wake_not_activated", envelope=final)
        out = self._outcome(
            run,
            path,
            result.task_id,
            Verdict.FIRE_NOT_ACTIVATED,
            sha=sha,
            reason="wake.activated is false",
            key=key,
        )
        return await self._finish(run, out)

    async def _wake_built(
        self,
        run: _Run,
        files: TaskFiles,
        done: LedgerEntry,
        env: dict[str, Any],
        stamp: FileStamp,
        attempts: int,
    ) -> Outcome:
        now, schedule_id = done.ts, done.schedule_id or ""
        doc = markers.marker_doc(done, attempts=attempts, ts=now, stamp=stamp)
        final = envelope.registered(env, schedule_id=schedule_id, registered_at=now)
        body = _encoded(run, final)
        writes = [(files.done, markers.encode_json(doc))]
        if body is not None:
            writes.append((files.envelope, body))
        # Marker, then envelope, then the stale failed marker, group-committed with other runs.
        await run.st.projections.write(writes, remove=[files.failed])
        if body is not None:
            await self._push_update(run, final, body)
        out = self._outcome(
            run,
            files.result,
            files.task_id,
            Verdict.WAKE_BUILT,
            sha=done.sha256,
            wake_built=True,
            schedule_id=schedule_id,
            attempts=attempts,
            key=done.key,
        )
        return await self._finish(run, out)

    async def _fire_failed(
        self,
        run: _Run,
        files: TaskFiles,
        failed: LedgerEntry,
        env: dict[str, Any],
        stamp: FileStamp,
        error: str,
        attempts: int,
    ) -> Outcome:
        now = failed.ts
        doc = markers.marker_doc(failed, attempts=attempts, ts=now, error=error, stamp=stamp)
        await _durable(markers.write_json, files.failed, doc)
        await self._store_envelope(files, _encoded(run, envelope.register_failed(env, error=error)))
        run.log.critical("wake_failed", error=error, attempt=attempts)
        cfg = run.st.config.wake
        async with self._slots:  # wake.concurrency bounds every call out, escalations too
            await escalate(
                cfg.escalate_argv,
                {
                    "task_id": files.task_id,
                    "verdict": "FIRE_FAILED",
                    "reason": "wake failed",
                    "error": error,
                    "attempts": attempts,
                    "idempotency_key": failed.key,
                    "ts": now,
                },
                timeout_s=cfg.timeout_s,
            )
        out = self._outcome(
            run,
            files.result,
            files.task_id,
            Verdict.FIRE_FAILED,
            sha=failed.sha256,
            reason="wake failed",
            attempts=attempts,
            error=error,
            key=failed.key,
        )
        return await self._finish(run, out)

    # -- helpers ----------------------------------------------------------------

    async def _store_envelope(self, files: TaskFiles, body: bytes | None) -> None:
        if body is not None:
            await _durable(fsio.atomic_write, files.envelope, body)

    async def _push_update(self, run: _Run, env: dict[str, Any], body: bytes) -> None:
        sink = run.st.sink
        if not sink.supports_update:
            return
        async with self._slots:  # an update is a call out too: wake.concurrency bounds it
            try:
                await sink.update(body, idempotency_key=str(env.get("idempotency_key")))
            except Exception as exc:  # an update is best effort; the wake is registered
                run.log.warning("envelope_update_failed", error=str(exc))

    async def _repair_marker(
        self, files: TaskFiles, entry: LedgerEntry, stamp: FileStamp
    ) -> str | None:
        """Rewrite a missing, unreadable or stale marker from the ledger; return its error."""
        path = files.marker_for(entry.state)
        doc = await asyncio.to_thread(markers.read_json, path)
        # Only a marker of this very wake lends its fields, and only well-typed ones: the file
        # may be another wake's, or planted ({"attempts": {}} must not stop the daemon).
        own = doc if doc is not None and doc.get("idempotency_key") == entry.key else {}
        error = own.get("error") if isinstance(own.get("error"), str) else None
        if own and markers.stamp_matches(own, stamp):
            return error
        attempts = own.get("attempts")
        if type(attempts) is not int or attempts < 1:
            attempts = entry.attempt
        fresh = markers.marker_doc(entry, attempts=attempts, ts=entry.ts, error=error, stamp=stamp)
        await _durable(markers.write_json, path, fresh)
        _log.info("marker_repaired", task_id=files.task_id, marker=path.name)
        return error

    async def _repair_envelope(
        self,
        run: _Run,
        files: TaskFiles,
        entry: LedgerEntry,
        result: Result,
        sha: str,
        error: str | None,
    ) -> None:
        """Rebuild a missing or foreign envelope file from the ledger (it is a projection).

        The receipt axis comes back as RECEIVED if an ack is present, else UNCONFIRMED:
        a TIMED_OUT lost with the file is re-decided by the next receipt sweep.
        """
        doc = await asyncio.to_thread(markers.read_json, files.envelope)
        if doc is not None and doc.get("idempotency_key") == entry.key:
            return
        env = envelope.build(
            result,
            result_path=str(files.result),
            sha256=sha,
            idempotency_key=entry.key,
            delivery_method=run.st.sink.delivery_method,
        )
        if entry.state is LedgerState.DONE and entry.schedule_id:
            env = envelope.registered(env, schedule_id=entry.schedule_id, registered_at=entry.ts)
            if await asyncio.to_thread(files.acked.exists):
                env = envelope.received(env)
        else:
            env = envelope.register_failed(env, error=error or "wake failed")
        await self._store_envelope(files, _encoded(run, env))
        run.log.info("envelope_repaired")

    def _entry(self, run: _Run, four: FourTuple, state: LedgerState, attempt: int) -> LedgerEntry:
        return LedgerEntry(
            key=four.idempotency_key,
            task_id=four.task_id,
            sha256=four.sha256,
            collector=four.collector,
            kind=four.kind,
            state=state,
            attempt=attempt,
            ts=iso(run.st.clock()),
        )

    def _outcome(
        self,
        run: _Run,
        path: Path,
        task_id: str | None,
        verdict: Verdict,
        *,
        sha: str | None = None,
        reason: str | None = None,
        wake_built: bool = False,
        schedule_id: str | None = None,
        attempts: int = 0,
        error: str | None = None,
        key: str | None = None,
    ) -> Outcome:
        return Outcome(
            run_id=run.run_id,
            path=str(path),
            task_id=task_id,
            verdict=verdict,
            ts=iso(run.st.clock()),
            sha256=sha,
            reason=reason,
            wake_built=wake_built,
            schedule_id=schedule_id,
            attempts=attempts,
            duration_ms=run.duration_ms,
            error=error,
            idempotency_key=key,
        )

    async def _finish(self, run: _Run, out: Outcome) -> Outcome:
        await run.st.evidence.append(out.evidence())
        run.st.metrics.finished(out, run.renamed_ns)
        # One line a run, also for a wake (its schedule id is here): each line costs ~0.1 ms.
        run.log.info(
            "pickup_finished",
            verdict=str(out.verdict),
            reason=out.reason,
            schedule_id=out.schedule_id,
            duration_ms=round(out.duration_ms, 3),
            attempts=out.attempts,
        )
        return out

    @asynccontextmanager
    async def task_lock(self, name: str) -> AsyncIterator[None]:
        entry = self._locks.get(name)
        if entry is None:
            entry = self._locks[name] = [asyncio.Lock(), 0]
        entry[1] += 1  # holders and waiters; the lock is dropped when none remain
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[name]


def _settled(files: TaskFiles) -> bool:
    """True when a done/failed marker records exactly the current result file."""
    try:
        st = files.result.lstat()
    except OSError:
        return False
    stamp = FileStamp.of(st)
    return any(
        markers.stamp_matches(markers.read_json(p), stamp) for p in (files.done, files.failed)
    )


def _encoded(run: _Run, env: dict[str, Any]) -> bytes | None:
    try:
        return envelope.encode(env)
    except EnvelopeError as exc:
        # Never write an envelope that fails the validator; the marker already settles it.
        run.log.error("envelope_invalid", error=str(exc))
        return None


def _read_unless_settled(
    path: Path, files: TaskFiles, max_bytes: int, scan: bool
) -> fsio.InputFile | None:
    """A scan's settled check (an lstat and up to two small marker reads), then the read."""
    if scan and _settled(files):
        return None
    return fsio.read_input(path, max_bytes)


def _name_holds_key(name: str, key: bytes | None) -> bool:
    return bool(key) and key is not None and key in os.fsencode(name)


async def _durable(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking state write off the loop; any write failure is fatal (SPEC section 7)."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except (DurabilityError, InputVanishedError):
        raise
    except OSError as exc:  # fsio.WriteError included
        raise DurabilityError(exc.errno, f"state write failed: {exc.strerror}") from exc
