"""The codec round trip, for every payload kind a stream carries (columns: tests/unit/schemas/test_columns.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketswarm.schemas import codec
from marketswarm.schemas.codec import RawFrame
from marketswarm.schemas.events import (
    ChainContract,
    ChainSnapshot,
    ChangeBatch,
    EpochChange,
    EventBatch,
    GreeksChange,
    ProviderStatus,
    Quote,
    QuoteChange,
    Spot,
    SpotChange,
    Trade,
    TradeChange,
)
from marketswarm.schemas.models import Reject
from marketswarm.schemas.payloads import Payload
from tests.rig.wire import as_redis, encode_changes

FINITE = st.floats(allow_nan=False, allow_infinity=False)
I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)  # Redis fields are UTF-8
FLAGS = st.booleans()


def opt(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | s


CONTRACT = st.builds(
    ChainContract, symbol=TEXT, underlying=TEXT, root=TEXT, expiry=TEXT, side=st.sampled_from(["call", "put"]),
    strike_x1000=I64, bid=opt(FINITE), ask=opt(FINITE), last=opt(FINITE), iv=opt(FINITE), delta=opt(FINITE),
    gamma=opt(FINITE), oi=opt(I64), volume=opt(I64), quote_ts_ns=opt(I64), trade_ts_ns=opt(I64),
    trade_conditions=st.lists(I64, max_size=3).map(tuple), shares=opt(I64),
)  # fmt: skip
EVENT = st.one_of(
    st.builds(
        Quote, symbol=TEXT, underlying=TEXT, bid=FINITE, ask=FINITE, bid_size=I64, ask_size=I64, ts_ns=I64, seq=I64
    ),
    st.builds(
        Trade,
        symbol=TEXT,
        underlying=TEXT,
        px=FINITE,
        size=I64,
        ts_ns=I64,
        seq=I64,
        exchange=I64,
        conditions=st.lists(I64, max_size=3).map(tuple),
    ),  # fmt: skip
    st.builds(Spot, underlying=TEXT, value=FINITE, ts_ns=I64, rx_time=FLAGS, delayed=FLAGS),
    st.builds(ProviderStatus, status=TEXT, message=TEXT, ts_ns=I64),
    st.builds(
        ChainSnapshot,
        underlying=TEXT,
        ts_ns=I64,
        spot=opt(FINITE),
        spot_ts_ns=opt(I64),
        spot_delayed=FLAGS,
        delayed=FLAGS,
        source=TEXT,
        contracts=st.lists(CONTRACT, max_size=3).map(tuple),
    ),  # fmt: skip
)
CHANGE = st.one_of(
    st.builds(QuoteChange, sym=TEXT, ts_ns=I64, seq=I64, bid=opt(FINITE), ask=opt(FINITE), rx_time=FLAGS),
    st.builds(TradeChange, sym=TEXT, ts_ns=I64, seq=I64, px=FINITE, size=opt(I64), rx_time=FLAGS),
    st.builds(
        GreeksChange,
        sym=TEXT,
        ts_ns=I64,
        iv=opt(FINITE),
        delta=opt(FINITE),
        gamma=opt(FINITE),
        oi=opt(I64),
        volume=opt(I64),
    ),  # fmt: skip
    st.builds(SpotChange, ts_ns=I64, value=FINITE, rx_time=FLAGS, delayed=FLAGS),
    st.builds(
        EpochChange,
        epoch=TEXT,
        ts_ns=I64,
        symbols=st.lists(TEXT, max_size=3).map(tuple),
        spot=opt(FINITE),
        deliverables=st.dictionaries(TEXT, I64, max_size=2),
        delayed=FLAGS,
    ),  # fmt: skip
)


@settings(max_examples=150, deadline=None)
@given(src=TEXT, rx_ns=I64, data=st.binary(max_size=64))
def test_raw_frames_round_trip(src: str, rx_ns: int, data: bytes) -> None:
    frame = RawFrame(src=src, rx_ns=rx_ns, data=data)
    assert codec.decode(Payload.RAW, as_redis(codec.encode_raw(frame))) == frame


@settings(max_examples=150, deadline=None)
@given(src=TEXT, rx_ns=I64, events=st.lists(EVENT, max_size=4))
def test_event_batches_round_trip(src: str, rx_ns: int, events: list[Any]) -> None:
    batch = EventBatch(src=src, rx_ns=rx_ns, events=tuple(events))
    assert codec.decode(Payload.EVENTS, as_redis(codec.encode_events(batch))) == batch


@settings(max_examples=150, deadline=None)
@given(src=TEXT, rx_ns=I64, epoch=TEXT, changes=st.lists(CHANGE, max_size=4))
def test_change_batches_round_trip(src: str, rx_ns: int, epoch: str, changes: list[Any]) -> None:
    batch = ChangeBatch(src=src, rx_ns=rx_ns, epoch=epoch, changes=tuple(changes))
    assert codec.decode(Payload.CHANGES, as_redis(encode_changes(batch))) == batch


@settings(max_examples=150, deadline=None)
@given(
    reject=st.builds(
        Reject,
        reason=TEXT,
        detail=TEXT,
        source=TEXT,
        rx_ns=I64,
        excerpt=TEXT,
        counts=st.dictionaries(TEXT, I64, max_size=3),
        suppressed=I64,
    )  # fmt: skip
)
def test_rejects_round_trip(reject: Reject) -> None:
    assert codec.decode(Payload.REJECT, as_redis(codec.encode_reject(reject))) == reject


def test_an_entry_of_another_kind_is_refused() -> None:
    fields = as_redis(codec.encode_raw(RawFrame(src="s", rx_ns=1, data=b"x")))
    with pytest.raises(codec.DecodeError, match="entry kind 'raw' on a 'events' stream"):
        codec.decode(Payload.EVENTS, fields)
