"""What the format parsers share: plausibility bounds, a parse result, and number readers.

Parsers are pure: bytes in, typed events plus the reasons for everything that did not become one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from marketswarm.schemas.events import Event
from marketswarm.schemas.rejects import DropReason, RejectReason, excerpt, text

# Rejects kept with their detail and excerpt per frame; the rest are only counted, so a frame of a
# million bad elements costs a counter, not a million excerpts (one frame makes one reject entry).
MAX_REJECT_SAMPLES = 16

# Plausibility bounds, checked at normalize so that every step after it can trust its input: finite
# numbers beyond these are no market's (a 1e308 bid, a size or sequence past what int64 holds).
MAX_PRICE = 1e7  # option premiums, index values and equity prices, in currency units
MAX_SIZE = 10**9  # contracts in one print or quote, open interest, day volume
MAX_SEQ = 2**63 - 1  # provider sequence numbers (int64 in every column they reach)
MAX_GREEK = 1e6  # |delta|, |gamma|; implied volatility is bounded by MAX_IV
MAX_IV = 100.0  # 10,000 % a year


class NonFiniteError(ValueError):
    """Raised where a number is required and the input holds NaN or Infinity."""


class RangeError(ValueError):
    """Raised by ``bounded`` when a finite number lies outside its plausible range."""


@dataclass
class Parsed:
    events: list[Event] = field(default_factory=list)
    # The first MAX_REJECT_SAMPLES rejects as (reason, detail, excerpt); every reject is counted.
    rejects: list[tuple[RejectReason, str, str]] = field(default_factory=list)
    reject_counts: dict[RejectReason, int] = field(default_factory=dict)
    drops: dict[DropReason, int] = field(default_factory=dict)

    def reject(self, reason: RejectReason, detail: str, element: Any) -> None:
        self.reject_counts[reason] = self.reject_counts.get(reason, 0) + 1
        if len(self.rejects) < MAX_REJECT_SAMPLES:
            self.rejects.append((reason, text(detail), excerpt(element)))

    @property
    def rejected(self) -> int:
        return sum(self.reject_counts.values())

    def drop(self, reason: DropReason, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n


def num(x: Any) -> float | None:
    """A JSON number as float, None when absent; NonFiniteError for NaN/Infinity, TypeError for non-numbers."""
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise TypeError(f"not a number: {x!r}")
    if not math.isfinite(x):
        raise NonFiniteError(f"non-finite number: {x!r}")
    return float(x)


def bounded(x: float | None, name: str, lo: float, hi: float) -> float | None:
    """``x`` if it lies in [lo, hi] (None stays None); a RangeError naming the field otherwise."""
    if x is not None and not lo <= x <= hi:
        raise RangeError(f"{name} {x!r} outside [{lo:g}, {hi:g}]")
    return x


def count(x: Any, name: str, hi: int = MAX_SIZE) -> int:
    """A JSON integer count in [0, hi] (a float with an integral value is taken); RangeError beyond,
    NonFiniteError for NaN or Infinity, TypeError for anything else."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise TypeError(f"{name} is not a number: {x!r}")
    if isinstance(x, float) and not math.isfinite(x):
        raise NonFiniteError(f"{name}: non-finite number {x!r}")
    if isinstance(x, float) and not x.is_integer():
        raise RangeError(f"{name} {x!r} is not a whole number")
    if not 0 <= x <= hi:
        raise RangeError(f"{name} {x!r} outside [0, {hi}]")
    return int(x)


def req(x: Any) -> float:
    """Like ``num`` for a required field: None (absent) is a TypeError (a malformed element)."""
    value = num(x)
    if value is None:
        raise TypeError("required number is missing")
    return value
