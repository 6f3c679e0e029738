"""Hostile input at normalize: every shape is a reject with its reason (never an exception, never a
dead letter), one frame makes at most one reject entry, and nothing out of range gets through."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from marketswarm.agents.normalize.normalizer import Normalizer
from marketswarm.agents.normalize.parsing import MAX_PRICE, MAX_SEQ, MAX_SIZE
from marketswarm.schemas import codec
from marketswarm.schemas.codec import RawFormat, RawFrame
from marketswarm.schemas.events import ChainSnapshot, Quote, Spot, Trade
from marketswarm.schemas.models import Reject
from marketswarm.topology import streams
from marketswarm.topology.agent import Effects, Entry
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings

SETTINGS = Settings(underlyings=["SPX", "NDX"])
T_MS = 1_700_000_000_000
T0 = T_MS * 1_000_000
SYM = "O:SPXW231115C04700000"
QUOTE = {"ev": "Q", "sym": SYM, "bp": 1.0, "ap": 1.2, "bs": 1, "as": 2, "t": T_MS, "q": 5}
TRADE = {"ev": "T", "sym": SYM, "p": 1.1, "s": 3, "t": T_MS, "q": 6, "x": 1, "c": [209]}
INDEX = {"ev": "V", "T": "I:SPX", "val": 4700.5, "t": T_MS}
CHAIN_RESULT = {
    "details": {"ticker": SYM, "shares_per_contract": 100},
    "last_quote": {"bid": 1.0, "ask": 1.2, "last_updated": T0 - 1},
    "open_interest": 10,
    "day": {"volume": 5},
    "implied_volatility": 0.2,
    "greeks": {"delta": 0.5, "gamma": 0.01},
    "underlying_asset": {"value": 4700.0, "last_updated": T0 - 1},
}


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def run(frames: list[tuple[str, bytes]], rx_ns: int = T0) -> tuple[Effects, list[Reject]]:
    n = Normalizer(SETTINGS, "SPX")
    entries = [Entry(f"{T_MS}-{i}", RawFrame(src=src, rx_ns=rx_ns, data=data)) for i, (src, data) in enumerate(frames)]
    effects = n.process(entries)
    rejects = [
        codec.decode(streams.Payload.REJECT, _fields(o.fields)) for o in effects.outputs if o.spec is streams.REJECTS
    ]
    return effects, rejects


def _fields(fields: dict[str, Any]) -> dict[bytes, bytes]:
    return {k.encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in fields.items()}


def events_of(effects: Effects) -> list[Any]:
    out: list[Any] = []
    for o in effects.outputs:
        if o.spec is streams.EVENTS:
            out += codec.decode(streams.Payload.EVENTS, _fields(o.fields)).events
    return out


def ws(*elements: Any) -> tuple[str, bytes]:
    return RawFormat.WS, json.dumps(list(elements), allow_nan=True).encode()


def chain(*results: Any) -> tuple[str, bytes]:
    return RawFormat.REST_CHAIN, json.dumps([{"results": list(results)}], allow_nan=True).encode()


# Each shape the adversarial run found, with the reason it must be rejected for.
SHAPES: list[tuple[str, tuple[str, bytes], str]] = [
    ("deep nesting, WS", (RawFormat.WS, deep(100_000)), "malformed_json"),
    ("deep nesting, chain", (RawFormat.REST_CHAIN, deep(5_000)), "malformed_json"),
    ("deep nesting, indices", (RawFormat.REST_INDICES, deep(5_000)), "malformed_json"),
    ("deep nesting in an element", (RawFormat.WS, b'[{"ev":"Q","sym":' + deep(3_000) + b"}]"), "malformed_json"),
    ("lone surrogate symbol", (RawFormat.WS, b'[{"ev":"Q","sym":"O:SPX\\ud800","bp":1,"ap":2,"t":1}]'), "bad_symbol"),
    ("lone surrogate index", (RawFormat.WS, b'[{"ev":"V","T":"I:\\udfff","val":1,"t":1}]'), "unconfigured"),
    ("Infinity open interest", chain({**CHAIN_RESULT, "open_interest": math.inf}), "non_finite"),
    ("Infinity day volume", chain({**CHAIN_RESULT, "day": {"volume": math.inf}}), "non_finite"),
    ("huge open interest", chain({**CHAIN_RESULT, "open_interest": 10**30}), "out_of_range"),
    ("indices results not a list", (RawFormat.REST_INDICES, b'{"results": {"ticker": "I:SPX"}}'), "malformed_frame"),
    ("indices results a string", (RawFormat.REST_INDICES, b'{"results": "I:SPX"}'), "malformed_frame"),
    ("1e308 bid and ask", ws({**QUOTE, "bp": 1e308, "ap": 1e308}), "out_of_range"),
    ("1e308 chain quote", chain({**CHAIN_RESULT, "last_quote": {"bid": 1e308, "ask": 1e308}}), "out_of_range"),
    ("1e308 index value", ws({**INDEX, "val": 1e308}), "out_of_range"),
    ("sequence 2^64", ws({**QUOTE, "q": 2**64}), "out_of_range"),
    ("trade sequence 2^64", ws({**TRADE, "q": 2**64}), "out_of_range"),
    ("condition 2^70", ws({**TRADE, "c": [2**70]}), "out_of_range"),
    ("size 10^12", ws({**TRADE, "s": 10**12}), "out_of_range"),
    ("time 10^30", ws({**QUOTE, "t": 10**30}), "out_of_range"),
    ("time 10^30 + 1 ms", ws({**QUOTE, "t": T_MS + 10**30}), "out_of_range"),
    ("time as a string", ws({**QUOTE, "t": str(T_MS)}), "malformed_element"),
    ("time as a fraction", ws({**TRADE, "t": T_MS + 0.5}), "malformed_element"),
    ("index time as a string", ws({**INDEX, "t": str(T_MS)}), "malformed_element"),
    ("symbol without O:", ws({**QUOTE, "sym": SYM.removeprefix("O:")}), "bad_symbol"),
    ("trade symbol without O:", ws({**TRADE, "sym": SYM.removeprefix("O:")}), "bad_symbol"),
    ("index ticker without I:", ws({**INDEX, "T": "SPX"}), "bad_symbol"),
    ("chain ticker without O:", chain({**CHAIN_RESULT, "details": {"ticker": SYM[2:]}}), "bad_symbol"),
    (
        "chain quote time a string",
        chain({**CHAIN_RESULT, "last_quote": {"bid": 1.0, "last_updated": "1"}}),
        "malformed_element",
    ),
    ("time Infinity", ws({**QUOTE, "t": math.inf}), "non_finite"),
    ("index 55 s ahead", ws({**INDEX, "t": T_MS + 55_000}), "future_timestamp"),
    ("a million ones", (RawFormat.WS, b"[" + b",".join([b"1"] * 1_000_000) + b"]"), "malformed_element"),
]


@pytest.mark.parametrize(("shape", "frame", "reason"), SHAPES, ids=[s[0] for s in SHAPES])
def test_every_hostile_shape_is_a_reasoned_reject(shape: str, frame: tuple[str, bytes], reason: str) -> None:
    effects, rejects = run([frame])
    if reason == "unconfigured":  # a ticker of no configured underlying is a counted drop at the edge
        assert not effects.outputs
        return
    assert len(rejects) == 1, shape
    assert rejects[0].reason == reason, (shape, rejects[0])
    assert len(rejects[0].excerpt) <= 300 and "\ud800" not in rejects[0].excerpt
    for ev in events_of(effects):
        for value in (getattr(ev, name, None) for name in ("bid", "ask", "px", "value", "spot")):
            assert value is None or 0 <= value <= MAX_PRICE


def test_one_frame_of_a_million_bad_elements_is_one_entry_with_its_count() -> None:
    effects, rejects = run([(RawFormat.WS, b"[" + b",".join([b"1"] * 1_000_000) + b"]")])
    assert len(effects.outputs) == 1
    assert rejects[0].counts == {"malformed_element": 1_000_000}


def test_a_frame_mixing_good_and_bad_keeps_the_good_and_counts_the_bad() -> None:
    effects, rejects = run([ws(QUOTE, {**QUOTE, "bp": 1e308, "ap": 1e308}, {**QUOTE, "q": 2**64}, 7, TRADE)])
    assert [type(e) for e in events_of(effects)] == [Quote, Trade]
    assert len(rejects) == 1 and rejects[0].counts == {"out_of_range": 2, "malformed_element": 1}


def test_a_receive_time_after_the_servers_clock_rejects_the_frame() -> None:
    ten_years_ns = 10 * 365 * 86_400 * 10**9
    effects, rejects = run([ws(INDEX)], rx_ns=T0 + ten_years_ns)
    assert not events_of(effects)
    assert [r.reason for r in rejects] == ["bad_receive_time"]
    within, _ = run([ws(INDEX)], rx_ns=T0 + 1_000_000_000)  # writer and server clocks 1 s apart
    assert [type(e) for e in events_of(within)] == [Spot]


def test_a_reject_flood_is_sampled_per_reason_and_counted() -> None:
    n = Normalizer(SETTINGS, "SPX")
    entries = [Entry(f"{T_MS}-{i}", RawFrame(src=RawFormat.WS, rx_ns=T0, data=b"not json")) for i in range(300)]
    # another reason: not crowded out
    entries.append(Entry(f"{T_MS}-300", RawFrame(src=RawFormat.WS, rx_ns=T0, data=b"[5]")))
    entries.append(Entry(f"{T_MS + 1000}-0", RawFrame(src=RawFormat.WS, rx_ns=T0, data=b"not json")))  # the next second
    effects = n.process(entries)
    rejects = [codec.decode(streams.Payload.REJECT, _fields(o.fields)) for o in effects.outputs]
    malformed = [r for r in rejects if r.reason == "malformed_json"]
    assert len(malformed) == 51 and malformed[-1].suppressed == 250
    assert [r.reason for r in rejects].count("malformed_element") == 1
    metrics = Metrics(CollectorRegistry())
    metrics.apply(effects.counts)  # as the runtime does once the commit succeeded
    counted = metrics.rejects.labels("normalize", streams.RAW.key("SPX"), "malformed_json")._value.get()
    assert counted == 301  # every frame counted, sampled or not


hostile_leaves = st.one_of(
    st.sampled_from([math.inf, -math.inf, math.nan, 1e308, -1e308, 2**64, -(2**70), 10**30, MAX_SEQ + 1]),
    st.sampled_from(["\ud800", "x\udfffy", "", "O:SPX", "I:SPX", SYM, "Q", "T", "V", "status"]),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.just(MAX_SIZE + 1),
)
hostile_values = st.recursive(
    hostile_leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {}) if isinstance(tree.get(k), dict) or k not in tree else {}
    tree[path[-1]] = value


WS_KEYS = ["ev", "sym", "bp", "ap", "bs", "as", "t", "q", "p", "s", "x", "c", "val", "T", "status", "message"]
CHAIN_PATHS = [
    ("details", "ticker"),
    ("details", "shares_per_contract"),
    ("last_quote", "bid"),
    ("last_quote", "ask"),
    ("last_quote", "last_updated"),
    ("last_trade", "price"),
    ("last_trade", "sip_timestamp"),
    ("last_trade", "conditions"),
    ("open_interest",),
    ("day", "volume"),
    ("implied_volatility",),
    ("greeks", "delta"),
    ("greeks", "gamma"),
    ("underlying_asset", "value"),
    ("underlying_asset", "last_updated"),
    ("details",),
    ("last_quote",),
]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    base=st.sampled_from([QUOTE, TRADE, INDEX, {"ev": "status", "status": "ok", "message": "m"}]),
    key=st.sampled_from(WS_KEYS),
    value=hostile_values,
    path=st.sampled_from(CHAIN_PATHS),
    chain_value=hostile_values,
    indices_value=hostile_values,
)
def test_hostile_values_anywhere_are_rejected_with_a_reason(
    base: dict[str, Any], key: str, value: Any, path: tuple[str, ...], chain_value: Any, indices_value: Any
) -> None:
    el = json.loads(json.dumps(base))
    el[key] = value
    result = json.loads(json.dumps(CHAIN_RESULT))
    _set(result, path, chain_value)
    indices = {"results": [{"ticker": "I:SPX", "value": 4700.0, "last_updated": T0 - 1}]}
    indices["results"][0]["value"] = indices_value
    frames = [
        (RawFormat.WS, json.dumps([el, QUOTE], allow_nan=True).encode()),
        (RawFormat.REST_CHAIN, json.dumps([{"results": [result]}], allow_nan=True).encode()),
        (RawFormat.REST_INDICES, json.dumps(indices, allow_nan=True).encode()),
    ]
    effects, rejects = run(frames)
    assert all(r.reason != "parser_error" for r in rejects), rejects  # every shape foreseen, with its reason
    per_source = [o.fields.get("kind") for o in effects.outputs]
    assert len(per_source) <= 2 * len(frames) and len(rejects) <= len(frames)
    for ev in events_of(effects):
        if isinstance(ev, Quote | Trade):
            assert 0 <= ev.seq <= MAX_SEQ
        if isinstance(ev, ChainSnapshot):
            for c in ev.contracts:
                assert c.oi is None or 0 <= c.oi <= MAX_SIZE
                assert c.volume is None or 0 <= c.volume <= MAX_SIZE
                for v in (c.bid, c.ask, c.last, c.iv, c.delta, c.gamma):
                    assert v is None or math.isfinite(v)


def test_real_documented_frames_still_parse(real_data: Path) -> None:
    lines = (real_data / "massive/ws_frames_examples.jsonl").read_text().splitlines()
    frames = [(RawFormat.WS, json.loads(line)["frame"].encode()) for line in lines]
    effects, rejects = run(frames)
    assert all(r.reason != "parser_error" for r in rejects)
    assert events_of(effects)
