"""The trade flow of liquidity intent: who initiated each print, summed by strike and side.

Each counted print (a ``FillChange``: hydrate passes only distinct fills whose conditions count toward
volume, schemas/trade_conditions.py) is classified against the quote in force for its contract at the
print's event time (the newest admitted quote at or before it; the last ``QUOTE_HISTORY`` are kept):

* price >= ask: **bought** (the buyer paid the offer); price <= bid: **sold**;
* strictly between: the nearer side; at the mid exactly, or with no quote in force (none yet, or no
  offer): **unclassified**.

A quote's missing bid counts as 0. Per (strike, side) the flow sums contracts and premium (price x
size x 100, in USD) bought, sold and unclassified over rolling event-time windows (``WINDOWS``: the
last 5 and 30 minutes, in whole seconds, ending at the newest event time seen) and the trading day
(America/New_York date of that time), with totals and net premium (bought - sold). Sums are kept in
integers (premium in 1e-4 USD), so they are exact and any order of the same prints gives the same
numbers. Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections import deque
from collections.abc import Iterable
from typing import Any

import orjson

from marketswarm.schemas.events import FillChange, QuoteChange
from marketswarm.schemas.markettime import ET
from marketswarm.schemas.occ import SymbolError, parse_occ

QUOTE_HISTORY = 4  # quotes kept per contract: a print is classified against the one in force at its time
WINDOWS = {"5m": 300, "30m": 1800}  # rolling windows, seconds of event time; and "day"
PX_SCALE = 10_000  # prices in 1e-4 USD: premium sums are integers, exact in any order
MULTIPLIER = 100  # premium = price x size x 100

# The six sums per (strike, side): contracts bought, sold, unclassified; premium (1e-4 USD) the same.
BOUGHT, SOLD, UNCLASSIFIED = 0, 1, 2
CLASSES = ("bought", "sold", "unclassified")

Key = tuple[int, str]  # (strike x1000, side)
Sums = dict[Key, list[int]]


def classify(px: float, quote: tuple[float | None, float | None] | None) -> int:
    """BOUGHT, SOLD or UNCLASSIFIED for a print at ``px`` against ``(bid, ask)`` (None: no quote)."""
    if quote is None:
        return UNCLASSIFIED
    bid, ask = quote[0] or 0.0, quote[1]
    if ask is None or ask <= 0:
        return UNCLASSIFIED
    if px >= ask:
        return BOUGHT
    if px <= bid:
        return SOLD
    mid2 = bid + ask  # compare 2 px with bid + ask: no rounding of a halved mid
    if 2 * px > mid2:
        return BOUGHT
    if 2 * px < mid2:
        return SOLD
    return UNCLASSIFIED


def _add(sums: Sums, key: Key, vec: list[int], sign: int = 1) -> None:
    row = sums.setdefault(key, [0] * 6)
    for i, v in enumerate(vec):
        row[i] += sign * v
    if not any(row):
        del sums[key]


def day_of(ts_ns: int) -> tuple[str, int, int]:
    """The America/New_York date of ``ts_ns`` and that day's bounds [start, end) in epoch ns."""
    day = dt.datetime.fromtimestamp(ts_ns / 1e9, ET).date()
    start = dt.datetime.combine(day, dt.time(), ET)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), ET)
    return day.isoformat(), int(start.timestamp()) * 1_000_000_000, int(end.timestamp()) * 1_000_000_000


class Flow:
    """Quotes in force, per-second buckets of the last 30 minutes, and the sums of every window."""

    def __init__(self) -> None:
        self.quotes: dict[str, deque[tuple[int, float | None, float | None]]] = {}
        self.keys: dict[str, Key | None] = {}  # symbol -> (strike x1000, side), parsed once
        self.now_ns = 0
        self.day = ""
        self.day_start_ns = self.day_end_ns = 0  # the bounds of ``day`` (not checkpointed: derived)
        self.buckets: dict[int, Sums] = {}  # event second -> sums of its prints
        self.heaps: dict[str, list[int]] = {w: [] for w in WINDOWS}  # seconds still in each window
        self.sums: dict[str, Sums] = {w: {} for w in (*WINDOWS, "day")}
        self.prints = 0

    # --- input ---------------------------------------------------------------------------------

    def quote(self, q: QuoteChange) -> None:
        """An admitted quote (hydrate admits only newer ones, so each contract's are in time order)."""
        history = self.quotes.get(q.sym)
        if history is None:
            history = self.quotes[q.sym] = deque(maxlen=QUOTE_HISTORY)
        history.append((q.ts_ns, q.bid, q.ask))

    def in_force(self, sym: str, ts_ns: int) -> tuple[float | None, float | None] | None:
        for ts, bid, ask in reversed(self.quotes.get(sym, ())):
            if ts <= ts_ns:
                return bid, ask
        return None

    def _key(self, sym: str) -> Key | None:
        if sym not in self.keys:
            try:
                o = parse_occ(sym)
                self.keys[sym] = (o.strike_x1000, o.side)
            except SymbolError:
                self.keys[sym] = None
        return self.keys[sym]

    def fill(self, f: FillChange) -> bool:
        """Count a print; False when its symbol is not an option contract."""
        key = self._key(f.sym)
        if key is None:
            return False
        self.advance(f.ts_ns)
        c = classify(f.px, self.in_force(f.sym, f.ts_ns))
        vec = [0] * 6
        vec[c] = f.size
        vec[3 + c] = round(f.px * PX_SCALE) * f.size * MULTIPLIER
        now_s, sec = self.now_ns // 1_000_000_000, f.ts_ns // 1_000_000_000
        if self.day_start_ns <= f.ts_ns < self.day_end_ns:
            _add(self.sums["day"], key, vec)
        if sec > now_s - max(WINDOWS.values()):
            bucket = self.buckets.get(sec)
            if bucket is None:  # each window's heap holds the seconds it has counted, to take out later
                bucket = self.buckets[sec] = {}
                for w, span in WINDOWS.items():
                    if sec > now_s - span:
                        heapq.heappush(self.heaps[w], sec)
            for w, span in WINDOWS.items():
                if sec > now_s - span:
                    _add(self.sums[w], key, vec)
            _add(bucket, key, vec)
        self.prints += 1
        return True

    def advance(self, ts_ns: int) -> None:
        """Event time moved to ``ts_ns`` (if later): the windows roll, the day may turn. Cheap when
        it stays within the same second and day (most quotes)."""
        if ts_ns <= self.now_ns:
            return
        same_second = ts_ns // 1_000_000_000 == self.now_ns // 1_000_000_000
        self.now_ns = ts_ns
        if not self.day_start_ns <= ts_ns < self.day_end_ns:
            today, self.day_start_ns, self.day_end_ns = day_of(ts_ns)
            if today != self.day:
                self.day = today
                self.sums["day"] = {}
        if same_second:
            return
        now_s = ts_ns // 1_000_000_000
        longest = max(WINDOWS.values())
        for w, span in WINDOWS.items():
            heap = self.heaps[w]
            while heap and heap[0] <= now_s - span:
                sec = heapq.heappop(heap)
                for key, vec in self.buckets.get(sec, {}).items():
                    _add(self.sums[w], key, vec, -1)
                if span == longest:
                    self.buckets.pop(sec, None)

    # --- output --------------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """Every window's rows by (strike, side) and totals; premium in USD."""
        out: dict[str, Any] = {"date": self.day or None}
        for w, sums in self.sums.items():
            rows = [_row(k, v) for k, v in sorted(sums.items())]
            total = [sum(v[i] for v in sums.values()) for i in range(6)]
            out[w] = {"rows": rows, "totals": _fields(total)}
        return out

    # --- checkpoint ----------------------------------------------------------------------------

    def dump(self) -> bytes:
        def rows(sums: Sums) -> list[Any]:
            return [[k[0], k[1], *v] for k, v in sums.items()]

        return orjson.dumps(
            {
                "quotes": {sym: list(h) for sym, h in self.quotes.items()},
                "now_ns": self.now_ns,
                "day": self.day,
                "prints": self.prints,
                "buckets": {str(sec): rows(b) for sec, b in self.buckets.items()},
                "heaps": self.heaps,
                "sums": {w: rows(s) for w, s in self.sums.items()},
            }
        )

    @classmethod
    def load(cls, raw: bytes) -> Flow:
        st = orjson.loads(raw)

        def sums(rows: Iterable[list[Any]]) -> Sums:
            return {(int(r[0]), str(r[1])): [int(x) for x in r[2:]] for r in rows}

        f = cls()
        f.quotes = {s: deque(((int(t), b, a) for t, b, a in h), QUOTE_HISTORY) for s, h in st["quotes"].items()}
        f.now_ns, f.day, f.prints = st["now_ns"], st["day"], st["prints"]
        if f.now_ns:
            _, f.day_start_ns, f.day_end_ns = day_of(f.now_ns)
        f.buckets = {int(sec): sums(b) for sec, b in st["buckets"].items()}
        f.heaps = {w: [int(x) for x in st["heaps"][w]] for w in WINDOWS}
        f.sums = {w: sums(st["sums"][w]) for w in (*WINDOWS, "day")}
        return f


def _fields(v: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, name in enumerate(CLASSES):
        out[name] = v[i]
    for i, name in enumerate(CLASSES):
        out[f"{name}_premium"] = v[3 + i] / PX_SCALE
    out["net_premium"] = (v[3 + BOUGHT] - v[3 + SOLD]) / PX_SCALE
    return out


def _row(key: Key, v: list[int]) -> dict[str, Any]:
    return {"strike": key[0] / 1000, "side": key[1], **_fields(v)}
