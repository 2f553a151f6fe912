"""NATS credentials for the nats sink: where they come from and what kind they are.

The file is ``wake.nats.creds_file``, else ``$CREDENTIALS_DIRECTORY/nats.creds``
(``LoadCredential=nats.creds:…``) when it exists, else none. It is read under
the sealed key's rules (owner-only mode, group-read only under the
credentials directory, a bounded non-blocking read; ``secret.py``) each time
the sink is built: at start and on reload. Its kind is read from its content
(docs/operations.md, "Fleet")::

    a -----BEGIN NATS USER JWT----- block   a .creds file (JWT + nkey seed)
    a line starting "SU"                    an nkey seed
    anything else, stripped                 a token

The content never appears in argv, the environment, a log line or an error:
``repr`` hides it, and refusals name the path only.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from anu_watchd.secret import CREDENTIALS_ENV, REDACTED, read_secret_file

CREDS_NAME = "nats.creds"
CONFIG_KEY = "wake.nats.creds_file"
# A .creds file is ~1 KiB; a JWT with many permissions can be several.
MAX_CREDS_BYTES = 64 * 1024
_JWT_MARK = "-----BEGIN NATS USER JWT-----"


class CredsKind(enum.StrEnum):
    CREDS = "creds"
    NKEY = "nkey"
    TOKEN = "token"  # noqa: S105 (the kind's name, not a token)


def creds_kind(text: str) -> CredsKind:
    """The kind of a credentials file, from its (stripped) content."""
    if _JWT_MARK in text:
        return CredsKind.CREDS
    if any(line.strip().startswith("SU") for line in text.splitlines()):
        return CredsKind.NKEY
    return CredsKind.TOKEN


@attrs.frozen(repr=False)
class NatsAuth:
    """Credentials read from ``path``; ``repr`` and ``str`` never show the value."""

    path: Path
    kind: CredsKind
    value: str = attrs.field(repr=False)

    def connect_options(self) -> dict[str, Any]:
        """The ``nats.connect`` keyword arguments that present these credentials."""
        from nats.aio.client import RawCredentials

        if self.kind is CredsKind.CREDS:
            return {"user_credentials": RawCredentials(self.value)}
        if self.kind is CredsKind.NKEY:
            seed = next(ln.strip() for ln in self.value.splitlines() if ln.strip().startswith("SU"))
            return {"nkeys_seed_str": seed}
        return {"token": self.value}

    def scrub(self, text: str) -> str:
        """``text`` with every line of the credentials replaced by ``[REDACTED]``."""
        for secret in sorted({self.value, *self.value.split()}, key=len, reverse=True):
            if len(secret) >= 8:
                text = text.replace(secret, REDACTED)
        return text

    def __repr__(self) -> str:
        return f"NatsAuth(path={str(self.path)!r}, kind={self.kind}, value={REDACTED})"

    __str__ = __repr__


def load_auth(creds_file: str, *, environ: Mapping[str, str] = os.environ) -> NatsAuth | None:
    """The configured credentials, the systemd credential, or None (no authentication)."""
    if creds_file:
        path = Path(creds_file)
    else:
        directory = environ.get(CREDENTIALS_ENV)
        if not directory or not (Path(directory) / CREDS_NAME).exists():
            return None
        path = Path(directory) / CREDS_NAME
    value = read_secret_file(
        path, config_key=CONFIG_KEY, environ=environ, max_bytes=MAX_CREDS_BYTES
    )
    return NatsAuth(path=path, kind=creds_kind(value), value=value)
