"""The day as a timeline: every model's REST bytes recorded during a run are what ``?at=`` answers for
their times while the diffs are retained, and the version in force at each minute boundary beyond
them; the level history is columns, paged, appended over SSE; two replays of a capture write the
same history, byte for byte."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from marketswarm.schemas import codec
from marketswarm.schemas.history import LEVEL_FIELDS, LEVEL_SOURCES
from marketswarm.topology import streams
from marketswarm.topology.published import Published

from .test_gateway import T0, Sim, gateway_at
from .test_replay import sim_capture

pytestmark = pytest.mark.integration

MINUTE_MS = 60_000
HISTORY = [streams.LEVELS, streams.KEYFRAMES, streams.CHECKPOINTS, streams.GEOMETRIES]


def model_url(base: str, model: str) -> str:
    return f"{base}/api/gex/SPX" if model == "gex" else f"{base}/api/models/SPX/{model}"


class Versions:
    """Every version of a model as REST serves it, followed as the run goes (before retention trims
    the diffs): (version, asof_ns, sha256 of its REST bytes)."""

    def __init__(self, model: str) -> None:
        self.model = Published(model)
        self.seen: list[tuple[int, int, bytes]] = []

    async def follow(self, r: aioredis.Redis) -> None:
        key = streams.DIFFS[self.model.strategy].key("SPX")
        for _, fields in await r.xrange(key, min=f"({self.model.version}-0"):
            d = codec.decode(streams.Payload.DIFF, fields)
            assert d.version == self.model.version + 1  # nothing trimmed before it was followed
            self.model.apply(d)
            self.seen.append((d.version, d.asof_ns, sha(self.model.body() or b"")))

    def at(self, at_ms: int) -> tuple[int, int, bytes]:
        return [v for v in self.seen if v[1] < (at_ms + 1) * 1_000_000][-1]


def sha(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


async def exact_from_ms(r: aioredis.Redis, model: str) -> int:
    """From when ``?at=`` is exact to the version: the first retained diff (a derived model's diff is its
    whole document), or for a heatmap and GEX the first checkpoint or keyframe that the retained diffs
    go on from."""
    [(first_id, fields)] = await r.xrange(streams.DIFFS[model].key("SPX"), count=1)
    first_ms = int(codec.decode(streams.Payload.DIFF, fields).asof_ns // 1_000_000)
    if model in streams.DERIVED:
        return first_ms
    v0 = int(first_id.split(b"-")[0])
    starts = [
        int(i.split(b"-")[0])
        for spec in (streams.CHECKPOINTS[model], streams.KEYFRAMES[model])
        for i, f in await r.xrange(spec.key("SPX"))
        if codec.decode(streams.Payload.KEYFRAME, f).version >= v0 - 1
    ]
    return max(first_ms, min(starts))


async def test_at_answers_the_recorded_bytes_then_the_minute_keyframes_beyond_the_diffs(
    redis_url: str, tmp_path: Path
) -> None:
    sim = Sim(redis_url)
    r = aioredis.Redis.from_url(redis_url)
    recorded: list[tuple[str, int, int, bytes]] = []  # (model, version, asof_ns, bytes) as REST served them
    versions = {m: Versions(m) for m in streams.MODELS}
    with gateway_at(redis_url) as (base, _):
        async with httpx.AsyncClient(timeout=30) as c:
            for _ in range(26):  # 130 s of event time: two minute boundaries
                await sim.advance(5)
                for model in streams.MODELS:
                    await versions[model].follow(r)
                    resp = await c.get(model_url(base, model))
                    if resp.status_code == 200:
                        h = orjson.loads(resp.content)
                        recorded.append((model, h["version"], h["asof_ns"], resp.content))
            assert {m for m, *_ in recorded} == set(streams.MODELS)

            exact = beyond = 0
            for model, version, asof_ns, body in recorded:
                at = asof_ns // 1_000_000
                resp = await c.get(model_url(base, model), params={"at": str(at)})
                if at < await exact_from_ms(r, model):  # the diffs were trimmed past it
                    assert resp.status_code == 404 or resp.headers["x-history"].startswith("minute "), resp.text
                    beyond += 1
                    continue
                assert resp.status_code == 200, resp.text
                assert resp.headers["x-history"] == "version"
                v, _, want = versions[model].at(at)
                assert orjson.loads(resp.content)["version"] == v
                assert sha(resp.content) == want  # the bytes REST serves for that version
                if v == version:
                    assert resp.content == body  # ... which are the bytes REST served live
                    exact += 1
            assert exact >= (len(recorded) - beyond) * 0.8 and exact > 100
            assert beyond > 0  # the heatmaps' diffs span less than the run

            iso = await c.get(model_url(base, "gex"), params={"at": "2025-11-24T10:02:09.5-05:00"})
            assert iso.status_code == 200
            assert orjson.loads(iso.content)["version"] == versions["gex"].at(T0 // 10**6 + 129_500)[0]

            # Beyond the diffs: trimmed (as retention would) to their last entries, and the recent
            # checkpoints with them: the minute boundaries answer from their keyframes.
            for model in streams.MODELS:
                top = versions[model].seen[-1][0]
                await r.xtrim(streams.DIFFS[model].key("SPX"), minid=f"{top - 2}-0")
                if model in streams.CHECKPOINTS:
                    await r.delete(streams.CHECKPOINTS[model].key("SPX"))
            boundaries = [T0 // 10**6 + MINUTE_MS, T0 // 10**6 + 2 * MINUTE_MS]
            for model in streams.MODELS:
                for at in boundaries:
                    resp = await c.get(model_url(base, model), params={"at": str(at)})
                    assert resp.status_code == 200, (model, resp.text)
                    assert resp.headers["x-history"].startswith("minute ")
                    v, _, want = versions[model].at(at)
                    assert orjson.loads(resp.content)["version"] == v, model
                    assert sha(resp.content) == want, model

            early = await c.get(model_url(base, "butterfly"), params={"at": str(T0 // 10**6 - 1000)})
            assert early.status_code == 404 and "kept" in early.json()["detail"]
            for bad in ("soon", "2025-13-01", "99999999999999999999"):
                resp = await c.get(model_url(base, "gex"), params={"at": bad})
                assert resp.status_code == 400 and "at:" in resp.json()["detail"], bad
            future = await c.get(model_url(base, "gex"), params={"at": "2999-01-01T00:00:00Z"})
            assert future.status_code == 400 and "future" in future.json()["detail"]
            # `marketswarm export --at` writes the same documents.
            out = tmp_path / "at"
            cmd = [sys.executable, "-m", "marketswarm.ops", "export", str(out), "--at", str(boundaries[0])]
            env = {**os.environ, "MARKETSWARM_REDIS_URL": redis_url, "MARKETSWARM_UNDERLYINGS": "SPX"}
            done = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, timeout=120)
            assert done.returncode == 0, done.stderr.decode()[-2000:]
            for model in streams.MODELS:
                rest = await c.get(model_url(base, model), params={"at": str(boundaries[0])})
                assert (out / "SPX" / f"{model}.json").read_bytes() == rest.content, model
            cols = (await c.get(f"{base}/api/columns/SPX/butterfly", params={"at": str(boundaries[0])})).json()
            assert cols["snapshot"]["version"] == versions["butterfly"].at(boundaries[0])[0]
            assert cols["geometry"]["strategy"] == "butterfly"
    await r.aclose()


async def test_the_level_history_is_columns_paged_and_appended_over_sse(redis_url: str) -> None:
    sim = Sim(redis_url)
    await sim.advance(40)
    r = aioredis.Redis.from_url(redis_url)
    with gateway_at(redis_url) as (base, _):
        async with httpx.AsyncClient(timeout=30) as c:
            whole = (await c.get(f"{base}/api/history/SPX/levels", params={"from": str(T0 // 10**6)})).json()
            cols = whole["columns"]
            assert whole["fields"] == ["t", *LEVEL_FIELDS] and whole["next"] is None
            assert len(cols["t"]) > 20 and cols["t"] == sorted(set(cols["t"]))
            assert all(len(cols[f]) == len(cols["t"]) for f in LEVEL_FIELDS)
            # At most one point per second per series, each at a time its values were in force.
            for model in LEVEL_SOURCES:
                seconds = [int(i.split(b"-")[0]) // 1000 for i, _ in await r.xrange(streams.LEVELS[model].key("SPX"))]
                assert len(seconds) == len(set(seconds)) and seconds, model
            gex = [(orjson.loads(d.header)) for d in await diffs(r, "gex")]
            for t, spot, flip in zip(cols["t"], cols["spot"], cols["flip"], strict=True):
                h = [x for x in gex if x["asof_ns"] <= t * 1_000_000] or [{"spot": None, "flip": None}]
                assert (spot, flip) == (h[-1]["spot"], h[-1]["flip"])

            pages: dict[str, list[Any]] = {f: [] for f in cols}
            start: int | None = T0 // 10**6
            while start is not None:
                page = (await c.get(f"{base}/api/history/SPX/levels", params={"from": str(start), "limit": 7})).json()
                assert len(page["columns"]["t"]) <= 7
                for f in cols:
                    pages[f] += page["columns"][f]
                start = page["next"]
            assert pages == cols

            too_long = await c.get(f"{base}/api/history/SPX/levels", params={"from": "1", "to": str(T0 // 10**6)})
            assert too_long.status_code == 400 and "a day" in too_long.json()["detail"]
            assert (await c.get(f"{base}/api/history/SPX/levels", params={"from": "noon"})).status_code == 400

            # SSE: a level series resumes after a time, then appends new points.
            t5 = cols["t"][5]
            async with c.stream(
                "GET", f"{base}/sse/history/SPX/levels/gex", headers={"Last-Event-ID": str(t5)}
            ) as resp:
                lines = resp.aiter_lines()
                got = []
                while len(got) < 3:
                    line = await asyncio.wait_for(anext(lines), 10)
                    if line.startswith("data: "):
                        got.append(orjson.loads(line[6:]))
            kept = [int(i.split(b"-")[0]) for i, _ in await r.xrange(streams.LEVELS["gex"].key("SPX"), min=f"({t5}")]
            assert [g["t"] for g in got] == kept[:3] and got[0]["model"] == "gex" and "spot" in got[0]
    await r.aclose()


async def test_two_replays_of_a_capture_write_the_same_history(
    redis_url: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    capture = sim_capture(tmp_path / "spx.jsonl", seconds=75, rate=300)  # a minute boundary: keyframes
    dumps = []
    for _ in range(2):
        await aredis.flushall()
        cmd = [sys.executable, "-m", "marketswarm.ops", "replay", str(capture), "--redis-url", redis_url]
        env = {k: v for k, v in os.environ.items() if k != "MARKETSWARM_REDIS_URL"}
        result = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, timeout=300)
        assert result.returncode == 0, result.stderr.decode()[-3000:]
        dumps.append(await dump_history(aredis))
    assert dumps[0] == dumps[1]
    assert all(dumps[0][streams.KEYFRAMES[m].key("SPX")] for m in streams.MODELS)
    assert all(len(dumps[0][streams.LEVELS[m].key("SPX")]) > 10 for m in streams.LEVELS)


async def diffs(r: aioredis.Redis, model: str) -> list[Any]:
    return [codec.decode(streams.Payload.DIFF, f) for _, f in await r.xrange(streams.DIFFS[model].key("SPX"))]


async def dump_history(r: aioredis.Redis) -> dict[str, list[Any]]:
    out = {}
    for specs in HISTORY:
        for spec in specs.values():
            out[spec.key("SPX")] = await r.xrange(spec.key("SPX"))
    assert any(out.values())
    return out
