"""The shipped alert rules and Grafana dashboard name only metrics the daemon exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from anu_watchd.metrics import Metrics, SpoolView

DOCS = Path(__file__).resolve().parents[2] / "docs"
METRIC = re.compile(r"\banu_watchd_[a-z0-9_]+\b")


class _Ledger:
    lines = 0

    def counts(self) -> dict[str, int]:
        return {"DONE": 0}


def exported(tmp_path: Path) -> set[str]:
    """Every sample name a daemon's exposition holds (series of every labelled metric made)."""
    m = Metrics()
    m.watch_queue(lambda: 0)
    m.watch_spool(lambda: SpoolView(tmp_path, _Ledger()))
    m.rescanned(["startup"])
    m.wake_attempt("log", "registered", 0.001)
    text = generate_latest(m.registry).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def rule_exprs() -> list[str]:
    doc = yaml.safe_load((DOCS / "prometheus-rules.yml").read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    doc: dict[str, Any] = json.loads((DOCS / "grafana-dashboard.json").read_text())
    return [t["expr"] for panel in doc["panels"] for t in panel["targets"]]


def test_there_are_three_alerts_and_a_panel_for_every_metric_family(tmp_path: Path) -> None:
    """Three alert rules ship; the dashboard graphs every family the daemon exports."""
    assert len(rule_exprs()) == 3
    graphed = {n for e in dashboard_exprs() for n in METRIC.findall(e)}
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exported(tmp_path)}
    assert families <= {re.sub(r"_(bucket|count|sum)$", "", n) for n in graphed}


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_expression_names_only_real_metrics(source: str, tmp_path: Path) -> None:
    """Each expression names at least one metric, and every name is one the daemon exports."""
    exprs = rule_exprs() if source == "rules" else dashboard_exprs()
    names = exported(tmp_path)
    for expr in exprs:
        used = set(METRIC.findall(expr))
        assert used, expr
        assert used <= names, f"{expr}: {sorted(used - names)} not exported"
