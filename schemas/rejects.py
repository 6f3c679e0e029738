"""Why input was rejected or dropped, and how an excerpt of it is kept: the reasons label the rejects
streams' entries and the ``marketswarm_rejects_total`` / ``marketswarm_dropped_total`` counters, for
normalize's parsers and for the sources alike."""

from __future__ import annotations

import reprlib
from enum import StrEnum
from typing import Any

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
