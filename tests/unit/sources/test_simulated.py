"""The simulated market is seeded and deterministic, provider-shaped, and realistic in shape."""

from __future__ import annotations

from collections import Counter

import orjson

from marketswarm.agents.normalize.normalizer import parse_frame
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.schemas.codec import RawFrame
from marketswarm.schemas.events import ChainSnapshot, Quote, Spot, Trade
from marketswarm.topology.settings import Settings

T0 = 1_763_974_800_000_000_000  # a Monday 09:00 UTC


def run(seed: int, rate: float = 4000) -> list[tuple[str, bytes]]:
    m = SimMarket("SPX", seed, rate, T0)
    out = []
    for step in range(1, 31):
        out += m.advance(T0 + step * 100_000_000)
    return out


def test_same_seed_same_bytes_different_seed_different_bytes() -> None:
    assert run(5) == run(5)
    assert run(5) != run(6)


def test_frames_normalize_cleanly_and_look_like_a_market() -> None:
    st = Settings(underlyings=["SPX"])
    counts: Counter[str] = Counter()
    snap = None
    for fmt, data in run(5):
        parsed = parse_frame(RawFrame(src=fmt, rx_ns=T0 + 3_000_000_000, data=data), "SPX", st)
        assert not parsed.rejects
        for e in parsed.events:
            counts[type(e).__name__] += 1
            if isinstance(e, ChainSnapshot):
                snap = e
    assert counts["Quote"] > 5000 and counts["Trade"] > 300 and counts["Spot"] == 3
    assert snap is not None
    expiries = sorted({c.expiry for c in snap.contracts})
    assert len(expiries) == 5 and expiries[0] == "2025-11-24"  # 0DTE first
    front = sorted({c.strike_x1000 for c in snap.contracts if c.expiry == expiries[0]})
    near = [k for k in front if abs(k / 1000 - 5900) <= 100]
    assert all(b - a == 5000 for a, b in zip(near, near[1:], strict=False))  # SPXW every 5 points near the money
    calls = {c.strike_x1000: c for c in snap.contracts if c.expiry == expiries[-1] and c.side == "call"}
    puts = {c.strike_x1000: c for c in snap.contracts if c.expiry == expiries[-1] and c.side == "put"}
    assert puts[5_600_000].iv > calls[6_200_000].iv  # skew: downside vol is richer
    for c in snap.contracts:
        if c.bid and c.ask:
            assert c.bid < c.ask


def test_bursts_share_a_timestamp_with_distinct_sequence_numbers() -> None:
    trades = []
    for fmt, data in run(9, rate=20000):
        if fmt == "massive.ws":
            trades += [e for e in orjson.loads(data) if e["ev"] == "T"]
    by_time = Counter((t["sym"], t["t"]) for t in trades)
    assert max(by_time.values()) >= 2
    assert len({t["q"] for t in trades}) == len(trades)


def test_types() -> None:
    assert Quote and Trade and Spot
