"""The sealed key: load it once, keep it out of every log line.

The key authenticates wakes (the HTTP sink's HMAC) and is the literal that
makes an input ``KEY_LITERAL``. It lives in a file — by default the systemd
credential ``$CREDENTIALS_DIRECTORY/anu-key`` (``LoadCredential=anu-key:…``) —
and is read once at start: credentials are fixed for the life of a service,
so rotating the key is a restart.

Refusals (``SecretError``, key ``key.file``; the caller exits 78) name the
path and the reason, never the content. The mode rule, decided here:

* Outside ``$CREDENTIALS_DIRECTORY`` the file must be owner-only
  (``mode & 0o077 == 0``: 0600 or 0400).
* Inside it, group-read is also accepted (``mode & 0o037 == 0``): systemd
  writes credentials ``0400`` or ``0440`` (group = the service's group) into
  a directory only the service can enter, so group-read there grants nothing
  new. Group write and any access for others are still refused.

Symlinks are followed (deployment tools link secrets into place); every check
applies to the file actually opened, through ``fstat`` on its descriptor, and
the open never blocks on a FIFO.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import attrs

from anu_watchd import fsio
from anu_watchd.errors import SecretError

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
CREDENTIAL_NAME = "anu-key"
REDACTED = "[REDACTED]"
MAX_KEY_BYTES = 4096  # a key file larger than this is a wrong path, not a key
# A shorter key would match ordinary text: results quarantined as KEY_LITERAL, logs redacted.
MIN_KEY_CHARS = 16
_CONFIG_KEY = "key.file"
_MAX_DEPTH = 32
_FILE_HINT = f"use 0600 or 0400 (group-read is allowed only under ${CREDENTIALS_ENV})"
_CRED_HINT = "systemd credentials are 0400 or 0440"


@attrs.frozen(repr=False)
class SealedKey:
    """The key and where it came from; ``repr`` and ``str`` never show the value."""

    path: Path
    value: str = attrs.field(repr=False)

    @property
    def bytes(self) -> bytes:
        """The key as UTF-8 bytes: the HMAC key and the ``KEY_LITERAL`` needle."""
        return self.value.encode("utf-8")

    def __repr__(self) -> str:
        return f"SealedKey(path={str(self.path)!r}, value={REDACTED})"

    __str__ = __repr__

    def __structlog__(self) -> str:
        # structlog's JSON fallback asks for this before repr().
        return REDACTED


# -- loading ----------------------------------------------------------------------


def load_key(
    file: str, *, environ: Mapping[str, str] = os.environ, root: Path | None = None
) -> SealedKey:
    """Read the key file once; ``""`` means ``$CREDENTIALS_DIRECTORY/anu-key``.

    A relative ``file`` resolves against ``root`` when given (the config's
    ``root``), else against the working directory.
    """
    creds = environ.get(CREDENTIALS_ENV) or None
    path = _key_path(file, creds, root)
    inside = creds is not None and _is_inside(path, Path(creds))
    return SealedKey(path=path, value=_read_key(path, inside_credentials=inside))


def _key_path(file: str, creds: str | None, root: Path | None) -> Path:
    if not file:
        if creds is None:
            raise SecretError(
                _CONFIG_KEY, f"is empty and ${CREDENTIALS_ENV} is not set (no LoadCredential=?)"
            )
        return Path(creds) / CREDENTIAL_NAME
    path = Path(file)
    if not path.is_absolute() and root is not None:
        path = root / path
    return path


def _is_inside(path: Path, directory: Path) -> bool:
    try:
        return path.resolve().is_relative_to(directory.resolve())
    except OSError:
        return False


def _read_key(path: Path, *, inside_credentials: bool) -> str:
    raw = _read_checked(path, inside_credentials=inside_credentials)
    value = _stripped_text(raw, path, config_key=_CONFIG_KEY, what="key file")
    if len(value) < MIN_KEY_CHARS:
        # The length only: the value itself never appears in an error.
        raise SecretError(
            _CONFIG_KEY,
            f"{path}: the key is {len(value)} characters, fewer than {MIN_KEY_CHARS}; a short key "
            "would match ordinary text (every result quarantined KEY_LITERAL, logs redacted); "
            "generate one with: openssl rand -hex 32",
        )
    return value


def _read_checked(
    path: Path,
    *,
    inside_credentials: bool,
    config_key: str = _CONFIG_KEY,
    max_bytes: int = MAX_KEY_BYTES,
) -> bytes:
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise SecretError(config_key, f"{path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        _check_stat(path, st, inside_credentials=inside_credentials, config_key=config_key)
        data = os.read(fd, max_bytes + 1)
    except OSError as exc:
        raise SecretError(config_key, f"{path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise SecretError(config_key, f"{path}: larger than {max_bytes} bytes")
    return data


def _check_stat(
    path: Path, st: os.stat_result, *, inside_credentials: bool, config_key: str
) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise SecretError(config_key, f"{path}: not a regular file")
    forbidden = 0o037 if inside_credentials else 0o077
    if st.st_mode & forbidden:
        mode = stat.S_IMODE(st.st_mode)
        hint = _CRED_HINT if inside_credentials else _FILE_HINT
        raise SecretError(config_key, f"{path}: mode {mode:04o} is too open; {hint}")


def read_secret_file(
    path: Path, *, config_key: str, environ: Mapping[str, str], max_bytes: int
) -> str:
    """Another secret file (NATS credentials) under the key file's rules, stripped.

    The same mode rule, the same bounded non-blocking read; refusals name
    ``config_key`` and the path, never the content.
    """
    creds = environ.get(CREDENTIALS_ENV) or None
    inside = creds is not None and _is_inside(path, Path(creds))
    raw = _read_checked(
        path, inside_credentials=inside, config_key=config_key, max_bytes=max_bytes
    )
    return _stripped_text(raw, path, config_key=config_key, what="file")


def _stripped_text(raw: bytes, path: Path, *, config_key: str, what: str) -> str:
    """A secret file's content as stripped UTF-8 text; refusals name the path, never the text."""
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretError(config_key, f"{path}: not valid UTF-8") from None
    if not value:
        raise SecretError(config_key, f"{path}: empty {what}")
    return value


# -- creating (make run's development key) ----------------------------------------


def generate_key_file(path: Path) -> SealedKey:
    """Create ``path`` holding a new random key (mode 0600), or load the one already there.

    The key is written to a private temp file, fsynced, then hard-linked into
    place: ``link`` never replaces, so two racing callers both end up with the
    one key that won, and a crash never leaves a half-written key file.
    """
    if path.exists():
        return load_key(str(path))
    value = secrets.token_urlsafe(32)
    tmp = path.with_name(f".tmp-{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(value.encode() + b"\n")
            fh.flush()
            fsio.fsync(fh.fileno())  # the one fsync seam (fsio)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsio.fsync_dir(path.parent)
    return load_key(str(path))


# -- redaction --------------------------------------------------------------------

Processor = Callable[[Any, str, MutableMapping[str, Any]], MutableMapping[str, Any]]


def redact_processor(key: SealedKey | None) -> Processor:
    """A structlog processor replacing the key, wherever it appears, with ``[REDACTED]``.

    Walks every key and value of the event dict: strings, bytes, nested
    dicts, lists, tuples and sets, and the ``repr``/``str`` of any other
    object (an exception, say). Also catches the key as JSON or ``repr``
    would escape it. Place it after exception rendering so tracebacks are
    covered. Without a key it passes events through untouched.
    """
    if key is None:
        return _passthrough
    redactor = _Redactor(key.value)

    def redact(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> Any:
        return redactor.mapping(event_dict, 0)

    return redact


Renderer = Callable[[Any, str, MutableMapping[str, Any]], Any]


def redacting_renderer(key: SealedKey | None, render: Renderer) -> Renderer:
    """``render`` (a renderer that leaves the event dict as it found it, as structlog's
    ``JSONRenderer`` does) with the key redacted from what it renders.

    For a key no escaper changes (printable ASCII without a backslash or a quote, as
    ``token_urlsafe`` makes), every form of it anywhere in the event dict, nested,
    escaped once or twice, comes out of the renderer as the key itself: so the rendered
    line is searched once, and only a line that holds it (or a dict the renderer cannot
    take as it is: a repr that raises, a list holding itself) is rendered again from
    the walked dict (``redact_processor``). The walk costs ~0.1 ms a line; the search a
    microsecond. Any other key is walked before every render.

    Whatever was walked, the final line is searched too: an object's
    ``__structlog__`` (which the renderer asks before ``repr``) is not something the
    walk can see, so a key it returns is replaced in the line itself.
    """
    if key is None:
        return render
    redactor = _Redactor(key.value)

    def walked(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> Any:
        line = render(logger, name, redactor.mapping(event_dict, 0))
        return redactor.text(line) if isinstance(line, str) else line

    if not _inert(key.value):
        return walked
    value = key.value

    def searched(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> Any:
        try:
            line = render(logger, name, event_dict)
        except Exception:  # the walk makes anything renderable
            return walked(logger, name, event_dict)
        if value not in line:
            return line
        return walked(logger, name, event_dict)

    return searched


def _inert(value: str) -> bool:
    """True when JSON, ``repr`` and ``ascii`` leave every character of ``value`` as it is."""
    return bool(value) and all(" " <= c <= "~" and c not in "\\\"'" for c in value)


def redact_text(text: str, key: SealedKey | None) -> str:
    """``text`` with the key, in any form an escaper gives it, replaced by ``[REDACTED]``.

    The one redaction every string from outside (sink output, HTTP bodies,
    schedule ids, error text) passes before it reaches a file or a log line.
    """
    if key is None or not key.value:
        return text
    return _Redactor(key.value).text(text)


def holds_key(text: str, key: SealedKey | None) -> bool:
    """True when ``text`` holds the key in any form an escaper gives it."""
    return redact_text(text, key) != text


def redact_cut(text: str, key: SealedKey | None, *, head: bool, tail: bool) -> str:
    """Redact ``text``, a piece cut out of a longer output, so no part of the key survives.

    After the whole key is replaced, a cut may still have split one: the part
    before a cut at the end is a prefix of the key, the part after a cut at the
    start a suffix. So a ``tail`` cut also replaces the longest prefix of the
    key the text ends with, and a ``head`` cut the longest suffix it starts
    with (even one character: a false match costs a character, a miss a leak).
    """
    if key is None or not key.value:
        return text
    text = redact_text(text, key)
    for needle in _needles(key.value):
        if tail:
            text = _scrub_tail(text, needle)
        if head:
            text = _scrub_head(text, needle)
    return text


def _scrub_tail(text: str, needle: str) -> str:
    for k in range(min(len(needle) - 1, len(text)), 0, -1):
        if text.endswith(needle[:k]):
            return text[:-k] + REDACTED
    return text


def _scrub_head(text: str, needle: str) -> str:
    for k in range(min(len(needle) - 1, len(text)), 0, -1):
        if text.startswith(needle[-k:]):
            return REDACTED + text[k:]
    return text


def _passthrough(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> Any:
    return event_dict


def _needles(value: str) -> tuple[str, ...]:
    # The raw key plus the forms an escaper would turn it into, longest first.
    forms = {value, json.dumps(value)[1:-1], repr(value)[1:-1], ascii(value)[1:-1]}
    return tuple(sorted(forms, key=len, reverse=True))


class _Redactor:
    def __init__(self, value: str) -> None:
        self.needles = _needles(value)
        self.byte_needles = tuple(n.encode("utf-8") for n in self.needles)

    def text(self, s: str) -> str:
        for needle in self.needles:
            if needle in s:
                s = s.replace(needle, REDACTED)
        return s

    def mapping(self, d: MutableMapping[str, Any], depth: int) -> Any:
        text, walk, inner = self.text, self.any, depth + 1
        # Plain str keys and values (nearly all of them) skip the dispatch: ~30% of the walk.
        items = [
            (
                text(k) if type(k) is str else walk(k, inner),
                text(v) if type(v) is str else walk(v, inner),
            )
            for k, v in d.items()
        ]
        d.clear()
        d.update(items)
        return d

    def any(self, v: Any, depth: int) -> Any:
        if type(v) is str:
            return self.text(v)
        if v is None or isinstance(v, bool | int | float):
            return v
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, SealedKey):
            return REDACTED
        if depth > _MAX_DEPTH:
            return self.text(repr(v))
        return self.container(v, depth)

    def container(self, v: Any, depth: int) -> Any:
        if isinstance(v, bytes | bytearray):
            return self.raw(bytes(v))
        if isinstance(v, dict):
            return self.mapping(dict(v), depth)
        if type(v) is tuple:
            return tuple(self.any(x, depth + 1) for x in v)
        if isinstance(v, list | tuple | set | frozenset):
            # Subclasses (namedtuples) may not rebuild from an iterable; a list renders alike.
            return [self.any(x, depth + 1) for x in v]
        return self.opaque(v)

    def raw(self, b: bytes) -> bytes | str:
        if any(n in b for n in self.byte_needles):
            return self.text(repr(b))
        return b

    def opaque(self, v: Any) -> Any:
        # Renderers show unknown objects by repr (JSON) or str (exceptions in text).
        try:
            shown = (repr(v), str(v))
        except Exception:
            return "[UNREPRESENTABLE]"
        if any(n in s for s in shown for n in self.needles):
            return self.text(shown[0])
        return v
