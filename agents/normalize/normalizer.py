"""The normalize agent: raw provider frames to typed events, and bad input to rejects with a reason.

One raw entry gives at most one events entry (carrying the raw entry id as ``src``), so the events
stream's shape depends only on the raw stream, never on batching. Every input element ends as an
event, a reject (``ms:{U}:rejects.v1``, counted by reason) or a counted drop; nothing raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from marketswarm.agents.normalize.cboe_csv import parse_cboe_csv
from marketswarm.agents.normalize.massive_frames import Limits, parse_rest_chain, parse_rest_indices, parse_ws_frame
from marketswarm.agents.normalize.parsing import Parsed
from marketswarm.schemas import codec
from marketswarm.schemas.codec import RawFormat, RawFrame
from marketswarm.schemas.events import EventBatch, Trade
from marketswarm.schemas.models import Reject
from marketswarm.schemas.rejects import DropReason, RejectReason
from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec, Count, Effects, Entry, Output, Processor
from marketswarm.topology.settings import Settings

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
    if frame.src in (RawFormat.WS, RawFormat.WS_DELAYED):
        return parse_ws_frame(
            frame.data, frame.rx_ns, underlying, configured, limits, frame.src == RawFormat.WS_DELAYED
        )
    if frame.src == RawFormat.REST_CHAIN:
        return parse_rest_chain(frame.data, frame.rx_ns, underlying, configured, limits)
    if frame.src == RawFormat.REST_INDICES:
        return parse_rest_indices(frame.data, frame.rx_ns, underlying, limits)
    if frame.src == RawFormat.CBOE_CSV:
        return parse_cboe_csv(frame.data, underlying, configured)
    out = Parsed()
    out.reject(RejectReason.UNKNOWN_SOURCE, f"unknown raw format {frame.src!r}", frame.data)
    return out


# A flood is sampled: per reason, at most this many reject entries per second of server time (the
# entry ids' clock); the frames beyond are counted in the metrics and in the next entry's
# ``suppressed``. The rejects stream's bytes then hold minutes of every reason, not seconds of one.
REJECT_ENTRIES_PER_S = 50


def entry_time_ns(entry_id: str) -> int:
    """The server's time of a stream entry (its id's milliseconds) in ns."""
    return streams.entry_id_ms(entry_id) * 1_000_000


@dataclass
class RejectSampler:
    """Which rejected frames get a reject entry: REJECT_ENTRIES_PER_S per reason and second."""

    second: dict[str, tuple[int, int]] = field(default_factory=dict)  # reason -> (second, entries)
    suppressed: dict[str, int] = field(default_factory=dict)  # reason -> frames without an entry

    def copy(self) -> RejectSampler:
        return RejectSampler(dict(self.second), dict(self.suppressed))

    def admit(self, entry_id: str, rx_ns: int, parsed: Parsed) -> Reject | None:
        """The frame's one reject entry (its first reject, with every reject counted by reason),
        or None when its reason had its entries this second."""
        reason, detail, text = parsed.rejects[0]
        sec = entry_time_ns(entry_id) // 1_000_000_000
        at, n = self.second.get(reason, (sec, 0))
        n = n if at == sec else 0
        if n >= REJECT_ENTRIES_PER_S:
            self.suppressed[reason] = self.suppressed.get(reason, 0) + 1
            return None
        self.second[reason] = (sec, n + 1)
        counts = {r.value: c for r, c in parsed.reject_counts.items()} if parsed.rejected > 1 else {}
        return Reject(
            reason=reason.value,
            detail=detail,
            source=entry_id,
            rx_ns=rx_ns,
            excerpt=text,
            counts=counts,
            suppressed=self.suppressed.pop(reason, 0),
        )


class Normalizer(Processor):
    """The duplicate window and the reject sampler are updated on commit only: nothing to restore."""

    def __init__(self, settings: Settings, underlying: str) -> None:
        self.settings = settings  # the ingest limits: max_frame_bytes, the event-time bounds, the underlyings
        self.u = underlying
        self.events_key = streams.EVENTS.key(underlying)
        self.rejects_key = streams.REJECTS.key(underlying)
        self.raw_key = streams.RAW.key(underlying)
        self.recent = RecentSet(DEDUPE_CAPACITY)
        self.sampler = RejectSampler()
        self.skew_ns = int(settings.max_receive_skew_s * 1e9)

    def _parse(self, entry: Entry, frame: RawFrame) -> Parsed:
        """The frame parsed; never raises. A receive time after the server's time of the entry (a
        writer's clock ahead) rejects the frame: every time check after this one trusts it. A parser
        exception (a case no parser foresaw) rejects the frame with the exception, so it costs that
        frame alone, at once, rather than its batch's redeliveries and a dead letter."""
        server_ns = entry_time_ns(entry.id)
        if frame.rx_ns > server_ns + self.skew_ns:
            out = Parsed()
            ahead_s = (frame.rx_ns - server_ns) / 1e9
            out.reject(
                RejectReason.BAD_RECEIVE_TIME,
                f"receive time {frame.rx_ns} is {ahead_s:.3f} s after the server's time of entry {entry.id}",
                frame.data,
            )
            return out
        try:
            return parse_frame(frame, self.u, self.settings)
        except Exception as exc:  # noqa: BLE001 - one frame's parser failure must not fail its batch
            return _failed(f"{type(exc).__name__}: {exc}", frame)

    def process(self, batch: Sequence[Entry]) -> Effects:
        outputs: list[Output] = []
        seen: list[PrintKey] = []
        seen_here: set[PrintKey] = set()
        sampler = self.sampler.copy()
        rejects: dict[str, int] = {}
        drops: dict[str, int] = {}
        n_events = 0
        for entry in batch:
            frame: RawFrame = entry.value
            parsed = self._parse(entry, frame)
            events = []
            keys: dict[PrintKey, None] = {}  # this frame's prints, in order
            for ev in parsed.events:
                if isinstance(ev, Trade):
                    key = (ev.symbol, ev.px, ev.size, ev.ts_ns, ev.seq)
                    if key in self.recent or key in seen_here or key in keys:
                        parsed.drop(DropReason.DUPLICATE_PRINT)
                        continue
                    keys[key] = None
                events.append(ev)
            if events:
                batch_out = EventBatch(src=entry.id, rx_ns=frame.rx_ns, events=tuple(events))
                try:
                    data = codec.encode_events(batch_out)
                except Exception as exc:  # noqa: BLE001 - a value the parser let through that no encoder takes
                    parsed = _failed(f"events not encodable: {type(exc).__name__}: {exc}", frame)
                else:
                    n_events += len(events)
                    seen_here.update(keys)
                    seen.extend(keys)
                    outputs.append(Output(streams.EVENTS, self.events_key, data))
            if parsed.rejects:
                reject = sampler.admit(entry.id, frame.rx_ns, parsed)
                if reject is not None:
                    outputs.append(Output(streams.REJECTS, self.rejects_key, codec.encode_reject(reject)))
            for reason, n in parsed.reject_counts.items():
                rejects[reason.value] = rejects.get(reason.value, 0) + n
            for reason_d, n in parsed.drops.items():
                drops[reason_d.value] = drops.get(reason_d.value, 0) + n

        def committed(_: Mapping[str, Any]) -> None:
            self.recent.add_all(seen)
            self.sampler = sampler

        counts = [Count("rejects", ("normalize", self.raw_key, r), n) for r, n in rejects.items()]
        counts += [Count("dropped", ("normalize", self.raw_key, r), n) for r, n in drops.items()]
        return Effects(outputs=outputs, counts=counts, on_commit=committed, events_out=n_events)


def _failed(detail: str, frame: RawFrame) -> Parsed:
    out = Parsed()
    out.reject(RejectReason.PARSER_ERROR, detail, frame.data)
    return out


NORMALIZE = AgentSpec(
    name="normalize",
    reads=streams.RAW,
    writes=(streams.EVENTS, streams.REJECTS),
    make=Normalizer,
    doc="Provider frames to typed events; bad input to rejects with its reason.",
)

__all__ = ["NORMALIZE", "Normalizer", "parse_frame"]
