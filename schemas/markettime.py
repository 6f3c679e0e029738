"""Market time: the exchange's time zone and when an expiry closes. Pure, shared by every stage."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo

ET = ZoneInfo("America/New_York")
CLOSE_ET = dt.time(16, 0)  # index and ETF options here are PM-settled: the expiry closes at 16:00 New York


@lru_cache(maxsize=4096)
def expiry_close_ns(expiry: str) -> int:
    """16:00 America/New_York on an expiry date (YYYY-MM-DD), in epoch ns."""
    d = dt.date.fromisoformat(expiry)
    close = dt.datetime.combine(d, CLOSE_ET, tzinfo=ET)
    return int(close.timestamp()) * 1_000_000_000
