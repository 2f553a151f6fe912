"""Build what tests/systemd installs, and install anu-watchd in a booted container.

The rootfs comes from scripts/systemd-rootfs.sh; the package is built on the host
into a directory bound read-only into the container, where an entry point like
the one a wheel install creates runs it with Debian's Python 3.11. The rest of
the install is the ``install-system`` block of docs/operations.md, run as written
(``build_wheels`` makes what its ``install-package`` block installs offline).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from doc_blocks import run_block
from nspawn_harness import CannotBoot, Container, HarnessError

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("ANU_WATCHD_ROOTFS_CACHE", "/var/cache/anu-watchd"))
# Where the package built on the host appears inside the container.
SITE_IN_CONTAINER = "/opt/anu-watchd/site"
BIN_IN_CONTAINER = "/usr/local/bin/anu-watchd"


# --- host builds, cached outside the repository -----------------------------------------


def build_rootfs() -> Path:
    """Run scripts/systemd-rootfs.sh (cached, locked) and return the rootfs path."""
    proc = subprocess.run(
        [str(REPO / "scripts" / "systemd-rootfs.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        if shutil.which("systemd-nspawn") is None:
            raise CannotBoot(f"systemd-nspawn unavailable and could not be installed:\n{tail}")
        raise HarnessError(f"systemd-rootfs.sh failed ({proc.returncode}):\n{tail}")
    return Path(proc.stdout.strip().splitlines()[-1])


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:16]


def _source_files() -> list[Path]:
    """What the package is built from, relative to the repository."""
    package = sorted((REPO / "anu_watchd").rglob("*"))
    files = [REPO / "pyproject.toml", *package]
    return [f.relative_to(REPO) for f in files if f.is_file() and "__pycache__" not in f.parts]


def _dependencies() -> list[str]:
    """The runtime requirements named in pyproject.toml."""
    with (REPO / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def build_site() -> Path:
    """Build the package and its dependencies into a directory, cached by source digest.

    ``$ANU_WATCHD_TEST_SITE`` names a ready directory to use instead.

    A wheel is built from a copy of the source (so the work tree gets no build/ or
    egg-info) and installed by ``pip install --target`` over a copy of the dependencies,
    which are cached apart since they change far less often. They are pure Python or
    manylinux wheels for CPython 3.11, which is the container's Python too.
    """
    prebuilt = os.environ.get("ANU_WATCHD_TEST_SITE")
    if prebuilt:  # an install made elsewhere, e.g. from a released wheel
        return Path(prebuilt)
    sources = _source_files()
    site = CACHE / f"site-{_digest(*(bytes(f) + (REPO / f).read_bytes() for f in sources))}"
    if site.is_dir():
        return site
    deps = _build_deps()
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="build-") as tmp:
        src, wheels, target = Path(tmp, "src"), Path(tmp, "wheels"), Path(tmp, "site")
        for f in sources:
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
        for name in ("README.md", "LICENSE"):  # named by pyproject.toml, if present
            if (REPO / name).exists():
                shutil.copy2(REPO / name, src / name)
        _run_host([*PIP, "wheel", "--no-deps", "-w", str(wheels), str(src)])
        shutil.copytree(deps, target, symlinks=True)
        _run_host(
            [*PIP, "install", "--no-deps", "--target", str(target), *map(str, wheels.glob("*.whl"))]
        )
        _prune_cache(keep={site, deps})
        with contextlib.suppress(OSError):  # a concurrent build got there first: same bytes
            target.rename(site)
    return site


def build_wheels() -> Path:
    """anu-watchd and its dependencies as wheels (the docs' offline install), cached."""
    sources = _source_files()
    wheels = CACHE / f"wheels-{_digest(*(bytes(f) + (REPO / f).read_bytes() for f in sources))}"
    if wheels.is_dir():
        return wheels
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="build-") as tmp:
        src, target = Path(tmp, "src"), Path(tmp, "wheels")
        for f in sources:
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
        for name in ("README.md", "LICENSE"):
            if (REPO / name).exists():
                shutil.copy2(REPO / name, src / name)
        _run_host([*PIP, "wheel", "-w", str(target), str(src)])
        with contextlib.suppress(OSError):
            target.rename(wheels)
    return wheels


PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


def _build_deps() -> Path:
    """The runtime dependencies alone, installed by pip, cached by the requirement list."""
    requirements = _dependencies()
    deps = CACHE / f"deps-{_digest(*(r.encode() for r in requirements))}"
    if deps.is_dir():
        return deps
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="build-") as tmp:
        target = Path(tmp, "deps")
        _run_host([*PIP, "install", "--target", str(target), *requirements])
        with contextlib.suppress(OSError):
            target.rename(deps)
    return deps


def _prune_cache(keep: set[Path]) -> None:
    """Drop builds of older sources (a day old), so the cache does not grow forever."""
    for old in [*CACHE.glob("site-*"), *CACHE.glob("deps-*"), *CACHE.glob("wheels-*")]:
        if old not in keep and time.time() - old.stat().st_mtime > 86400:
            shutil.rmtree(old, ignore_errors=True)


def _run_host(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv[:5])} ... failed:\n{proc.stdout}\n{proc.stderr}")


# --- installing anu-watchd inside ---------------------------------------------------

SPOOL = "/var/lib/anu-watchd"
CONFIG = "/etc/anu-watchd/anu-watchd.toml"
KEY = "/etc/anu-watchd/anu-key"
UNIT_DIR = "/etc/systemd/system"
UNIT_FILES = ("anu-watchd.service", "anu-watchd-scan.service", "anu-watchd.path")

# The console script an installed wheel would get, pointed at the bound-in site dir.
ENTRY_POINT = f"""#!/usr/bin/python3 -I
import sys
sys.path.insert(0, "{SITE_IN_CONTAINER}")
from anu_watchd.cli import main
sys.exit(main())
"""


# Where the parts of a checkout the docs' commands copy from (units/, docs/) are put.
SRC_IN_CONTAINER = "/opt/anu-watchd-src"
WHEELS_IN_CONTAINER = "/opt/anu-watchd-wheels"


def copy_checkout(c: Container) -> None:
    """units/ and docs/ of this checkout, where the docs' commands are run from."""
    for sub in ("units", "docs"):
        for f in sorted((REPO / sub).iterdir()):
            if f.is_file():
                c.write(f"{SRC_IN_CONTAINER}/{sub}/{f.name}", f.read_text())


def run_doc(c: Container, name: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the ``<!-- run: NAME -->`` block of docs/operations.md as root, from the checkout."""
    exports = "".join(f"export {k}='{v}'\n" for k, v in env.items())
    return c.sh(f"cd {SRC_IN_CONTAINER}\n{exports}{run_block(name)}", timeout=300)


def install_anu_watchd(c: Container, key: str) -> None:
    """The entry point, then the docs' install-system block as written; then this run's key."""
    c.write(BIN_IN_CONTAINER, ENTRY_POINT, mode=0o755)
    copy_checkout(c)
    run_doc(c, "install-system")
    c.write(KEY, key + "\n", mode=0o600)
