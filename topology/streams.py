"""Every stream key, group name and key prefix of MarketSwarm: the one source of truth for names.

Per-underlying keys carry the Redis Cluster hash tag of their underlying (``ms:{SPX}:...``), so one
underlying's streams and state share a slot and one commit script can touch all of them.
The ``.v1`` suffix is the major version of the schema the stream carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from marketswarm.schemas.payloads import Payload as Payload  # re-exported: each StreamSpec names its payload

PREFIX = "ms"
MiB = 1 << 20

# Retention. Every stream is bounded in bytes (Redis' own accounting, MEMORY USAGE) and most also in
# age; writers append without trimming and topology/retention.py trims each stream they wrote, oldest
# first, never past an entry a group has not acknowledged. The byte bounds size a whole trading
# session (README, "What a trading day costs"); the age bounds keep quiet streams short.
RAW_MAX_BYTES = 48 * MiB  # raw provider bytes: the window for re-normalization (`marketswarm rebuild`)
RAW_MAX_AGE_S = 2 * 3600
EVENTS_MAX_BYTES = 24 * MiB
CHANGES_MAX_BYTES = 24 * MiB
FLOW_MAX_AGE_S = 30 * 60  # events and changes: agents need only what they have not acknowledged
STAGED_MAX_BYTES = 8 * MiB
STAGED_MAX_AGE_S = 10 * 60
# Diffs double as SSE history (Last-Event-ID resume). Bytes only: their ids are versions, not times.
DIFFS_MAX_BYTES = 16 * MiB
# A heatmap's diffs carry mid and natural debit per changed tile (theo and PoP at a refresh): twice the
# bound keeps about the minute of versions a single mid column kept in 16 MiB.
HEATMAP_DIFFS_MAX_BYTES = 32 * MiB
REJECTS_MAX_BYTES = 8 * MiB
DLQ_MAX_BYTES = 16 * MiB
# History (schemas/history.py): kept by event time for the day and the day before, across a weekend
# (the age runs from the newest entry, so a replay of an old day keeps it too), and bounded in bytes
# (README, "The day as a timeline"). Trimmed at most every HISTORY_TRIM_S: they grow slowly.
HISTORY_MAX_AGE_S = 4 * 24 * 3600
LEVELS_MAX_BYTES = 8 * MiB
# A butterfly or vertical grid's keyframe is 130-160 KB with its four columns (mid, natural, theo, PoP):
# 390 a day, about 60 MB.
KEYFRAMES_MAX_BYTES = 160 * MiB
GEOMETRIES_MAX_AGE_S = 7 * 24 * 3600  # longer than the keyframes that name them
GEOMETRIES_MAX_BYTES = 16 * MiB
# Recent checkpoints of the heatmaps and GEX: where `?at=` starts applying the retained diffs. They
# outlast the diffs (a checkpoint every 5 s of event time), so every retained diff after the first
# retained checkpoint is reachable (a trim does not cut the diffs at a checkpoint).
CHECKPOINTS_MAX_BYTES = 16 * MiB  # a butterfly checkpoint is about 400 KB: some 40 of them, over 3 minutes
HISTORY_TRIM_S = 30.0
# Alerts (schemas/alerts.py): a few hundred a day; kept like the history, ids are event times.
ALERTS_MAX_BYTES = 4 * MiB
REJECTS_MAXLEN = 100_000  # sources outside the runtime trim their rejects by count at XADD as well


@dataclass(frozen=True)
class StreamSpec:
    """One logical stream; per-underlying streams have one Redis key per underlying."""

    name: str
    template: str  # formatted with u=<underlying>
    payload: Payload
    max_bytes: int  # memory bound of one key (topology/retention.py trims to it)
    max_age_s: int | None = None  # entries older than this (by entry id time) are trimmed as well
    ingress: bool = False  # written by sources outside the agent graph
    versioned: bool = False  # entry ids are model versions (``<version>-0``), not times
    trim_every_s: float = 0.0  # trimmed at most this often (at least the trimmer's interval)

    def key(self, underlying: str) -> str:
        return self.template.format(u=underlying)


def entry_id_ms(entry_id: bytes | str) -> int:
    """The first part of a stream entry id ``<ms>-<seq>``: its time in ms (the version, on diffs)."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.partition("-")[0])


def per_underlying(suffix: str) -> str:
    """The key template of a per-underlying stream: its underlying's hash tag, then ``suffix``."""
    return PREFIX + ":{{{u}}}:" + suffix


RAW = StreamSpec("raw", per_underlying("raw.v1"), Payload.RAW, RAW_MAX_BYTES, RAW_MAX_AGE_S, ingress=True)
EVENTS = StreamSpec("events", per_underlying("events.v1"), Payload.EVENTS, EVENTS_MAX_BYTES, FLOW_MAX_AGE_S)
REJECTS = StreamSpec("rejects", per_underlying("rejects.v1"), Payload.REJECT, REJECTS_MAX_BYTES)
CHANGES = StreamSpec("changes", per_underlying("changes.v1"), Payload.CHANGES, CHANGES_MAX_BYTES, FLOW_MAX_AGE_S)


class Strategy(StrEnum):
    SINGLE = "single"
    VERTICAL = "vertical"
    BUTTERFLY = "butterfly"
    GEX = "gex"


HEATMAP_STRATEGIES = (Strategy.SINGLE, Strategy.VERTICAL, Strategy.BUTTERFLY)
STRATEGIES = (*HEATMAP_STRATEGIES, Strategy.GEX)


class Derived(StrEnum):
    """Models derived from the published ones and the trade flow (agents/derive/): small documents,
    published and versioned like the others, with the whole document in each version's header."""

    MARKET_MODE = "market_mode"
    GRAVITY = "gravity"
    INTENT = "intent"
    BEST_FLIES = "best_flies"


DERIVED = tuple(Derived)
MODELS = (*STRATEGIES, *DERIVED)  # every published model: REST, SSE, export

# v2: columns (schemas/models.py); v1 carried per-tile JSON.
STAGED: dict[str, StreamSpec] = {
    s: StreamSpec(f"staged.{s}", per_underlying(f"staged:{s}.v2"), Payload.TILES, STAGED_MAX_BYTES, STAGED_MAX_AGE_S)
    for s in STRATEGIES
}
DIFFS: dict[str, StreamSpec] = {
    s: StreamSpec(
        f"diffs.{s}",
        per_underlying(f"diffs:{s}.v2"),
        Payload.DIFF,
        HEATMAP_DIFFS_MAX_BYTES if s in HEATMAP_STRATEGIES else DIFFS_MAX_BYTES,
        versioned=True,
    )
    for s in MODELS
}

LEVEL_MODELS = (Strategy.GEX, Derived.MARKET_MODE, Derived.GRAVITY, Derived.INTENT)  # schemas/history.py
LEVELS: dict[str, StreamSpec] = {
    m: StreamSpec(
        f"levels.{m}",
        per_underlying(f"levels:{m}.v1"),
        Payload.LEVELS,
        LEVELS_MAX_BYTES,
        HISTORY_MAX_AGE_S,
        trim_every_s=HISTORY_TRIM_S,
    )
    for m in LEVEL_MODELS
}
KEYFRAMES: dict[str, StreamSpec] = {
    m: StreamSpec(
        f"keyframes.{m}",
        per_underlying(f"keyframes:{m}.v1"),
        Payload.KEYFRAME,
        KEYFRAMES_MAX_BYTES,
        HISTORY_MAX_AGE_S,
        trim_every_s=HISTORY_TRIM_S,
    )
    for m in MODELS
}
CHECKPOINTS: dict[str, StreamSpec] = {
    s: StreamSpec(f"checkpoints.{s}", per_underlying(f"checkpoints:{s}.v1"), Payload.KEYFRAME, CHECKPOINTS_MAX_BYTES)
    for s in STRATEGIES
}
GEOMETRIES: dict[str, StreamSpec] = {
    s: StreamSpec(
        f"geometries.{s}",
        per_underlying(f"geometries:{s}.v1"),
        Payload.GEOMETRY,
        GEOMETRIES_MAX_BYTES,
        GEOMETRIES_MAX_AGE_S,
        trim_every_s=HISTORY_TRIM_S,
    )
    for s in STRATEGIES
}

# One alerts stream per model the rules watch (schemas/alerts.py, WATCHED), each written by the
# vigil agent that follows that model: its ids are event times, so each has one writer.
ALERTS: dict[str, StreamSpec] = {
    m: StreamSpec(
        "alerts" if m == "gex" else f"alerts.{m}",
        per_underlying("alerts.v1" if m == "gex" else f"alerts:{m}.v1"),
        Payload.ALERT,
        ALERTS_MAX_BYTES,
        HISTORY_MAX_AGE_S,
        trim_every_s=HISTORY_TRIM_S,
    )
    for m in ("gex", "intent", "best_flies")
}
# Webhook deliveries that failed until their deadline (agents/vigil/courier.py): the alert, the
# receiver and the last error. Written outside the agent graph, trimmed by count at XADD.
ALERTS_DEAD = StreamSpec("alerts.dead", per_underlying("alerts:dead.v1"), Payload.DEAD, DLQ_MAX_BYTES)
ALERTS_DEAD_MAXLEN = 10_000

# Sources that cannot attribute a frame to an underlying (a WebSocket frame that is not JSON) write
# its reject here; "edge" is a pseudo-underlying so the key keeps the same shape.
EDGE = "edge"

# Dead letters of any stream (``dlq_key``): bounded like every stream; written by the runtime.
DLQ = StreamSpec("dlq", "{u}.dlq", Payload.DEAD, DLQ_MAX_BYTES)


def dlq_key(stream_key: str) -> str:
    """Dead letters of a stream: ``<key>.dlq``."""
    return stream_key + ".dlq"


def errors_key(stream_key: str) -> str:
    """Hash of the last error text per pending entry id of a stream (read when dead-lettering)."""
    return stream_key + ".errors"


# --- state keys (per underlying) -------------------------------------------------------------


def epoch_pointer_key(u: str) -> str:
    """String: the active epoch id of an underlying (switched atomically on promotion)."""
    return f"{PREFIX}:{{{u}}}:epoch"


def epoch_meta_key(u: str, epoch: str) -> str:
    """Hash: an epoch's geometry, status and times."""
    return f"{PREFIX}:{{{u}}}:epoch:{epoch}"


def epochs_index_key(u: str) -> str:
    """Sorted set of epoch ids by creation event time (active, warming and retired)."""
    return f"{PREFIX}:{{{u}}}:epochs"


def state_key(u: str, epoch: str) -> str:
    """Hash: the hydrated market state of one epoch, fields ``<symbol>`` and ``<symbol>|<slot>``."""
    return f"{PREFIX}:{{{u}}}:state:{epoch}"


STATE_VALUE_HEADER = 32  # a state hash value: a fixed-size ordering header, then the JSON (agents/hydrate/hydrate.lua)


def spot_key(u: str) -> str:
    """String: the latest admitted spot, ``<newness><SpotChange JSON>``."""
    return f"{PREFIX}:{{{u}}}:spot"


def vol_index_key(u: str) -> str:
    """String: the latest admitted volatility index (VIX) as this underlying saw it, ``<newness><VolChange JSON>``."""
    return f"{PREFIX}:{{{u}}}:vix"


def fills_key(u: str) -> str:
    """Sorted set of recently counted fill ids (score: event time ms), so a fill counts once."""
    return f"{PREFIX}:{{{u}}}:fills"


# Fields of the checkpoint and bookkeeping hashes (publish_state_key, the calc and derive checkpoints).
STATE_FIELD = "state"  # what an agent restores from: a calc's inputs, a publisher's last version, intent's flow
STAGING_FIELD = "staging"  # the publisher's staging counts, for the inspector
THROUGH_FIELD = "through"  # a follower's checkpoint: the last entry of the followed diffs it holds


def publish_state_key(u: str, strategy: str) -> str:
    """Hash: the publisher's bookkeeping of (underlying, strategy): ``state`` (last version, the staged
    entry it went through, last checkpoint; for restore) and ``staging`` (counts for the inspector)."""
    return f"{PREFIX}:{{{u}}}:publish:{strategy}"


def model_key(u: str, strategy: str) -> str:
    """Hash: the last checkpoint of the published model of (underlying, strategy): ``_header``
    (version, epoch, asof, spot, strategy fields), ``_geometry`` and ``_cols`` (dense columns). The
    current model is this plus the diffs after it (topology/published.py). Written only by its
    publisher."""
    return f"{PREFIX}:{{{u}}}:model:{strategy}.v2"


def lease_key(u: str, agent: str) -> str:
    """String: the owner of stateful per-(underlying, agent) work, ``<consumer>:<token>``."""
    return f"{PREFIX}:{{{u}}}:lease:{agent}"


def lease_token_key(u: str, agent: str) -> str:
    """Counter: fencing tokens handed out for a lease."""
    return f"{PREFIX}:{{{u}}}:lease:{agent}:token"


# Global keys (not of one underlying) share one hash tag, GLOBAL_TAG: on Redis Cluster they live in
# one slot, so a failover or a resharding moves them together, and the few commands that read them
# together (the inspector, `marketswarm check`, the gateway's list of underlyings) ask one node. They
# are small and written rarely (a SADD per new underlying, a heartbeat per process every few seconds),
# so one slot is no hot spot. No commit touches them: a commit stays in its underlying's slot.
GLOBAL_TAG = "{ms}"


def heartbeat_key(agent: str, consumer: str) -> str:
    """String with TTL: an agent process is alive (``marketswarm check AGENT``)."""
    return f"{PREFIX}:{GLOBAL_TAG}:hb:{agent}:{consumer}"


def model_settings_key() -> str:
    """String: the model settings in force (JSON; topology/model_settings.py), adopted by every agent."""
    return f"{PREFIX}:{GLOBAL_TAG}:model-settings"


def underlyings_key() -> str:
    """Set: every underlying that has ever had a stream, for the inspector and the gateway."""
    return f"{PREFIX}:{GLOBAL_TAG}:underlyings"


def calc_flushes_key(u: str, strategy: str) -> str:
    """List: the changes entries after which a calc agent flushed since its last checkpoint (a restore
    flushes again at the same points)."""
    return f"{PREFIX}:{{{u}}}:calc:{strategy}.v2:flushes"


def derive_checkpoint_key(u: str, model: str) -> str:
    """Hash: a derived model agent's inputs as of a recent commit (the model it follows as columns,
    or the trade flow), and the input entry it went through; the entries acked since are re-applied."""
    return f"{PREFIX}:{{{u}}}:derive:{model}.v1"


def vigil_checkpoint_key(u: str, model: str) -> str:
    """Hash: the model an alerts agent follows, as it last checkpointed it (topology/following.py)."""
    return f"{PREFIX}:{{{u}}}:vigil:{model}.v1"


def vigil_state_key(u: str, model: str) -> str:
    """String: the state of the rules watching ``model`` (sides, armed levels, last firings), written in
    every commit that changed it, so a restore re-applies the diffs since without firing again."""
    return f"{PREFIX}:{{{u}}}:vigil:{model}:rules.v1"


def deliveries_key(u: str) -> str:
    """Hash: per webhook receiver and alerts stream (``<receiver>|<stream name>``), the last alert id
    it was given (delivered or dead-lettered)."""
    return f"{PREFIX}:{{{u}}}:vigil:deliveries.v1"


def calc_checkpoint_key(u: str, strategy: str) -> str:
    """Hash: a calc agent's inputs as of its last commit (epoch, grid, quotes as arrays, spot), written
    atomically with its XACK, so a restarted calc resumes exactly where its acked position left it."""
    return f"{PREFIX}:{{{u}}}:calc:{strategy}.v2"
