"""Bad luck in the pipeline: a worker's atomic replace lands while the daemon reads the file."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from anu_watchd import fsio
from anu_watchd.config import load_config
from anu_watchd.errors import DurabilityError
from anu_watchd.model import Verdict
from anu_watchd.runtime import open_pipeline
from anu_watchd.secret import load_key
from tests.spool import Spool, valid_doc


async def test_a_replace_between_lstat_and_open_wakes_the_new_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename of a newer valid version over the result while the pipeline opens it (the
    strace open-delay repro) wakes that version once and quarantines nothing."""
    spool = Spool(tmp_path)
    path = spool.drop("task-1")
    newer = json.dumps(valid_doc("task-1", summary="the newer version")).encode()
    real, calls = fsio._open_input, []

    def open_late(p: Path) -> int:
        if not calls:
            tmp = p.with_name(".w-" + p.name)
            tmp.write_bytes(newer)
            os.rename(tmp, p)
        calls.append(p)
        return real(p)

    monkeypatch.setattr(fsio, "_open_input", open_late)
    config = load_config(spool.config)
    async with open_pipeline(config, load_key(str(spool.key_file))) as pipeline:
        out = await pipeline.pickup(path)
    assert out is not None and out.verdict is Verdict.WAKE_BUILT
    assert out.sha256 == hashlib.sha256(newer).hexdigest()
    assert len(calls) == 2
    assert spool.quarantined() == []


async def test_a_fatal_state_write_names_the_path_and_the_operation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed fsync while quarantining is fatal, and the error says which path and what
    was being done, not only "Operation not permitted"."""
    spool = Spool(tmp_path)
    path = spool.drop("task-2", raw=b"{not json")

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    config = load_config(spool.config)
    with pytest.raises(DurabilityError) as info:
        async with open_pipeline(config, load_key(str(spool.key_file))) as pipeline:
            monkeypatch.setattr(fsio, "fsync", failing_fsync)
            await pipeline.pickup(path)
    message = str(info.value)
    assert "quarantine" in message
    assert str(spool.events) in message
