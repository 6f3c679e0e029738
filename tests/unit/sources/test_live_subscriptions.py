"""The live source's subscription set, its assignment to connections, and its reconnect delays."""

from __future__ import annotations

import random

import orjson

from marketswarm.agents.sources.live import EVICTED_BACKOFF_MAX_S, EVICTED_BACKOFF_S, RECONNECT_MAX_S, reconnect_delay
from marketswarm.agents.sources.subscriptions import Assignment, next_close, subscription_set, wanted
from marketswarm.schemas.markettime import expiry_close_ns


def page(*tickers: str) -> bytes:
    return orjson.dumps({"results": [{"details": {"ticker": t}} for t in tickers]})


def test_the_set_is_deduplicated_validated_and_ordered() -> None:
    pages = [
        page("O:SPXW251128C06000000", "O:SPXW251128P05990000", "O:SPX251219C06000000"),
        page("O:SPXW251128C06000000", "O:SPXW25112C0600000", "O:NDX251128C20000000", "SPXW251128C06010000"),
        b"{}",  # an empty page
    ]
    targets = subscription_set(pages, "SPX", 5993.0, 10)
    # Each once; the malformed, the other underlying's and the prefix-less ticker never subscribed;
    # nearest expiry first, then nearest to the money.
    assert [t.ticker for t in targets] == ["O:SPXW251128P05990000", "O:SPXW251128C06000000", "O:SPX251219C06000000"]
    assert targets[0].close_ns == expiry_close_ns("2025-11-28")
    assert len(subscription_set(pages, "SPX", 5998.0, 2)) == 2


def test_contracts_leave_at_their_close_not_at_midnight() -> None:
    targets = {"SPX": subscription_set([page("O:SPXW251128C06000000", "O:SPXW251201C06000000")], "SPX", 6000.0, 9)}
    close = expiry_close_ns("2025-11-28")
    assert wanted(targets, close - 1, 10) == ["O:SPXW251128C06000000", "O:SPXW251201C06000000"]
    assert wanted(targets, close, 10) == ["O:SPXW251201C06000000"]  # 16:00 ET, hours before midnight
    assert next_close(targets, close - 1) == close and next_close(targets, close) == expiry_close_ns("2025-12-01")


def test_underlyings_share_the_capacity_in_turns() -> None:
    spx = subscription_set([page(*(f"O:SPXW251201C0{6000 + i:04d}000" for i in range(5)))], "SPX", 6000.0, 9)
    ndx = subscription_set([page(*(f"O:NDX251201C{20000 + i:05d}000" for i in range(5)))], "NDX", 20000.0, 9)
    got = wanted({"SPX": spx, "NDX": ndx}, 0, 4)
    assert got == [ndx[0].ticker, spx[0].ticker, ndx[1].ticker, spx[1].ticker]


def test_a_contract_stays_on_its_connection() -> None:
    a = Assignment(per_slot=3)
    first = a.assign(["a", "b", "c", "d", "e"], [0, 1])
    assert first == {0: {"a", "b", "c"}, 1: {"d", "e"}}
    # "b" leaves, "f" and "g" arrive: only the difference moves, nothing is reshuffled.
    second = a.assign(["a", "c", "d", "e", "f", "g"], [0, 1])
    assert second == {0: {"a", "c", "f"}, 1: {"d", "e", "g"}}
    # One connection fewer: the survivor keeps its contracts and takes the best of the rest.
    assert a.assign(["a", "c", "d", "e", "f", "g"], [1]) == {1: {"d", "e", "g"}}


def test_reconnects_are_jittered_and_back_off_and_evictions_wait_long() -> None:
    rng = random.Random(1)
    firsts = {round(reconnect_delay(1, 0, rng), 3) for _ in range(50)}
    assert len(firsts) > 40 and max(firsts) <= 1.0  # spread, not in step, and prompt at first
    assert all(reconnect_delay(20, 0, rng) <= RECONNECT_MAX_S for _ in range(50))
    assert all(EVICTED_BACKOFF_S <= reconnect_delay(1, 1, rng) for _ in range(50))
    assert all(reconnect_delay(1, 30, rng) <= EVICTED_BACKOFF_MAX_S for _ in range(50))
    assert min(reconnect_delay(1, 3, rng) for _ in range(50)) >= 4 * EVICTED_BACKOFF_S
