"""The pure parts of history: when a level series gets a point, where keyframes go, the times the
API takes, and the level series merged into columns."""

from __future__ import annotations

import pytest

from marketswarm.schemas.history import (
    LEVEL_FIELDS,
    LevelTrack,
    TimeError,
    keyframe_boundary,
    level_values,
    merge_levels,
    parse_time,
    session_start_ms,
)

T = 1_763_996_400_000  # 2025-11-24 15:00:00 UTC, a minute boundary


def test_a_level_series_gets_at_most_one_point_per_second_and_only_on_a_change() -> None:
    track = LevelTrack()
    assert track.observe(T + 100, (1,)) == [(T + 100, (1,))]  # the first: at once
    assert track.observe(T + 300, (1,)) == []  # unchanged
    assert track.observe(T + 500, (2,)) == []  # a change in a second that has its point: held
    assert track.observe(T + 700, (3,)) == []
    # A later second: the held values at its start (they were in force then), and this one waits.
    assert track.observe(T + 1200, (4,)) == [(T + 1000, (3,))]
    assert track.observe(T + 2100, (4,)) == [(T + 2000, (4,))]  # held since 1.2 s: in force at 2 s
    assert track.observe(T + 3000, (4,)) == []  # nothing changed since the last point
    assert track.observe(T + 3000, (5,)) == [(T + 3000, (5,))]
    # A change back within the second is no point: the last point's values are in force again.
    assert track.observe(T + 3500, (6,)) == []
    assert track.observe(T + 3600, (5,)) == []
    assert track.observe(T + 4100, (5,)) == []


def test_a_restored_track_goes_on_as_the_one_that_never_stopped() -> None:
    steps = [(T + 100, (1,)), (T + 400, (2,)), (T + 1300, (2,)), (T + 1500, (3,)), (T + 2600, (3,))]
    whole = LevelTrack()
    points = [p for t, v in steps for p in whole.observe(t, v)]
    first = LevelTrack()
    done = [p for t, v in steps[:2] for p in first.observe(t, v)]
    again = LevelTrack()
    again.restore(done[-1], steps[1][0], steps[1][1])
    assert done + [p for t, v in steps[2:] for p in again.observe(t, v)] == points


def test_a_keyframe_holds_the_version_in_force_at_each_minute_boundary_crossed() -> None:
    ns = 1_000_000
    assert keyframe_boundary(0, (T + 5) * ns) is None  # no version before
    assert keyframe_boundary((T + 1000) * ns, (T + 59_999) * ns) is None  # the same minute
    assert keyframe_boundary((T + 1000) * ns, (T + 60_000) * ns) == T + 60_000
    assert keyframe_boundary((T + 1000) * ns, (T + 300_000) * ns) == T + 60_000  # quiet for minutes: the first


def test_times_are_iso_or_epoch_ms_and_anything_else_is_refused() -> None:
    assert parse_time(str(T)) == T
    assert parse_time("2025-11-24T15:00:00Z") == T
    assert parse_time("2025-11-24T10:00:00") == T  # no offset: New York
    assert parse_time("2025-11-24T10:00:00.250-05:00") == T + 250
    for bad in ("", "soon", "2025-13-01", "1" * 20, "-5"):
        with pytest.raises(TimeError):
            parse_time(bad)
    assert session_start_ms(T) == parse_time("2025-11-24T00:00:00")


def test_the_level_series_merge_into_columns_carried_forward_and_paged() -> None:
    gex = [(T + 1000 * i, (100.0 + i, 99.0, 105.0, 95.0, 1e9)) for i in range(5)]
    mode = [(T + 2500, ("compression", 70.0))]
    series = {"gex": gex, "market_mode": mode}
    cols, more = merge_levels(series, {"market_mode": ("expansion", 20.0)}, limit=100)
    assert more is None
    assert cols["t"] == [T, T + 1000, T + 2000, T + 2500, T + 3000, T + 4000]
    assert cols["spot"] == [100.0, 101.0, 102.0, 102.0, 103.0, 104.0]
    assert cols["mode"] == ["expansion", "expansion", "expansion", "compression", "compression", "compression"]
    assert cols["gravity_level"] == [None] * 6 and set(cols) == {"t", *LEVEL_FIELDS}
    # Read with a count (limit + 1): rows go only as far as every cut-short series is known.
    page, more = merge_levels({"gex": gex[:3], "market_mode": mode}, {}, limit=2)
    assert page["t"] == [T, T + 1000] and more == T + 1001


def test_level_values_read_the_documents_as_the_dashboard_does() -> None:
    gex = {"spot": 1.0, "flip": 2.0, "call_wall": 9.0, "call_wall_above": 3.0, "put_wall_below": 4.0, "total": 5.0}
    assert level_values("gex", gex) == (1.0, 2.0, 3.0, 4.0, 5.0)
    intent = {"structure": {"bias": 1, "pin": 2, "quadrant": "q"}, "flow": {"day": {"totals": {"net_premium": 7}}}}
    assert level_values("intent", intent) == (1, 2, "q", 7, None)
    assert level_values("gravity", {"level": 5, "band": [4, 6], "em": 1.5}) == (5, 4, 6, 1.5)
