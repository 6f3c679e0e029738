"""Hostile input end to end: it poisons no state, costs no more than valid input, reaches no dead
letter and makes at most one reject entry per frame."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from marketswarm.agents.normalize.normalizer import NORMALIZE
from marketswarm.agents.sources.files import capture_line
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.schemas import codec
from marketswarm.schemas.codec import RawFormat, RawFrame
from marketswarm.topology import streams
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.runtime import Runtime
from marketswarm.topology.settings import Settings
from tests.integration.test_replay import SECOND, T0, replay, tree

pytestmark = pytest.mark.integration

U = "SPX"
SYM = "SPXW231115C04700000"
UNLISTED = "SPXW301220C09990000"  # a contract no chain of the tests lists
VALID = "SPXW231115C04750000"  # the symbol of the valid frames whose delivery is measured
TEN_YEARS_NS = 10 * 365 * 86_400 * SECOND


def hostile_frames(t_ns: int, symbol: str) -> list[tuple[str, bytes]]:
    """One frame of each shape the adversarial run used, timed around ``t_ns``."""
    t_ms = t_ns // 1_000_000
    quote = {"ev": "Q", "sym": f"O:{symbol}", "bp": 1.0, "ap": 1.2, "bs": 1, "as": 1, "t": t_ms, "q": 1}
    result = {
        "details": {"ticker": f"O:{UNLISTED}"},  # valid apart from its bad numbers, so kept: of no listed contract
        "last_quote": {"bid": 1.0, "ask": 1.2},
        "open_interest": float("inf"),
        "day": {"volume": float("inf")},
    }
    ws = lambda *els: (RawFormat.WS, json.dumps(list(els)).encode())  # noqa: E731
    return [
        (RawFormat.WS, b"[" * 50_000 + b"]" * 50_000),
        (RawFormat.WS, b'[{"ev":"status","status":"x","message":"\\ud800"}]'),
        (RawFormat.WS, b'[{"ev":"Q","sym":"O:\\udfff","bp":1,"ap":2,"t":1}]'),
        (RawFormat.REST_CHAIN, b'[{"results":[' + orjson.dumps(result).replace(b"null", b"Infinity") + b"]}]"),
        (RawFormat.REST_CHAIN, json.dumps([{"results": [result]}]).encode()),
        (RawFormat.REST_INDICES, b'{"results": {"ticker": "I:SPX", "value": 1}}'),
        ws({**quote, "bp": 1e308, "ap": 1e308}),
        ws({**quote, "q": 2**64}),
        ws({"ev": "V", "T": "I:SPX", "val": 9999.0, "t": t_ms + 55_000}),  # an index value 55 s ahead
        (RawFormat.WS, b"[" + b",".join([b"1"] * 200_000) + b"]"),
    ]


def test_hostile_frames_leave_every_model_as_the_clean_input_makes_it(tmp_path: Path) -> None:
    m = SimMarket(U, 21, 600, T0)
    clean: list[bytes] = []
    dirty: list[bytes] = []
    for step in range(1, 13):
        t = T0 + step * SECOND // 4
        frames = [capture_line(U, RawFrame(src=fmt, rx_ns=t, data=data)) for fmt, data in m.advance(t)]
        clean += frames
        dirty += frames
        if step in (4, 8):
            some = m.sym[len(m.sym) // 2].removeprefix("O:")
            dirty += [capture_line(U, RawFrame(src=f, rx_ns=t, data=d)) for f, d in hostile_frames(t, some)]
            # A receive time ten years ahead of the server's clock: the frame says spot is 1.
            v = orjson.dumps([{"ev": "V", "T": "I:SPX", "val": 1.0, "t": (t + TEN_YEARS_NS) // 1_000_000}])
            dirty.append(capture_line(U, RawFrame(src=RawFormat.WS, rx_ns=t + TEN_YEARS_NS, data=v)))
            # A one-contract chain poll of a contract the chain does not list: held, not a new epoch.
            # (Each a different one: the same small geometry twice in a row would be a confirmed shrink.)
            one = {"details": {"ticker": f"O:{UNLISTED[:-1]}{step}"}, "last_quote": {"bid": 1.0, "ask": 1.1}}
            dirty.append(
                capture_line(U, RawFrame(src=RawFormat.REST_CHAIN, rx_ns=t, data=orjson.dumps([{"results": [one]}])))
            )
    (tmp_path / "clean.jsonl").write_bytes(b"\n".join(clean) + b"\n")
    (tmp_path / "dirty.jsonl").write_bytes(b"\n".join(dirty) + b"\n")
    replay([tmp_path / "clean.jsonl"], tmp_path / "a")
    replay([tmp_path / "dirty.jsonl"], tmp_path / "b")
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert a.keys() == b.keys() and a
    assert a == b  # byte-identical: no hostile frame moved spot, the grid or any version
    fly = orjson.loads(b["SPX/butterfly.json"])
    assert fly["tiles"] and fly["spot"] < 9000


def _frames(n_valid: int, filler: list[tuple[str, bytes]], t_ns: int) -> list[tuple[str, bytes]]:
    """Valid quote frames with the filler interleaved evenly."""
    valid = [
        (
            RawFormat.WS,
            orjson.dumps([{"ev": "Q", "sym": f"O:{VALID}", "bp": 1.0, "ap": 1.2, "t": t_ns // 10**6, "q": i}]),
        )
        for i in range(n_valid)
    ]
    per = max(1, len(filler) // max(1, n_valid))
    out: list[tuple[str, bytes]] = []
    it = iter(filler)
    for v in valid:
        out.append(v)
        out += itertools.islice(it, per)
    out += list(it)
    return out


async def _drain(url: str, frames: list[tuple[str, bytes]]) -> tuple[float, dict[str, int]]:
    """Seconds normalize takes to handle ``frames`` (written first), and the lengths it leaves."""
    client = aioredis.from_url(url)
    try:
        await client.flushall()
        raw = streams.RAW.key(U)
        rx = time.time_ns() - SECOND
        for i in range(0, len(frames), 2000):
            async with client.pipeline(transaction=False) as pipe:
                for src, data in frames[i : i + 2000]:
                    pipe.xadd(raw, codec.encode_raw(RawFrame(src=src, rx_ns=rx, data=data)))
                await pipe.execute()
        st = Settings(underlyings=[U], batch_size=500, block_ms=50, min_idle_ms=2000, redis_url=url)
        started = time.perf_counter()
        await Runtime(NORMALIZE, st, client, Metrics(CollectorRegistry())).run(max_entries=len(frames))
        took = time.perf_counter() - started
        events = await client.xrange(streams.EVENTS.key(U))
        batches = [codec.decode(streams.Payload.EVENTS, f) for _, f in events]
        lengths = {
            "valid": sum(getattr(e, "symbol", "") == VALID for b in batches for e in b.events),
            "rejects": await client.xlen(streams.REJECTS.key(U)),
            "dlq": await client.xlen(streams.dlq_key(raw)),
            "pending": (await client.xpending(raw, NORMALIZE.name))["pending"],
        }
        return took, lengths
    finally:
        await client.aclose()


async def flood(url: str, n_hostile: int) -> None:
    t = time.time_ns() - SECOND
    shapes = [f for f in hostile_frames(t, SYM) if len(f[1]) < 10_000]  # the flood's small shapes
    shapes += [(RawFormat.WS, b"not json"), (RawFormat.REST_CHAIN, b'{"results": 5}'), (RawFormat.WS, b"[5]")]
    hostile = [shapes[i % len(shapes)] for i in range(n_hostile)]
    benign = [
        (
            RawFormat.WS,
            orjson.dumps([{"ev": "Q", "sym": "O:SPXW231115P04700000", "bp": 1.0, "ap": 1.2, "t": t // 10**6, "q": i}]),
        )
        for i in range(n_hostile)
    ]
    n_valid = 500
    undisturbed, disturbed = [], []
    for _ in range(3):  # alternated and the best of three, as the machine is shared
        took, lengths = await _drain(url, _frames(n_valid, benign, t))
        undisturbed.append(took)
        assert lengths["valid"] == n_valid
        took, lengths = await _drain(url, _frames(n_valid, hostile, t))
        disturbed.append(took)
        assert lengths["valid"] == n_valid  # every valid frame made its event
        assert lengths["dlq"] == 0 and lengths["pending"] == 0  # no hostile frame needed a dead letter
        assert 0 < lengths["rejects"] <= n_hostile
    ratio = min(disturbed) / min(undisturbed)
    print(f"{n_hostile} hostile frames {min(disturbed):.2f} s, valid ones {min(undisturbed):.2f} s: {ratio:.2f}x")
    assert ratio <= 2.0


async def test_valid_data_among_hostile_frames_is_not_held_back(redis_url: str) -> None:
    await flood(redis_url, 5_000)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_valid_data_among_a_hundred_thousand_hostile_frames_is_not_held_back(redis_url: str) -> None:
    await flood(redis_url, 100_000)
