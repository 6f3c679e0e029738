"""WebSocket frames: routed by their symbols' roots, the provider's bytes kept."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from marketswarm.agents.sources.wsframes import FramePump
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings

SPX = "O:SPXW241115C05800000"
NDX = "O:NDXP241115P20000000"


def pump(*underlyings: str) -> tuple[FramePump, Metrics]:
    metrics = Metrics(CollectorRegistry())
    st = Settings(underlyings=list(underlyings))
    return FramePump(st, None, metrics, None, asyncio.Event(), "massive.ws"), metrics  # type: ignore[arg-type]


def quote(sym: str) -> dict[str, Any]:
    return {"ev": "Q", "sym": sym, "bp": 1.0, "ap": 1.1, "t": 1}


def test_the_underlying_is_read_from_the_root_or_the_index() -> None:
    p, _ = pump("SPX", "NDX")
    assert p.underlying_of(SPX) == "SPX" and p.underlying_of(NDX) == "NDX"
    assert p.underlying_of("O:AAPL1241115C00100000") == "AAPL"  # an adjusted root
    assert p.underlying_of("I:SPX") == "SPX"
    assert p.underlying_of("O:short") is None and p.underlying_of("X:BTCUSD") is None


def test_a_frame_of_one_underlying_keeps_its_exact_bytes() -> None:
    p, _ = pump("SPX", "NDX")
    data = b'[ {"ev":"Q","sym":"O:SPXW241115C05800000","bp":1.50,"ap":1.60,"t":1} ]'
    routed, statuses = p.route(data)
    assert routed == {"SPX": data} and routed["SPX"] is data and statuses == []


def test_a_mixed_frame_is_split_by_underlying_and_statuses_are_seen() -> None:
    p, metrics = pump("SPX", "NDX")
    frame = [quote(SPX), quote(NDX), quote("O:QQQ241115C00500000"), {"ev": "status", "status": "success"}]
    routed, statuses = p.route(orjson.dumps(frame))
    assert {u: orjson.loads(b) for u, b in routed.items()} == {"SPX": [quote(SPX)], "NDX": [quote(NDX)]}
    assert statuses == ["success"]
    assert metrics.dropped.labels("source.massive", "ws", "unconfigured_underlying")._value.get() == 1


def test_the_volatility_index_goes_to_every_underlying() -> None:
    p, metrics = pump("SPX", "NDX")
    vix = {"ev": "V", "T": "I:VIX", "val": 18.5, "t": 1}
    routed, _ = p.route(orjson.dumps([quote(SPX), vix]))
    assert {u: orjson.loads(b) for u, b in routed.items()} == {"SPX": [quote(SPX), vix], "NDX": [vix]}
    assert metrics.dropped.labels("source.massive", "ws", "unconfigured_underlying")._value.get() == 0


def test_elements_no_underlying_can_be_named_for_go_where_normalize_rejects_them() -> None:
    p, _ = pump("SPX", "NDX")
    routed, _ = p.route(orjson.dumps([quote(SPX), {"ev": "Q", "sym": 7}]))
    assert orjson.loads(routed["SPX"]) == [quote(SPX), {"ev": "Q", "sym": 7}]


def test_a_binary_frame_is_buffered_as_it_came() -> None:
    p, _ = pump("SPX")
    raw = b'[{"ev":"Q","sym":"\xff\xfe"}]'  # not UTF-8: kept, never replaced
    p.put(raw)
    assert p.buffer.get_nowait()[1] is raw


def test_a_mixed_frame_keeps_each_elements_own_bytes() -> None:
    p, _ = pump("SPX", "NDX")
    spx = '{"ev":"Q", "sym":"O:SPXW241115C05800000","bp":1.50,"ap":1.60e0,"t":1}'
    ndx = '{ "ev":"T","sym":"O:NDXP241115P20000000","p":12.10,"s":1,"t":1 }'
    spx2 = '{"ev":"V","T":"I:SPX","val":5850.00,"t":2}'
    routed, _ = p.route(f"[ {spx} ,\n{ndx},{spx2}]".encode())
    assert routed == {"SPX": f"[{spx},{spx2}]".encode(), "NDX": f"[{ndx}]".encode()}


def test_element_texts_refuses_what_is_not_an_array() -> None:
    from marketswarm.agents.sources.wsframes import element_texts

    assert element_texts(" [ ] ") == [] and element_texts('[1, "a,]" ,{"x":[2]}]') == ["1", '"a,]"', '{"x":[2]}']
    for bad in ('{"a":1}', "[1 2]", "[1,"):
        with pytest.raises(ValueError):
            element_texts(bad)
