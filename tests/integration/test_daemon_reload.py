"""A reload on a running Daemon, in process: the config lives in one place, the stages."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from anu_watchd.daemon import Daemon
from anu_watchd.reload import reload_status_path
from tests.deadline import until
from tests.spool import Spool


def verdicts(spool: Spool) -> dict[str | None, str]:
    return {line["task_id"]: line["verdict"] for line in spool.evidence()}


def reload_answer(d: Daemon) -> dict[str, object]:
    doc = json.loads(Path(reload_status_path(d.config)).read_text())
    assert isinstance(doc, dict)
    return doc


async def test_reload_swaps_the_stages_and_the_next_run_uses_them(tmp_path: Path) -> None:
    """activated false -> true by handle_hup: applied, one config reference, the next wake fires."""
    spool = Spool(tmp_path, activated=False)
    d = Daemon(spool.config, environ={})
    serving = asyncio.ensure_future(d.serve())
    spool.drop("task-1")
    await until(lambda: verdicts(spool).get("task-1") == "FIRE_NOT_ACTIVATED", what="task-1")

    spool.write_config(activated=True)
    await d.handle_hup()
    assert reload_answer(d)["result"] == "applied"
    assert d.config.wake.activated
    assert d.config is d.pipeline.stages.config

    spool.drop("task-2")
    await until(lambda: verdicts(spool).get("task-2") == "WAKE_BUILT", what="task-2")
    d.request_stop()
    assert await asyncio.wait_for(serving, 30) == 0


async def test_a_refused_reload_keeps_the_running_config(tmp_path: Path) -> None:
    """An invalid file is refused with its reason; the daemon keeps serving the old config."""
    spool = Spool(tmp_path)
    d = Daemon(spool.config, environ={})
    serving = asyncio.ensure_future(d.serve())
    spool.drop("task-1")
    await until(lambda: verdicts(spool).get("task-1") == "WAKE_BUILT", what="task-1")
    before = d.config

    spool.config.write_text(spool.config.read_text() + "\n[wake]\nattempts = 0\n")
    await d.handle_hup()
    answer = reload_answer(d)
    assert answer["result"] == "refused" and answer["reason"]
    assert d.config is before

    spool.drop("task-2")
    await until(lambda: verdicts(spool).get("task-2") == "WAKE_BUILT", what="task-2")
    d.request_stop()
    assert await asyncio.wait_for(serving, 30) == 0
