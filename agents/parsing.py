"""Shared vocabulary of the format parsers: reject reasons, drop reasons and a parse result.

Parsers are pure: bytes in, typed events plus the reasons for everything that did not become one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from marketswarm.schemas.events import Event

EXCERPT_CHARS = 300


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


class DropReason(StrEnum):
    """Input dropped on purpose (the ``reason`` label of marketswarm_dropped_total)."""

    UNCONFIGURED_UNDERLYING = "unconfigured_underlying"
    DUPLICATE_PRINT = "duplicate_print"
    UNUSED_EVENT = "unused_event"  # aggregates: valid, not used by any model
    EMPTY_PAGE = "empty_page"  # a chain page without results (the provider omits them when empty)
    PROVIDER_ERROR_ITEM = "provider_error_item"  # e.g. NOT_FOUND entries of the indices snapshot


@dataclass
class Parsed:
    events: list[Event] = field(default_factory=list)
    rejects: list[tuple[RejectReason, str, str]] = field(default_factory=list)  # (reason, detail, excerpt)
    drops: dict[DropReason, int] = field(default_factory=dict)

    def reject(self, reason: RejectReason, detail: str, element: Any) -> None:
        self.rejects.append((reason, detail, excerpt(element)))

    def drop(self, reason: DropReason, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n


def excerpt(element: Any) -> str:
    if isinstance(element, bytes | bytearray | memoryview):
        text = bytes(element[: EXCERPT_CHARS * 2]).decode("utf-8", "replace")
    else:
        text = element if isinstance(element, str) else repr(element)
    return text[:EXCERPT_CHARS]


def num(x: Any) -> float | None:
    """A JSON number as float, None when absent; raises ValueError for NaN/Infinity or non-numbers."""
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise TypeError(f"not a number: {x!r}")
    if not math.isfinite(x):
        raise ValueError(f"non-finite number: {x!r}")
    return float(x)


def req(x: Any) -> float:
    """Like ``num`` for a required field: None (absent) is a TypeError (a malformed element)."""
    value = num(x)
    if value is None:
        raise TypeError("required number is missing")
    return value
