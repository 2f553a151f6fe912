"""The operator commands: emit, enable/disable, status, quarantine, ack, check-config, --help."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.spool import Spool, json_lines, run_cli, valid_doc


def test_emit_writes_a_valid_result_atomically(spool: Spool) -> None:
    """emit with flags writes task-<id>.result.json that the scan then wakes."""
    res = spool.cli(
        "emit",
        "--task-id",
        "task-9",
        "--status",
        "DONE",
        "--executor",
        "dev1",
        "--summary",
        "all good",
        "--commit",
        "abc1234",
    )
    assert res.returncode == 0, res.stderr
    path = spool.result_path("task-9")
    doc = json.loads(path.read_text())
    assert doc["collector"] == "anu" and doc["commit"] == "abc1234"
    assert not [p for p in spool.events.iterdir() if p.name.startswith(".tmp-")]
    scan = spool.cli("scan", "--once", "--json")
    assert json_lines(scan.stdout)[0]["verdict"] == "WAKE_BUILT"


def test_emit_from_stdin_and_refusals(spool: Spool) -> None:
    """emit --json - takes a whole document; one the daemon would quarantine is refused (64)."""
    ok = spool.cli("emit", "--json", "-", stdin=json.dumps(valid_doc("task-5", extra={"k": 1})))
    assert ok.returncode == 0 and spool.result_path("task-5").exists()
    bad = spool.cli("emit", "--json", "-", stdin=json.dumps(valid_doc("task-6", status="nope")))
    assert bad.returncode == 64 and "SCHEMA" in bad.stderr
    assert not spool.result_path("task-6").exists()
    missing = spool.cli("emit", "--task-id", "task-7")
    assert missing.returncode == 64 and "--status" in missing.stderr


def test_enable_and_disable_write_and_remove_the_flag(tmp_path: Path) -> None:
    """enable writes the flag with `true`; disable removes it."""
    spool = Spool(tmp_path, enabled=False)
    assert spool.cli("enable").returncode == 0
    assert spool.flag.read_text().strip() == "true"
    assert spool.cli("disable").returncode == 0
    assert not spool.flag.exists()


def test_status_counts_and_lists(spool: Spool) -> None:
    """status --json reports verdict counts, pending, quarantined, unacked and last runs."""
    spool.drop("task-1")
    spool.drop("task-2")
    spool.drop("task-bad", raw=b"x")
    spool.cli("scan", "--once")
    spool.drop("task-3")
    assert spool.cli("ack", "task-1").returncode == 0
    res = spool.cli("status", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["counts"]["WAKE_BUILT"] == 2 and doc["counts"]["QUARANTINE"] == 1
    assert doc["pending"] == 1
    assert doc["quarantined"] == 1
    assert doc["unacked"] == ["task-2"]
    assert doc["failed"] == []
    assert len(doc["last_runs"]) == 3
    human = spool.cli("status")
    assert human.returncode == 0 and "pending: 1" in human.stdout


def test_quarantine_list_and_release_round_trip(spool: Spool) -> None:
    """A quarantined result is listed with its reason and, once released, runs again."""
    spool.drop("task-1", valid_doc("task-1", collector="zeus"))
    spool.cli("scan", "--once")
    listed = spool.cli("quarantine", "list")
    name, reason = listed.stdout.split("\t")[:2]
    assert reason == "FOREIGN_COLLECTOR" and name.startswith("task-1.result.json.")
    assert spool.cli("quarantine", "release", name).returncode == 0
    assert spool.result_path("task-1").exists()
    assert spool.cli("quarantine", "list").stdout == ""
    again = spool.cli("quarantine", "release", name)
    assert again.returncode == 64


def test_a_hostile_name_is_listed_on_one_line_and_released_by_that_form(spool: Spool) -> None:
    """A name with a newline and an escape sequence is listed escaped, on one tab-separated
    line; that form releases it, and --json gives the exact name."""
    hostile = "task-1\n\x1b[31mred.result.json"
    (spool.events / hostile).write_text(json.dumps(valid_doc("task-1")))
    spool.cli("scan", "--once")
    listed = spool.cli("quarantine", "list").stdout
    assert listed.count("\n") == 1 and "\x1b" not in listed
    shown, reason = listed.split("\t")[:2]
    assert reason == "SCHEMA" and shown.startswith("task-1\\n\\x1b[31mred.result.json.")
    exact = json.loads(spool.cli("quarantine", "list", "--json").stdout)["name"]
    assert exact.startswith(hostile + ".")
    assert spool.cli("quarantine", "release", shown).returncode == 0
    assert (spool.events / hostile).exists()


def test_two_names_that_would_show_alike_are_listed_apart_and_released_one_by_one(
    spool: Spool,
) -> None:
    """A name with a newline and one with a backslash and an "n" are listed differently
    (a backslash is shown doubled); each listed form releases its own entry only."""
    newline, backslash = "task-1\nx.result.json", "task-1\\nx.result.json"
    for name in (newline, backslash):
        (spool.events / name).write_text(json.dumps(valid_doc("task-1")))
    spool.cli("scan", "--once")
    shown = {line.split("\t")[0] for line in spool.cli("quarantine", "list").stdout.splitlines()}
    assert len(shown) == 2
    [for_newline] = [s for s in shown if s.startswith("task-1\\nx.")]
    [for_backslash] = [s for s in shown if s.startswith("task-1\\\\nx.")]
    assert spool.cli("quarantine", "release", for_backslash).returncode == 0
    assert (spool.events / backslash).exists() and not (spool.events / newline).exists()
    assert spool.cli("quarantine", "release", for_newline).returncode == 0
    assert (spool.events / newline).exists()


def test_a_name_that_is_another_entrys_listed_form_is_refused_as_ambiguous(
    spool: Spool,
) -> None:
    """One entry is literally named as another's listed form: that string names two
    entries, so release refuses it (64) and releases nothing; the listed forms still work."""
    newline = "task-1\nx.result.json"
    (spool.events / newline).write_text(json.dumps(valid_doc("task-1")))
    spool.cli("scan", "--once")
    qdir = spool.events / "quarantine"
    [entry] = [p for p in qdir.iterdir() if not p.name.endswith(".reason.json")]
    shown = entry.name.replace("\n", "\\n")  # how `quarantine list` shows it
    # A second entry whose exact name is that listed form (a backslash and an "n").
    twin = qdir / shown
    twin.write_text(json.dumps(valid_doc("task-2")))
    (qdir / (shown + ".reason.json")).write_bytes(
        (qdir / (entry.name + ".reason.json")).read_bytes()
    )
    refused = spool.cli("quarantine", "release", shown)
    assert refused.returncode == 64 and "listed form" in refused.stderr
    assert entry.exists() and twin.exists()
    assert spool.cli("quarantine", "release", shown.replace("\\", "\\\\")).returncode == 0
    assert not twin.exists() and entry.exists()


def test_a_nesting_bomb_sidecar_is_listed_without_its_reason(spool: Spool) -> None:
    """quarantine list survives a sidecar of 20,000 brackets: the entry is still listed."""
    spool.drop("task-1", valid_doc("task-1", collector="zeus"))
    spool.cli("scan", "--once")
    [sidecar] = (spool.events / "quarantine").glob("*.reason.json")
    sidecar.write_text("[" * 20_000)
    listed = spool.cli("quarantine", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("task-1.result.json.")


def test_ack_writes_the_acked_marker(spool: Spool) -> None:
    """ack TASK writes task-<id>.pickup.acked atomically; a bad id is a usage error."""
    assert spool.cli("ack", "task-3").returncode == 0
    assert json.loads((spool.events / "task-3.pickup.acked").read_text())["task_id"] == "task-3"
    assert spool.cli("ack", "../etc").returncode == 64


def test_pickup_outside_the_events_dir_is_refused(spool: Spool, tmp_path: Path) -> None:
    """pickup of a file outside the events directory is a usage error (64)."""
    other = tmp_path / "task-1.result.json"
    other.write_text(json.dumps(valid_doc("task-1")))
    assert spool.cli("pickup", str(other)).returncode == 64


def test_check_config_ok(spool: Spool) -> None:
    """check-config exits 0 on a valid file."""
    res = spool.cli("check-config")
    assert res.returncode == 0 and "ok" in res.stdout


@pytest.mark.parametrize(
    "command",
    [
        "run",
        "scan",
        "pickup",
        "emit",
        "ack",
        "status",
        "quarantine",
        "enable",
        "disable",
        "check-config",
    ],
)
def test_every_command_has_help(spool: Spool, command: str) -> None:
    """Every command answers --help with exit 0."""
    res = spool.cli(command, "--help")
    assert res.returncode == 0 and "usage:" in res.stdout


def test_unknown_command_is_a_usage_error(spool: Spool) -> None:
    """An unknown command exits 64 (EX_USAGE)."""
    assert spool.cli("frobnicate").returncode == 64


def test_key_file_open_to_others_is_refused(spool: Spool) -> None:
    """A key file readable by others is a configuration error (78), without the key in output."""
    spool.key_file.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    res = spool.cli("scan", "--once")
    assert res.returncode == 78
    assert spool.key not in res.stderr


def test_pickup_of_a_nonexistent_file_exits_66_naming_the_path(spool: Spool) -> None:
    """pickup of a path that does not exist is EX_NOINPUT (66) with the path, not a silent 0."""
    missing = spool.events / "task-404.result.json"
    res = spool.cli("pickup", str(missing))
    assert res.returncode == 66, res.stderr
    assert str(missing) in res.stderr
    assert "Traceback" not in res.stderr


HOSTILE = "task-1\x1b]0;pwned\x07\x1b[2J"


def test_quarantine_release_escapes_the_name_it_echoes(spool: Spool) -> None:
    """``quarantine release`` prints the released path escaped, as ``quarantine list`` does."""
    (spool.events / f"{HOSTILE}.result.json").write_text(json.dumps(valid_doc("task-1")))
    spool.cli("scan", "--once")
    shown = spool.cli("quarantine", "list").stdout.split("\t")[0]
    res = spool.cli("quarantine", "release", shown)
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout and "\x07" not in res.stdout
    assert "\\x1b]0;pwned\\x07" in res.stdout


def test_status_escapes_hostile_task_ids(spool: Spool) -> None:
    """``status`` shows failed and unacked task ids and last runs with control characters
    escaped: a planted name cannot retitle or clear the operator's terminal."""
    for suffix in (".pickup.failed", ".pickup.done"):
        (spool.events / f"{HOSTILE}{suffix}").write_text("{}")
    (spool.events / f"{HOSTILE}.result.json").write_text(json.dumps(valid_doc("task-1")))
    spool.cli("scan", "--once")
    res = spool.cli("status")
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout and "\x07" not in res.stdout
    assert res.stdout.count("\\x1b]0;pwned\\x07") >= 2


def test_console_log_format_escapes_hostile_paths(spool: Spool) -> None:
    """With ``log.format = "console"`` a hostile file name reaches stderr escaped."""
    spool.config.write_text(spool.config.read_text() + 'format = "console"\n')
    (spool.events / f"{HOSTILE}.result.json").write_text(json.dumps(valid_doc("task-1")))
    res = spool.cli("scan", "--once")
    assert res.returncode == 0, res.stderr
    assert "pwned" in res.stderr
    assert "\x1b" not in res.stderr and "\x07" not in res.stderr


def test_options_go_before_or_after_the_command(spool: Spool) -> None:
    """`check-config --config PATH` works as well as `--config PATH check-config`."""
    res = run_cli(["check-config", "--config", str(spool.config)])
    assert res.returncode == 0 and "ok" in res.stdout


def test_an_unexpected_exception_is_one_line_and_exit_70(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug (here an injected RuntimeError under ``status``) is one line naming the
    exception's type and message, and exit 70: never a traceback and Python's exit 1."""
    import structlog

    from anu_watchd import cli, commands

    # A `status` process has configured no logging: earlier in-process tests may have.
    structlog.reset_defaults()

    def broken(_config: object) -> dict[str, object]:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(commands, "spool_status", broken)  # the one seam: a bug in a command
    assert cli.main(["--config", str(spool.config), "status"]) == 70
    err = capsys.readouterr().err
    [line] = err.splitlines()
    assert "RuntimeError" in line and "injected fault" in line
    assert "Traceback" not in err
