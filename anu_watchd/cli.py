"""Command line: argument parsing, printing and exit codes only; the work is in ``commands``.

Exit codes are ``errors.ExitCode`` (sysexits): 0 ok, 64 usage, 66 no such input file,
70 fatal internal or durability failure, 75 temporary (the instance lock is held),
78 configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs

from anu_watchd import __version__, commands, producer, status
from anu_watchd.commands import Runs
from anu_watchd.config import Config, config_path, load_config
from anu_watchd.errors import (
    AnuWatchdError,
    ConfigError,
    DurabilityError,
    ExitCode,
    LockHeldError,
    NoInputError,
    NotWrittenError,
    OutcomeUnknownError,
    UsageError,
)
from anu_watchd.model import Outcome
from anu_watchd.secret import SealedKey
from anu_watchd.terminal import shown

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def _config(args: argparse.Namespace) -> Config:
    return load_config(config_path(args.config))


def _say(msg: str) -> None:
    print(f"anu-watchd: {shown(msg)}", file=sys.stderr)


def _key_and_logs(config: Config) -> SealedKey:
    """The sealed key, and logs configured to redact it; one-shot commands log to stderr."""
    from anu_watchd import logs
    from anu_watchd.secret import load_key

    key = load_key(config.key.file, root=config.root)
    logs.configure(level=config.log.level, fmt=config.log.format, key=key, stream=sys.stderr)
    return key


# -- commands -----------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from anu_watchd.daemon import run_daemon

    return run_daemon(config_path(args.config))


def _print_outcome(out: Outcome, as_json: bool) -> None:
    if as_json:
        doc = {"path": out.path, "task_id": out.task_id, "verdict": str(out.verdict)}
        print(json.dumps({**doc, "reason": out.reason}, ensure_ascii=False), flush=True)
    else:
        print(f"{out.task_id or out.path}\t{out.verdict}\t{out.reason or ''}".rstrip(), flush=True)


def _print_runs(runs: Runs, config: Config, as_json: bool) -> int:
    if runs.disabled:
        flag = config.spool.enable_flag
        _say(f"the driver is disabled ({flag} is absent or not `true`)")
    for out in runs.outcomes:
        _print_outcome(out, as_json)
    return ExitCode.OK


def cmd_scan(args: argparse.Namespace) -> int:
    if not args.once:
        raise UsageError("scan needs --once (the daemon is `anu-watchd run`)")
    config = _config(args)
    return _print_runs(commands.scan_once(config, _key_and_logs(config)), config, args.json)


def cmd_pickup(args: argparse.Namespace) -> int:
    config = _config(args)
    path = Path(args.path)
    if not os.path.lexists(path):
        raise NoInputError(f"{path}: no such file")
    runs = commands.pickup(config, _key_and_logs(config), path)
    if not runs.disabled and not runs.outcomes:
        _say(f"{path}: nothing done (driver disabled, not a result name, or vanished)")
    return _print_runs(runs, config, args.json)


def _emit_document(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    if args.json == "-":
        try:
            doc = json.loads(sys.stdin.buffer.read())
        except ValueError as exc:
            raise UsageError(f"stdin is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise UsageError("stdin must hold a JSON object")
        return doc
    if args.json is not None:
        raise UsageError("--json takes only '-' (the document on stdin)")
    fields = ("task_id", "status", "executor", "summary")
    missing = [f"--{n.replace('_', '-')}" for n in fields if getattr(args, n) is None]
    if missing:
        raise UsageError(f"missing {', '.join(missing)} (or use --json -)")
    return producer.result_document(
        task_id=args.task_id,
        status=args.status,
        executor=args.executor,
        summary=args.summary,
        collector=args.collector or config.spool.collector,
        report_path=args.report_path,
        commit=args.commit,
    )


def cmd_emit(args: argparse.Namespace) -> int:
    config = _config(args)
    print(commands.emit(config, _emit_document(args, config)))
    return ExitCode.OK


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    print(f"ok: {config.source}")
    return ExitCode.OK


def cmd_enable(args: argparse.Namespace) -> int:
    print(f"enabled: {commands.enable(_config(args))}")
    return ExitCode.OK


def cmd_disable(args: argparse.Namespace) -> int:
    print(f"disabled: {commands.disable(_config(args))} removed")
    return ExitCode.OK


def cmd_status(args: argparse.Namespace) -> int:
    doc = commands.spool_status(_config(args))
    print(json.dumps(doc, ensure_ascii=False) if args.json else status.render(doc))
    return ExitCode.OK


def cmd_quarantine(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.action == "release":
        if not args.name:
            raise UsageError("quarantine release needs NAME (as `quarantine list` shows it)")
        print(f"released: {shown(str(commands.release(config, args.name)))}")
        return ExitCode.OK
    for e in commands.quarantined(config):
        if args.json:
            # ASCII escapes: a name's undecodable bytes are lone surrogates here.
            print(json.dumps(attrs.asdict(e)))
        else:
            fields = (e.name, e.reason or "?", e.ts or "", e.detail or "")
            print("\t".join(shown(f) for f in fields))
    return ExitCode.OK


def cmd_ack(args: argparse.Namespace) -> int:
    print(f"acked: {commands.ack(_config(args), args.task)}")
    return ExitCode.OK


def cmd_retry(args: argparse.Namespace) -> int:
    config = _config(args)
    answer = commands.retry(config, lambda: _key_and_logs(config), args.task)
    if answer.requested:
        print(f"retry requested: the running daemon will re-run {args.task}")
        return ExitCode.OK
    return _print_runs(answer.runs, config, args.json)


def cmd_reload(args: argparse.Namespace) -> int:
    answer = commands.reload(_config(args), pid=args.pid, timeout_s=args.timeout)
    print(answer.message, file=sys.stdout if answer.ok else sys.stderr)
    return answer.code


def cmd_schema(args: argparse.Namespace) -> int:
    from anu_watchd import schemas

    sys.stdout.write(schemas.text(args.name))
    return ExitCode.OK


def _stdout_closed() -> int:
    """stdout's reader went away (``status | head``): that is the reader's choice, exit 0 quietly.

    stdout is pointed at /dev/null so the interpreter's final flush cannot fail again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return ExitCode.OK


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
    sp = add("schema", cmd_schema, "print the JSON Schema of a result file or an envelope")
    sp.add_argument("name", choices=("result", "envelope"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.func
    try:
        code = int(handler(args))
        sys.stdout.flush()  # here, not at exit: a closed stdout is handled below
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except AnuWatchdError as exc:
        code, message = _failure(exc)
        _say(message)
        return code


def _failure(exc: AnuWatchdError) -> tuple[ExitCode, str]:
    """The exit code and the one line a command that failed with ``exc`` ends on."""
    if isinstance(exc, ConfigError):
        return ExitCode.CONFIG, f"configuration error: {exc}"
    if isinstance(exc, LockHeldError):
        return ExitCode.TEMPFAIL, f"another instance is running: {exc}"
    if isinstance(exc, UsageError):
        return ExitCode.USAGE, str(exc)
    if isinstance(exc, NoInputError):
        return ExitCode.NOINPUT, str(exc)
    if isinstance(exc, OutcomeUnknownError):
        return ExitCode.TEMPFAIL, f"outcome unknown: {exc}; write the same bytes again (idempotent)"
    if isinstance(exc, DurabilityError | NotWrittenError):
        return ExitCode.SOFTWARE, f"fatal: {exc}"
    return ExitCode.SOFTWARE, f"error: {exc}"
