"""Fixtures shared by every test directory (the deadline helpers are in ``tests/deadline.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.spool import Spool


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    """A fresh spool under ``tmp_path``: config, a random sealed key, the driver enabled."""
    return Spool(tmp_path)
