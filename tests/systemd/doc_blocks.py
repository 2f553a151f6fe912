"""The command blocks of docs/operations.md, so tests run what the operator reads.

A block is a fenced code block right after a marker line: ``<!-- run: NAME -->``
(shell commands, run as root from the top of a checkout) or ``<!-- file: PATH -->``
(the content of a file to install at PATH).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OPERATIONS = REPO / "docs" / "operations.md"
_MARKER = re.compile(r"<!-- (run|file): (\S+) -->")


def blocks(doc: Path = OPERATIONS) -> dict[tuple[str, str], str]:
    """``{(kind, name): text}`` for every marked block; a marker without a fence is an error."""
    lines = doc.read_text().splitlines()
    found: dict[tuple[str, str], str] = {}
    for i, line in enumerate(lines):
        marker = _MARKER.fullmatch(line.strip())
        if not marker:
            continue
        if i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
            raise ValueError(f"{doc}:{i + 1}: {line.strip()} is not followed by a fence")
        end = lines.index("```", i + 2)
        found[(marker.group(1), marker.group(2))] = "\n".join(lines[i + 2 : end]) + "\n"
    return found


def run_block(name: str) -> str:
    """The shell text of the ``<!-- run: NAME -->`` block."""
    return blocks()[("run", name)]


def file_block(path: str) -> str:
    """The content of the ``<!-- file: PATH -->`` block."""
    return blocks()[("file", path)]
