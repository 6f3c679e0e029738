"""A simulated options market, the default source of `make run`: seeded, deterministic, provider-shaped.

For each underlying it keeps a strike grid like the real one (SPXW every 5 points near the money,
wider steps further out), expiries from 0DTE over the next trading days, a volatility smile with
skew and term structure, a spot path (geometric Brownian motion), and open interest concentrated
near the money and on round strikes. Fair values are Black-Scholes; quotes are fair value around a
realistic spread on the exchange tick. Quote and trade arrivals are Poisson, weighted toward the
money and the nearest expiry, with bursts of fills sharing one timestamp. Everything leaves as the
provider's own shapes (WebSocket ``Q``/``T``/``V`` frames, REST chain pages), so the simulated
market exercises exactly the normalize path live data takes.

Given the seed and the sequence of ``advance`` times, the frames are byte-identical.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson
import redis.asyncio as aioredis

from marketswarm.agents.sources.writer import RawWriter
from marketswarm.schemas import blackscholes as bs
from marketswarm.schemas.markettime import ET, expiry_close_ns
from marketswarm.schemas.occ import VOL_INDEX_TICKER, format_occ, provider_index_ticker
from marketswarm.topology.agent import AgentSpec
from marketswarm.topology.backpressure import Gate
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings
from marketswarm.topology.stopping import pause

NS = 1_000_000_000
RATE = 0.045  # risk-free rate used for fair values
FRAME_EVENTS = 100  # the provider batches events into frames; we do too
FRAME_SPAN_MS = 20  # ...sending as it goes: a frame holds at most this much event time
SPOT_INTERVAL_NS = NS  # an index value every second (the underlying's and the volatility index's)
VIX_LEVEL = 17.0  # the volatility index's long-run level, its volatility per sqrt(year), its pull back to
VIX_VOL = 1.2  # that level per year, and the correlation of its moves with spot's (it rises as spot falls)
VIX_REVERSION = 50.0
VIX_SPOT_CORR = -0.7
STEP_NS = 100_000_000  # spot path resolution


@dataclass(frozen=True)
class Profile:
    root: str
    spot: float
    vol: float  # at-the-money volatility of the front expiry
    near_step: float  # strike step near the money
    near_range: float  # +/- range (points) listed at near_step
    far_step: float
    far_range: float
    tick_small: float  # tick below 3.00
    tick_large: float
    n_expiries: int = 5


PROFILES: dict[str, Profile] = {
    "SPX": Profile("SPXW", 5900.0, 0.14, 5.0, 200.0, 25.0, 600.0, 0.05, 0.10),
    "NDX": Profile("NDXP", 21000.0, 0.18, 10.0, 500.0, 50.0, 2000.0, 0.05, 0.10),
    "SPY": Profile("SPY", 590.0, 0.14, 1.0, 20.0, 5.0, 60.0, 0.01, 0.01),
    "QQQ": Profile("QQQ", 510.0, 0.18, 1.0, 20.0, 5.0, 60.0, 0.01, 0.01),
}


def profile_for(underlying: str) -> Profile:
    """Known underlyings get their profile; any other gets an SPY-like one around 100."""
    return PROFILES.get(underlying, Profile(underlying, 100.0, 0.25, 1.0, 10.0, 5.0, 40.0, 0.01, 0.01))


def trading_days(start: dt.date, n: int) -> list[dt.date]:
    days: list[dt.date] = []
    d = start
    while len(days) < n:
        if d.weekday() < 5:
            days.append(d)
        d += dt.timedelta(days=1)
    return days


class SimMarket:
    """One underlying's simulated market; ``advance(t)`` returns the raw frames up to event time t."""

    def __init__(self, underlying: str, seed: int, rate: float, start_ns: int, chain_interval_s: float = 30.0) -> None:
        self.u = underlying
        self.p = profile_for(underlying)
        self.rng = np.random.default_rng([seed, zlib.crc32(underlying.encode())])
        self.rate = rate
        self.t_ns = start_ns
        self.spot = self.p.spot
        self.seq = 0
        self.next_spot_ns = start_ns
        # The volatility index: mean-reverting in log, moving against spot (its own generator, so the
        # market's draws are those of a market without it).
        self.vix_rng = np.random.default_rng([seed, zlib.crc32(underlying.encode()), 1])
        self.vix = VIX_LEVEL * math.exp(VIX_VOL / math.sqrt(2 * VIX_REVERSION) * self.vix_rng.standard_normal())
        self.chain_interval_ns = int(chain_interval_s * NS)
        self.next_chain_ns = start_ns
        self.center = math.nan
        self._build_grid()

    # --- the listed contracts ---------------------------------------------------------------

    def _build_grid(self) -> None:
        p = self.p
        recenter = p.near_range / 4
        self.center = round(self.spot / recenter) * recenter
        near = np.arange(self.center - p.near_range, self.center + p.near_range + 1e-9, p.near_step)
        far = np.arange(
            math.ceil((self.center - p.far_range) / p.far_step) * p.far_step,
            self.center + p.far_range + 1e-9,
            p.far_step,
        )
        strikes = np.unique(np.round(np.concatenate([near, far]), 3))
        strikes = strikes[strikes > 0]
        today = dt.datetime.fromtimestamp(self.t_ns / NS, ET)
        start = today.date() if today.hour < 16 else today.date() + dt.timedelta(days=1)
        expiries = trading_days(start, p.n_expiries)
        ks, calls, exps, syms = [], [], [], []
        for e in expiries:
            for k in strikes:
                for is_call in (True, False):
                    ks.append(k)
                    calls.append(is_call)
                    exps.append(e.isoformat())
                    syms.append(format_occ(p.root, e, "call" if is_call else "put", int(round(k * 1000)), prefix=True))
        self.k = np.array(ks)
        self.is_call = np.array(calls)
        self.expiry = exps
        self.sym = syms
        self.close_ns = np.array([expiry_close_ns(e) for e in exps], dtype=np.float64)
        day = {e: i for i, e in enumerate(sorted(set(exps)))}
        self.exp_index = np.array([day[e] for e in exps])
        moneyness = np.abs(np.log(self.k / self.spot))
        round_bonus = np.where(np.isclose(np.mod(self.k, 25 * p.near_step), 0), 3.0, 1.0)
        otm = np.where(self.is_call, self.k > self.spot, self.k < self.spot)
        # Open interest sits out of the money: call walls above spot, put walls below it.
        base_oi = 1_500 * np.exp(-moneyness / 0.03) * round_bonus * np.where(otm, 1.6, 0.5) / (1 + self.exp_index)
        self.oi = (base_oi * self.rng.uniform(0.5, 1.5, len(ks))).astype(np.int64) + self.rng.integers(0, 50, len(ks))
        # Arrival weights: near the money and the front expiry trade most.
        w = np.exp(-moneyness / 0.01) / (1 + 2 * self.exp_index) + 1e-4
        self.weights = w / w.sum()
        # The last quote sent per contract: a chain snapshot reports it, with its own time, as the
        # provider's does (so a snapshot does not re-quote the whole chain at once).
        self.last_bid = np.zeros(len(ks))
        self.last_ask = np.zeros(len(ks))
        self.last_ts = np.zeros(len(ks), dtype=np.int64)

    def _iv(self, idx: np.ndarray, spot: float, now_ns: int) -> np.ndarray:
        t = bs.years_to_expiry(self.close_ns[idx], now_ns)
        m = np.log(self.k[idx] / spot) / np.sqrt(np.maximum(t, 1 / 365))
        atm = self.p.vol * (1 + 0.15 * np.exp(-t * 50))  # front-end term structure
        return np.clip(atm - 0.35 * m * self.p.vol + 0.6 * m * m * self.p.vol, 0.05, 3.0)  # type: ignore[no-any-return]

    def _quotes(self, idx: np.ndarray, now_ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = bs.years_to_expiry(self.close_ns[idx], now_ns)
        iv = self._iv(idx, self.spot, now_ns)
        fair = bs.price(self.spot, self.k[idx], t, RATE, iv, self.is_call[idx])
        tick = np.where(fair < 3.0, self.p.tick_small, self.p.tick_large)
        half = np.maximum(tick, 0.015 * fair) / 2 + tick * self.rng.integers(0, 2, len(idx))
        bid = np.floor((fair - half) / tick) * tick
        ask = np.ceil((fair + half) / tick) * tick
        bid = np.where(bid < tick, 0.0, bid)  # far out of the money: no bid
        ask = np.maximum(ask, bid + tick)
        return np.round(bid, 2), np.round(ask, 2), iv

    # --- frames -------------------------------------------------------------------------------

    def chain_frame(self) -> bytes:
        """A REST chain poll (a list of pages), like the live poller writes."""
        idx = np.arange(len(self.k))
        bid, ask, iv = self._quotes(idx, self.t_ns)
        quoted = self.last_ts > 0
        bid = np.where(quoted, self.last_bid, bid)
        ask = np.where(quoted, self.last_ask, ask)
        updated = np.where(quoted, self.last_ts, self.t_ns)
        t = bs.years_to_expiry(self.close_ns, self.t_ns)
        gam = bs.gamma(self.spot, self.k, t, RATE, iv)
        dlt = bs.delta(self.spot, self.k, t, RATE, iv, self.is_call)
        ticker = provider_index_ticker(self.u)
        value_key = "value" if ticker.startswith("I:") else "price"
        results = []
        for i in range(len(self.k)):
            results.append(
                {
                    "details": {
                        "contract_type": "call" if self.is_call[i] else "put",
                        "exercise_style": "european",
                        "expiration_date": self.expiry[i],
                        "shares_per_contract": 100,
                        "strike_price": float(self.k[i]),
                        "ticker": self.sym[i],
                    },
                    "greeks": {"delta": float(dlt[i]), "gamma": float(gam[i])},
                    "implied_volatility": float(iv[i]),
                    "last_quote": {
                        "bid": float(bid[i]),
                        "ask": float(ask[i]),
                        "bid_size": 10,
                        "ask_size": 10,
                        "last_updated": int(updated[i]),
                        "midpoint": float((bid[i] + ask[i]) / 2),
                    },
                    "open_interest": int(self.oi[i]),
                    "underlying_asset": {"ticker": ticker, value_key: round(self.spot, 2), "last_updated": self.t_ns},
                }
            )
        page = orjson.dumps({"results": results, "status": "OK", "request_id": f"sim-{self.t_ns}"})
        return b"[" + page + b"]"

    def advance(self, until_ns: int) -> list[tuple[str, bytes]]:
        """Simulate up to ``until_ns``: (format, bytes) frames in event-time order."""
        out: list[tuple[str, bytes]] = []
        while self.t_ns < until_ns:
            step_end = min(until_ns, self.t_ns + STEP_NS)
            dt_years = (step_end - self.t_ns) / NS / bs.SECONDS_PER_YEAR
            z = self.rng.standard_normal()
            self.spot *= math.exp(-0.5 * self.p.vol**2 * dt_years + self.p.vol * math.sqrt(dt_years) * z)
            zv = VIX_SPOT_CORR * z + math.sqrt(1 - VIX_SPOT_CORR**2) * self.vix_rng.standard_normal()
            drift = -VIX_REVERSION * math.log(self.vix / VIX_LEVEL) * dt_years
            self.vix *= math.exp(drift + VIX_VOL * math.sqrt(dt_years) * zv)
            if self.t_ns >= self.next_chain_ns:
                recenter = self.p.near_range / 4
                if abs(self.spot - self.center) > recenter:
                    self._build_grid()  # the listed grid follows spot: a new geometry, a new epoch
                out.append(("massive.rest.chain", self.chain_frame()))
                self.next_chain_ns = self.t_ns + self.chain_interval_ns
            elements: list[dict[str, object]] = []
            if self.t_ns >= self.next_spot_ns:
                ticker = provider_index_ticker(self.u)
                elements.append({"ev": "V", "val": round(self.spot, 2), "T": ticker, "t": self.t_ns // 1_000_000})
                elements.append(
                    {"ev": "V", "val": round(self.vix, 2), "T": VOL_INDEX_TICKER, "t": self.t_ns // 1_000_000}
                )
                self.next_spot_ns += SPOT_INTERVAL_NS
            n = int(self.rng.poisson(self.rate * (step_end - self.t_ns) / NS))
            if n:
                elements.extend(self._events(n, self.t_ns, step_end))
            out.extend(("massive.ws", orjson.dumps(f)) for f in _frames(elements))
            self.t_ns = step_end
        return out

    def _events(self, n: int, t0: int, t1: int) -> list[dict[str, object]]:
        idx = self.rng.choice(len(self.k), size=n, p=self.weights)
        times = np.sort(self.rng.integers(t0, max(t1, t0 + 1), n)) // 1_000_000
        # Bursts: a sweep fills several times at one timestamp, told apart only by sequence number.
        burst = self.rng.random(n) < 0.02
        is_trade = self.rng.random(n) < 0.12
        bid, ask, _ = self._quotes(idx, t0)
        # The last quote of each contract in this step (times are sorted: the last occurrence).
        rev = np.flatnonzero(~(is_trade & (ask > 0)))[::-1]
        _, first = np.unique(idx[rev], return_index=True)
        last = rev[first]
        self.last_bid[idx[last]] = bid[last]
        self.last_ask[idx[last]] = ask[last]
        self.last_ts[idx[last]] = times[last] * 1_000_000
        sizes = self.rng.geometric(0.3, n)
        events: list[dict[str, object]] = []
        for j in range(n):
            sym = self.sym[idx[j]]
            ms = int(times[j])
            if is_trade[j] and ask[j] > 0:
                px = float(ask[j] if self.rng.random() < 0.5 or bid[j] == 0 else bid[j])
                fills = int(self.rng.integers(2, 8)) if burst[j] else 1
                for _ in range(fills):
                    self.seq += 1
                    events.append(
                        {
                            "ev": "T",
                            "sym": sym,
                            "x": 302,
                            "p": px,
                            "s": int(sizes[j]),
                            "c": [209],
                            "t": ms,
                            "q": self.seq,
                        }
                    )
            else:
                self.seq += 1
                events.append(
                    {
                        "ev": "Q",
                        "sym": sym,
                        "bx": 302,
                        "ax": 302,
                        "bp": float(bid[j]),
                        "ap": float(ask[j]),
                        "bs": int(sizes[j]) * 10,
                        "as": int(sizes[j]) * 10,
                        "t": ms,
                        "q": self.seq,
                    }  # fmt: skip
                )
        return events


def _frames(elements: list[dict[str, object]]) -> list[list[dict[str, object]]]:
    """Elements (in time order) in frames of at most FRAME_EVENTS and FRAME_SPAN_MS of event time."""
    frames: list[list[dict[str, object]]] = []
    span = None
    for el in elements:
        slot = int(el["t"]) // FRAME_SPAN_MS  # type: ignore[call-overload]
        if not frames or len(frames[-1]) >= FRAME_EVENTS or slot != span:
            frames.append([])
            span = slot
        frames[-1].append(el)
    return frames


# Wall-clock cadence of the simulated source: frames for the elapsed time are written every tick.
TICK_S = 0.02


async def run_simulated(
    settings: Settings, redis: aioredis.Redis, metrics: Metrics, stop: asyncio.Event, agents: Sequence[AgentSpec]
) -> None:
    """The live simulated source: event time follows the wall clock."""
    writer = RawWriter.of(settings, redis, metrics, "sim", Gate(redis, settings.max_backlog, agents))
    now = time.time_ns()
    markets = {u: SimMarket(u, settings.sim_seed, settings.sim_rate, now) for u in settings.underlyings}
    while not stop.is_set():
        now = time.time_ns()
        for u, market in markets.items():
            await writer.write(u, market.advance(now), now)
        await pause(stop, TICK_S)
