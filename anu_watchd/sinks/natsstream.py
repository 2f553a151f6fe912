"""The stream check of the nats sink: what dedupe the broker gives, read from the stream.

Exactly one message per result rests on the broker dropping a re-fire
(docs/operations.md, "Fleet"). It does so in one of two ways:

* per-key: the subject carries ``{key}`` and the stream keeps one message a
  subject and refuses the next (``max_msgs_per_subject = 1``,
  ``discard = new``, ``discard_new_per_subject``): no time limit;
* windowed: ``Nats-Msg-Id`` inside the stream's duplicate window (2 minutes
  by default): a daemon that crashes and re-fires later than that puts a
  second message in the stream.

``facts_of`` and ``dedupe_at_risk`` are pure; ``check_stream`` asks the
JetStream API which stream captures the subject and reads its config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from nats.js.api import StreamInfo
    from nats.js.manager import JetStreamManager

PROBE_KEY = "ik1-0000000000000000000000000000000000000000"


def render_subject(template: str, *, host: str, key: str) -> str:
    """The subject of one wake: ``{host}`` and ``{key}`` filled in."""
    return template.replace("{host}", host).replace("{key}", key)


@attrs.frozen
class StreamFacts:
    """What the check read from the stream, as logged by ``nats_stream_checked``."""

    stream: str
    duplicate_window_s: float
    storage: str
    replicas: int
    per_key_dedupe: bool
    allow_direct: bool

    def log_fields(self) -> dict[str, object]:
        return attrs.asdict(self)


def facts_of(info: StreamInfo, subject_template: str) -> StreamFacts:
    """The dedupe facts of a stream for subjects made from ``subject_template``."""
    cfg = info.config
    discard = getattr(cfg.discard, "value", cfg.discard)
    per_key = (
        "{key}" in subject_template
        and cfg.max_msgs_per_subject == 1
        and discard == "new"
        and bool(cfg.discard_new_per_subject)
    )
    storage = getattr(cfg.storage, "value", cfg.storage)
    return StreamFacts(
        stream=str(cfg.name),
        duplicate_window_s=float(cfg.duplicate_window or 0.0),
        storage=str(storage),
        replicas=int(cfg.num_replicas or 1),
        per_key_dedupe=per_key,
        allow_direct=bool(getattr(cfg, "allow_direct", False)),
    )


def dedupe_at_risk(facts: StreamFacts, min_dedupe_s: float) -> bool:
    """True when a re-fire after a crash could fall outside the broker's dedupe."""
    return not facts.per_key_dedupe and facts.duplicate_window_s < min_dedupe_s


async def check_stream(
    jsm: JetStreamManager, *, stream: str, subject_template: str, host: str
) -> StreamFacts:
    """Read the configured stream, or whichever captures this host's subjects."""
    name = stream or await jsm.find_stream_name_by_subject(
        render_subject(subject_template, host=host, key=PROBE_KEY)
    )
    return facts_of(await jsm.stream_info(name), subject_template)
