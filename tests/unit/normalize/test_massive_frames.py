"""The provider's documented frames and REST shapes parse to the documented fields."""

from __future__ import annotations

import json
import math
from pathlib import Path

import orjson

from marketswarm.agents.normalize.massive_frames import parse_rest_chain, parse_rest_indices, parse_ws_frame
from marketswarm.schemas.events import ChainSnapshot, ProviderStatus, Quote, Spot, Trade, VolIndex
from marketswarm.schemas.rejects import DropReason

MS = 1_000_000


def frames(shared: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in (shared / "massive/ws_frames_examples.jsonl").read_text().splitlines()]


def test_documented_options_trade_and_quote(real_data: Path) -> None:
    by_channel = {f.get("channel"): f["frame"].encode() for f in frames(real_data) if f.get("channel")}
    t = parse_ws_frame(by_channel["/options/T"], 1629820676333 * MS, "AMC", ["AMC"])
    assert t.events == [
        Trade(symbol="AMC210827C00037000", underlying="AMC", px=1.54, size=1, ts_ns=1629820676333 * MS,
              seq=651921857, exchange=65, conditions=(233,))
    ]  # fmt: skip
    q = parse_ws_frame(by_channel["/options/Q"], 1644506128351 * MS, "SPY", ["SPY"])
    assert q.events == [
        Quote(symbol="SPY241220P00720000", underlying="SPY", bid=9.71, ask=9.81, bid_size=17, ask_size=24,
              ts_ns=1644506128351 * MS, seq=844090872)
    ]  # fmt: skip
    v = parse_ws_frame(by_channel["/indices/V"], 1678220098130 * MS, "SPX", ["SPX"])
    assert v.events == [Spot(underlying="SPX", value=3988.5, ts_ns=1678220098130 * MS)]
    for ch in ("/options/A", "/options/AM", "/indices/A", "/indices/AM"):
        agg = parse_ws_frame(by_channel[ch], 1632419640000 * MS, "ONEM", ["ONEM", "SPX"])
        assert not agg.events and not agg.rejects and sum(agg.drops.values()) == 1


def test_status_frames_and_stock_prints(real_data: Path) -> None:
    for f in frames(real_data):
        if f["kind"] == "documented_example":
            continue
        parsed = parse_ws_frame(f["frame"].encode(), 1651684192462 * MS, "SPX", ["SPX"])
        for el in orjson.loads(f["frame"]):
            if el["ev"] == "status":
                assert (
                    ProviderStatus(status=el["status"], message=el["message"], ts_ns=1651684192462 * MS)
                    in parsed.events
                )
        if '"ev":"T"' in f["frame"]:  # stock trades carry no option symbol
            assert {r[0].value for r in parsed.rejects} == {"bad_symbol"}


def test_bad_elements_lose_only_themselves() -> None:
    t = 1_700_000_000_000
    good = {"ev": "Q", "sym": "O:SPXW240108C04700000", "bp": 1.0, "ap": 1.2, "bs": 1, "as": 2, "t": t, "q": 5}
    frame = [
        good,
        {**good, "bp": 2.0},  # crossed
        {**good, "bp": -1.0},  # negative
        {**good, "sym": "O:NOPE"},  # bad symbol
        {"ev": "T", "sym": "O:SPXW240108C04700000", "p": 1.1, "s": 0, "t": t},  # zero size
        {**good, "t": t + 3_600_000},  # an hour in the future
        {**good, "t": t - 2 * 86_400_000},  # two days old
        {"ev": "ZZ"},
        42,
        {**good, "sym": "O:AAPL240108C00150000"},  # unconfigured underlying: dropped
        {**good, "sym": "O:NDXP240108C04700000"},  # configured elsewhere: misrouted
    ]
    data = json.dumps(frame).replace('"bp": 1.0, "ap": 1.2, "bs": 1, "as": 2, "t": 1700000000000, "q": 5}]', "X")
    parsed = parse_ws_frame(json.dumps(frame).encode(), t * MS, "SPX", ["SPX", "NDX"])
    assert len(parsed.events) == 1 and isinstance(parsed.events[0], Quote)
    assert sorted(r[0].value for r in parsed.rejects) == sorted(
        ["crossed_quote", "negative_price", "bad_symbol", "bad_size", "future_timestamp", "stale_timestamp",
         "unknown_event", "malformed_element", "misrouted"]
    )  # fmt: skip
    assert sum(parsed.drops.values()) == 1
    assert data  # the frame is valid JSON as a whole


def test_nan_in_one_element_rejects_only_it() -> None:
    t = 1_700_000_000_000
    data = (
        b'[{"ev":"Q","sym":"O:SPXW240108C04700000","bp":NaN,"ap":1.2,"t":%d},'
        b'{"ev":"Q","sym":"O:SPXW240108C04700000","bp":1.0,"ap":Infinity,"t":%d},'
        b'{"ev":"Q","sym":"O:SPXW240108C04700000","bp":1.0,"ap":1.2,"t":%d}]' % (t, t, t)
    )
    parsed = parse_ws_frame(data, t * MS, "SPX", ["SPX"])
    assert len(parsed.events) == 1
    assert [r[0].value for r in parsed.rejects] == ["non_finite", "non_finite"]
    assert math.isfinite(parsed.events[0].bid)  # type: ignore[union-attr]


def test_malformed_json_is_one_reject() -> None:
    parsed = parse_ws_frame(b'[{"ev":"Q",', 0, "SPX", ["SPX"])
    assert [r[0].value for r in parsed.rejects] == ["malformed_json"]


def test_rest_chain_fixtures(real_data: Path) -> None:
    aapl = (real_data / "massive/snapshot_options_chain_AAPL_fixture.json").read_bytes()
    rx = 1678718527714665700 + 10**9  # the fixture's newest time (its last trade) plus a second
    parsed = parse_rest_chain(b"[" + aapl + b"]", rx, "AAPL", ["AAPL"])
    [snap] = parsed.events
    assert isinstance(snap, ChainSnapshot) and snap.spot == 159.9606
    # Every value keeps the provider's own time, not the receive time.
    assert snap.spot_ts_ns == 1651254263172073152 and not snap.spot_delayed and not snap.delayed
    [c] = snap.contracts
    assert (c.symbol, c.expiry, c.side, c.strike_x1000) == ("AAPL230616C00150000", "2023-06-16", "call", 150_000)
    assert (c.bid, c.ask, c.oi, c.iv, c.gamma, c.last) == (
        28.9,
        29.25,
        8133,
        0.3570277203465058,
        0.0061735291012820675,
        29.25,
    )
    assert c.quote_ts_ns == 1651254260800059648 and c.volume == 8
    assert c.trade_ts_ns == 1678718527714665700 and c.trade_conditions == (209,) and c.shares is None
    # Received before its last trade's time (the client's mock mixes dates): that value alone is refused.
    early = parse_rest_chain(b"[" + aapl + b"]", 1651254263172073152, "AAPL", ["AAPL"])
    [snap_early] = early.events
    assert isinstance(snap_early, ChainSnapshot)
    assert snap_early.contracts[0].last is None and snap_early.contracts[0].bid == 28.9
    assert [r[0].value for r in early.rejects] == ["future_timestamp"]
    spx = (real_data / "massive/snapshot_options_I_SPX_kb_example.json").read_bytes()
    [snap] = parse_rest_chain(spx, 1689174023516476700, "SPX", ["SPX"]).events
    assert isinstance(snap, ChainSnapshot)
    assert snap.spot == 4483.78  # index underlyings carry `value`, not `price`
    assert snap.spot_ts_ns is not None and snap.spot_ts_ns < snap.contracts[0].quote_ts_ns  # months older
    assert snap.contracts[0].symbol == "SPXW230712C04500000" and snap.contracts[0].root == "SPXW"


def test_rest_indices_fixture(real_data: Path) -> None:
    data = (real_data / "massive/snapshot_indices_SPX_fixture.json").read_bytes()
    parsed = parse_rest_indices(data, 5, "SPX")
    # The mock has no last_updated: the value is stamped with its receive time, and marked so.
    assert parsed.events == [Spot(underlying="SPX", value=3822.39, ts_ns=5, rx_time=True)]
    assert sum(parsed.drops.values()) == 2  # NOT_FOUND and NOT_ENTITLED


def test_rest_indices_keep_the_provider_time_and_timeframe(real_data: Path) -> None:
    spec = orjson.loads((real_data / "massive/rest_spec_snapshot_subset.json").read_bytes())
    get = spec["paths"]["/v3/snapshot/indices"]["get"]
    example = get["responses"]["200"]["content"]["application/json"]["example"]
    example["results"][0].update(ticker="I:SPX", timeframe="DELAYED")
    rx = example["results"][0]["last_updated"] + 900 * 10**9
    [spot] = parse_rest_indices(orjson.dumps(example), rx, "SPX").events
    assert spot == Spot(underlying="SPX", value=3822.39, ts_ns=1679597116344223500, delayed=True)


def test_the_volatility_index_is_every_underlying_s_input(real_data: Path) -> None:
    """``I:VIX`` is not an underlying of ours: on any underlying's stream it is that stream's VolIndex."""
    frame = orjson.dumps([{"ev": "V", "T": "I:VIX", "val": 18.5, "t": 1_700_000_000_000},
                          {"ev": "V", "T": "I:SPX", "val": 4700.0, "t": 1_700_000_000_000}])  # fmt: skip
    rx = 1_700_000_000_100_000_000
    spx = parse_ws_frame(frame, rx, "SPX", ["SPX", "NDX"])
    assert spx.events == [VolIndex(name="VIX", value=18.5, ts_ns=1_700_000_000_000_000_000),
                          Spot(underlying="SPX", value=4700.0, ts_ns=1_700_000_000_000_000_000)]  # fmt: skip
    ndx = parse_ws_frame(frame, rx, "NDX", ["SPX", "NDX"])
    assert ndx.events == [VolIndex(name="VIX", value=18.5, ts_ns=1_700_000_000_000_000_000)]
    bad = parse_ws_frame(
        orjson.dumps([{"ev": "V", "T": "I:VIX", "val": -1, "t": 1_700_000_000_000}]), rx, "SPX", ["SPX"]
    )
    assert bad.events == [] and bad.rejects
    spec = orjson.loads((real_data / "massive/rest_spec_snapshot_subset.json").read_bytes())
    example = spec["paths"]["/v3/snapshot/indices"]["get"]["responses"]["200"]["content"]["application/json"]["example"]
    example["results"][0].update(ticker="I:VIX", value=21.25)
    [vix] = parse_rest_indices(orjson.dumps(example), example["results"][0]["last_updated"], "NDX").events
    assert vix == VolIndex(name="VIX", value=21.25, ts_ns=example["results"][0]["last_updated"])


def _aapl_page(real_data: Path) -> bytes:
    return (real_data / "massive/snapshot_options_chain_AAPL_fixture.json").read_bytes()


def test_a_page_without_results_is_an_empty_page(real_data: Path) -> None:
    page, rx = _aapl_page(real_data), 1678718527714665700 + 10**9
    one = parse_rest_chain(b"[" + page + b"]", rx, "AAPL", ["AAPL"])
    two = parse_rest_chain(b"[" + page + b",{}]", rx, "AAPL", ["AAPL"])
    assert two.events == one.events and two.rejects == []
    assert two.drops == {DropReason.EMPTY_PAGE: 1}
    # A page that is not an object loses only itself.
    odd = parse_rest_chain(b"[" + page + b',[1,2],{"results":5}]', rx, "AAPL", ["AAPL"])
    assert odd.events == one.events and [r[0].value for r in odd.rejects] == ["malformed_frame"] * 2
    assert parse_rest_chain(b"[{}]", rx, "AAPL", ["AAPL"]).events == []


def test_chain_spot_takes_the_newest_provider_time_and_marks_untimed_values(real_data: Path) -> None:
    page = orjson.loads(_aapl_page(real_data))
    el = page["results"][0]
    del el["last_quote"]["last_updated"], el["underlying_asset"]["last_updated"]
    el["last_quote"]["timeframe"] = "DELAYED"
    el["details"]["shares_per_contract"] = 150
    [snap] = parse_rest_chain(orjson.dumps([page]), 1678718527714665700 + 10**9, "AAPL", ["AAPL"]).events
    assert isinstance(snap, ChainSnapshot)
    assert snap.spot == 159.9606 and snap.spot_ts_ns is None and snap.delayed
    c = snap.contracts[0]
    assert c.quote_ts_ns is None and c.bid == 28.9 and c.shares == 150
