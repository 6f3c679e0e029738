"""The operator's tools against a populated system: inspect views (tables and --json), offsets, and a
rebuild that reproduces the exported models byte for byte."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from typer.testing import CliRunner

from marketswarm.agents.sources.files import Recorded, write_recorded
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.ops.cli import app
from marketswarm.ops.inprocess import run_until_idle
from marketswarm.ops.replay import export_models
from marketswarm.topology import streams
from marketswarm.topology.settings import Settings

pytestmark = pytest.mark.integration

T0 = 1_763_996_400_000_000_000
SECOND = 1_000_000_000
ST = Settings(underlyings=["SPX"], block_ms=50, idle_flush=False)


async def populate(url: str) -> None:
    m = SimMarket("SPX", 13, 800, T0)
    frames = []
    t = T0
    for _ in range(12):
        t += SECOND // 4
        frames += [Recorded("SPX", f, t, d) for f, d in m.advance(t)]
    r = aioredis.Redis.from_url(url)
    await write_recorded(r, frames)
    await r.aclose()
    await run_until_idle(url, ST, ["SPX"], timeout_s=120)


def cli(url: str, *args: str) -> Any:
    result = CliRunner().invoke(app, list(args), env={"MARKETSWARM_REDIS_URL": url, "MARKETSWARM_UNDERLYINGS": "SPX"})
    return result


@pytest.fixture
def populated(redis_url: str) -> str:
    asyncio.run(populate(redis_url))
    return redis_url


def test_inspect_views_name_the_server_and_show_everything(populated: str) -> None:
    url = populated
    text = cli(url, "inspect")
    assert text.exit_code == 0, text.output
    first = text.output.splitlines()[0]
    assert first.startswith(f"server {url}") and ("valkey" in first or "redis" in first)
    assert "ms:{SPX}:raw.v1" in text.output and "calc.butterfly" in text.output
    data = orjson.loads(cli(url, "inspect", "--json").output)
    assert data["server"]["url"] == url and data["server"]["role"] == "master"
    streams_by_kind = {r["kind"]: r for r in data["streams"]}
    assert streams_by_kind["raw"]["length"] > 0 and streams_by_kind["changes"]["length"] > 0
    groups = {r["agent"]: r for r in data["groups"]}
    assert groups["normalize"]["lag"] == 0 and groups["publish.butterfly"]["pending"] == 0
    assert all(r["entries_read"] and r["entries_read"] > 0 for r in data["groups"])  # nonzero throughput

    u = orjson.loads(cli(url, "inspect", "underlying", "SPX", "--json").output)
    assert [e["status"] for e in u["epochs"]] == ["active"]
    assert u["epochs"][0]["geometry"]["contracts"] > 500
    fly = next(m for m in u["models"] if m["strategy"] == "butterfly")
    assert fly["version"] >= 1 and fly["published_tiles"] > 100 and fly["staged_tiles"] == fly["published_tiles"]

    model = orjson.loads(asyncio.run(_model(url)))
    tile = model["tiles"][len(model["tiles"]) // 2]
    c = orjson.loads(cli(url, "inspect", "contract", tile["legs"][1], "--json").output)
    assert c["in_epoch"] and c["slots"]["quote"]["bid"] is not None and c["history"]
    t = orjson.loads(cli(url, "inspect", "tile", "SPX", "butterfly", tile["k"], "--json").output)
    assert t["tile"] == tile and len(t["legs"]) == 3
    missing = cli(url, "inspect", "tile", "SPX", "butterfly", "nope")
    assert missing.exit_code == 1 and "no tile 'nope' in SPX butterfly" in missing.output
    shown = orjson.loads(cli(url, "offsets", "show", "--json").output)
    assert {g["agent"] for g in shown["groups"]} >= {"normalize", "hydrate", "publish.gex"}


async def _model(url: str) -> bytes:
    from marketswarm.topology.reading import read_model

    r = aioredis.Redis.from_url(url)
    body = await read_model(r, "SPX", "butterfly")
    await r.aclose()
    assert body is not None
    return body


def test_offsets_reset_refuses_live_consumers(populated: str) -> None:
    url = populated
    r = redis.Redis.from_url(url)
    r.set(streams.heartbeat_key("calc.butterfly", "pod-a"), "1", ex=30)
    refused = cli(url, "offsets", "reset", "calc.butterfly", "--to", "start")
    assert refused.exit_code == 1 and "live consumers" in refused.output
    done = cli(url, "offsets", "reset", "calc.butterfly", "--to", "start", "--force", "--json")
    assert done.exit_code == 0, done.output
    row = r.xinfo_groups(streams.CHANGES.key("SPX"))
    fly = next(g for g in row if g["name"] == b"calc.butterfly")
    assert fly["last-delivered-id"] == b"0-0"
    at = cli(url, "offsets", "reset", "hydrate", "--to", "2025-11-24T15:00:01Z", "--force", "--json")
    assert orjson.loads(at.output)["reset"][0]["position"] == "1763996401000-0"
    r.close()


def test_rebuild_reproduces_the_exported_models_byte_for_byte(populated: str, tmp_path: Path) -> None:
    url = populated

    async def export(d: Path) -> dict[str, bytes]:
        r = aioredis.Redis.from_url(url)
        paths = await export_models(r, d, ["SPX"])
        await r.aclose()
        return {p.name: p.read_bytes() for p in paths}

    before = asyncio.run(export(tmp_path / "before"))
    assert len(before) == len(streams.MODELS)
    out = cli(url, "rebuild", "--force", "--json")  # the heartbeats of the populating run are still fresh
    assert out.exit_code == 0, out.output
    r = redis.Redis.from_url(url)
    assert not r.exists(streams.model_key("SPX", "butterfly")) and not r.exists(streams.CHANGES.key("SPX"))
    r.close()
    asyncio.run(run_until_idle(url, ST, ["SPX"], timeout_s=120))
    assert asyncio.run(export(tmp_path / "after")) == before
