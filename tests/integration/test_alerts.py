"""Alerts end to end: captures built for a rule, back-tested with `marketswarm alerts check`, replayed twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from marketswarm.agents.sources.files import capture_line
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.schemas.alerts import MARKET_RULES
from marketswarm.schemas.codec import RawFormat, RawFrame

pytestmark = pytest.mark.integration

T0 = 1_763_996_400_000_000_000  # Monday 2025-11-24 15:00 UTC
SECOND = 1_000_000_000


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    e = dict(os.environ) | env
    e.pop("MARKETSWARM_REDIS_URL", None)
    return subprocess.run([sys.executable, "-m", "marketswarm.ops", *args], env=e, capture_output=True, timeout=300)


def capture(path: Path, spots: list[tuple[int, float]], chain_spot: float | None = None) -> Path:
    """One chain poll at T0 (its underlying at ``chain_spot``), then index values at (second, value)."""
    m = SimMarket("SPX", 21, 300, T0)
    m.advance(T0)
    pages = orjson.loads(m.chain_frame())
    if chain_spot is not None:
        for r in pages[0]["results"]:
            r["underlying_asset"].update(value=chain_spot, last_updated=T0)
    frames = [(RawFormat.REST_CHAIN, T0, orjson.dumps(pages))]
    for s, v in spots:
        t = T0 + s * SECOND
        frames.append((RawFormat.WS, t, orjson.dumps([{"ev": "V", "val": v, "T": "I:SPX", "t": t // 1_000_000}])))
    with path.open("wb") as f:
        for fmt, rx, data in frames:
            f.write(capture_line("SPX", RawFrame(src=fmt, rx_ns=rx, data=data)) + b"\n")
    return path


def rules_file(path: Path, text: str) -> Path:
    off = "\n".join(f"[rules.{r}]\nenabled = false" for r in MARKET_RULES if f"[rules.{r}]" not in text)
    path.write_text(text + "\n" + off + "\n")
    return path


def check(cap: Path, rules: Path) -> list[dict[str, Any]]:
    r = cli("alerts", "check", "--json", "--rules", str(rules), str(cap))
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    return [orjson.loads(line) for line in r.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def gex(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The chain's GEX model (flip, walls) as a replay publishes it."""
    d = tmp_path_factory.mktemp("gex")
    cap = capture(d / "chain.jsonl", [(1, 5900.0)], chain_spot=5900.0)
    r = cli("replay", str(cap), "--export", str(d / "out"))
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    return orjson.loads((d / "out/SPX/gex.json").read_bytes())


def fired(alerts: list[dict[str, Any]]) -> list[tuple[float, str, str]]:
    return [((a["t_ns"] - T0) / SECOND, a["subject"], a["values"]["direction"]) for a in alerts]


def test_flip_cross_fires_at_the_hand_worked_times(tmp_path: Path, gex: dict[str, Any]) -> None:
    flip = gex["flip"]
    assert flip is not None
    rules = rules_file(tmp_path / "r.toml", "[rules.flip_cross]\nhysteresis_pct = 0.05\ncooldown_s = 60")
    # The band is +/- 0.05 % of spot (about 3 points): 1 point off the flip is a wobble.
    path = [
        (1, flip - 20),  # below: sets the side
        (10, flip - 1),  # a wobble inside the band: nothing
        (20, flip + 20),  # crossed up: fires at 20
        (30, flip - 20),  # crossed down inside the cooldown (60 s from 20): nothing
        (40, flip + 1),  # inside the band: the side stays below
        (90, flip + 20),  # crossed up, 70 s after the last firing: fires at 90
        (100, flip + 2),  # inside the band: nothing
        (110, flip - 20),  # crossed down 20 s after 90: nothing
    ]
    cap = capture(tmp_path / "flip.jsonl", path, chain_spot=flip - 20)
    got = check(cap, rules)
    assert fired(got) == [(20.0, "flip", "up"), (90.0, "flip", "up")]
    a = got[0]
    assert a["rule"] == "flip_cross" and a["underlying"] == "SPX" and a["severity"] == "warning"
    assert a["values"]["spot"] == pytest.approx(flip + 20) and a["values"]["flip"] == pytest.approx(flip, abs=0.5)
    assert a["id"] == f"{(T0 + 20 * SECOND) // 1_000_000}-0" and len(a["fingerprint"]) == 16
    assert check(cap, rules) == got  # a second back-test (its own replay) gives the same alerts, ids and bytes


def test_the_walls_near_and_break(tmp_path: Path, gex: dict[str, Any]) -> None:
    call = gex["call_wall"]
    assert call is not None
    rules = rules_file(
        tmp_path / "r.toml",
        "[rules.wall_near]\nwithin_pct = 0.2\nhysteresis_pct = 0.1\ncooldown_s = 0\n"
        "[rules.wall_break]\nhysteresis_pct = 0.05\ncooldown_s = 0",
    )
    d = call * 0.001  # 0.1 % of the wall
    path = [
        (1, call - 8 * d),  # 0.8 % below the call wall: near armed, break side below
        (10, call - 1.5 * d),  # within 0.2 %: near fires at 10
        (20, call - 2.5 * d),  # 0.25 %: inside the re-arming margin (0.3 %), nothing
        (30, call - 1.5 * d),  # within again, not re-armed: nothing
        (40, call + 1 * d),  # 0.1 % above: broke up through the call wall at 40
        (50, call - 1 * d),  # back below: no alert
        (60, call + 1 * d),  # up again through the same wall: fires at 60 (no cooldown)
    ]
    cap = capture(tmp_path / "walls.jsonl", path, chain_spot=call - 8 * d)
    got = [(t, s, w) for t, s, w in fired(check(cap, rules)) if s == "call_wall"]
    assert got == [(10.0, "call_wall", "near"), (40.0, "call_wall", "up"), (60.0, "call_wall", "up")]


def test_a_bad_rules_file_or_capture_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[rules.flip_cross]\ncooldown_s = -5\n")
    r = cli("alerts", "check", "--rules", str(bad), str(tmp_path / "none.jsonl"))
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and err.count("\n") == 0 and "rules.flip_cross.cooldown_s" in err, err
    r = cli("alerts", "check", str(tmp_path / "none.jsonl"))
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and err.count("\n") == 0 and "none.jsonl" in err and "Traceback" not in err, err
    r = cli("run", MARKETSWARM_RULES=str(bad), MARKETSWARM_DATA_DIR=str(tmp_path / "d"))
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and "rules.flip_cross.cooldown_s" in err and "Traceback" not in err, err


async def test_a_live_run_fires_what_a_replay_of_its_capture_fires(
    tmp_path: Path, redis_url: str, gex: dict[str, Any]
) -> None:
    """The frames of a capture written as a live source writes them (paced, every agent running, idle
    flushes on) fire the alerts a back-test of that capture prints."""
    import asyncio

    import redis.asyncio as aioredis

    from marketswarm.agents import catalog
    from marketswarm.agents.sources.files import read_inputs
    from marketswarm.agents.sources.writer import RawWriter
    from marketswarm.ops.alerting import read_alerts
    from marketswarm.ops.inprocess import run_until_idle
    from marketswarm.topology.connections import create_redis, ensure_group
    from marketswarm.topology.metrics import Metrics
    from marketswarm.topology.runtime import Runtime
    from marketswarm.topology.settings import Settings

    flip = gex["flip"]
    rules = rules_file(tmp_path / "r.toml", "[rules.flip_cross]\ncooldown_s = 0\n[rules.wall_near]\ncooldown_s = 0")
    path = [(1, flip - 20), (5, flip + 20), (9, flip - 20), (13, flip + 20), (17, flip + 30)]
    cap = capture(tmp_path / "live.jsonl", path, chain_spot=flip - 20)
    replayed = check(cap, rules)
    assert len(replayed) >= 4

    settings = Settings(underlyings=["SPX"], block_ms=50, rules=rules)
    r = aioredis.Redis.from_url(redis_url)
    for spec in catalog.agents():
        await ensure_group(r, spec.reads.key("SPX"), spec.name)
    stop, metrics = asyncio.Event(), Metrics()
    clients = [create_redis(redis_url, settings.block_ms) for _ in catalog.agents()]
    runs = [asyncio.create_task(Runtime(s, settings, c, metrics, stop=stop).run(["SPX"]))
            for s, c in zip(catalog.agents(), clients, strict=True)]  # fmt: skip
    writer = RawWriter(r, metrics, "test")
    for rec in read_inputs([cap]):
        await writer.write("SPX", [(rec.src, rec.data)], rec.rx_ns)
        await asyncio.sleep(0.3)  # each frame its own moment, as live
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*runs)
    await run_until_idle(redis_url, settings, ["SPX"], timeout_s=60)  # anything left, then settled
    live = [{"id": i, **alerts_json(a)} for i, a in await read_alerts(r, ["SPX"])]
    await r.aclose()
    for c in clients:
        await c.aclose()
    assert live == replayed


def alerts_json(a: Any) -> dict[str, Any]:
    from marketswarm.schemas.alerts import plain_json

    return orjson.loads(orjson.dumps(plain_json(a)))


def trades_capture(path: Path) -> Path:
    """A chain, a quote on its 5900 call (10.00 x 10.40), then prints on it at worked-out times."""
    m = SimMarket("SPX", 3, 0, T0)
    chain = [(fmt, data) for fmt, data in m.advance(T0 + SECOND // 4) if fmt == RawFormat.REST_CHAIN]
    results = orjson.loads(chain[0][1])[0]["results"]
    call = next(r["details"]["ticker"] for r in results if r["details"]["strike_price"] == 5900.0
                and r["details"]["contract_type"] == "call")  # fmt: skip
    ms = T0 // 1_000_000
    quote = {"ev": "Q", "sym": call, "bp": 10.0, "ap": 10.4, "bs": 1, "as": 1, "t": ms + 1000, "q": 1}

    def tr(s: int, p: float, size: int) -> dict[str, Any]:
        return {"ev": "T", "sym": call, "p": p, "s": size, "c": [209], "t": ms + s * 1000, "q": 100 + s, "x": 302}

    ws = [
        (1, [quote]),
        (10, [tr(10, 10.4, 100)]),  # bought 104,000
        (20, [tr(20, 10.4, 100)]),  # bought 208,000: past 200,000, fires at 20
        (30, [tr(30, 10.0, 50)]),  # sold 50,000: net 158,000, under 160,000 (20 % under): re-armed
        (40, [tr(40, 10.4, 10)]),  # net 168,400: nothing
        (50, [tr(50, 10.4, 50)]),  # net 220,400: fires at 50
    ]
    with path.open("wb") as f:
        for fmt, data in chain:
            f.write(capture_line("SPX", RawFrame(src=fmt, rx_ns=T0, data=data)) + b"\n")
        for s, frame in ws:
            raw = RawFrame(src=RawFormat.WS, rx_ns=T0 + s * SECOND, data=orjson.dumps(frame))
            f.write(capture_line("SPX", raw) + b"\n")
    return path


def test_net_premium_at_a_strike_fires_at_the_hand_worked_times(tmp_path: Path) -> None:
    rules = rules_file(
        tmp_path / "r.toml",
        "[rules.net_premium]\ntotal_usd = 0\nstrike_usd = 200000\nhysteresis_pct = 20\ncooldown_s = 0",
    )
    got = check(trades_capture(tmp_path / "trades.jsonl"), rules)
    assert [((a["t_ns"] - T0) / SECOND, a["subject"], a["values"]["direction"]) for a in got] == [
        (20.0, "5900C", "bought"),
        (50.0, "5900C", "bought"),
    ]
    assert [a["values"]["net_premium"] for a in got] == pytest.approx([208_000.0, 220_400.0])
    assert got[0]["message"] == "SPX net premium bought at 5900C in 5 minutes: $208,000 (threshold $200,000)"


@pytest.mark.slow  # the same as the captures built for these rules, over a longer simulated session
def test_flow_and_flies_rules_on_a_simulated_session_replay_identically(tmp_path: Path) -> None:
    from .test_replay import sim_capture

    cap = sim_capture(tmp_path / "sim.jsonl", seconds=40, rate=1500)
    rules = rules_file(
        tmp_path / "r.toml",
        "[rules.net_premium]\ntotal_usd = 20000\nstrike_usd = 5000\ncooldown_s = 0\n"
        "[rules.best_fly]\nmin_reward_risk = 2\nwithin_em = false\ncooldown_s = 0",
    )
    first = check(cap, rules)
    assert check(cap, rules) == first  # ids, times, values: the same alerts streams
    by_rule = {r: [a for a in first if a["rule"] == r] for r in ("net_premium", "best_fly")}
    assert by_rule["net_premium"] and by_rule["best_fly"], [a["rule"] for a in first]
    for a in by_rule["net_premium"]:
        threshold = 20000 if a["subject"] == "total" else 5000
        assert abs(a["values"]["net_premium"]) >= threshold and a["values"]["level"] == threshold
    for a in by_rule["best_fly"]:
        assert a["values"]["reward_risk"] >= 2 and a["subject"].count("|") == 3


def test_mode_change_leaves_transition_only_beyond_its_margin(tmp_path: Path, gex: dict[str, Any]) -> None:
    flip = gex["flip"]
    rules = rules_file(tmp_path / "r.toml", "[rules.mode_change]\nhysteresis_pct = 0.1\ncooldown_s = 0")
    # The transition band is |spot - flip| <= 0.5 % of spot; leaving it needs 0.6 %.
    path = [
        (1, flip * 1.002),  # 0.2 % above the flip: transition (sets the state)
        (10, flip * 1.0055),  # 0.55 %: out of the band, inside the margin: still transition
        (20, flip * 1.001),  # back inside
        (30, flip * 1.01),  # 1 %: out beyond the margin: fires at 30, from transition
        (40, flip * 1.003),  # 0.3 %: back into transition at 40
    ]
    got = check(capture(tmp_path / "mode.jsonl", path, chain_spot=flip * 1.002), rules)
    assert [((a["t_ns"] - T0) / SECOND, a["values"]["from"]) for a in got] == [
        (30.0, "transition"),
        (40.0, got[0]["values"]["to"]),
    ]
    assert got[0]["values"]["to"] in ("compression", "expansion") and got[1]["values"]["to"] == "transition"


async def test_restarted_agents_fire_what_one_run_fires(tmp_path: Path, redis_url: str, gex: dict[str, Any]) -> None:
    """The topology stopped and started again between frames (each settle starts every agent afresh,
    restoring from its commits): the rules' state (sides, a cooldown running across the stop) comes
    back, and the alerts are those of one uninterrupted back-test."""
    import redis.asyncio as aioredis

    from marketswarm.agents import catalog
    from marketswarm.agents.sources.files import read_inputs, write_recorded
    from marketswarm.ops.alerting import read_alerts
    from marketswarm.ops.inprocess import run_until_idle
    from marketswarm.topology.connections import ensure_group
    from marketswarm.topology.settings import Settings

    flip = gex["flip"]
    rules = rules_file(tmp_path / "r.toml", "[rules.flip_cross]\ncooldown_s = 60")
    path = [(1, flip - 20), (10, flip + 20), (20, flip - 20), (30, flip + 20), (75, flip - 20), (80, flip + 20)]
    cap = capture(tmp_path / "restart.jsonl", path, chain_spot=flip - 20)
    once = check(cap, rules)
    assert fired(once) == [(10.0, "flip", "up"), (75.0, "flip", "down")]

    settings = Settings(underlyings=["SPX"], block_ms=50, rules=rules, idle_flush=False)
    r = aioredis.Redis.from_url(redis_url)
    for spec in catalog.agents():
        await ensure_group(r, spec.reads.key("SPX"), spec.name)
    frames = read_inputs([cap])
    for part in (frames[:3], frames[3:5], frames[5:]):  # stops after 10 s (fired) and 20 s (inside the cooldown)
        await write_recorded(r, part, settings=settings)
        await run_until_idle(redis_url, settings, ["SPX"], timeout_s=60)
    restarted = [{"id": i, **alerts_json(a)} for i, a in await read_alerts(r, ["SPX"])]
    await r.aclose()
    assert restarted == once


async def replayed_versions(redis_url: str, cap: Path, rules: Path, model: str) -> tuple[list[Any], list[Any]]:
    """Replay ``cap`` into the test's server: (``model``'s versions as published, every alert)."""
    import asyncio

    import redis.asyncio as aioredis

    from marketswarm.ops.alerting import read_alerts
    from marketswarm.schemas import codec
    from marketswarm.topology import streams

    r = aioredis.Redis.from_url(redis_url)
    cmd = ["replay", str(cap), "--redis-url", redis_url]
    result = await asyncio.to_thread(cli, *cmd, MARKETSWARM_RULES=str(rules))
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    versions = [codec.decode(streams.Payload.DIFF, f) for _, f in await r.xrange(streams.DIFFS[model].key("SPX"))]
    found = [alerts_json(a) for _, a in await read_alerts(r, ["SPX"])]
    await r.aclose()
    return versions, found


async def test_gravity_moves_fire_where_the_gravity_model_moved(
    tmp_path: Path, redis_url: str, gex: dict[str, Any]
) -> None:
    """Spot walked across the chain: the dealer gravity model's level moves; the alerts fire at exactly
    the versions where it moved a strike or more from where the rule last fired."""
    rules = rules_file(tmp_path / "r.toml", "[rules.gravity_move]\nstrikes = 1\ncooldown_s = 0")
    spot = gex["spot"]
    path = [(s, spot + d) for s, d in zip(range(1, 100, 3), [*range(-60, 61, 4), *range(60, -61, -8)], strict=False)]
    gravity, got = await replayed_versions(redis_url, capture(tmp_path / "g.jsonl", path, chain_spot=spot - 60), rules,
                                           "gravity")  # fmt: skip
    step = 5.0  # the chain's strike spacing around spot
    want, ref = [], None
    for v in gravity:
        doc = orjson.loads(v.header)
        level = doc.get("level")
        if level is None:
            continue
        if ref is not None and abs(level - ref) >= step:
            want.append((v.asof_ns, ref, level))
        if ref is None or abs(level - ref) >= step:
            ref = level
    assert len(want) >= 2, [orjson.loads(v.header).get("level") for v in gravity]
    assert [(a["t_ns"], a["values"]["from"], a["values"]["to"]) for a in got] == want


async def test_best_fly_fires_where_a_qualifying_fly_entered_the_models_list(tmp_path: Path, redis_url: str) -> None:
    """A simulated session (quotes move, the list changes): the alerts fire at exactly the versions of
    the best butterflies model where a fly with reward/risk of 3 or more entered its list."""
    from .test_replay import sim_capture

    rules = rules_file(tmp_path / "r.toml", "[rules.best_fly]\nmin_reward_risk = 3\nwithin_em = false\ncooldown_s = 0")
    cap = sim_capture(tmp_path / "f.jsonl", seconds=30, rate=1500)
    best, got = await replayed_versions(redis_url, cap, rules, "best_flies")
    want, before = [], None
    for v in best:
        good = {f["k"] for f in orjson.loads(v.header)["flies"] if f["reward_risk"] >= 3}
        if before is not None:
            want += [(v.asof_ns, k) for k in sorted(good - before)]
        before = good
    assert want, "the walk never changed the list"
    assert [(a["t_ns"], a["subject"]) for a in got] == want
