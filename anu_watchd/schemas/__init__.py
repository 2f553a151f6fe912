"""The JSON Schemas (draft 2020-12) of the result file and the callback envelope.

Shipped as package data, so ``anu-watchd schema result|envelope`` and any
integrator's validator read the same files the tests hold against
``validate.py`` and ``envelope.check``::

    from anu_watchd import schemas
    schemas.load("result")       # dict, ready for a draft 2020-12 validator
    schemas.text("envelope")     # the file as shipped
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

NAMES = ("result", "envelope")


def text(name: str) -> str:
    """The schema file ``name`` (one of ``NAMES``) exactly as shipped."""
    if name not in NAMES:
        raise ValueError(f"no schema named {name!r}; expected one of {', '.join(NAMES)}")
    return resources.files(__name__).joinpath(f"{name}.schema.json").read_text("utf-8")


def load(name: str) -> dict[str, Any]:
    """The schema ``name`` parsed."""
    doc: dict[str, Any] = json.loads(text(name))
    return doc
