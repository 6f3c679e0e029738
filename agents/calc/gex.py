"""The GEX agent: dealer gamma exposure per strike and expiry, the zero-gamma (flip) level and the walls.

Convention (Perfiliev, "How to Calculate Gamma Exposure (GEX) and Zero Gamma Level", 2022): dealers
are assumed long the calls and short the puts their customers trade, so call GEX is positive and put
GEX negative. Per contract, in USD per 1% move of the underlying:

    GEX = gamma x open interest x shares per contract x S^2 x 0.01

(shares per contract: 100, or the provider's ``shares_per_contract`` of an adjusted contract; the model counts those
in ``nonstandard``) with gamma per 1.00 of the underlying: the provider's when present, otherwise Black-Scholes from
the contract's IV (r = 0, q = 0) with our time-to-expiry convention (schemas/blackscholes.py: calendar time to the
expiry's 16:00 ET close, ACT/365, floored at one minute).

The flip is where the GEX profile changes sign: the profile re-prices every contract's gamma with Black-Scholes from
its IV at ``PROFILE_POINTS`` spots across +/- ``PROFILE_RANGE`` around S; the root is found by linear interpolation
between the two profile points that straddle zero (the crossing nearest S when there are several), and is null when
the profile never changes sign. The call wall and put wall are the strikes with the largest call GEX and the largest
put GEX (in magnitude) over all strikes; as traders read walls, ``call_wall_above`` is the strike at or above S with
the largest call GEX and ``put_wall_below`` the strike at or below S with the largest put GEX (in magnitude).
``profile`` is the net GEX re-priced at each of the profile's spots (what the flip is found on).
``by_expiry_strike`` is the net GEX per strike of each of the ``MATRIX_EXPIRIES`` nearest live expiries, strikes
within ``MATRIX_RANGE`` of S: the strike x expiry view.
``iv_atm`` is the nearest live expiry's at-the-money IV (``atm_iv``): dealer gravity's expected move
(schemas/levels.py) starts from it. The 0DTE view repeats totals, flip, walls and by-strike for the contracts
expiring on the as-of date (America/New_York). ``stale`` is true when the chain data (gamma, OI) is more than
``gex_stale_s`` older than the as-of time. ``vix`` and ``regime``: the volatility index and its regime.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import orjson

from marketswarm.schemas import blackscholes as bs
from marketswarm.schemas import codec
from marketswarm.schemas.events import ChangeBatch, EpochChange, GreeksChange, SpotChange, VolChange
from marketswarm.schemas.levels import vol_fields
from marketswarm.schemas.markettime import ET, expiry_close_ns
from marketswarm.schemas.models import F64, I64, Geometry, Staged, columns, pack, unpack
from marketswarm.schemas.occ import SymbolError, parse_occ
from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec, Effects, Entry, Output, Processor, Resume
from marketswarm.topology.settings import ModelSettings

CONTRACT_SIZE = 100  # shares per standard contract
PROFILE_POINTS = 81
PROFILE_RANGE = 0.10  # +/- 10 % of spot
# The profile is re-priced when the chain data changes or spot moved this far since it was built.
PROFILE_REUSE_MOVE = 0.005
MATRIX_EXPIRIES = 6  # the strike x expiry matrix: this many nearest live expiries
MATRIX_RANGE = 0.05  # ... and strikes within +/- 5 % of spot
UNITS = "USD per 1% move of the underlying"
CONVENTION = (
    "dealers long calls, short puts: call GEX positive, put GEX negative; "
    "per contract gamma x open interest x shares per contract (100 unless adjusted) x S^2 x 0.01"
)

_greeks_dec = msgspec.json.Decoder(GreeksChange)
_spot_dec = msgspec.json.Decoder(SpotChange)
_vol_dec = msgspec.json.Decoder(VolChange)


@dataclass
class Book:
    """Every contract of the epoch (no heatmap window: GEX sums the whole chain)."""

    epoch: str
    symbols: list[str]
    strike: np.ndarray
    is_call: np.ndarray
    expiry: list[str]
    close_ns: np.ndarray
    gamma: np.ndarray
    iv: np.ndarray
    oi: np.ndarray
    ts: np.ndarray
    pos: dict[str, int]
    mult: np.ndarray  # shares per contract
    deliverables: dict[str, int]  # the adjusted contracts' shares per contract
    delayed: bool = False  # the chain is DELAYED data
    gen: int = 0  # bumped whenever chain data changes: the profile cache's key

    @classmethod
    def of(
        cls, epoch: str, symbols: Sequence[str], deliverables: Mapping[str, int] | None = None, delayed: bool = False
    ) -> Book:
        deliverables = dict(deliverables or {})
        parsed = []
        for s in symbols:
            try:
                parsed.append((s, parse_occ(s)))
            except SymbolError:
                continue
        n = len(parsed)
        expiries = [o.expiry.isoformat() for _, o in parsed]
        return cls(
            epoch=epoch,
            symbols=[s for s, _ in parsed],
            strike=np.array([o.strike_x1000 / 1000 for _, o in parsed], dtype=np.float64),
            is_call=np.array([o.side == "call" for _, o in parsed], dtype=bool),
            expiry=expiries,
            close_ns=np.array([expiry_close_ns(e) for e in expiries], dtype=np.float64),
            gamma=np.full(n, np.nan),
            iv=np.full(n, np.nan),
            oi=np.zeros(n),
            ts=np.zeros(n, dtype=np.int64),
            pos={s: i for i, (s, _) in enumerate(parsed)},
            mult=np.array([deliverables.get(s, CONTRACT_SIZE) for s, _ in parsed], dtype=np.float64),
            deliverables=deliverables,
            delayed=delayed,
        )

    def apply(self, g: GreeksChange) -> bool:
        p = self.pos.get(g.sym)
        if p is None or g.ts_ns < self.ts[p]:
            return False
        self.gamma[p] = np.nan if g.gamma is None else g.gamma
        self.iv[p] = np.nan if g.iv is None else g.iv
        self.oi[p] = 0 if g.oi is None else g.oi
        self.ts[p] = g.ts_ns
        self.gen += 1
        return True

    def carry_from(self, other: Book) -> None:
        for s, p in self.pos.items():
            q = other.pos.get(s)
            if q is not None:
                self.gamma[p], self.iv[p], self.oi[p], self.ts[p] = (
                    other.gamma[q],
                    other.iv[q],
                    other.oi[q],
                    other.ts[q],
                )
        self.gen += 1


def spot_gamma(book: Book, s: float, now_ns: int) -> np.ndarray:
    """Gamma per contract: the provider's, else Black-Scholes from IV (0 without either)."""
    t = bs.years_to_expiry(book.close_ns, now_ns)
    fallback = np.where(np.isfinite(book.iv), bs.gamma(s, book.strike, t, 0.0, np.nan_to_num(book.iv)), 0.0)
    return np.where(np.isfinite(book.gamma), book.gamma, fallback)


def live(book: Book, now_ns: int) -> np.ndarray:
    """Contracts not yet past their expiry close: an expired contract has no gamma left."""
    return book.close_ns > now_ns


def gex_per_contract(book: Book, s: float, now_ns: int) -> np.ndarray:
    sign = np.where(book.is_call, 1.0, -1.0)
    g = sign * spot_gamma(book, s, now_ns) * book.oi * book.mult * s * s * 0.01
    return np.where(live(book, now_ns), g, 0.0)


def profile(book: Book, mask: np.ndarray, s: float, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """(spots, net GEX at each spot) with gamma re-priced from IV."""
    spots = s * np.linspace(1 - PROFILE_RANGE, 1 + PROFILE_RANGE, PROFILE_POINTS)
    use = mask & np.isfinite(book.iv) & (book.oi > 0) & live(book, now_ns)
    k, iv, size = book.strike[use], book.iv[use], book.oi[use] * book.mult[use]
    sign = np.where(book.is_call[use], 1.0, -1.0)
    t = bs.years_to_expiry(book.close_ns[use], now_ns)
    g = bs.gamma(spots[:, None], k[None, :], t[None, :], 0.0, iv[None, :])
    net = (g * (sign * size)[None, :]).sum(axis=1) * spots * spots * 0.01
    return spots, net


def atm_iv(book: Book, s: float, now_ns: int) -> float | None:
    """The nearest live expiry's at-the-money implied volatility: per strike of that expiry, the mean
    of its call's and put's IV (either alone when only one has one), interpolated linearly in strike
    between the two strikes around ``s`` (the nearest strike's when ``s`` is outside them); None when
    the expiry has no IV at all."""
    alive = live(book, now_ns)
    if not alive.any():
        return None
    nearest = book.close_ns[alive].min()
    use = alive & (book.close_ns == nearest) & np.isfinite(book.iv) & (book.iv > 0)
    if not use.any():
        return None
    strikes, inv = np.unique(book.strike[use], return_inverse=True)
    iv = np.bincount(inv, weights=book.iv[use]) / np.bincount(inv)
    return round(float(np.interp(s, strikes, iv)), 6)


def flip_level(spots: np.ndarray, net: np.ndarray, s: float) -> float | None:
    """The zero crossing of the profile nearest ``s``, by linear interpolation; None if none."""
    roots: list[float] = []
    for i in range(len(spots) - 1):
        a, b = net[i], net[i + 1]
        if a == 0:
            roots.append(float(spots[i]))
        elif a * b < 0:
            roots.append(float(spots[i] - a * (spots[i + 1] - spots[i]) / (b - a)))
    if not roots:
        return None
    nearest = min(roots, key=lambda r: abs(r - s))
    return round(nearest, 2)


ProfileCache = dict[str, tuple[tuple[int, float, int], np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ProfileInputs:
    """What a profile was priced at: re-priced only when chain data changed or spot moved
    PROFILE_REUSE_MOVE from the anchor, so the flip is a function of the input sequence alone."""

    anchor: float
    asof_ns: int


def cached_profile(
    book: Book, name: str, mask: np.ndarray, inputs: ProfileInputs, cache: ProfileCache | None
) -> tuple[np.ndarray, np.ndarray]:
    key = (book.gen, inputs.anchor, inputs.asof_ns)
    if cache is not None and name in cache and cache[name][0] == key:
        return cache[name][1], cache[name][2]
    spots, net = profile(book, mask, inputs.anchor, inputs.asof_ns)
    if cache is not None:
        cache[name] = (key, spots, net)
    return spots, net


def summarize(
    book: Book, mask: np.ndarray, gex: np.ndarray, s: float, now_ns: int, profile_net: tuple[np.ndarray, np.ndarray]
) -> dict[str, Any]:
    """Totals, by strike, walls and flip over the contracts in ``mask``."""
    g = np.where(mask, gex, 0.0)
    calls = float(g[book.is_call].sum())
    puts = float(g[~book.is_call].sum())
    strikes, inv = np.unique(book.strike[mask], return_inverse=True)
    call_by = np.bincount(inv, weights=g[mask] * book.is_call[mask], minlength=len(strikes))
    put_by = np.bincount(inv, weights=g[mask] * ~book.is_call[mask], minlength=len(strikes))
    rows = [
        {"strike": float(k), "call": round(float(c), 2), "put": round(float(p), 2), "net": round(float(c + p), 2)}
        for k, c, p in zip(strikes, call_by, put_by, strict=True)
    ]
    spots, net = profile_net
    return {
        "total": round(calls + puts, 2),
        "calls": round(calls, 2),
        "puts": round(puts, 2),
        "flip": flip_level(spots, net, s),
        "call_wall": wall(strikes, call_by, np.ones(len(strikes), bool)),
        "put_wall": wall(strikes, -put_by, np.ones(len(strikes), bool)),
        "call_wall_above": wall(strikes, call_by, strikes >= s),
        "put_wall_below": wall(strikes, -put_by, strikes <= s),
        "profile": [{"spot": round(float(x), 2), "net": round(float(y), 2)} for x, y in zip(spots, net, strict=True)],
        "by_strike": rows,
    }


def wall(strikes: np.ndarray, size: np.ndarray, where: np.ndarray) -> float | None:
    """The strike of the largest positive ``size`` among ``where`` (the first, lowest, on a tie); None if none is."""
    if not where.any() or size[where].max() <= 0:
        return None
    return float(strikes[where][np.argmax(size[where])])


def by_expiry_strike(book: Book, gex: np.ndarray, alive: np.ndarray, s: float) -> dict[str, Any] | None:
    """Net GEX per strike (rows: the MATRIX_EXPIRIES nearest live expiries, columns: strikes within MATRIX_RANGE
    of ``s``); 0 where an expiry lists no contract at a strike."""
    near = alive & (np.abs(book.strike / s - 1) <= MATRIX_RANGE)
    exp = np.array(book.expiry)
    expiries = sorted(set(exp[near].tolist()))[:MATRIX_EXPIRIES]
    if not expiries:
        return None
    use = near & np.isin(exp, expiries)
    strikes, col = np.unique(book.strike[use], return_inverse=True)
    row = np.searchsorted(expiries, exp[use])
    net = np.zeros((len(expiries), len(strikes)))
    np.add.at(net, (row, col), gex[use])
    return {
        "expiries": expiries,
        "strikes": [float(k) for k in strikes],
        "net": [[round(float(x), 2) for x in r] for r in net],
    }


def compute(
    book: Book,
    s: float,
    now_ns: int,
    stale: bool,
    inputs: ProfileInputs | None = None,
    cache: ProfileCache | None = None,
) -> dict[str, Any]:
    """The whole GEX model except the publisher's fields (version, asof)."""
    inputs = inputs or ProfileInputs(s, now_ns)
    gex = gex_per_contract(book, s, now_ns)
    everything = live(book, now_ns)
    out = summarize(book, everything, gex, s, now_ns, cached_profile(book, "all", everything, inputs, cache))
    exp = np.array(book.expiry)
    by_expiry = [
        {"expiry": e, "net": round(float(gex[exp == e].sum()), 2)}
        for e in sorted({e for e, ok in zip(book.expiry, everything, strict=True) if ok})
    ]
    today = dt.datetime.fromtimestamp(now_ns / 1e9, ET).date().isoformat()
    zero = (exp == today) & everything
    out["by_expiry"] = by_expiry
    out["by_expiry_strike"] = by_expiry_strike(book, gex, everything, s)
    out["iv_atm"] = atm_iv(book, s, now_ns)
    out["zero_dte"] = (
        summarize(book, zero, gex, s, now_ns, cached_profile(book, "0dte", zero, inputs, cache)) if zero.any() else None
    )
    out["stale"] = stale
    return out


class GexCalc(Processor):
    def __init__(self, model: ModelSettings, underlying: str) -> None:
        self.u = underlying
        self.stale_ns = int(model.gex_stale_s * 1e9)
        self.checkpoint = streams.calc_checkpoint_key(underlying, streams.Strategy.GEX)
        self.out_spec = streams.STAGED[streams.Strategy.GEX]
        self.out_key = self.out_spec.key(underlying)
        self.book: Book | None = None
        self.geometry: Geometry | None = None
        self.spot: SpotChange | None = None
        self.vix: VolChange | None = None  # in the header from the next emission on
        self.vals = np.zeros((0, 3))  # (call, put, net) per strike as last emitted; NaN = no row
        self.profiles: ProfileCache = {}
        self.inputs: ProfileInputs | None = None
        self.unannounced = False  # the book's geometry has not been staged yet (no spot until now)

    def _set_book(self, book: Book) -> None:
        """A new epoch's book: its strikes (every listed one, in order) are the rows' positions."""
        self.book = book
        self.unannounced = True
        strikes = np.unique(np.round(book.strike * 1000).astype(np.int64))
        self.geometry = Geometry(underlying=self.u, strategy="gex", epoch=book.epoch, strike=pack(strikes, I64))
        self.vals = np.full((len(strikes), 3), np.nan)

    def state_reads(self) -> Sequence[tuple[Any, ...]]:
        """The checkpoint, written with every commit: nothing to re-apply after it."""
        return [("HGETALL", self.checkpoint)]

    def load(self, replies: Sequence[Any]) -> Sequence[Resume]:
        raw = replies[0] or {}
        self.book, self.geometry, self.spot, self.vix = None, None, None, None
        self.unannounced = False
        fields = {k.decode(): v for k, v in raw.items()}
        if "_spot" in fields:
            self.spot = _spot_dec.decode(fields["_spot"])
        if "_vix" in fields:
            self.vix = _vol_dec.decode(fields["_vix"])
        if "_epoch" in fields:
            symbols = orjson.loads(fields["_symbols"])
            deliverables = orjson.loads(fields.get("_deliverables", b"{}"))
            self._set_book(Book.of(fields["_epoch"].decode(), symbols, deliverables, fields.get("_delayed") == b"1"))
            assert self.book is not None
            for s in symbols:
                if s in fields:
                    self.book.apply(_greeks_dec.decode(fields[s]))
            if "_vals" in fields:
                self.vals[:] = unpack(fields["_vals"], F64).reshape(-1, 3)
            self.unannounced = "_vals" not in fields  # its geometry was never staged
        self.inputs = ProfileInputs(**orjson.loads(fields["_prof"])) if "_prof" in fields else None
        return ()

    def process(self, batch: Sequence[Entry]) -> Effects:
        outputs: list[Output] = []
        ckpt: dict[str, bytes] = {}
        commands: list[tuple[Any, ...]] = []
        for entry in batch:
            cb: ChangeBatch = entry.value
            touched = chain_changed = False
            ts_ns = 0
            for ch in cb.changes:
                if isinstance(ch, GreeksChange):
                    ts_ns = max(ts_ns, ch.ts_ns)
                    if self.book is not None and self.book.apply(ch):
                        touched = chain_changed = True
                        ckpt[ch.sym] = codec.encode_json(ch)
                elif isinstance(ch, SpotChange):
                    ts_ns = max(ts_ns, ch.ts_ns)
                    self.spot = ch  # hydrate admits only newer values, in its order (provider time first)
                    ckpt["_spot"] = codec.encode_json(ch)
                    touched = True
                elif isinstance(ch, VolChange):
                    self.vix = ch
                    ckpt["_vix"] = codec.encode_json(ch)
                elif isinstance(ch, EpochChange):
                    ts_ns = max(ts_ns, ch.ts_ns)
                    if self.book is not None and self.book.epoch == ch.epoch and self.book.delayed != ch.delayed:
                        self.book.delayed = ch.delayed  # the same contracts, now (or no longer) delayed
                        ckpt["_delayed"] = b"1" if ch.delayed else b"0"
                        touched = True
                    elif self.book is None or self.book.epoch != ch.epoch:
                        book = Book.of(ch.epoch, ch.symbols, ch.deliverables, ch.delayed)
                        if self.book is not None:
                            book.carry_from(self.book)
                        self._set_book(book)
                        touched = chain_changed = True
                        commands.append(("DEL", self.checkpoint))
                        keep = {
                            k: codec.encode_json(v)
                            for k, v in (("_spot", self.spot), ("_vix", self.vix))
                            if v is not None
                        }
                        ckpt = {
                            "_epoch": ch.epoch.encode(),
                            "_symbols": orjson.dumps(book.symbols),
                            "_deliverables": orjson.dumps(book.deliverables),
                            "_delayed": b"1" if book.delayed else b"0",
                            **keep,
                        }
                        ckpt.update(
                            {
                                s: codec.encode_json(
                                    GreeksChange(
                                        sym=s,
                                        ts_ns=int(book.ts[p]),
                                        oi=int(book.oi[p]),
                                        gamma=None if np.isnan(book.gamma[p]) else float(book.gamma[p]),
                                        iv=None if np.isnan(book.iv[p]) else float(book.iv[p]),
                                    )  # fmt: skip
                                )
                                for s, p in book.pos.items()
                                if book.ts[p] > 0
                            }
                        )
            if not touched or self.book is None or self.spot is None:
                continue
            # The first update of an epoch carries its geometry, even when the spot came entries later.
            outputs.append(self._emit(entry.id, cb, ts_ns, self.unannounced, chain_changed))
            self.unannounced = False
            ckpt["_vals"] = pack(self.vals, F64)
            assert self.inputs is not None
            ckpt["_prof"] = orjson.dumps({"anchor": self.inputs.anchor, "asof_ns": self.inputs.asof_ns})
        if ckpt:
            args: list[Any] = []
            for k, v in ckpt.items():
                args += [k, v]
            commands.append(("HSET", self.checkpoint, *args))
        return Effects(outputs=outputs, commands=commands, events_out=len(outputs))

    def _emit(self, src: str, cb: ChangeBatch, ts_ns: int, reset: bool, chain_changed: bool) -> Output:
        assert self.book is not None and self.spot is not None and self.geometry is not None
        s = self.spot.value
        asof = max(int(self.book.ts.max()) if len(self.book.ts) else 0, self.spot.ts_ns)
        chain_ts = int(self.book.ts.max()) if len(self.book.ts) else 0
        if chain_changed or self.inputs is None or abs(s / self.inputs.anchor - 1) >= PROFILE_REUSE_MOVE:
            self.inputs = ProfileInputs(s, asof)
        model = compute(self.book, s, asof, asof - chain_ts > self.stale_ns, self.inputs, self.profiles)
        rows = model.pop("by_strike")
        header = orjson.dumps(
            {
                "spot": s,
                "spot_ts_ns": self.spot.ts_ns,
                "delayed": self.book.delayed or self.spot.delayed,
                "nonstandard": len(self.book.deliverables),
                "units": UNITS,
                "convention": CONVENTION,
                **vol_fields(self.vix),
                **model,
            }
        )
        new = np.full_like(self.vals, np.nan)
        if rows:
            at = np.searchsorted(self.geometry.strikes_x1000(), [round(r["strike"] * 1000) for r in rows])
            new[at] = [(r["call"], r["put"], r["net"]) for r in rows]
        # Rows compare as their JSON would: bit for bit (-0.0 is not 0.0 on the wire).
        if reset:
            changed = np.flatnonzero(~np.isnan(new[:, 0]))
        else:
            changed = np.flatnonzero((new.view(np.int64) != self.vals.view(np.int64)).any(axis=1))
        self.vals = new
        staged = Staged(
            strategy=streams.Strategy.GEX, underlying=self.u, epoch=self.book.epoch, src=src, rx_ns=cb.rx_ns,
            ts_ns=ts_ns, slots=len(new), pending=int((self.book.ts == 0).sum()), reset=reset,
            geometry=self.geometry if reset else None, cols=columns(changed, new[changed]), header=header,
        )  # fmt: skip
        return Output(self.out_spec, self.out_key, codec.encode_staged(staged))


# GEX moves with chain analytics, spot and epochs, never with quotes or trades: a changes entry
# without one of those records is skipped undecoded (the record tags, as schemas/events.py writes them).
_WANTED = (b'"c":"g"', b'"c":"s"', b'"c":"e"')


def wants(fields: Mapping[bytes, bytes]) -> bool:
    data = fields.get(b"data", b"")
    return any(tag in data for tag in _WANTED)


GEX_AGENT = AgentSpec(
    name="calc.gex",
    reads=streams.CHANGES,
    writes=(streams.STAGED[streams.Strategy.GEX],),
    make=lambda settings, u: GexCalc(settings.model_settings, u),
    stateful=True,
    doc="Dealer gamma exposure by strike and expiry, flip level and walls.",
    accepts=wants,
)
