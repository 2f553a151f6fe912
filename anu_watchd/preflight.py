"""What ``check-config`` checks beyond the config file: what the start will need.

The start reads the key once (docs/operations.md, "Install"): from
``[key] file``, or from the credential systemd hands the service. From a
shell there is no ``$CREDENTIALS_DIRECTORY``, so an empty ``[key] file`` is
checked at the source the units' ``LoadCredential=`` names. Either way the
source must exist, be private (owner-only) and long enough; a failure is a
ConfigError (exit 78), as it would be at start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from anu_watchd.config import Config
from anu_watchd.secret import CREDENTIALS_ENV, load_key

# The source of `LoadCredential=anu-key:...` in units/anu-watchd.service.
CREDENTIAL_SOURCE = Path("/etc/anu-watchd/anu-key")


def check_key_source(
    config: Config,
    *,
    environ: Mapping[str, str] = os.environ,
    credential_source: Path = CREDENTIAL_SOURCE,
) -> Path:
    """Load the key the way the start will (or from the unit's source); return where it is."""
    if config.key.file or environ.get(CREDENTIALS_ENV):
        return load_key(config.key.file, environ=environ, root=config.root).path
    return load_key(str(credential_source), environ={}, root=config.root).path
