"""The producer's side: write a result the way the daemon expects to find it.

``write_result`` builds (or takes) a v1 result document, checks it against
the schema, and writes ``task-<id>.result.json`` atomically and durably. Its
failure contract (docs/durability.md): ``NotWrittenError`` means nothing was left
behind; ``OutcomeUnknownError`` means the file is in place but a crash could
still undo it — write the same bytes again, which is idempotent.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from anu_watchd import fsio
from anu_watchd.errors import UsageError
from anu_watchd.model import TASK_ID_RE, Rejected, iso, utc_now
from anu_watchd.spool import RESULT_SUFFIX
from anu_watchd.validate import SCHEMA_ID, Rules, validate


def result_document(
    *,
    task_id: str,
    status: str,
    executor: str,
    summary: str,
    collector: str,
    finished_at: datetime | None = None,
    report_path: str | None = None,
    commit: str | None = None,
) -> dict[str, Any]:
    """A v1 result document from its fields; ``finished_at`` defaults to now."""
    when = finished_at or utc_now()
    doc: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "task_id": task_id,
        "status": status,
        "executor": executor,
        "collector": collector,
        "finished_at": iso(when),
        "summary": summary,
    }
    if report_path is not None:
        doc["report_path"] = report_path
    if commit is not None:
        doc["commit"] = commit
    return doc


def encode_result(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, indent=1).encode() + b"\n"


def write_result(events_dir: Path, doc: dict[str, Any], *, rules: Rules | None = None) -> Path:
    """Validate ``doc`` and write it atomically as the task's result file.

    Raises UsageError for a document the daemon would quarantine, and the
    fsio write errors (NotWrittenError / OutcomeUnknownError) otherwise.
    """
    task_id = doc.get("task_id")
    if not isinstance(task_id, str) or not TASK_ID_RE.fullmatch(task_id):
        raise UsageError(f"task_id must match {TASK_ID_RE.pattern}")
    data = encode_result(doc)
    collector = doc.get("collector")
    check_rules = rules or Rules(collector=collector if isinstance(collector, str) else "")
    verdict = validate(data, task_id=task_id, rules=check_rules)
    if isinstance(verdict, Rejected):
        raise UsageError(
            f"the daemon would quarantine this result: {verdict.reason}: {verdict.detail}"
        )
    path = events_dir / (task_id + RESULT_SUFFIX)
    fsio.atomic_write(path, data)
    return path
