"""The unit files and examples on the host: lint, exposure, example config, cron line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from anu_watchd.config import load_config

pytestmark = pytest.mark.systemd

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "units"
LINT = REPO / "scripts" / "lint-units.sh"
needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def _lint(units: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANU_WATCHD_UNITS_DIR": str(units)}
    return subprocess.run([str(LINT)], capture_output=True, text=True, env=env, check=False)


def _broken_copy(tmp_path: Path, line: str) -> Path:
    """A copy of units/ with ``line`` added to anu-watchd.service's [Service] section."""
    copy = tmp_path / "units"
    shutil.copytree(UNITS, copy)
    service = copy / "anu-watchd.service"
    text = service.read_text().replace("[Service]\n", f"[Service]\n{line}\n", 1)
    service.write_text(text)
    return copy


@needs_analyze
def test_lint_passes_and_prints_exposure() -> None:
    """The shipped units lint clean and the exposure of anu-watchd.service is printed, <= 1.2."""
    proc = _lint(UNITS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.search(r"security anu-watchd\.service: exposure ([0-9.]+)", proc.stdout)
    assert found, proc.stdout
    print(f"anu-watchd.service exposure (offline): {found.group(1)}")
    assert float(found.group(1)) <= 1.2


@needs_analyze
@pytest.mark.parametrize("line", ["Frobnicate=yes", "RestartSec=soon"])
def test_lint_fails_on_an_ignored_line(tmp_path: Path, line: str) -> None:
    """A key systemd would ignore with only a warning (exit 0) fails the lint."""
    proc = _lint(_broken_copy(tmp_path, line))
    assert proc.returncode == 1
    assert "ignoring" in proc.stderr and "anu-watchd.service" in proc.stderr


@needs_analyze
def test_lint_fails_above_the_exposure_limit(tmp_path: Path) -> None:
    """Loosening the sandbox past an exposure of 1.2 fails the lint."""
    copy = tmp_path / "units"
    shutil.copytree(UNITS, copy)
    service = copy / "anu-watchd.service"
    kept = [
        ln
        for ln in service.read_text().splitlines()
        if not ln.startswith(("Protect", "Private", "Restrict", "SystemCall", "Capability"))
    ]
    service.write_text("\n".join(kept) + "\n")
    proc = _lint(copy)
    assert proc.returncode == 1
    assert re.search(r"anu-watchd\.service exposure [0-9.]+ > 1\.2", proc.stderr)


def test_example_config_is_valid() -> None:
    """The example config loads under the strict loader, rooted at the units' StateDirectory=."""
    config = load_config(UNITS / "anu-watchd.toml.example")
    assert config.root == Path("/var/lib/anu-watchd")
    for name in ("anu-watchd.service", "anu-watchd-scan.service"):
        assert f"StateDirectory={config.root.name}\n" in (UNITS / name).read_text()
    tmpfiles = (UNITS / "anu-watchd.tmpfiles").read_text()
    assert f" {config.spool.events_dir} 3770 anu-watchd anu-producers " in tmpfiles


def test_path_unit_watches_the_configured_events_dir() -> None:
    """anu-watchd.path and the scan service name the events dir of the example config."""
    events = load_config(UNITS / "anu-watchd.toml.example").spool.events_dir
    assert f"PathChanged={events}\n" in (UNITS / "anu-watchd.path").read_text()
    assert f"ev={events};" in (UNITS / "anu-watchd-scan.service").read_text()


def test_units_agree_on_binary_and_config() -> None:
    """Every Exec line and the cron job use one binary path and one config path."""
    texts = [(UNITS / n).read_text() for n in ("anu-watchd.service", "anu-watchd-scan.service")]
    texts.append((UNITS / "anu-watchd.cron").read_text())
    binaries = {b for t in texts for b in re.findall(r"/\S*/bin/anu-watchd\b", t)}
    configs = {c for t in texts for c in re.findall(r"ANU_WATCHD_CONFIG=(\S+)", t)}
    assert binaries == {"/usr/local/bin/anu-watchd"}
    assert configs == {"/etc/anu-watchd/anu-watchd.toml"}
