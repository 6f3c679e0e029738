"""The normalize agent: raw provider frames to typed events, and bad input to rejects with a reason.

One raw entry gives at most one events entry (carrying the raw entry id as ``src``), so the events
stream's shape depends only on the raw stream, never on batching. Every input element ends as an
event, a reject (``ms:{U}:rejects.v1``, counted by reason) or a counted drop; nothing raises.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from marketswarm.agents.cboe_csv import parse_cboe_csv
from marketswarm.agents.massive_frames import Limits, parse_rest_chain, parse_rest_indices, parse_ws_frame
from marketswarm.agents.parsing import DropReason, Parsed, RejectReason, excerpt
from marketswarm.schemas import codec
from marketswarm.schemas.codec import RawFrame
from marketswarm.schemas.events import EventBatch, Trade
from marketswarm.schemas.models import Reject
from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec, Effects, Entry, Output
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings

# Raw frame formats (RawFrame.src); sources name the format they wrote.
WS = "massive.ws"
WS_DELAYED = "massive.ws.delayed"  # the same frames from the provider's delayed feed
REST_CHAIN = "massive.rest.chain"
REST_INDICES = "massive.rest.indices"
CBOE_CSV = "cboe.csv"
FORMATS = (WS, WS_DELAYED, REST_CHAIN, REST_INDICES, CBOE_CSV)

# Trade prints remembered for duplicate detection, per underlying. Hydrate's fill ledger is the
# authority (it counts each fill once whatever normalize does); this catches a provider's repeated
# print cheaply, before it costs anything downstream.
DEDUPE_CAPACITY = 200_000

PrintKey = tuple[str, float, int, int, int]


class RecentSet:
    """A bounded set: two generations, the older dropped when the newer fills up."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.cur: set[PrintKey] = set()
        self.prev: set[PrintKey] = set()

    def __contains__(self, key: object) -> bool:
        return key in self.cur or key in self.prev

    def add_all(self, keys: Sequence[PrintKey]) -> None:
        for k in keys:
            if len(self.cur) >= self.capacity // 2:
                self.prev, self.cur = self.cur, set()
            self.cur.add(k)


def parse_frame(frame: RawFrame, underlying: str, settings: Settings) -> Parsed:
    """Dispatch a raw frame to its format's parser. Pure."""
    if len(frame.data) > settings.max_frame_bytes:
        out = Parsed()
        out.reject(
            RejectReason.OVERSIZED, f"{len(frame.data)} bytes > max_frame_bytes {settings.max_frame_bytes}", frame.data
        )
        return out
    configured = settings.underlyings
    limits = Limits(
        max_future_ns=int(settings.max_event_future_s * 1e9), max_age_ns=int(settings.max_event_age_s * 1e9)
    )
    if frame.src in (WS, WS_DELAYED):
        return parse_ws_frame(frame.data, frame.rx_ns, underlying, configured, limits, frame.src == WS_DELAYED)
    if frame.src == REST_CHAIN:
        return parse_rest_chain(frame.data, frame.rx_ns, underlying, configured, limits)
    if frame.src == REST_INDICES:
        return parse_rest_indices(frame.data, frame.rx_ns, underlying, limits)
    if frame.src == CBOE_CSV:
        return parse_cboe_csv(frame.data, underlying, configured)
    out = Parsed()
    out.reject(RejectReason.UNKNOWN_SOURCE, f"unknown raw format {frame.src!r}", frame.data)
    return out


class Normalizer:
    def __init__(self, settings: Settings, underlying: str, metrics: Metrics) -> None:
        self.settings = settings
        self.u = underlying
        self.metrics = metrics
        self.events_key = streams.EVENTS.key(underlying)
        self.rejects_key = streams.REJECTS.key(underlying)
        self.raw_key = streams.RAW.key(underlying)
        self.recent = RecentSet(DEDUPE_CAPACITY)

    async def restore(self, redis: aioredis.Redis) -> None:
        return None  # the duplicate window is only updated on commit, so nothing to roll back

    def process(self, batch: Sequence[Entry]) -> Effects:
        outputs: list[Output] = []
        seen: list[PrintKey] = []
        seen_here: set[PrintKey] = set()
        rejects: dict[str, int] = {}
        drops: dict[str, int] = {}
        n_events = 0
        for entry in batch:
            frame: RawFrame = entry.value
            parsed = parse_frame(frame, self.u, self.settings)
            events = []
            for ev in parsed.events:
                if isinstance(ev, Trade):
                    key = (ev.symbol, ev.px, ev.size, ev.ts_ns, ev.seq)
                    if key in self.recent or key in seen_here:
                        parsed.drop(DropReason.DUPLICATE_PRINT)
                        continue
                    seen_here.add(key)
                    seen.append(key)
                events.append(ev)
            if events:
                n_events += len(events)
                batch_out = EventBatch(src=entry.id, rx_ns=frame.rx_ns, events=tuple(events))
                outputs.append(Output(streams.EVENTS, self.events_key, codec.encode_events(batch_out)))
            for reason, detail, text in parsed.rejects:
                reject = Reject(reason=reason.value, detail=detail, source=entry.id, rx_ns=frame.rx_ns, excerpt=text)
                outputs.append(Output(streams.REJECTS, self.rejects_key, codec.encode_reject(reject)))
                rejects[reason.value] = rejects.get(reason.value, 0) + 1
            for reason_d, n in parsed.drops.items():
                drops[reason_d.value] = drops.get(reason_d.value, 0) + n

        def committed(_: list[object]) -> None:
            self.recent.add_all(seen)
            for reason, n in rejects.items():
                self.metrics.rejects.labels("normalize", self.raw_key, reason).inc(n)
            for reason, n in drops.items():
                self.metrics.dropped.labels("normalize", self.raw_key, reason).inc(n)

        return Effects(outputs=outputs, on_commit=committed, events_out=n_events)


NORMALIZE = AgentSpec(
    name="normalize",
    reads=streams.RAW,
    writes=(streams.EVENTS, streams.REJECTS),
    make=Normalizer,
    doc="Provider frames to typed events; bad input to rejects with its reason.",
)

__all__ = ["NORMALIZE", "Normalizer", "parse_frame", "FORMATS", "excerpt"]
