"""Every stream key, group name and key prefix of MarketSwarm: the one source of truth for names.

Per-underlying keys carry the Redis Cluster hash tag of their underlying (``ms:{SPX}:...``), so one
underlying's streams and state share a slot and one MULTI/EXEC can touch all of them.
The ``.v1`` suffix is the major version of the schema the stream carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

PREFIX = "ms"

# Retention. Streams are trimmed approximately (``MAXLEN ~`` / ``MINID ~``) at every XADD. Time-based
# bounds (MINID, from the entry ids' server time) keep memory proportional to throughput x time;
# each is far beyond the consumer lag at which the alerts fire, so nothing a group has not read is
# trimmed in normal operation (a group that falls further behind than this has its pending entries
# counted as marketswarm_trimmed_pending_total).
RAW_RETENTION_S = 2 * 3600  # raw provider bytes: two hours for replay / re-normalization
EVENTS_RETENTION_S = 30 * 60
CHANGES_RETENTION_S = 30 * 60
STAGED_RETENTION_S = 10 * 60
DIFFS_MAXLEN = 2_000  # diffs double as SSE history; ids are versions, so trimmed by count
REJECTS_MAXLEN = 100_000
DLQ_MAXLEN = 100_000


class Payload(StrEnum):
    """What a stream's entries carry; schemas/codec.py owns how each is encoded."""

    RAW = "raw"  # provider bytes + receive time
    EVENTS = "events"  # typed market events (schemas/events.py)
    CHANGES = "changes"  # admitted state changes from hydrate
    TILES = "tiles"  # staged tile updates from a calc agent
    DIFF = "diff"  # a published version's diff
    REJECT = "reject"  # bad input with its reason
    TEST = "test"  # used by the runtime's own tests and benchmarks


@dataclass(frozen=True)
class StreamSpec:
    """One logical stream; per-underlying streams have one Redis key per underlying."""

    name: str
    template: str  # formatted with u=<underlying>
    payload: Payload
    maxlen: int | None = None
    retention_s: int | None = None
    ingress: bool = False  # written by sources outside the agent graph

    def key(self, underlying: str) -> str:
        return self.template.format(u=underlying)


def _k(suffix: str) -> str:
    return PREFIX + ":{{{u}}}:" + suffix


RAW = StreamSpec("raw", _k("raw.v1"), Payload.RAW, retention_s=RAW_RETENTION_S, ingress=True)
EVENTS = StreamSpec("events", _k("events.v1"), Payload.EVENTS, retention_s=EVENTS_RETENTION_S)
REJECTS = StreamSpec("rejects", _k("rejects.v1"), Payload.REJECT, maxlen=REJECTS_MAXLEN)
CHANGES = StreamSpec("changes", _k("changes.v1"), Payload.CHANGES, retention_s=CHANGES_RETENTION_S)


class Strategy(StrEnum):
    SINGLE = "single"
    VERTICAL = "vertical"
    BUTTERFLY = "butterfly"
    GEX = "gex"


HEATMAP_STRATEGIES = (Strategy.SINGLE, Strategy.VERTICAL, Strategy.BUTTERFLY)
STRATEGIES = (*HEATMAP_STRATEGIES, Strategy.GEX)

STAGED: dict[str, StreamSpec] = {
    s: StreamSpec(f"staged.{s}", _k(f"staged:{s}.v1"), Payload.TILES, retention_s=STAGED_RETENTION_S)
    for s in STRATEGIES
}
DIFFS: dict[str, StreamSpec] = {
    s: StreamSpec(f"diffs.{s}", _k(f"diffs:{s}.v1"), Payload.DIFF, maxlen=DIFFS_MAXLEN) for s in STRATEGIES
}

# Sources that cannot attribute a frame to an underlying (a WebSocket frame that is not JSON) write
# its reject here; "edge" is a pseudo-underlying so the key keeps the same shape.
EDGE = "edge"

# Test stream used by the runtime's tests and benchmark (the counting agent).
TEST_IN = StreamSpec("test.in", _k("test.in.v1"), Payload.TEST, maxlen=1_000_000, ingress=True)


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


def spot_key(u: str) -> str:
    """String: the latest admitted spot, ``<newness>|<value>``."""
    return f"{PREFIX}:{{{u}}}:spot"


def fills_key(u: str) -> str:
    """Sorted set of recently counted fill ids (score: event time ms), so a fill counts once."""
    return f"{PREFIX}:{{{u}}}:fills"


def publish_state_key(u: str, strategy: str) -> str:
    """Hash: the publisher's bookkeeping of (underlying, strategy): ``state`` (last version, the staged
    entry it went through, last checkpoint; for restore) and ``staging`` (counts for the inspector)."""
    return f"{PREFIX}:{{{u}}}:publish:{strategy}"


def model_key(u: str, strategy: str) -> str:
    """Hash: the last checkpoint of the published model of (underlying, strategy): tile key -> tile
    JSON, plus ``_header`` (version, epoch, asof, spot, strategy fields). The current model is this
    plus the diffs after it (agents/publish/models.py). Written only by its publisher."""
    return f"{PREFIX}:{{{u}}}:model:{strategy}.v1"


def lease_key(u: str, agent: str) -> str:
    """String: the owner of stateful per-(underlying, agent) work, ``<consumer>:<token>``."""
    return f"{PREFIX}:{{{u}}}:lease:{agent}"


def lease_token_key(u: str, agent: str) -> str:
    """Counter: fencing tokens handed out for a lease."""
    return f"{PREFIX}:{{{u}}}:lease:{agent}:token"


def heartbeat_key(agent: str, consumer: str) -> str:
    """String with TTL: an agent process is alive (``marketswarm check AGENT``)."""
    return f"{PREFIX}:hb:{agent}:{consumer}"


HEARTBEAT_PATTERN = f"{PREFIX}:hb:*"


def underlyings_key() -> str:
    """Set: every underlying that has ever had a stream, for the inspector and the gateway."""
    return f"{PREFIX}:underlyings"


def test_sums_key(u: str) -> str:
    """Hash: per-key sums kept by the counting agent (runtime tests and benchmark)."""
    return f"{PREFIX}:{{{u}}}:test.sums"


def calc_checkpoint_key(u: str, strategy: str) -> str:
    """Hash: a calc agent's inputs as of its last commit (epoch, grid symbols, quotes, spot), written
    atomically with its XACK, so a restarted calc resumes exactly where its acked position left it."""
    return f"{PREFIX}:{{{u}}}:calc:{strategy}"
