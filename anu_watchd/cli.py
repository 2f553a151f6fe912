"""Command line: argument parsing, printing and exit codes only; the work is in ``commands``.

Exit codes are ``errors.ExitCode`` (sysexits): 0 ok, 64 usage, 66 no such input file,
70 fatal internal or durability failure (and any unexpected exception, logged as one
critical line), 75 temporary (the instance lock is held, no daemon answered), 77
permission (see ownership.py), 78 configuration.
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

from anu_watchd import __version__, commands, logs, ownership, producer, status
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


def _say(msg: str, event: str = "command_note", level: str = "info") -> None:
    logs.announce(event, f"anu-watchd: {shown(msg)}", level=level, stream=sys.stderr)


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
    fields = {"path": out.path, "task_id": out.task_id, "verdict": str(out.verdict)}
    fields["reason"] = out.reason
    if logs.is_journal_stream(sys.stdout):
        logs.announce("outcome_reported", out.path, stream=sys.stdout, fields=fields)
    elif as_json:
        print(json.dumps(fields, ensure_ascii=False), flush=True)
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
    from anu_watchd.preflight import check_key_source

    config = _config(args)
    source = check_key_source(config)
    print(f"ok: {config.source} (key: {source})")
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


def cmd_show(args: argparse.Namespace) -> int:
    from anu_watchd import story

    config = _config(args)
    doc = story.collect(config, commands.task_files(config, args.task).task_id)
    print(json.dumps(doc) if args.json else story.render(doc))  # ASCII: names may not be UTF-8
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
    from anu_watchd.reload import daemon_decides

    config: Config | None = None
    try:
        config = _config(args)
    except ConfigError as exc:
        refused = f"refused: {exc}"
    if config is None and not daemon_decides(args.pid):
        # Nowhere to hear the daemon's answer: refused here, as the same JSON event.
        answer = commands.ReloadAnswer(ExitCode.CONFIG, refused)
    else:  # with config None, the daemon reads the new config itself and says why it refuses
        answer = commands.reload(config, pid=args.pid, timeout_s=args.timeout)
    event = {ExitCode.OK: "config_reload_applied", ExitCode.CONFIG: "config_reload_refused"}
    logs.announce(
        event.get(answer.code, "config_reload_unanswered"),
        answer.message,
        level="info" if answer.ok else "error",
        stream=sys.stdout if answer.ok else sys.stderr,
        fields={"exit_code": int(answer.code)},
    )
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
        # Also after the command (`check-config --config PATH`); SUPPRESS keeps the global one.
        sp.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file")
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
    except Exception as exc:  # every failure ends here: one line, a documented exit code
        return _failed(exc)


# (error types, exit code, event, message); the first match wins. A permission
# problem is looked for between the two tables: a key file we may not read is a
# configuration error, a state file we may not write is exit 77.
_FAILURES_FIRST: tuple[tuple[type[Exception], ExitCode, str, str], ...] = (
    (ConfigError, ExitCode.CONFIG, "config_invalid", "configuration error: {}"),
    (LockHeldError, ExitCode.TEMPFAIL, "lock_held", "another instance is running: {}"),
    (UsageError, ExitCode.USAGE, "usage_error", "{}"),
    (NoInputError, ExitCode.NOINPUT, "no_input", "{}"),
)
_FAILURES_THEN: tuple[tuple[type[Exception], ExitCode, str, str], ...] = (
    (
        OutcomeUnknownError,
        ExitCode.TEMPFAIL,
        "outcome_unknown",
        "outcome unknown: {}; write the same bytes again (idempotent)",
    ),
    (DurabilityError, ExitCode.SOFTWARE, "durability_failure", "fatal: {}"),
    (NotWrittenError, ExitCode.SOFTWARE, "write_failed", "fatal: {}"),
    (AnuWatchdError, ExitCode.SOFTWARE, "command_failed", "error: {}"),
)


def _failed(exc: Exception) -> int:
    """The exit code for ``exc``, after the one line that says why (JSON on the journal)."""
    for types, code, event, template in _FAILURES_FIRST:
        if isinstance(exc, types):
            _say(template.format(exc), event=event, level="error")
            return code
    denied = ownership.permission_error(exc)
    if denied is not None:
        _say(ownership.denied(denied), event="permission_denied", level="error")
        return ExitCode.NOPERM
    for types, code, event, template in _FAILURES_THEN:
        if isinstance(exc, types):
            _say(template.format(exc), event=event, level="error")
            return code
    logs.crashed(exc)  # one critical line with type and message; never a bare traceback
    return ExitCode.SOFTWARE
