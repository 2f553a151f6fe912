"""The configuration: a TOML file validated into a frozen attrs tree.

Structuring goes through cattrs with strict scalar hooks (cattrs would turn
``"3"`` into ``3``; an operator's typo should be an error, not a guess) and
``forbid_extra_keys`` so a misspelt key is refused rather than ignored.
Every error names the dotted key path and the reason. Reload builds a new
``Config``; nothing here is ever mutated.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError

from anu_watchd.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/anu-watchd/anu-watchd.toml")
CONFIG_ENV = "ANU_WATCHD_CONFIG"
SINKS = ("exec", "http", "nats", "log")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "console")
# A fleet host's name in NATS subjects and logs (docs/operations.md, "Fleet").
HOST_ID_RE = re.compile(r"[a-z0-9_-]{1,64}")
# A subject template's tokens once {host} and {key} are filled: no wildcard, no blank.
_SUBJECT_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-{}$]+")
_NATS_URL_SCHEMES = ("nats://", "tls://")

T = TypeVar("T")


def _positive(_inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attr.name}: must be greater than 0")


def _not_negative(_inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attr.name}: must be 0 or greater")


def _one_of(choices: tuple[str, ...]) -> Callable[[Any, attrs.Attribute[Any], str], None]:
    def check(_inst: Any, attr: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise ValueError(f"{attr.name}: expected one of {', '.join(choices)}, got {value!r}")

    return check


@attrs.frozen
class SpoolConfig:
    events_dir: Path = Path("memory/events")
    result_glob: str = "task-*.result.json"
    quarantine_dir: Path = Path("memory/events/quarantine")
    ledger: Path = Path("memory/events/callback_4tuple_index.jsonl")
    evidence_log: Path = Path("memory/events/p0b_driver_runs.jsonl")
    enable_flag: Path = Path("memory/state/p0b_driver_enabled")
    lock_file: Path = Path("memory/state/anu-watchd.lock")
    max_result_bytes: int = attrs.field(default=65536, validator=_positive)
    # A rescan leaves an invalid result changed this recently to settle (docs/operations.md).
    settle_s: float = attrs.field(default=2.0, validator=_not_negative)
    collector: str = "anu"
    executors: tuple[str, ...] = ()


@attrs.frozen
class ExecConfig:
    argv: tuple[str, ...] = ()
    update_argv: tuple[str, ...] = ()
    process: bool = False  # long-running co-process handlers (docs/operations.md)


@attrs.frozen
class HttpConfig:
    url: str = ""


@attrs.frozen
class NatsConfig:
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    subject: str = "anu.wake.{host}"
    stream: str = ""
    host_id: str = ""  # "" = the host name, normalised (resolved at load)
    creds_file: str = ""
    tls_ca_file: str = ""
    min_dedupe_s: float = attrs.field(default=3600.0, validator=_positive)


@attrs.frozen
class WakeConfig:
    activated: bool = False
    sink: str = attrs.field(default="log", validator=_one_of(SINKS))
    concurrency: int = attrs.field(default=4, validator=_positive)
    attempts: int = attrs.field(default=3, validator=_positive)
    backoff_initial_s: float = attrs.field(default=0.5, validator=_positive)
    backoff_max_s: float = attrs.field(default=8.0, validator=_positive)
    timeout_s: float = attrs.field(default=30.0, validator=_positive)
    receipt_ttl_s: float = attrs.field(default=86400.0, validator=_positive)
    escalate_argv: tuple[str, ...] = ()
    exec: ExecConfig = ExecConfig()
    http: HttpConfig = HttpConfig()
    nats: NatsConfig = NatsConfig()


@attrs.frozen
class KeyConfig:
    file: str = ""


@attrs.frozen
class LogConfig:
    level: str = attrs.field(default="info", validator=_one_of(LOG_LEVELS))
    format: str = attrs.field(default="json", validator=_one_of(LOG_FORMATS))


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError says what is wrong."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected host:port (like 127.0.0.1:9464), got {listen!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _listen(_inst: Any, attr: attrs.Attribute[Any], value: str) -> None:
    if value:
        try:
            parse_listen(value)
        except ValueError as exc:
            raise ValueError(f"{attr.name}: {exc}") from None


@attrs.frozen
class MetricsConfig:
    """``[metrics]``: off unless ``listen`` or ``textfile`` is set (docs/operations.md)."""

    listen: str = attrs.field(default="", validator=_listen)
    textfile: Path = Path()  # Path() = off; else resolved against root


@attrs.frozen
class Config:
    root: Path = Path(".")
    drain_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    rescan_interval_s: float = attrs.field(default=300.0, validator=_positive)
    spool: SpoolConfig = SpoolConfig()
    wake: WakeConfig = WakeConfig()
    key: KeyConfig = KeyConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    # Where it was loaded from; not a TOML key.
    source: Path | None = attrs.field(default=None, eq=False)


def _strict(kind: type[T], noun: str) -> Callable[[Any, type], T]:
    def hook(value: Any, _type: type) -> T:
        # bool is an int in Python; an operator who wrote `attempts = true` made a mistake.
        if isinstance(value, bool) and kind is not bool:
            raise ValueError(f"expected {noun}, got a boolean")
        if kind is float and isinstance(value, int):
            return float(value)  # type: ignore[return-value]
        if not isinstance(value, kind):
            raise ValueError(f"expected {noun}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            # TOML has nan and inf literals; every comparison with NaN is False, so a
            # NaN timeout or backoff would pass `> 0` and then fail or pass at random.
            raise ValueError(f"expected a finite number, got {value}")
        return value

    return hook


def _str_tuple(value: Any, _type: type) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def _converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(float, _strict(float, "a number"))
    conv.register_structure_hook(bool, _strict(bool, "true or false"))
    conv.register_structure_hook(Path, lambda v, _t: Path(_strict(str, "a path string")(v, _t)))
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _str_tuple)
    return conv


_CONVERTER = _converter()


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _first_error(exc: BaseException, path: str) -> ConfigError:
    """Walk cattrs' exception group down to the first leaf and name its key path."""
    if isinstance(exc, ForbiddenExtraKeysError):
        return ConfigError(_join(path, sorted(exc.extra_fields)[0]), "unknown key")
    if isinstance(exc, ClassValidationError):
        with_notes, others = exc.group_exceptions()
        if with_notes:
            inner, note = with_notes[0]
            return _first_error(inner, _join(path, note.name))
        return _first_error(others[0], path)
    if isinstance(exc, BaseExceptionGroup):
        return _first_error(exc.exceptions[0], path)
    msg = str(exc)
    # attrs validators raise from __init__ as "<attribute>: <reason>".
    name, sep, rest = msg.partition(": ")
    if sep and name.isidentifier():
        return ConfigError(_join(path, name), rest)
    return ConfigError(path, msg)


def _resolve(cfg: Config, base: Path) -> Config:
    root = cfg.root if cfg.root.is_absolute() else (base / cfg.root)
    root = Path(os.path.normpath(root))
    paths = {
        f.name: (root / getattr(cfg.spool, f.name))
        for f in attrs.fields(SpoolConfig)
        if f.type in (Path, "Path")
    }
    nats = cfg.wake.nats
    nats = attrs.evolve(
        nats,
        host_id=nats.host_id or normalise_host_id(socket.gethostname()) or "localhost",
        creds_file=_under(root, nats.creds_file),
        tls_ca_file=_under(root, nats.tls_ca_file),
    )
    wake = attrs.evolve(cfg.wake, nats=nats)
    textfile = cfg.metrics.textfile
    if textfile != Path():
        textfile = Path(os.path.normpath(root / textfile))
    return attrs.evolve(
        cfg,
        root=root,
        spool=attrs.evolve(cfg.spool, **paths),
        wake=wake,
        metrics=attrs.evolve(cfg.metrics, textfile=textfile),
    )


def _under(root: Path, path: str) -> str:
    """A non-empty relative path resolved against ``root``; "" stays "" (the default)."""
    return str(root / path) if path and not Path(path).is_absolute() else path


def normalise_host_id(name: str) -> str:
    """A host name as a fleet host id: lower case, every run of other characters one ``-``.

    ``Web1.Example.COM`` -> ``web1-example-com``. Pure; the caller passes the name.
    """
    return re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")[:64]


def _check_nats(nats: NatsConfig) -> None:
    if not nats.servers or not all(s.startswith(_NATS_URL_SCHEMES) for s in nats.servers):
        raise ConfigError("wake.nats.servers", "expected a list of nats:// or tls:// URLs")
    tokens = nats.subject.split(".")
    if not all(_SUBJECT_TOKEN_RE.fullmatch(t) for t in tokens) or "{host}" not in nats.subject:
        raise ConfigError(
            "wake.nats.subject",
            "expected dot-separated tokens of [A-Za-z0-9_-] holding {host} (and optionally {key}); "
            "no wildcards",
        )
    if nats.stream and not re.fullmatch(r"[A-Za-z0-9_-]+", nats.stream):
        raise ConfigError("wake.nats.stream", "a stream name is [A-Za-z0-9_-]")


def _check_semantics(cfg: Config) -> None:
    if cfg.spool.collector in cfg.spool.executors:
        raise ConfigError("spool.executors", "must not contain the collector itself")
    if cfg.wake.backoff_max_s < cfg.wake.backoff_initial_s:
        raise ConfigError("wake.backoff_max_s", "must be at least wake.backoff_initial_s")
    if cfg.wake.sink == "exec" and not cfg.wake.exec.argv:
        raise ConfigError("wake.exec.argv", 'required when wake.sink = "exec"')
    if cfg.wake.exec.process and cfg.wake.exec.update_argv:
        raise ConfigError(
            "wake.exec.update_argv", "not used when wake.exec.process = true (updates go to it)"
        )
    if cfg.wake.sink == "http" and not cfg.wake.http.url.startswith(("http://", "https://")):
        raise ConfigError("wake.http.url", 'required (http:// or https://) when wake.sink = "http"')
    if not HOST_ID_RE.fullmatch(cfg.wake.nats.host_id):
        raise ConfigError("wake.nats.host_id", "must be 1-64 characters of [a-z0-9_-]")
    if cfg.wake.sink == "nats":
        _check_nats(cfg.wake.nats)
    if "/" in cfg.spool.result_glob:
        raise ConfigError("spool.result_glob", "must be a file name pattern, not a path")


def parse_config(data: dict[str, Any], *, base: Path, source: Path | None = None) -> Config:
    """Validate an already-parsed TOML document; relative paths resolve against ``root``."""
    try:
        cfg = _CONVERTER.structure(data, Config)
    except Exception as exc:  # cattrs raises groups of arbitrary leaf errors
        raise _first_error(exc, "") from None
    if "source" in data:
        raise ConfigError("source", "unknown key")
    cfg = _resolve(cfg, base)
    _check_semantics(cfg)
    return attrs.evolve(cfg, source=source)


def config_path(cli_path: str | None) -> Path:
    """``--config``, else ``$ANU_WATCHD_CONFIG``, else the system default."""
    if cli_path:
        return Path(cli_path)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: Path) -> Config:
    """Read and validate ``path``; a relative ``root`` is relative to the file's directory."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("", f"{path}: not valid TOML: {exc}") from None
    config = parse_config(data, base=path.resolve().parent, source=path)
    from anu_watchd.statepaths import check_state_paths  # it imports this module

    check_state_paths(config.spool)
    return config
