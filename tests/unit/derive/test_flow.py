"""The trade flow, list in, list out: quotes and counted prints in, bought/sold by strike and window out."""

from __future__ import annotations

import datetime as dt

import pytest

from marketswarm.agents.derive.flow import BOUGHT, SOLD, UNCLASSIFIED, Flow, classify
from marketswarm.schemas.events import FillChange, QuoteChange

T0 = int(dt.datetime(2025, 1, 9, 15, 0, tzinfo=dt.UTC).timestamp() * 1e9)  # 10:00 New York
S = 1_000_000_000
C100, P100, C105 = "SPXW250110C00100000", "SPXW250110P00100000", "SPXW250110C00105000"


@pytest.mark.parametrize(
    ("px", "quote", "side"),
    [
        (1.20, (1.00, 1.20), BOUGHT),  # at the ask
        (1.25, (1.00, 1.20), BOUGHT),  # through the ask
        (1.00, (1.00, 1.20), SOLD),  # at the bid
        (0.95, (1.00, 1.20), SOLD),
        (1.15, (1.00, 1.20), BOUGHT),  # between: nearer the ask
        (1.05, (1.00, 1.20), SOLD),  # between: nearer the bid
        (1.10, (1.00, 1.20), UNCLASSIFIED),  # at the mid
        (1.10, None, UNCLASSIFIED),  # no quote in force
        (1.10, (1.00, None), UNCLASSIFIED),  # no offer
        (0.04, (None, 0.10), SOLD),  # no bid counts as 0: nearer 0 than 0.10
        (0.05, (None, 0.10), UNCLASSIFIED),  # the mid of 0 and 0.10
    ],
)
def test_classification_against_the_quote(
    px: float, quote: tuple[float | None, float | None] | None, side: int
) -> None:
    assert classify(px, quote) == side


def quote(sym: str, ts: int, bid: float, ask: float) -> QuoteChange:
    return QuoteChange(sym=sym, ts_ns=ts, bid=bid, ask=ask)


def fill(sym: str, ts: int, px: float, size: int) -> FillChange:
    return FillChange(sym=sym, ts_ns=ts, px=px, size=size)


def row(flow: Flow, window: str, strike: float, side: str) -> dict[str, object] | None:
    return next((r for r in flow.view()[window]["rows"] if (r["strike"], r["side"]) == (strike, side)), None)


def test_each_print_meets_the_quote_in_force_at_its_event_time() -> None:
    f = Flow()
    f.fill(fill(C100, T0, 1.10, 1))  # before any quote: unclassified
    f.quote(quote(C100, T0 + 10 * S, 1.00, 1.20))
    f.quote(quote(C100, T0 + 20 * S, 2.00, 2.20))
    f.fill(fill(C100, T0 + 15 * S, 1.20, 3))  # the quote of T0+10 s was in force: bought at its ask
    f.fill(fill(C100, T0 + 25 * S, 2.00, 2))  # the T0+20 s quote: sold at its bid
    f.fill(fill(P100, T0 + 25 * S, 3.00, 5))  # a contract never quoted
    r = row(f, "5m", 100.0, "call")
    assert r == {
        "strike": 100.0, "side": "call",
        "bought": 3, "sold": 2, "unclassified": 1,
        "bought_premium": 360.0, "sold_premium": 400.0, "unclassified_premium": 110.0,
        "net_premium": -40.0,
    }  # fmt: skip
    assert row(f, "day", 100.0, "put") == {
        "strike": 100.0, "side": "put", "bought": 0, "sold": 0, "unclassified": 5,
        "bought_premium": 0.0, "sold_premium": 0.0, "unclassified_premium": 1500.0, "net_premium": 0.0,
    }  # fmt: skip
    totals = f.view()["5m"]["totals"]
    assert (totals["bought"], totals["sold"], totals["unclassified"]) == (3, 2, 6)
    assert totals["net_premium"] == -40.0


def test_windows_roll_with_event_time_and_the_day_turns_in_new_york() -> None:
    f = Flow()
    f.quote(quote(C105, T0, 1.00, 1.20))
    f.fill(fill(C105, T0, 1.20, 10))
    f.advance(T0 + 299 * S)
    assert row(f, "5m", 105.0, "call")["bought"] == 10  # type: ignore[index]
    f.advance(T0 + 300 * S)  # the print's second has left the 5-minute window
    assert row(f, "5m", 105.0, "call") is None and row(f, "30m", 105.0, "call")["bought"] == 10  # type: ignore[index]
    f.advance(T0 + 1800 * S)
    assert row(f, "30m", 105.0, "call") is None and row(f, "day", 105.0, "call")["bought"] == 10  # type: ignore[index]
    assert not f.buckets and not f.heaps["5m"] and not f.heaps["30m"]  # bounded: nothing older is kept
    assert f.view()["date"] == "2025-01-09"
    f.advance(T0 + 14 * 3600 * S)  # 00:00 New York: a new trading day
    assert f.view()["date"] == "2025-01-10" and f.view()["day"]["rows"] == []


def test_a_late_print_counts_in_the_windows_it_falls_in_and_leaves_them_clean() -> None:
    f = Flow()
    f.quote(quote(C100, T0 - 3600 * S, 1.00, 1.20))
    f.advance(T0)
    f.fill(fill(C100, T0 - 400 * S, 1.00, 4))  # 400 s old: in the 30-minute window, not in the 5-minute one
    assert row(f, "5m", 100.0, "call") is None
    assert row(f, "30m", 100.0, "call")["sold"] == 4  # type: ignore[index]
    f.fill(fill(C100, T0 - 2000 * S, 1.00, 7))  # older than 30 minutes: the day only
    assert row(f, "30m", 100.0, "call")["sold"] == 4 and row(f, "day", 100.0, "call")["sold"] == 11  # type: ignore[index]
    f.advance(T0 + 1800 * S)
    assert f.view()["5m"]["rows"] == [] and f.view()["30m"]["rows"] == []


def test_premium_sums_are_exact_in_any_order() -> None:
    prints = [fill(C100, T0 + i, px, 1) for i, px in enumerate([0.1, 0.2, 0.3] * 100)]
    a, b = Flow(), Flow()
    for p in prints:
        a.fill(p)
    for p in reversed(prints):
        b.fill(p)
    assert a.view()["day"] == b.view()["day"]
    assert a.view()["day"]["totals"]["unclassified_premium"] == 6000.0  # 100 x (10 + 20 + 30) USD


def test_a_checkpoint_restores_the_same_flow() -> None:
    f = Flow()
    f.quote(quote(C100, T0, 1.00, 1.20))
    for i in range(50):
        f.fill(fill(C100, T0 + i * 30 * S, 1.20 if i % 2 else 1.00, i + 1))
    g = Flow.load(f.dump())
    assert g.view() == f.view()
    for x in (f, g):
        x.fill(fill(C100, T0 + 1600 * S, 1.10, 9))
        x.advance(T0 + 2000 * S)
    assert g.view() == f.view() and g.dump() == f.dump()


def test_a_symbol_that_is_not_an_option_is_left_out() -> None:
    f = Flow()
    assert not f.fill(fill("NOTANOPTION", T0, 1.0, 1))
    assert f.view()["day"]["rows"] == []
