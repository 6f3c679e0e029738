"""The derived model agents, list in, list out: versions only on change, and a restore from their own
checkpoint plus the acknowledged entries gives the same versions as an uninterrupted run."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from marketswarm.agents.derive.pipelines import Intent, MarketMode
from marketswarm.schemas import codec
from marketswarm.schemas.documents import HEADER_FIELD
from marketswarm.schemas.events import ChangeBatch, FillChange, QuoteChange, SpotChange
from marketswarm.schemas.models import Diff
from marketswarm.topology import streams
from marketswarm.topology.agent import Effects, Entry
from tests.rig.wire import as_redis

T0 = int(dt.datetime(2025, 1, 9, 15, 0, tzinfo=dt.UTC).timestamp() * 1e9)
S = 1_000_000_000
C100 = "SPXW250110C00100000"


def gex_diff(v: int, spot: float, flip: float | None, total: float) -> Entry:
    header = orjson.dumps(
        {"underlying": "SPX", "strategy": "gex", "version": v, "epoch": "e1", "asof_ns": T0 + v * S,
         "spot": spot, "flip": flip, "total": total, "stale": False}
    )  # fmt: skip
    diff = Diff(underlying="SPX", strategy="gex", version=v, prev_version=v - 1, epoch="e1", asof_ns=T0 + v * S,
                reason="value", header=header)  # fmt: skip
    return Entry(f"{v}-0", codec.decode(streams.Payload.DIFF, as_redis(codec.encode_diff(diff))))


def docs(effects: Effects) -> list[dict[str, Any]]:
    diffs = [o for o in effects.outputs if o.spec.payload is streams.Payload.DIFF]
    return [orjson.loads(codec.decode(streams.Payload.DIFF, as_redis(o.fields)).header) for o in diffs]


def hash_of(effects: Effects, key: str) -> dict[str, Any]:
    """What the effects' HSETs (after any DEL) leave in ``key``."""
    out: dict[str, Any] = {}
    for c in effects.commands:
        if c[0] == "DEL" and c[1] == key:
            out = {}
        if c[0] == "HSET" and c[1] == key:
            out.update(dict(zip(c[2::2], c[3::2], strict=True)))
    return out


def test_market_mode_publishes_a_version_only_when_its_document_changes() -> None:
    m = MarketMode("SPX")
    diffs = [gex_diff(1, 100.0, 97.0, 5.0), gex_diff(2, 100.0, 97.0, 5.0), gex_diff(3, 100.0, 99.8, 5.0)]
    effects = m.process(diffs)
    out = docs(effects)
    assert [(d["version"], d["mode"]) for d in out] == [(1, "compression"), (2, "transition")]
    assert out[1]["asof_ns"] == T0 + 3 * S and [
        o.id for o in effects.outputs if o.spec.payload is streams.Payload.DIFF
    ] == ["1-0", "2-0"]
    model = hash_of(effects, streams.model_key("SPX", "market_mode"))
    assert orjson.loads(model[HEADER_FIELD])["version"] == 2  # the model hash is the current version


def test_market_mode_resumes_from_its_checkpoint_and_the_acked_diffs() -> None:
    diffs = [gex_diff(v, 100.0, 97.0 + 0.5 * v, 5.0 - v) for v in range(1, 9)]
    whole = docs(MarketMode("SPX").process(diffs))
    first = MarketMode("SPX")
    effects = first.process(diffs[:3])
    ckpt = hash_of(effects, streams.derive_checkpoint_key("SPX", "market_mode"))
    model = hash_of(effects, streams.model_key("SPX", "market_mode"))
    effects = first.process(diffs[3:5])  # committed and acked, after the checkpoint (none was due)
    assert not hash_of(effects, streams.derive_checkpoint_key("SPX", "market_mode"))
    model = model | hash_of(effects, streams.model_key("SPX", "market_mode"))
    again = MarketMode("SPX")
    fields = [ckpt.get(f) for f in ("_header", "_geometry", "_cols", "through")]
    replies = [[x if x is None or isinstance(x, bytes) else str(x).encode() for x in fields], model[HEADER_FIELD], []]
    (resume,) = again.load(replies)
    assert resume.stream is streams.DIFFS["gex"] and resume.after == "3-0" and resume.acked
    again.reapply(resume.stream, diffs[3:5])
    tail = [d for d in whole if d["asof_ns"] > diffs[4].value.asof_ns]
    assert tail and docs(again.process(diffs[5:])) == tail


def quote(ts: int, bid: float, ask: float) -> QuoteChange:
    return QuoteChange(sym=C100, ts_ns=ts, bid=bid, ask=ask)


def changes(i: int, *items: Any) -> Entry:
    return Entry(f"{i}-0", ChangeBatch(src=f"{i}-0", rx_ns=T0, epoch="e1", changes=items))


def test_intent_publishes_at_most_once_a_second_and_flushes_the_rest() -> None:
    it = Intent("SPX")
    batch = [
        changes(1, quote(T0, 1.0, 1.2), FillChange(sym=C100, ts_ns=T0, px=1.2, size=2)),
        changes(2, FillChange(sym=C100, ts_ns=T0 + S // 2, px=1.0, size=3)),  # half a second later: held
        changes(3, SpotChange(ts_ns=T0 + 2 * S, value=100.0)),  # two seconds: published
        changes(4, FillChange(sym=C100, ts_ns=T0 + 2 * S + 1, px=1.1, size=1)),
    ]
    out = docs(it.process(batch))
    assert [d["version"] for d in out] == [1, 2]
    assert out[0]["flow"]["day"]["totals"]["bought"] == 2 and out[0]["flow"]["day"]["totals"]["sold"] == 0
    assert out[1]["flow"]["day"]["totals"]["sold"] == 3
    assert it.holding()
    flushed = it.flush()
    assert flushed is not None and docs(flushed)[0]["flow"]["day"]["totals"]["unclassified"] == 1
    assert not it.holding() and it.flush() is None


def test_intent_resumes_from_its_checkpoint_and_the_acked_changes() -> None:
    entries = [changes(1, quote(T0, 1.0, 1.2))] + [
        changes(i, FillChange(sym=C100, ts_ns=T0 + i * S, px=1.2 if i % 3 else 1.0, size=i)) for i in range(2, 20)
    ]
    whole = Intent("SPX")
    expected = docs(whole.process(entries))
    first = Intent("SPX")
    done = first.process(entries[:8])  # through T0 + 7 s: a checkpoint is due
    ckpt = hash_of(done, streams.derive_checkpoint_key("SPX", "intent"))
    assert ckpt["through"] == "8-0"
    more = first.process(entries[8:11])
    model = hash_of(done, streams.model_key("SPX", "intent")) | hash_of(more, streams.model_key("SPX", "intent"))
    again = Intent("SPX")
    (resume,) = again.load([[ckpt["state"], b"8-0"], model[HEADER_FIELD], []])
    assert resume.stream is streams.CHANGES and resume.after == "8-0"
    again.reapply(resume.stream, entries[8:11])
    assert docs(again.process(entries[11:])) == [d for d in expected if d["version"] > len(docs(done) + docs(more))]
    assert again.flow.dump() == whole.flow.dump()


def test_a_follower_deployed_into_a_running_system_starts_from_the_followed_checkpoint() -> None:
    m = MarketMode("SPX")
    assert m.side_reads() == [("HMGET", streams.model_key("SPX", "gex"), "_header", "_geometry", "_cols")]
    checkpoint = gex_diff(5, 100.0, 97.0, 5.0).value.header  # the diffs up to version 5 are trimmed away
    m.take_side([[checkpoint, None, None]])
    out = docs(m.process([gex_diff(6, 100.0, 99.9, 5.0)]))
    assert [(d["version"], d["mode"], d["asof_ns"]) for d in out] == [(1, "transition", T0 + 6 * S)]
    assert m.side_reads() == []  # following now: nothing more to look up
