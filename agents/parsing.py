"""Shared vocabulary of the format parsers: reject reasons, drop reasons and a parse result.

Parsers are pure: bytes in, typed events plus the reasons for everything that did not become one.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from marketswarm.schemas.events import Event

EXCERPT_CHARS = 300
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


class RejectReason(StrEnum):
    """Why input went to a rejects stream (the ``reason`` label of marketswarm_rejects_total)."""

    MALFORMED_JSON = "malformed_json"
    MALFORMED_FRAME = "malformed_frame"  # valid JSON, wrong shape (not a list / not a page)
    MALFORMED_ELEMENT = "malformed_element"  # an element that is not an object, or misses fields
    UNKNOWN_EVENT = "unknown_event"
    BAD_SYMBOL = "bad_symbol"
    CROSSED_QUOTE = "crossed_quote"
    NEGATIVE_PRICE = "negative_price"
    NON_FINITE = "non_finite"  # NaN or Infinity
    BAD_SIZE = "bad_size"  # zero or negative trade size, negative quote size
    FUTURE_TIMESTAMP = "future_timestamp"
    STALE_TIMESTAMP = "stale_timestamp"
    OVERSIZED = "oversized"
    BAD_CSV = "bad_csv"
    UNKNOWN_SOURCE = "unknown_source"
    MISROUTED = "misrouted"  # a configured underlying on another underlying's stream
    OUT_OF_RANGE = "out_of_range"  # a finite number no market has (a 1e308 bid, a sequence past int64)
    BAD_RECEIVE_TIME = "bad_receive_time"  # the writer's receive time is after the server's time of the entry
    PARSER_ERROR = "parser_error"  # an exception the parser did not foresee (its type is in the detail)


class DropReason(StrEnum):
    """Input dropped on purpose (the ``reason`` label of marketswarm_dropped_total)."""

    UNCONFIGURED_UNDERLYING = "unconfigured_underlying"
    DUPLICATE_PRINT = "duplicate_print"
    UNUSED_EVENT = "unused_event"  # aggregates: valid, not used by any model
    EMPTY_PAGE = "empty_page"  # a chain page without results (the provider omits them when empty)
    PROVIDER_ERROR_ITEM = "provider_error_item"  # e.g. NOT_FOUND entries of the indices snapshot


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


def text(s: str, limit: int = 2 * EXCERPT_CHARS) -> str:
    """``s`` cut to ``limit`` characters, as valid UTF-8: a lone surrogate (valid in a JSON string,
    not in UTF-8) would fail every encoder after the parser."""
    return s[:limit].encode("utf-8", "replace").decode("utf-8")


def excerpt(element: Any) -> str:
    """The first EXCERPT_CHARS characters of an element, as valid UTF-8 text. Containers are shown
    shallowly (``reprlib``), so a deeply nested or huge element costs no more than a small one."""
    if isinstance(element, bytes | bytearray | memoryview):
        return bytes(element[: EXCERPT_CHARS * 2]).decode("utf-8", "replace")[:EXCERPT_CHARS]
    return text(element if isinstance(element, str) else _repr.repr(element), EXCERPT_CHARS)


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 3, EXCERPT_CHARS, 60
_repr.maxlist = _repr.maxdict = _repr.maxtuple = 20


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
