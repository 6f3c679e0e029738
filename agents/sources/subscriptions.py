"""What the live source subscribes to: the contracts worth a WebSocket subscription, in priority order,
and their assignment to connections.

Pure functions of the chain poll's pages and the clock: valid option tickers of the underlying, each
once, nearest expiry first, then nearest to the money; gone at their expiry's 16:00 ET close; several
underlyings share the capacity in turns; a contract stays on its connection while it is wanted, so a
change of the set is a small difference per connection (agents/sources/live.py applies it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from marketswarm.schemas.markettime import expiry_close_ns
from marketswarm.schemas.occ import PROVIDER_PREFIX, SymbolError, parse_occ

MAX_QUOTES_PER_CONNECTION = 1000  # the provider's limit for options Q subscriptions


@dataclass(frozen=True)
class Target:
    """A contract to subscribe to, with what orders it (expiry, distance to spot) and its close."""

    ticker: str  # the provider's, O: prefix
    close_ns: int
    distance: float


def subscription_set(pages: Sequence[bytes], underlying: str, spot: float | None, limit: int) -> list[Target]:
    """The contracts of one underlying worth a subscription, best first: valid tickers of this
    underlying, each once, nearest expiry first, then nearest to the money."""
    found: dict[str, Target] = {}
    for body in pages:
        with contextlib.suppress(orjson.JSONDecodeError):
            page = orjson.loads(body)
            results = page.get("results") if isinstance(page, dict) else None
            for r in results if isinstance(results, list) else ():
                d = r.get("details") if isinstance(r, dict) else None
                ticker = d.get("ticker") if isinstance(d, dict) else None
                if not isinstance(ticker, str) or not ticker.startswith(PROVIDER_PREFIX) or ticker in found:
                    continue
                try:
                    o = parse_occ(ticker)
                except SymbolError:
                    continue
                if o.underlying != underlying:
                    continue
                distance = abs(o.strike_x1000 / 1000 - spot) if spot else float(o.strike_x1000)
                found[ticker] = Target(ticker, expiry_close_ns(o.expiry.isoformat()), distance)
    return sorted(found.values(), key=lambda t: (t.close_ns, t.distance, t.ticker))[:limit]


def wanted(targets: dict[str, list[Target]], now_ns: int, capacity: int) -> list[str]:
    """Contracts to subscribe to now, in priority order: each underlying's best first, taken in
    turns (so one underlying cannot crowd out another), without contracts past their close."""
    live = [[t.ticker for t in ts if t.close_ns > now_ns] for _, ts in sorted(targets.items())]
    out: list[str] = []
    seen: set[str] = set()
    for rank in range(max((len(x) for x in live), default=0)):
        for tickers in live:
            if rank < len(tickers) and tickers[rank] not in seen:
                seen.add(tickers[rank])
                out.append(tickers[rank])
    return out[:capacity]


def next_close(targets: dict[str, list[Target]], now_ns: int) -> int | None:
    """The next expiry close among the targets (when the subscriptions must drop contracts)."""
    closes = [t.close_ns for ts in targets.values() for t in ts if t.close_ns > now_ns]
    return min(closes) if closes else None


class Assignment:
    """Contracts per option connection (slot), at most ``per_slot`` each. A contract stays on its
    connection while it is wanted, so a change of the set is a small difference per connection."""

    def __init__(self, per_slot: int) -> None:
        self.per_slot = per_slot
        self.slots: dict[int, set[str]] = {}

    def assign(self, contracts: Sequence[str], slot_ids: Iterable[int]) -> dict[int, set[str]]:
        ids = list(slot_ids)
        wanted_set = set(contracts)
        slots = {i: self.slots.get(i, set()) & wanted_set for i in ids}
        placed = set().union(*slots.values()) if slots else set()
        free = iter(c for c in contracts if c not in placed)
        for i in ids:
            room = self.per_slot - len(slots[i])
            while room > 0:
                c = next(free, None)
                if c is None:
                    break
                slots[i].add(c)
                room -= 1
        self.slots = slots
        return {i: set(s) for i, s in slots.items()}
