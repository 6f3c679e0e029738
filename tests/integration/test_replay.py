"""Replays are reproducible, and epochs change without a gap in the published models."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis

from marketswarm.agents.sources.files import Recorded, write_recorded
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.ops.inprocess import run_until_idle
from marketswarm.schemas import codec
from marketswarm.schemas.codec import RawFormat, RawFrame
from marketswarm.topology import streams
from marketswarm.topology.settings import Settings

pytestmark = pytest.mark.integration

T0 = 1_763_996_400_000_000_000  # Monday 2025-11-24 15:00 UTC
SECOND = 1_000_000_000


def sim_capture(path: Path, seconds: int = 4, rate: float = 1500) -> Path:
    from marketswarm.agents.sources.files import capture_line

    m = SimMarket("SPX", 21, rate, T0)
    with path.open("wb") as f:
        for step in range(1, seconds * 4 + 1):
            t = T0 + step * SECOND // 4
            for fmt, data in m.advance(t):
                f.write(capture_line("SPX", RawFrame(src=fmt, rx_ns=t, data=data)) + b"\n")
    return path


def replay(paths: list[Path], out: Path, **knobs: object) -> None:
    """``marketswarm replay --export out``, with ``knobs`` as MARKETSWARM_* environment variables."""
    env = dict(os.environ) | {f"MARKETSWARM_{k.upper()}": str(v) for k, v in knobs.items()}
    env.pop("MARKETSWARM_REDIS_URL", None)
    cmd = [sys.executable, "-m", "marketswarm.ops", "replay", *map(str, paths), "--export", str(out)]
    result = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-3000:]


def tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*.json"))}


def test_replaying_the_same_input_twice_is_byte_identical(tmp_path: Path, real_data: Path) -> None:
    inputs = [
        real_data / "cboe/qqq_2023-05-26_1721ET.csv",
        real_data / "cboe/qqq_2023-06-12_1635ET.csv",
        sim_capture(tmp_path / "spx.jsonl"),
    ]
    replay(inputs, tmp_path / "a")
    replay(inputs, tmp_path / "b")
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert set(a) == {f"{u}/{s}.json" for u in ("QQQ", "SPX") for s in streams.MODELS}
    assert a == b
    spx = orjson.loads(a["SPX/butterfly.json"])
    qqq = orjson.loads(a["QQQ/butterfly.json"])
    assert spx["version"] > 1 and spx["tiles"]
    assert qqq["asof"].startswith("2023-06-12") and qqq["tiles"]  # the later chain won


async def test_new_geometry_promotes_a_new_epoch_without_a_gap(redis_url: str) -> None:
    st = Settings(underlyings=["SPX"], block_ms=50)
    m = SimMarket("SPX", 4, 800, T0, chain_interval_s=2)
    frames: list[Recorded] = []
    t = T0
    for _ in range(24):  # 6 s: three identical chain snapshots
        t += SECOND // 4
        frames += [Recorded("SPX", fmt, t, data) for fmt, data in m.advance(t)]
    m.spot *= 1.03  # the market moves: the listed grid follows it at the next chain snapshot
    for _ in range(12):
        t += SECOND // 4
        frames += [Recorded("SPX", fmt, t, data) for fmt, data in m.advance(t)]
    assert sum(1 for f in frames if f.src == "massive.rest.chain") == 5
    r = aioredis.Redis.from_url(redis_url)
    await write_recorded(r, frames)
    # Read the diffs as a client would, while they are published: the stream keeps only what follows
    # the model's last checkpoint, and a run that takes longer than a trim interval trims the rest.
    seen: list[tuple[bytes, dict[bytes, bytes]]] = []
    done = asyncio.Event()

    async def follow() -> None:
        reader = aioredis.Redis.from_url(redis_url)
        last: bytes | str = "0"
        while True:
            resp = await reader.xread({streams.DIFFS["butterfly"].key("SPX"): last}, block=20)
            for _, entries in resp or ():
                seen.extend(entries)
                last = entries[-1][0]
            if done.is_set() and not resp:
                break
        await reader.aclose()

    follower = asyncio.create_task(follow())
    await run_until_idle(redis_url, st, ["SPX"], timeout_s=120)
    done.set()
    await follower
    epochs = await r.zrange(streams.epochs_index_key("SPX"), 0, -1)
    assert len(epochs) == 2, "identical snapshots reuse the epoch; the moved grid makes exactly one new one"
    diffs = [codec.decode(streams.Payload.DIFF, f) for _, f in seen]
    assert [d.version for d in diffs] == list(range(1, len(diffs) + 1))
    resets = [d for d in diffs if d.reset]
    assert [d.epoch for d in resets] == [e.decode() for e in epochs]
    # No gap: the version that switched epochs carries the whole new tile set; none is ever empty.
    present = np.zeros(0, dtype=bool)
    for d in diffs:
        if d.reset:
            assert d.geometry is not None and d.geometry.epoch == d.epoch
            present = np.zeros(d.geometry.size, dtype=bool)
        present[d.cols.positions()] = ~np.isnan(d.cols.values()[:, 0])
        assert present.any(), f"version {d.version} would publish an empty model"
    switch = resets[1]
    assert len(switch.cols.positions()) > 1000
    meta = await r.hgetall(streams.epoch_meta_key("SPX", epochs[0].decode()))
    assert meta[b"status"] == b"retired"
    await r.aclose()


def test_cboe_capture_round_trip(tmp_path: Path, real_data: Path) -> None:
    """A recorded capture replays the same as the frames it recorded."""
    from marketswarm.agents.sources.files import read_inputs

    csv = real_data / "cboe/qqq_2024-03-22_2146ET.csv"
    [rec] = read_inputs([csv])
    assert rec.src == RawFormat.CBOE_CSV and rec.underlying == "QQQ" and rec.data == csv.read_bytes()


def provider_time_capture(path: Path, *, empty_page: bool = False, delayed: bool = False) -> tuple[Path, float, str]:
    """A capture with a streamed index value followed by a chain poll received later whose
    ``underlying_asset.last_updated`` is older; returns it, the streamed value and the symbol of the
    one adjusted contract of the poll."""
    from marketswarm.agents.sources.files import capture_line

    m = SimMarket("SPX", 21, 300, T0)
    frames: list[tuple[str, int, bytes]] = []
    t = T0
    for step in range(1, 9):
        t = T0 + step * SECOND // 4
        frames += [(fmt, t, data) for fmt, data in m.advance(t)]
    streamed = round(m.spot + 7.5, 2)
    t_v = t + SECOND
    frames.append(("massive.ws", t_v, orjson.dumps([{"ev": "V", "val": streamed, "T": "I:SPX", "t": t_v // 10**6}])))
    pages = orjson.loads(m.chain_frame())
    for r in pages[0]["results"]:
        r["underlying_asset"].update(value=round(m.spot - 40, 2), last_updated=T0)  # before the streamed value
        if delayed:
            r["last_quote"]["timeframe"] = "DELAYED"
    near = min(pages[0]["results"], key=lambda r: abs(r["details"]["strike_price"] - m.spot))
    near["details"]["shares_per_contract"] = 150  # an adjusted contract, at the money
    if empty_page:
        pages.append({})  # the provider's empty last page: no results key
    frames.append(("massive.rest.chain", t_v + 2 * SECOND, orjson.dumps(pages)))
    with path.open("wb") as f:
        for fmt, rx, data in frames:
            f.write(capture_line("SPX", RawFrame(src=fmt, rx_ns=rx, data=data)) + b"\n")
    return path, streamed, near["details"]["ticker"].removeprefix("O:")


def test_an_older_polled_spot_never_replaces_the_streamed_one(tmp_path: Path) -> None:
    plain, streamed, adjusted = provider_time_capture(tmp_path / "plain.jsonl")
    with_empty_page, _, _ = provider_time_capture(tmp_path / "empty.jsonl", empty_page=True)
    delayed, _, _ = provider_time_capture(tmp_path / "delayed.jsonl", delayed=True)
    replay([plain], tmp_path / "a")
    replay([with_empty_page], tmp_path / "b")
    replay([delayed], tmp_path / "c")
    a, b, c = tree(tmp_path / "a"), tree(tmp_path / "b"), tree(tmp_path / "c")
    assert a == b  # a poll framed [page, {}] is the poll [page]
    for name in ("SPX/gex.json", "SPX/butterfly.json", "SPX/single.json"):
        model = orjson.loads(a[name])
        assert model["spot"] == streamed and model["delayed"] is False, name
        assert model["nonstandard"] == 1, name  # the adjusted contract is counted (and left out of the grid)
        assert orjson.loads(c[name])["delayed"] is True, name  # DELAYED quotes are flagged
    singles = orjson.loads(a["SPX/single.json"])["tiles"]
    assert singles and adjusted not in {leg for t in singles for leg in t["legs"]}


async def test_a_replay_adopts_the_model_settings_its_capture_recorded(
    tmp_path: Path, redis_url: str, aredis: aioredis.Redis
) -> None:
    """The live system's model settings travel in its capture: a replay on a machine whose environment
    says otherwise publishes what the live system published."""
    from marketswarm.agents.sources.files import read_inputs
    from marketswarm.ops.replay import record
    from marketswarm.topology.model_settings import record_model_settings

    live = {"heatmap_range_pct": 2.0, "publish_interval_ms": 1000, "calc_bucket_ms": 200}
    other = {"heatmap_range_pct": 6.0, "publish_interval_ms": 20, "calc_bucket_ms": 10}
    frames = read_inputs([sim_capture(tmp_path / "sim.jsonl", seconds=2, rate=600)])
    # A running system with the live settings: its source recorded them, its raw streams hold the input.
    await record_model_settings(aredis, Settings().with_model_settings(live))
    await write_recorded(aredis, frames)
    capture = tmp_path / "live.jsonl"
    assert await record(redis_url, ["SPX"], capture, True, len(frames), asyncio.Event()) == len(frames)
    assert orjson.loads(capture.read_bytes().splitlines()[0]) == {
        "model": Settings().with_model_settings(live).model_settings.model_dump()
    }
    bare = tmp_path / "bare.jsonl"  # the same frames without the recorded settings
    bare.write_bytes(b"\n".join(capture.read_bytes().splitlines()[1:]) + b"\n")

    replay([capture], tmp_path / "here", **other)
    replay([bare], tmp_path / "live", **live)
    replay([bare], tmp_path / "there", **other)
    here, as_live, there = tree(tmp_path / "here"), tree(tmp_path / "live"), tree(tmp_path / "there")
    assert here and here == as_live
    assert there != as_live  # the settings matter: without the record, the environment's win
