"""The trading day as a timeline (pure): level points, keyframes, and the times a person writes.

* Level points: what a trader reads off the models at a glance (spot, flip, walls, total GEX, market
  mode, dealer gravity, intent, net premium), one series per model that carries them
  (``LEVEL_SOURCES``), at most one point per second of event time and only when something changed
  (``LevelTrack``). Each point is an entry of ``ms:{U}:levels:{model}.v1`` whose id is its time.
* Keyframes: a model as it stood at a minute boundary of event time (its header, and for the
  heatmaps and GEX its columns, compressed), the entry ``<minute ms>-0`` of ``ms:{U}:keyframes:{S}.v1``.
* ``parse_time``: a time as the API takes it, ISO 8601 or epoch milliseconds.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from marketswarm.schemas.markettime import ET

MINUTE_MS = 60_000
SECOND_MS = 1000

# The level series, by the model that carries them, and the names of their fields in the API.
LEVEL_SOURCES: dict[str, tuple[str, ...]] = {
    "gex": ("spot", "flip", "call_wall", "put_wall", "gex_total"),
    "market_mode": ("mode", "mode_score"),
    "gravity": ("gravity_level", "gravity_band_low", "gravity_band_high", "expected_move"),
    "intent": ("intent_bias", "intent_pin", "intent_quadrant", "net_premium_day", "net_premium_5m"),
}
LEVEL_FIELDS = tuple(f for fields in LEVEL_SOURCES.values() for f in fields)

Values = tuple[Any, ...]


def _get(doc: Mapping[str, Any] | None, *path: str) -> Any:
    for part in path:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(part)
    return doc


def level_values(model: str, doc: Mapping[str, Any]) -> Values:
    """A model's level fields (``LEVEL_SOURCES[model]``) from its header or document. The walls are
    the ones the dashboard shows: the call wall at or above spot, the put wall at or below it."""
    if model == "gex":
        return (
            doc.get("spot"),
            doc.get("flip"),
            doc.get("call_wall_above"),
            doc.get("put_wall_below"),
            doc.get("total"),
        )
    if model == "market_mode":
        return (doc.get("mode"), doc.get("score"))
    if model == "gravity":
        band = doc.get("band") or (None, None)
        return (doc.get("level"), band[0], band[1], doc.get("em"))
    if model == "intent":
        return (
            _get(doc, "structure", "bias"),
            _get(doc, "structure", "pin"),
            _get(doc, "structure", "quadrant"),
            _get(doc, "flow", "day", "totals", "net_premium"),
            _get(doc, "flow", "5m", "totals", "net_premium"),
        )
    raise KeyError(f"{model!r} carries no levels; one of {sorted(LEVEL_SOURCES)}")


class LevelTrack:
    """When a model's level series gets a point. ``observe(t_ms, values)`` says: from ``t_ms`` on,
    ``values`` are in force; it returns the points to append, ``(ms, values)``, each stamped at a time
    its values were in force. At most one point per second, and only when the values differ from the
    last point: a change in the first observation of a new second is a point at once; a change later
    in a second that already has its point is a point at the start of the next second, written when
    an observation in a later second arrives. Event time only, so a replay gets the same points."""

    def __init__(self) -> None:
        self.last_s = -1  # the second of the last point
        self.last: Values | None = None  # its values
        self.cur: Values | None = None  # the values in force
        self.cur_ms = 0  # since when

    def restore(self, last_point: tuple[int, Values] | None, cur_ms: int, cur: Values | None) -> None:
        """The last point written, and the values in force (from the restored model)."""
        self.last_s, self.last = (-1, None) if last_point is None else (last_point[0] // SECOND_MS, last_point[1])
        self.cur, self.cur_ms = cur, cur_ms

    def observe(self, t_ms: int, values: Values) -> list[tuple[int, Values]]:
        t_ms = max(t_ms, self.cur_ms)
        second = t_ms // SECOND_MS
        out: list[tuple[int, Values]] = []
        if second > self.last_s and self.cur is not None and self.cur != self.last:
            stamp = (self.last_s + 1) * SECOND_MS if self.last_s >= 0 else self.cur_ms
            if stamp < t_ms:  # the held values were in force at the start of the next second
                out.append((stamp, self.cur))
                self.last_s, self.last = stamp // SECOND_MS, self.cur
        if values != self.last and second > self.last_s:
            out.append((t_ms, values))
            self.last_s, self.last = second, values
        self.cur, self.cur_ms = values, t_ms
        return out


def minute_after(t_ms: int) -> int:
    """The first minute boundary after ``t_ms`` (epoch ms)."""
    return (t_ms // MINUTE_MS + 1) * MINUTE_MS


def keyframe_boundary(prev_asof_ns: int, asof_ns: int) -> int | None:
    """A version published at ``asof_ns`` after one of ``prev_asof_ns``: the minute boundary (ms) at
    which the previous version was in force and no keyframe holds it yet, or None when the two are
    in the same minute. The keyframe of that boundary is the previous version."""
    if not prev_asof_ns:
        return None
    boundary = minute_after(prev_asof_ns // 1_000_000)
    return boundary if asof_ns // 1_000_000 >= boundary else None


class Keyframe(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A model as it stood at a time: its version, epoch and header (a derived model's whole document),
    and for the heatmaps and GEX every position's numbers (``Columns``, packed). ``zipped``: header and
    columns zlib-compressed, as keyframes are kept for days (an intent document is ~100 KB of JSON,
    ~10 KB compressed). The geometry is the epoch's, kept once per epoch (``ms:{U}:geometries:{S}.v1``)."""

    version: int
    epoch: str
    asof_ns: int
    header: bytes
    cols: bytes | None = None
    zipped: bool = False


class TimeError(ValueError):
    """Raised by ``parse_time`` for text that is no time; the message says what is accepted."""


MAX_EPOCH_MS = 10**14  # about the year 5138: a bigger number is no time of ours


def parse_time(text: str) -> int:
    """Epoch milliseconds from ISO 8601 (``2026-12-07T15:32:00Z``; without an offset, New York time)
    or from epoch milliseconds (digits)."""
    raw = text.strip()
    if raw.isascii() and raw.isdigit():
        if len(raw) > 15 or int(raw) > MAX_EPOCH_MS:
            raise TimeError(f"{raw[:20]!r} is beyond any time: epoch milliseconds, or ISO 8601")
        return int(raw)
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise TimeError(
            f"{raw[:40]!r} is no time: ISO 8601 (2026-12-07T10:32:00-05:00; no offset is New York time) "
            "or epoch milliseconds"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=ET)
    return math.floor(when.timestamp() * 1000)


def session_start_ms(t_ms: int) -> int:
    """Midnight New York of the day of ``t_ms``: where a day's history starts by default."""
    day = dt.datetime.fromtimestamp(t_ms / 1000, ET).date()
    return int(dt.datetime.combine(day, dt.time(0), tzinfo=ET).timestamp() * 1000)


def merge_levels(
    series: Mapping[str, Sequence[tuple[int, Values]]], seeds: Mapping[str, Values | None], limit: int
) -> tuple[dict[str, list[Any]], int | None]:
    """Level series (per model, points in time order) as one table of columns: ``t`` and every field of
    ``LEVEL_FIELDS``, a row at each time any series has a point, every field carried forward from its
    series' last point (``seeds``: each series' point before the range, or None). At most ``limit``
    rows; ``series`` may be cut short (read with a count), so rows go only as far as every series
    that could have more is known: the second value is the time to continue from, or None."""
    times = sorted({t for points in series.values() for t, _ in points})
    horizon: int | None = None
    for points in series.values():
        if len(points) > limit:  # read with limit + 1: this series goes on past its last point here
            last = points[limit - 1][0]
            horizon = last if horizon is None else min(horizon, last)
    rows = [t for t in times if horizon is None or t <= horizon][:limit]
    more = len(rows) < len(times) or horizon is not None
    cols: dict[str, list[Any]] = {"t": rows}
    for model, fields in LEVEL_SOURCES.items():
        points = series.get(model, ())
        held = seeds.get(model)
        out: list[Values | None] = []
        i = 0
        for t in rows:
            while i < len(points) and points[i][0] <= t:
                held = points[i][1]
                i += 1
            out.append(held)
        for j, name in enumerate(fields):
            cols[name] = [None if v is None else v[j] for v in out]
    return cols, (rows[-1] + 1 if more and rows else None)
