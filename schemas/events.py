"""Typed events: what enters MarketSwarm (after normalize) and what hydrate emits as changes.

Events travel at tens of thousands per second, so the contract is held by msgspec Structs (frozen,
unknown fields forbidden, a ``kind`` tag and a version ``v``); schemas/models.py holds the published
models in pydantic for the HTTP API. Times are event times in epoch nanoseconds UTC (``ts_ns``);
``seq`` is the provider's sequence number, which orders events that share a timestamp.

Provider time: a value's ``ts_ns`` is the time the provider gave it. When the provider gave none
(a chain quote without ``last_updated``), ``ts_ns`` is the receive time and ``rx_time`` is true:
such a value never beats one the provider timed (agents/hydrate/hydrator.py). ``delayed`` marks values the
provider flagged ``timeframe: DELAYED`` (a plan without real-time data).
"""

from __future__ import annotations

from typing import Literal

import msgspec

Side = Literal["call", "put"]


class _Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="kind"):
    v: Literal[1] = 1


class ChainContract(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One contract of a chain snapshot. Absent values are None (not zero)."""

    symbol: str  # OCC, no O: prefix
    underlying: str
    root: str
    expiry: str  # YYYY-MM-DD
    side: Side
    strike_x1000: int
    bid: float | None = None
    ask: float | None = None
    last: float | None = None
    iv: float | None = None  # decimal, 0.15 = 15 %
    delta: float | None = None
    gamma: float | None = None  # per 1.00 of the underlying
    oi: int | None = None
    volume: int | None = None  # the provider's day volume
    quote_ts_ns: int | None = None  # time of bid/ask when the provider gives it
    trade_ts_ns: int | None = None  # time of last when the provider gives it
    trade_conditions: tuple[int, ...] = ()  # the last trade's condition codes
    shares: int | None = None  # deliverable shares per contract when not the standard 100 (adjusted)


class ChainSnapshot(_Event, tag="chain", frozen=True, kw_only=True):
    """A chain snapshot declares structure: which contracts exist (README, "Design notes")."""

    underlying: str
    ts_ns: int  # the poll's (or file's) time: the time of the chain analytics
    spot: float | None = None
    spot_ts_ns: int | None = None  # the provider's time of ``spot``; None = only received at ts_ns
    spot_delayed: bool = False
    delayed: bool = False  # some quote or trade of the chain is DELAYED
    source: str
    contracts: tuple[ChainContract, ...]


class Quote(_Event, tag="quote", frozen=True, kw_only=True):
    symbol: str
    underlying: str
    bid: float  # 0 = no bid
    ask: float  # 0 = no offer
    bid_size: int = 0
    ask_size: int = 0
    ts_ns: int
    seq: int = 0


class Trade(_Event, tag="trade", frozen=True, kw_only=True):
    symbol: str
    underlying: str
    px: float
    size: int
    ts_ns: int
    seq: int = 0
    exchange: int = 0
    conditions: tuple[int, ...] = ()


class Spot(_Event, tag="spot", frozen=True, kw_only=True):
    underlying: str
    value: float
    ts_ns: int
    rx_time: bool = False  # ts_ns is the receive time: the provider gave none
    delayed: bool = False


class VolIndex(_Event, tag="vol", frozen=True, kw_only=True):
    """A market volatility index (VIX): an input of every underlying's models, like spot. A source
    that receives one gives it to every underlying it serves."""

    name: str  # VIX
    value: float  # index points (an annualized volatility in percent)
    ts_ns: int
    rx_time: bool = False
    delayed: bool = False


class ProviderStatus(_Event, tag="status", frozen=True, kw_only=True):
    status: str
    message: str = ""
    ts_ns: int


Event = ChainSnapshot | Quote | Trade | Spot | VolIndex | ProviderStatus


class EventBatch(msgspec.Struct, frozen=True, kw_only=True):
    """The decoded value of an events-stream entry: events from one raw frame."""

    src: str  # the raw entry id they came from (consumers dedupe on it)
    rx_ns: int  # when the source received the frame (latency is measured from here)
    events: tuple[Event, ...]


# --- hydrate's changes (one record per admitted change) -------------------------------------


class _Change(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="c", omit_defaults=True):
    pass


class QuoteChange(_Change, tag="q", frozen=True, kw_only=True):
    """Bid/ask of a contract changed (from a quote or a chain snapshot)."""

    sym: str
    ts_ns: int
    seq: int = 0
    bid: float | None = None
    ask: float | None = None
    rx_time: bool = False


class TradeChange(_Change, tag="t", frozen=True, kw_only=True):
    """The last trade of a contract changed."""

    sym: str
    ts_ns: int
    seq: int = 0
    px: float
    size: int | None = None
    rx_time: bool = False


class FillChange(_Change, tag="f", frozen=True, kw_only=True):
    """A trade print counted into the volume: once per distinct fill, only when its conditions count
    toward volume (schemas/trade_conditions.py). The trade flow (agents/derive/flow.py) reads these."""

    sym: str
    ts_ns: int
    seq: int = 0
    px: float
    size: int


class GreeksChange(_Change, tag="g", frozen=True, kw_only=True):
    """Chain analytics of a contract changed (IV, greeks, open interest)."""

    sym: str
    ts_ns: int
    iv: float | None = None
    delta: float | None = None
    gamma: float | None = None
    oi: int | None = None
    volume: int | None = None


class SpotChange(_Change, tag="s", frozen=True, kw_only=True):
    ts_ns: int
    value: float
    rx_time: bool = False
    delayed: bool = False


class VolChange(_Change, tag="v", frozen=True, kw_only=True):
    """The volatility index (VIX) changed: admitted like spot, newest first."""

    name: str
    ts_ns: int
    value: float
    rx_time: bool = False
    delayed: bool = False


class EpochChange(_Change, tag="e", frozen=True, kw_only=True):
    """The epoch of a chain snapshot (new and promoted, or the active one again). It lists the epoch's
    contracts, so calc agents build their grid without reading Redis; the values follow as the
    changes after it."""

    epoch: str
    ts_ns: int
    symbols: tuple[str, ...]
    spot: float | None = None  # the chain's spot: fixes the epoch's heatmap strike window
    deliverables: dict[str, int] = msgspec.field(default_factory=dict)  # symbol -> shares, when not 100
    delayed: bool = False  # the chain's quotes or trades are DELAYED


Change = QuoteChange | TradeChange | FillChange | GreeksChange | SpotChange | VolChange | EpochChange


class ChangeBatch(msgspec.Struct, frozen=True, kw_only=True):
    """The decoded value of a changes-stream entry: admitted changes from one events entry."""

    src: str
    rx_ns: int
    epoch: str
    changes: tuple[Change, ...]
