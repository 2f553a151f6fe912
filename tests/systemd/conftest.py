"""Fixtures for tests/systemd: a booted container per module, with anu-watchd installed.

Every test here is marked ``systemd``. Where the host cannot boot the container
(not root, no cgroup access, no systemd-nspawn) they skip with the reason; on the
project's own machines (root, Debian 12, PID 1 not systemd) they run.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from anu_install import SITE_IN_CONTAINER, build_rootfs, build_site, install_anu_watchd
from nspawn_harness import CannotBoot, Container, booted, why_cannot_boot


@pytest.fixture(scope="session")
def rootfs() -> Path:
    """The cached bookworm rootfs, built on first use; skips where no container can run."""
    reason = why_cannot_boot()
    if reason:
        pytest.skip(reason)
    try:
        return build_rootfs()
    except CannotBoot as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def site(rootfs: Path) -> Path:
    """anu-watchd and its dependencies, built on the host for the container's Python."""
    return build_site()


@pytest.fixture(scope="session")
def sealed_key() -> str:
    """A key made for this run; never a literal in the tests."""
    return secrets.token_hex(32)


@pytest.fixture(scope="module")
def container(
    rootfs: Path, site: Path, sealed_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    """A booted container with anu-watchd installed (units not started), shut down after."""
    logs = tmp_path_factory.mktemp("nspawn")
    with booted(rootfs, {site: SITE_IN_CONTAINER}, logs) as c:
        install_anu_watchd(c, sealed_key)
        yield c
