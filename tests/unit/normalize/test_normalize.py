"""normalize never raises: every input is an event, a reject with its reason, or a counted drop."""

from __future__ import annotations

import json

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from marketswarm.agents.normalize.normalizer import Normalizer, parse_frame
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.schemas import codec
from marketswarm.schemas.codec import RawFormat, RawFrame
from marketswarm.topology import streams
from marketswarm.topology.agent import Count, Entry
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings
from tests.rig.realdata import real_data

SETTINGS = Settings(underlyings=["SPX", "NDX"])
T0 = 1_700_000_000_000_000_000
T0_MS = T0 // 1_000_000  # entry ids carry the server time of the entry, here the frames' receive time


def real_frames() -> list[bytes]:
    real = real_data() / "massive" / "ws_frames_examples.jsonl"
    frames = [json.loads(line)["frame"].encode() for line in real.read_text().splitlines()]
    sim = SimMarket("SPX", 3, 3000, T0)
    frames += [data for fmt, data in sim.advance(T0 + 500_000_000) if fmt == RawFormat.WS][:5]
    return frames


def check(frame: RawFrame) -> None:
    parsed = parse_frame(frame, "SPX", SETTINGS)
    accounted = len(parsed.events) + parsed.rejected + sum(parsed.drops.values())
    assert accounted >= 1, frame
    try:
        elements = orjson.loads(frame.data)
    except orjson.JSONDecodeError:
        return
    if frame.src == RawFormat.WS and isinstance(elements, list):
        assert accounted == max(1, len(elements)), (frame.data[:200], parsed)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.binary(max_size=400), src=st.sampled_from(tuple(RawFormat) + ("bogus",)))
def test_arbitrary_bytes_never_raise(data: bytes, src: str) -> None:
    check(RawFrame(src=src, rx_ns=T0, data=data))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=10,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    which=st.integers(0, 100),
    key=st.sampled_from(["ev", "sym", "p", "s", "t", "q", "bp", "ap", "bs", "as", "val", "T", "x"]),
    value=json_values,
    drop=st.booleans(),
)
def test_mutated_real_frames_never_raise(which: int, key: str, value: object, drop: bool) -> None:
    frames = real_frames()
    elements = orjson.loads(frames[which % len(frames)])
    for el in elements[:3]:
        if drop:
            el.pop(key, None)
        else:
            el[key] = value
    data = json.dumps(elements, allow_nan=True).encode()
    check(RawFrame(src=RawFormat.WS, rx_ns=T0, data=data))


def test_rejects_and_events_are_written_per_raw_entry() -> None:
    n = Normalizer(SETTINGS, "SPX")
    good = b'[{"ev":"Q","sym":"O:SPXW231115C04700000","bp":1.0,"ap":1.1,"t":1700000000000,"q":1}]'
    entries = [
        Entry(f"{T0_MS}-1", RawFrame(src=RawFormat.WS, rx_ns=T0, data=good)),
        Entry(f"{T0_MS}-2", RawFrame(src=RawFormat.WS, rx_ns=T0, data=b"not json")),
        Entry(f"{T0_MS}-3", RawFrame(src=RawFormat.CBOE_CSV, rx_ns=T0, data=b"x" * (SETTINGS.max_frame_bytes + 1))),
        Entry(f"{T0_MS}-4", RawFrame(src=RawFormat.REST_CHAIN, rx_ns=T0, data=b'{"results": 5}')),
    ]
    effects = n.process(entries)
    kinds = [o.spec.name for o in effects.outputs]
    assert kinds == ["events", "rejects", "rejects", "rejects"]
    reasons = [
        codec.decode(
            streams.Payload.REJECT,
            {k.encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in o.fields.items()},
        ).reason
        for o in effects.outputs[1:]
    ]
    assert reasons == ["malformed_json", "oversized", "malformed_frame"]
    assert Count("rejects", ("normalize", streams.RAW.key("SPX"), "oversized"), 1) in effects.counts
    metrics = Metrics(CollectorRegistry())
    metrics.apply(effects.counts)  # as the runtime does once the commit succeeded
    assert metrics.rejects.labels("normalize", streams.RAW.key("SPX"), "oversized")._value.get() == 1


def test_duplicate_prints_are_recognised_but_burst_fills_kept() -> None:
    n = Normalizer(SETTINGS, "SPX")
    t = {"ev": "T", "sym": "O:SPXW231115C04700000", "p": 1.5, "s": 2, "t": 1700000000000}
    frame = orjson.dumps([{**t, "q": 1}, {**t, "q": 2}, {**t, "q": 1}])
    effects = n.process([Entry(f"{T0_MS}-1", RawFrame(src=RawFormat.WS, rx_ns=T0, data=frame))])
    batch = codec.decode(
        streams.Payload.EVENTS,
        {k.encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in effects.outputs[0].fields.items()},
    )
    assert [e.seq for e in batch.events] == [1, 2]
    assert effects.on_commit is not None
    effects.on_commit([])
    again = n.process([Entry(f"{T0_MS}-2", RawFrame(src=RawFormat.WS, rx_ns=T0, data=orjson.dumps([{**t, "q": 2}])))])
    assert not [o for o in again.outputs if o.spec.name == "events"]
