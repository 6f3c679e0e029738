"""Models: columnar updates (calc -> publish -> readers), an epoch's geometry, rejects, and the HTTP API's shapes.

Tiles are positions (README, "Design notes": columns on the hot path). A heatmap's geometry (expiries, sides, strikes,
widths) is fixed for an epoch, so a tile is an integer position in that epoch's dense grid and its
labels live once, in the ``Geometry``. Everything after calc moves ``Columns``: changed positions and
their numbers as packed little-endian arrays (NaN in the first value column = the tile is absent), plus
the quote times of contracts whose quote changed. GEX uses the same shapes with strikes as positions.
The pydantic classes at the end are the published JSON's contract at the API boundary (FastAPI's
OpenAPI, and the tests validate published models against them); schemas/documents.py is the one
place that JSON is built.
"""

from __future__ import annotations

from typing import Literal

import msgspec
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

I16, I32, I64, F64 = np.dtype("<i2"), np.dtype("<i4"), np.dtype("<i8"), np.dtype("<f8")


def pack(values: np.ndarray | list[int] | list[float], dtype: np.dtype) -> bytes:
    """An array's bytes in the wire dtype (little-endian, C order)."""
    return np.ascontiguousarray(values, dtype=dtype).tobytes()


def unpack(raw: bytes, dtype: np.dtype) -> np.ndarray:
    """A read-only view of packed bytes (no copy)."""
    return np.frombuffer(raw, dtype=dtype)


HEATMAP_COLUMNS = ("value", "natural", "theo", "pop")


def value_columns(strategy: str) -> tuple[str, ...]:
    """The numbers a position carries: a heatmap tile its mid debit (``value``; the score derives from
    it and the width), natural debit, theo and probability of profit at the natural debit
    (agents/calc/theo.py); a GEX row its call, put and net GEX."""
    return ("call", "put", "net") if strategy == "gex" else HEATMAP_COLUMNS


# Each leg's weight in a heatmap structure's debit (bought +, sold -), in the order of a tile's legs.
LEG_WEIGHTS = {"single": (1,), "vertical": (1, -1), "butterfly": (1, -2, 1)}


class Geometry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One epoch's grid for one strategy: the only place tiles have labels, published once per epoch.

    Positions ``0..size-1`` are in the published order: heatmaps by (expiry, side, strike, width), GEX
    rows by strike. Heatmap tiles belong to a series (an expiry and a side of the epoch's preferred root)
    and have ``n_legs`` legs, positions in ``contracts``."""

    underlying: str
    strategy: str
    epoch: str
    n_legs: int = 0  # heatmaps: 1 single, 2 vertical, 3 butterfly; GEX: 0
    expiries: tuple[str, ...] = ()  # per series, YYYY-MM-DD
    sides: tuple[str, ...] = ()  # per series, call | put
    steps_x1000: tuple[int, ...] = ()  # per series: the strike grid step
    contracts: tuple[str, ...] = ()  # OCC symbols; a leg is a position here
    series: bytes = b""  # int16 per tile
    strike: bytes = b""  # int64 per position, thousandths (center for butterflies, long leg for verticals)
    width: bytes = b""  # int64 per tile, thousandths (0 for singles)
    legs: bytes = b""  # int32 per tile x n_legs

    @property
    def size(self) -> int:
        return len(self.strike) // I64.itemsize

    def strikes_x1000(self) -> np.ndarray:
        return unpack(self.strike, I64)

    def widths_x1000(self) -> np.ndarray:
        return unpack(self.width, I64)

    def series_of(self) -> np.ndarray:
        return unpack(self.series, I16)

    def leg_positions(self) -> np.ndarray:
        """(size, n_legs) contract positions of every tile's legs."""
        return unpack(self.legs, I32).reshape(-1, self.n_legs) if self.n_legs else np.zeros((self.size, 0), np.int32)


class Columns(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """New numbers of changed positions, and new quote times of changed contracts.

    ``vals`` is (len(pos), k) float64, or (len(pos), len(which)) when ``which`` names the value columns
    carried (the others are unchanged: a heatmap's theo and PoP move only at a theo refresh, so most
    updates carry mid and natural debit alone); the first column is always carried, and NaN there
    means the position is absent (a tile with a leg that has no mid; a strike with no live contract):
    an absent position's every column is NaN, whatever the update carried (``scatter``). ``dense``
    columns cover every position and contract in order (``pos``/``cpos`` empty): checkpoints and
    snapshots."""

    k: int = 1
    which: bytes = b""  # int8 indices of the value columns carried; empty: all k
    dense: bool = False
    pos: bytes = b""  # int32, ascending
    vals: bytes = b""  # float64 (n, k)
    cpos: bytes = b""  # int32, ascending
    cts: bytes = b""  # int64: the contract's quote time, epoch ns (0 = never quoted)

    def positions(self) -> np.ndarray:
        return unpack(self.pos, I32)

    def carried(self) -> np.ndarray:
        """The indices of the value columns ``vals`` holds."""
        return unpack(self.which, np.dtype(np.int8)) if self.which else np.arange(self.k)

    def values(self) -> np.ndarray:
        return unpack(self.vals, F64).reshape(-1, len(self.which) or self.k)

    def scatter(self, into: np.ndarray) -> None:
        """Write these numbers into a (positions, k) array of a model's numbers (dense: all of it)."""
        if self.dense:
            into[:] = self.values()
            return
        pos = self.positions()
        if not len(pos):
            return
        vals = self.values()
        if self.which:
            into[pos[:, None], self.carried()] = vals
            gone = np.isnan(vals[:, 0])
            if gone.any():
                into[pos[gone]] = np.nan
        else:
            into[pos] = vals

    def contract_positions(self) -> np.ndarray:
        return unpack(self.cpos, I32)

    def contract_times(self) -> np.ndarray:
        return unpack(self.cts, I64)

    @property
    def changed(self) -> int:
        """Positions this update carries (for metrics)."""
        return len(self.vals) // (F64.itemsize * (len(self.which) or self.k))


def columns(
    pos: np.ndarray,
    vals: np.ndarray,
    cpos: np.ndarray | None = None,
    cts: np.ndarray | None = None,
    which: tuple[int, ...] | None = None,
    k: int | None = None,
) -> Columns:
    """Pack an update: ``vals`` is (n, k) or (n,) for one value column; with ``which``, (n, len(which))
    of a model of ``k`` columns."""
    v = vals.reshape(-1, 1) if vals.ndim == 1 else vals
    return Columns(
        k=int(v.shape[1]) if k is None else k,
        which=b"" if which is None else pack(list(which), np.dtype(np.int8)),
        pos=pack(pos, I32),
        vals=pack(v, F64),
        cpos=pack(cpos if cpos is not None else [], I32),
        cts=pack(cts if cts is not None else [], I64),
    )


def dense_columns(vals: np.ndarray, cts: np.ndarray) -> Columns:
    return Columns(k=int(vals.shape[1]), dense=True, vals=pack(vals, F64), cts=pack(cts, I64))


class Staged(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A calc agent's staged update: what changed in one event-time bucket (heatmaps) or entry (GEX)."""

    strategy: str
    underlying: str
    epoch: str
    src: str  # the changes entry id it came from
    rx_ns: int  # receive time of the newest raw input behind it
    ts_ns: int  # event time: the newest input event behind it
    slots: int  # positions of the epoch's geometry
    pending: int  # slots whose legs exist but have no quote yet (0 = structurally complete)
    reset: bool = False  # a new epoch: the staged set is replaced; ``geometry`` is the new grid
    geometry: Geometry | None = None
    cols: Columns = Columns()
    header: bytes | None = None  # model-level fields (spot, GEX totals) as JSON; None = unchanged


class Diff(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One published version: what changed since ``prev_version``, as columns."""

    underlying: str
    strategy: str
    version: int
    prev_version: int
    epoch: str
    asof_ns: int
    reason: str  # structural | value | time | idle
    reset: bool = False  # a new epoch: readers drop every position; ``geometry`` is the new grid
    geometry: Geometry | None = None
    cols: Columns = Columns()
    header: bytes = b"null"  # the version's model header JSON (version, epoch, asof, spot, ...)


class Reject(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Bad input with its reason; nothing is lost, and this says why it went no further."""

    reason: str  # a RejectReason value
    detail: str
    source: str  # the raw entry id or the source that produced it
    rx_ns: int
    excerpt: str  # the offending element or the frame's first bytes
    # Every reject of the frame by reason (one frame makes one reject entry, however many of its
    # elements were bad); empty for a frame rejected whole.
    counts: dict[str, int] = msgspec.field(default_factory=dict)
    # Frames rejected for this reason since its last entry that got none (a flood is sampled).
    suppressed: int = 0


# --- the HTTP API (schemas of the published JSON) -------------------------------------------


class _Api(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TileOut(_Api):
    k: str
    expiry: str  # YYYY-MM-DD
    side: Literal["call", "put"]
    strike: float  # center for butterflies, long leg for verticals
    width: float  # 0 for singles
    value: float  # mid debit
    score: float | None  # reward/risk (width - debit) / debit; None when undefined
    natural: float  # the debit crossing the market: asks of the legs bought, bids of the legs sold
    spread: float  # natural debit less natural credit: 2 (natural - value)
    theo: float | None  # Black-Scholes on the series' smile at the model's theo_spot (None: no smile or spot)
    edge: float | None  # theo - value
    pop: float | None  # probability of profit at expiry bought at the natural debit (0..1)
    legs: list[str]
    legs_ts_ns: list[int]


class HeatmapModel(_Api):
    underlying: str
    strategy: Literal["single", "vertical", "butterfly"]
    version: int
    epoch: str
    asof: str  # ISO 8601 UTC of the newest event behind the version
    asof_ns: int
    spot: float | None
    delayed: bool = False  # spot or chain data the provider flagged DELAYED
    nonstandard: int = 0  # adjusted contracts (non-standard deliverable) left out of the grid
    vix: float | None = None  # the volatility index (null before its first value) and its regime
    regime: Literal["low", "normal", "elevated", "high"] | None = None
    theo_spot: float | None = None  # the spot and event time the theo column was priced at
    theo_asof_ns: int | None = None
    tiles: list[TileOut]


class GexStrike(_Api):
    strike: float
    call: float
    put: float
    net: float


class GexExpiry(_Api):
    expiry: str
    net: float


class GexProfilePoint(_Api):
    spot: float  # a hypothetical spot
    net: float  # net GEX re-priced there (USD per 1% move)


class GexMatrix(_Api):
    """Net GEX by expiry (rows) and strike (columns): the strike x expiry view."""

    expiries: list[str]
    strikes: list[float]
    net: list[list[float]]


class GexView(_Api):
    total: float
    calls: float
    puts: float
    flip: float | None
    call_wall: float | None  # the strike with the largest call GEX, all strikes
    put_wall: float | None  # the strike with the largest put GEX (magnitude), all strikes
    call_wall_above: float | None = None  # ... at or above spot: the call wall as traders read it
    put_wall_below: float | None = None  # ... at or below spot: the put wall as traders read it
    profile: list[GexProfilePoint] = []
    by_strike: list[GexStrike]


class GexModel(GexView):
    """The GEX model: the view over every expiry (``profile``: net GEX re-priced at hypothetical spots,
    the flip's curve), its header, and the totals by expiry."""

    underlying: str
    strategy: Literal["gex"]
    version: int
    epoch: str
    asof: str
    asof_ns: int
    spot: float | None
    delayed: bool = False  # spot or chain data the provider flagged DELAYED
    nonstandard: int = 0  # adjusted contracts, weighted by their own shares per contract
    units: str
    convention: str
    by_expiry: list[GexExpiry]
    by_expiry_strike: GexMatrix | None = None
    iv_atm: float | None  # the nearest live expiry's at-the-money IV (decimal)
    zero_dte: GexView | None
    stale: bool
    vix: float | None = None  # the volatility index (null before its first value) and its regime
    regime: Literal["low", "normal", "elevated", "high"] | None = None


# --- derived models (agents/derive/): the whole document is the header --------------------------


class _Derived(_Api):
    underlying: str
    version: int
    epoch: str
    asof: str | None
    asof_ns: int
    spot: float | None


class MarketModeModel(_Derived):
    strategy: Literal["market_mode"]
    mode: Literal["compression", "expansion", "transition", "neutral"]
    score: float  # 0..100, 50 at the flip
    flip: float | None
    total: float
    distance_pct: float | None  # 100 (spot - flip) / spot
    stale: bool = False
    vix: float | None = None  # the volatility index and its regime (schemas/levels.py VOL_REGIMES)
    regime: Literal["low", "normal", "elevated", "high"] | None = None


class GravityModel(_Derived):
    strategy: Literal["gravity"]
    level: float | None
    band: list[float | None]  # [put-side strike at or below spot, call-side strike at or above spot]
    confidence: float | None  # 0..1
    em: float | None  # one-day expected move, points
    iv_atm: float | None


class IntentStructure(_Api):
    bias: float | None  # -100..100
    pin: float | None  # 0..100
    quadrant: str | None
    g_above: float
    g_below: float


class FlowFields(_Api):
    bought: int
    sold: int
    unclassified: int
    bought_premium: float
    sold_premium: float
    unclassified_premium: float
    net_premium: float


class FlowRow(FlowFields):
    strike: float
    side: Literal["call", "put"]


class FlowWindow(_Api):
    rows: list[FlowRow]
    totals: FlowFields


class IntentFlow(_Api):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    date: str | None  # the trading day (America/New_York) of the newest event time
    last_5m: FlowWindow = Field(alias="5m")
    last_30m: FlowWindow = Field(alias="30m")
    day: FlowWindow


class IntentModel(_Derived):
    strategy: Literal["intent"]
    structure: IntentStructure | None
    flow: IntentFlow


class FlyParts(_Api):
    """A best fly's composite, part by part (agents/derive/flies.py): each in 0..1 before its weight."""

    value: float  # min(theo / natural, 1)
    reward: float  # min(reward_risk / cap, 1)
    gravity: float  # 1 / (1 + distance to the gravity level in expected moves)
    width: float  # how near the width is to the one suited to the day (the regime's, else the expected move's)
    suited_width: float | None  # that width, in points
    gravity_distance_em: float | None
    within_em: bool


class Fly(_Api):
    k: str
    expiry: str
    side: Literal["call", "put"]
    strike: float  # center
    width: float
    debit: float  # the natural debit: what it costs crossing the market
    mid: float
    spread: float  # natural debit less natural credit
    theo: float  # expected payoff at expiry under the implied distribution
    edge: float  # theo - mid
    pop: float | None  # probability of profit at expiry, bought at the natural debit
    ev: float  # theo - debit: expected value at the price paid
    reward_risk: float  # (width - debit) / debit
    composite: float
    parts: FlyParts
    legs: list[str]


class FlyGravity(_Api):
    level: float | None
    em: float | None


class BestFliesModel(_Derived):
    strategy: Literal["best_flies"]
    gravity: FlyGravity
    vix: float | None = None  # the volatility index and its regime, which choose the widths
    regime: Literal["low", "normal", "elevated", "high"] | None = None
    expiries: list[str]
    flies: list[Fly]


ModelOut = HeatmapModel | MarketModeModel | GravityModel | IntentModel | BestFliesModel
