"""The projections' watermark: a ledger offset before which every projection is durable.

The projection writer moves it after each bulk sync; start-up repair reads
only the ledger lines after it (docs/durability.md, "Projections"). It is a
small file beside the ledger (``<ledger>.projected``), written tmp -> rename
without an fsync: the next bulk sync makes it durable. A watermark that a
power cut took back only makes the repair read more; one that is torn,
empty, foreign (another ledger's inode) or missing means 0, the whole ledger.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from anu_watchd import fsio

_MAX_BYTES = 4096


def path_for(ledger: Path) -> Path:
    return ledger.with_name(ledger.name + ".projected")


def is_temp_of(ledger: Path, name: str) -> bool:
    """``name`` is a temp of this ledger's watermark: only the instance-lock holder writes one."""
    return fsio.is_temp_of(name, path_for(ledger).name)


def encode(offset: int, ledger_inode: int) -> bytes:
    return json.dumps({"ledger_offset": offset, "ledger_inode": ledger_inode}).encode() + b"\n"


def decode(data: bytes, ledger_inode: int) -> int:
    """The offset, or 0 unless ``data`` is a well-formed watermark of this very ledger."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # a planted nesting bomb is no watermark either
        return 0
    if not isinstance(doc, dict) or doc.get("ledger_inode") != ledger_inode:
        return 0
    offset = doc.get("ledger_offset")
    return offset if type(offset) is int and offset > 0 else 0


def read(ledger: Path) -> int:
    """The watermark of the ledger at ``ledger``; 0 when there is none to trust (blocking)."""
    try:
        inode = os.stat(ledger).st_ino
        data = fsio.read_state(path_for(ledger), _MAX_BYTES)
    except OSError:
        return 0
    return decode(data, inode)


def write(ledger: Path, offset: int) -> None:
    """Record ``offset`` (not yet durable: the caller's next bulk sync makes it so); blocking."""
    try:
        inode = os.stat(ledger).st_ino
    except FileNotFoundError:
        return  # no ledger yet: nothing before any offset to speak of
    data = encode(offset, inode)
    fsio.write_many_unsynced([(path_for(ledger), data)])

