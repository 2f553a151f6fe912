"""Write the embedded development config for `make run` (idempotent).

Creates DIR/anu-watchd.toml (root = DIR, enabled, activated, log sink) and a
random key in DIR/anu-key with mode 0600 on first run; later runs keep both.
"""

from __future__ import annotations

import sys
from pathlib import Path

from anu_watchd import fsio
from anu_watchd.secret import generate_key_file

CONFIG = """\
# Development config written by `make run` (scripts/devenv.py). Edit freely.
root = "."
rescan_interval_s = 300.0

[spool]
collector = "anu"

[wake]
activated = true
sink = "log"

[key]
file = "anu-key"

[log]
level = "info"
format = "console"
"""


def main(directory: str) -> int:
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "anu-watchd.toml"
    if not config.exists():
        fsio.atomic_write(config, CONFIG.encode())
    generate_key_file(root / "anu-key")
    flag = root / "memory" / "state" / "p0b_driver_enabled"
    flag.parent.mkdir(parents=True, exist_ok=True)
    if not flag.exists():
        fsio.atomic_write(flag, b"true\n")
    print(f"config: {config}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "var"))
