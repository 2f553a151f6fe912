"""Command line: argument parsing and exit codes only; the work is elsewhere.

Exit codes (sysexits): 0 ok, 64 usage, 70 fatal internal or durability
failure, 75 temporary (the instance lock is held), 78 configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import attrs

from anu_watchd import __version__, fsio, producer, quarantine, status
from anu_watchd.config import Config, config_path, load_config
from anu_watchd.errors import (
    AnuWatchdError,
    ConfigError,
    DurabilityError,
    LockHeldError,
    NotWrittenError,
    OutcomeUnknownError,
    UsageError,
)
from anu_watchd.locks import InstanceLock
from anu_watchd.markers import TaskFiles, encode_json
from anu_watchd.model import TASK_ID_RE, Outcome
from anu_watchd.pipeline import is_enabled
from anu_watchd.runtime import open_pipeline, rules_for

EX_OK, EX_USAGE, EX_SOFTWARE, EX_TEMPFAIL, EX_CONFIG = 0, 64, 70, 75, 78

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def _config(args: argparse.Namespace) -> Config:
    return load_config(config_path(args.config))


def _say(msg: str) -> None:
    print(f"anu-watchd: {msg}", file=sys.stderr)


def _configure_logs(config: Config, key: Any) -> None:
    from anu_watchd import logs

    # One-shot commands print results on stdout; their logs go to stderr.
    logs.configure(level=config.log.level, fmt=config.log.format, key=key, stream=sys.stderr)


def _load_key(config: Config) -> Any:
    from anu_watchd.secret import load_key

    return load_key(config.key.file, root=config.root)


# -- commands -----------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from anu_watchd.daemon import run_daemon

    return run_daemon(config_path(args.config))


def _print_outcome(out: Outcome, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "path": out.path,
                    "task_id": out.task_id,
                    "verdict": str(out.verdict),
                    "reason": out.reason,
                },
                ensure_ascii=False,
            ),
            flush=True,
        )
    else:
        print(f"{out.task_id or out.path}\t{out.verdict}\t{out.reason or ''}".rstrip(), flush=True)


def _one_shot(args: argparse.Namespace, role: str, work: Callable[..., Any]) -> int:
    config = _config(args)
    key = _load_key(config)
    _configure_logs(config, key)
    if not is_enabled(config.spool.enable_flag):
        # Disabled is a full no-op: no lock file, no ledger, no evidence line.
        _say(f"the driver is disabled ({config.spool.enable_flag} is absent or not `true`)")
        return EX_OK
    with InstanceLock(config.spool.lock_file, role=role):
        outcomes: list[Outcome] = asyncio.run(work(config, key))
    for out in outcomes:
        _print_outcome(out, args.json)
    return EX_OK


def cmd_scan(args: argparse.Namespace) -> int:
    from anu_watchd.receipts import ReceiptWatch
    from anu_watchd.scan import reconcile, recover

    async def work(config: Config, key: Any) -> list[Outcome]:
        async with open_pipeline(config, key) as pipeline:
            outcomes = [*await recover(pipeline), *await reconcile(pipeline)]
            await ReceiptWatch().sweep(pipeline)
            return outcomes

    if not args.once:
        raise UsageError("scan needs --once (the daemon is `anu-watchd run`)")
    return _one_shot(args, "scan", work)


def cmd_pickup(args: argparse.Namespace) -> int:
    path = Path(args.path)

    async def work(config: Config, key: Any) -> list[Outcome]:
        if path.absolute().parent.resolve() != config.spool.events_dir.resolve():
            raise UsageError(f"{path} is not in the events directory {config.spool.events_dir}")
        async with open_pipeline(config, key) as pipeline:
            out = await pipeline.pickup(config.spool.events_dir / path.name, scan=False)
        if out is None:
            _say(f"{path}: nothing done (driver disabled, not a result name, or vanished)")
        return [out] if out is not None else []

    return _one_shot(args, "pickup", work)


def cmd_emit(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.json == "-":
        try:
            doc = json.loads(sys.stdin.buffer.read())
        except ValueError as exc:
            raise UsageError(f"stdin is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise UsageError("stdin must hold a JSON object")
    elif args.json is not None:
        raise UsageError("--json takes only '-' (the document on stdin)")
    else:
        missing = [
            f"--{n.replace('_', '-')}"
            for n in ("task_id", "status", "executor", "summary")
            if getattr(args, n) is None
        ]
        if missing:
            raise UsageError(f"missing {', '.join(missing)} (or use --json -)")
        doc = producer.result_document(
            task_id=args.task_id,
            status=args.status,
            executor=args.executor,
            summary=args.summary,
            collector=args.collector or config.spool.collector,
            report_path=args.report_path,
            commit=args.commit,
        )
    rules = rules_for(config, None)
    path = producer.write_result(config.spool.events_dir, doc, rules=rules)
    print(path)
    return EX_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    print(f"ok: {config.source}")
    return EX_OK


def cmd_enable(args: argparse.Namespace) -> int:
    flag = _config(args).spool.enable_flag
    flag.parent.mkdir(parents=True, exist_ok=True)
    fsio.atomic_write(flag, b"true\n")
    print(f"enabled: {flag}")
    return EX_OK


def cmd_disable(args: argparse.Namespace) -> int:
    flag = _config(args).spool.enable_flag
    fsio.remove_durably(flag)
    print(f"disabled: {flag} removed")
    return EX_OK


def cmd_status(args: argparse.Namespace) -> int:
    doc = status.collect(_config(args))
    print(json.dumps(doc, ensure_ascii=False) if args.json else status.render(doc))
    return EX_OK


def cmd_quarantine(args: argparse.Namespace) -> int:
    spool = _config(args).spool
    entries = quarantine.list_quarantined(spool.quarantine_dir)
    if args.action == "list":
        for e in entries:
            if args.json:
                # ASCII escapes: a name's undecodable bytes are lone surrogates here.
                print(json.dumps(attrs.asdict(e)))
            else:
                fields = (e.name, e.reason or "?", e.ts or "", e.detail or "")
                print("\t".join(_shown(f) for f in fields))
        return EX_OK
    if not args.name:
        raise UsageError("quarantine release needs NAME (as `quarantine list` shows it)")
    # NAME as listed, or exactly (from --json). Listed forms are one-to-one (a backslash is
    # doubled), but one entry's exact name can be another's listed form: then refuse.
    named = {e.name for e in entries if args.name in (e.name, _shown(e.name))}
    if len(named) > 1:
        raise UsageError(
            f"{args.name!r} is one entry's name and another's listed form; "
            "give the form `quarantine list` shows"
        )
    name = named.pop() if named else args.name
    try:
        dest = quarantine.release(spool.quarantine_dir, name, spool.events_dir)
    except FileNotFoundError:
        raise UsageError(f"no quarantined entry named {args.name!r}") from None
    except FileExistsError:
        raise UsageError(f"{args.name!r}: the events directory already has that result") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"released: {dest}")
    return EX_OK


def _shown(text: str) -> str:
    return quarantine.shown(text)  # one home for terminal escaping (show TASK uses it too)


def cmd_show(args: argparse.Namespace) -> int:
    from anu_watchd import story

    if not TASK_ID_RE.fullmatch(args.task):
        raise UsageError(f"task id must match {TASK_ID_RE.pattern}")
    doc = story.collect(_config(args), args.task)
    print(json.dumps(doc) if args.json else story.render(doc))  # ASCII: names may not be UTF-8
    return EX_OK


def cmd_ack(args: argparse.Namespace) -> int:
    config = _config(args)
    if not TASK_ID_RE.fullmatch(args.task):
        raise UsageError(f"task id must match {TASK_ID_RE.pattern}")
    files = TaskFiles(config.spool.events_dir, args.task)
    ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fsio.atomic_write(files.acked, encode_json({"task_id": args.task, "ts": ts}))
    print(f"acked: {files.acked}")
    return EX_OK


def cmd_retry(args: argparse.Namespace) -> int:
    from anu_watchd.locks import is_held
    from anu_watchd.retry import consume_retry, request_retry

    config = _config(args)
    if not TASK_ID_RE.fullmatch(args.task):
        raise UsageError(f"task id must match {TASK_ID_RE.pattern}")
    files = TaskFiles(config.spool.events_dir, args.task)
    if is_held(config.spool.lock_file):
        request_retry(files, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        print(f"retry requested: the running daemon will re-run {args.task}")
        return EX_OK

    async def work(config: Config, key: Any) -> list[Outcome]:
        async with open_pipeline(config, key) as pipeline:
            if not await consume_retry(pipeline.stages, args.task):
                raise UsageError(f"{args.task} is not FIRE_FAILED; nothing to retry")
            out = await pipeline.pickup(files.result, scan=False)
        return [out] if out is not None else []

    return _one_shot(args, "retry", work)


def cmd_reload(args: argparse.Namespace) -> int:
    from anu_watchd.reload import request_reload

    config = _config(args)
    ok, message = request_reload(config, pid=args.pid, timeout_s=args.timeout)
    print(message, file=sys.stdout if ok else sys.stderr)
    return EX_OK if ok else message_code(message)


def message_code(message: str) -> int:
    return (
        EX_TEMPFAIL
        if message.startswith("no daemon")
        else (EX_CONFIG if message.startswith("refused") else EX_SOFTWARE)
    )


# -- parser -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="anu-watchd", description="Wake the collector once per task result.")
    p.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $ANU_WATCHD_CONFIG or /etc/anu-watchd/anu-watchd.toml)",
    )
    p.add_argument("--version", action="version", version=f"anu-watchd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, fn: Handler, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        return sp

    add("run", cmd_run, "run the daemon in the foreground")
    sp = add("scan", cmd_scan, "one reconcile pass over the events directory, then exit")
    sp.add_argument("--once", action="store_true", help="required: run one pass and exit")
    sp.add_argument("--json", action="store_true", help="one JSON line per file")
    sp = add("pickup", cmd_pickup, "run one result file through the pipeline")
    sp.add_argument("path", metavar="PATH")
    sp.add_argument("--json", action="store_true", help="print the verdict as JSON")
    sp = add("emit", cmd_emit, "write a result file atomically (the producer's writer)")
    for flag in ("task-id", "status", "executor", "summary", "collector", "report-path", "commit"):
        sp.add_argument(f"--{flag}")
    sp.add_argument("--json", metavar="-", help="read the whole result document from stdin")
    add("check-config", cmd_check_config, "validate the configuration; exit 0 or 78")
    add("enable", cmd_enable, "write the enable flag")
    add("disable", cmd_disable, "remove the enable flag")
    sp = add("status", cmd_status, "counts, pending, failed, quarantined, unacked, last runs")
    sp.add_argument("--json", action="store_true")
    sp = add("show", cmd_show, "one task's whole story, oldest first, and what happens next")
    sp.add_argument("task", metavar="TASK")
    sp.add_argument("--json", action="store_true")
    sp = add("quarantine", cmd_quarantine, "inspect or release quarantined inputs")
    sp.add_argument("action", choices=("list", "release"))
    sp.add_argument("name", nargs="?", metavar="NAME")
    sp.add_argument("--json", action="store_true", help="list: one JSON object per entry")
    sp = add("ack", cmd_ack, "write the .pickup.acked marker for TASK (for collectors)")
    sp.add_argument("task", metavar="TASK")
    sp = add("retry", cmd_retry, "clear a FIRE_FAILED so TASK is woken again (same key)")
    sp.add_argument("task", metavar="TASK")
    sp.add_argument("--json", action="store_true")
    sp = add("reload", cmd_reload, "reload the running daemon's config and wait for its answer")
    sp.add_argument("--pid", type=int, help="the daemon's pid (default: from the lock file)")
    sp.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.func
    try:
        return handler(args)
    except ConfigError as exc:
        _say(f"configuration error: {exc}")
        return EX_CONFIG
    except LockHeldError as exc:
        _say(f"another instance is running: {exc}")
        return EX_TEMPFAIL
    except UsageError as exc:
        _say(str(exc))
        return EX_USAGE
    except OutcomeUnknownError as exc:
        _say(f"outcome unknown: {exc}; write the same bytes again (idempotent)")
        return EX_TEMPFAIL
    except (DurabilityError, NotWrittenError) as exc:
        _say(f"fatal: {exc}")
        return EX_SOFTWARE
    except AnuWatchdError as exc:
        _say(f"error: {exc}")
        return EX_SOFTWARE
