"""The command line as a person meets it, through the installed `marketswarm` script: every mistake
of the list answered with one clear line and a non-zero exit (a traceback only when asked for), a
second `marketswarm run` and a busy port refused before anything starts, record -> replay round trips,
and the views' --json, times, ages and lag."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from marketswarm.agents import catalog
from marketswarm.agents.sources.files import Recorded, write_recorded
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.ops.embedded import free_port
from marketswarm.topology import streams
from marketswarm.topology.settings import env_help
from tests.integration.test_operate import SECOND, T0, populate

pytestmark = pytest.mark.integration

SCRIPT = Path(sys.executable).parent / "marketswarm"
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "marketswarm.ops"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SUMMARY = re.compile(r"replayed (\d+) frames \((\d+) chain\), (\d+) events, (\d+) rejects, (\d+) versions in [\d.]+ s")


def run_cli(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`marketswarm ARGS` with only ``env`` of the MARKETSWARM_* variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MARKETSWARM_")}
    return subprocess.run([*CLI, *args], env=base | env, capture_output=True, text=True, timeout=timeout)


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    out = (r.stdout + r.stderr).strip()
    assert "Traceback" not in out and "╭" not in out, out[-2000:]
    assert len(out.splitlines()) == 1, out[-2000:]
    assert out.startswith("error: "), out
    return out


@pytest.fixture
def populated(redis_url: str) -> str:
    asyncio.run(populate(redis_url))
    return redis_url


def test_every_mistake_of_the_list_gets_one_line_and_a_non_zero_exit(
    populated: str, tmp_path: Path, real_data: Path
) -> None:
    url = populated
    env = {"MARKETSWARM_REDIS_URL": url, "MARKETSWARM_UNDERLYINGS": "SPX", "MARKETSWARM_DATA_DIR": str(tmp_path)}
    client = redis.Redis.from_url(url)
    for hb in client.scan_iter(match=streams.heartbeat_key("*", "*")):  # the populating agents are gone
        client.delete(hb)
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "bogus.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    chain = str(real_data / "cboe" / "spx_2024-01-07_1052ET.csv")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    cases: list[tuple[Sequence[str], dict[str, str], int, str]] = [
        (["replay", str(tmp_path / "missing.csv")], {}, 2, "missing.csv: no such file or directory"),
        (["replay", str(tmp_path / "notes.txt")], {}, 2, "expected a .csv chain or a .jsonl capture"),
        (["replay", str(tmp_path / "bogus.csv")], {}, 2, "not a Cboe chain"),
        (["replay", str(tmp_path / "bad.jsonl")], {}, 2, "bad.jsonl:1: not a capture line"),
        (["replay", str(tmp_path / "empty.jsonl")], {}, 2, "an empty capture (no frames)"),
        (["inspect", "contract", "FOO"], {}, 2, "not an OCC option symbol: 'FOO'"),
        (["inspect", "contract", "SPXW251124C09990000"], {}, 1, "no contract SPXW251124C09990000 in SPX"),
        (["inspect", "contract", "NOSUCH251124C05900000"], {}, 1, "unknown underlying 'NOSUCH'"),
        (["inspect", "tile", "SPX", "condor", "x"], {}, 2, "unknown strategy 'condor'"),
        (["inspect", "tile", "SPX", "butterfly", "x"], {}, 1, "no tile 'x' in SPX butterfly"),
        (["inspect", "underlying", "NOSUCH"], {}, 1, "unknown underlying 'NOSUCH': known SPX"),
        (["offsets", "reset", "nosuchagent"], {}, 2, "unknown agent 'nosuchagent'"),
        (["check", "nosuchagent"], {}, 2, "unknown agent 'nosuchagent'"),
        (["check", "normalize"], {"MARKETSWARM_CONSUMER": "gone"}, 1, "no heartbeat from normalize as gone"),
        (["replay", "--redis-url", url, chain], {}, 1, "already holds MarketSwarm data (SPX:"),
        (["replay", "--redis-url", "localhost:6379", chain], {}, 2, "--redis-url 'localhost:6379' is not a Redis URL"),
        (["inspect"], {"MARKETSWARM_REDIS_URL": "nonsense"}, 2, "MARKETSWARM_REDIS_URL 'nonsense' is not a Redis"),
        (["inspect"], {"MARKETSWARM_BATCH_SIZE": "lots"}, 2, "invalid settings: MARKETSWARM_BATCH_SIZE"),
        (["inspect"], {"MARKETSWARM_REDIS_URL": ""}, 1, "no Redis: set MARKETSWARM_REDIS_URL"),
    ]
    cases += [
        (argv, {"MARKETSWARM_REDIS_URL": dead}, 1, f"Redis at {dead} does not answer")
        for argv in (["inspect", "underlying", "SPX"], ["top"], ["rebuild"])
    ]
    cases += [(["export", str(tmp_path / "out")], {"MARKETSWARM_REDIS_URL": dead}, 1, "does not answer")]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: run_cli(*c[0], env=env | c[1]), cases))
    for (argv, _, code, said), r in zip(cases, results, strict=True):
        line = one_error_line(r)
        assert r.returncode == code, (argv, r.returncode, line)
        assert said in line, (argv, line)

    # A system running on the server: named as such, not as data.
    client.set(streams.heartbeat_key("normalize", "elsewhere"), 1, ex=60)
    client.close()
    r = run_cli("replay", "--redis-url", url, chain, env=env)
    assert r.returncode == 1 and "runs a MarketSwarm system (live agents: normalize)" in one_error_line(r)

    # The traceback, only when asked for: --debug anywhere, or the DEBUG log level.
    for argv, extra in (
        (["--debug", "inspect", "contract", "FOO"], {}),
        (["inspect", "contract", "FOO", "--debug"], {}),
        (["inspect", "contract", "FOO"], {"MARKETSWARM_LOG_LEVEL": "debug"}),
    ):
        r = run_cli(*argv, env=env | extra)
        assert r.returncode != 0 and "Traceback" in r.stderr and "SymbolError" in r.stderr, argv


def _gateway_listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_second_run_is_refused_by_the_data_dir_lock_and_a_busy_port_is_named(tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    env = {
        "MARKETSWARM_DATA_DIR": str(data),
        "MARKETSWARM_GATEWAY_PORT": str(port),
        "MARKETSWARM_SOURCE": "none",
        "MARKETSWARM_PROCESSES": "1",
        "MARKETSWARM_UNDERLYINGS": "SPX",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("MARKETSWARM_")}
    log = tmp_path / "first.log"
    with log.open("wb") as sink:
        first = subprocess.Popen([*CLI, "run"], env=base | env, stdout=sink, stderr=sink, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not ((data / "embedded.json").exists() and _gateway_listens(port)):
            assert first.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the first run did not come up"
            time.sleep(0.2)
        recorded = (data / "embedded.json").read_text()
        files = sorted(p.name for p in data.iterdir())

        second = run_cli("run", env=env)
        line = one_error_line(second)
        assert second.returncode == 1
        assert f"another `marketswarm run` (pid {first.pid}) uses {data}" in line and "MARKETSWARM_DATA_DIR" in line
        assert first.poll() is None and (data / "embedded.json").read_text() == recorded
        assert sorted(p.name for p in data.iterdir()) == files  # touched nothing

        other = tmp_path / "other"
        busy = run_cli("run", env=env | {"MARKETSWARM_DATA_DIR": str(other)})
        line = one_error_line(busy)
        assert busy.returncode == 1
        assert f"port {port} on 127.0.0.1 is already in use" in line and "MARKETSWARM_GATEWAY_PORT" in line
        assert not (other / "embedded.json").exists()  # no server was started for it
        url = orjson.loads(recorded)["url"]
        gateway = run_cli("gateway", env=env | {"MARKETSWARM_REDIS_URL": url})
        assert gateway.returncode == 1 and f"port {port}" in one_error_line(gateway)
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(60)
    assert first.returncode == 0
    assert not (data / "embedded.json").exists()  # the first run cleaned up after itself, as always


def _summary(r: subprocess.CompletedProcess[str]) -> tuple[int, ...]:
    found = SUMMARY.search(ANSI.sub("", r.stderr))
    assert found, r.stderr[-2000:]
    return tuple(int(g) for g in found.groups())


def test_record_then_replay_round_trips_by_default_with_a_clean_progress_and_a_summary(
    populated: str, tmp_path: Path
) -> None:
    url = populated
    env = {"MARKETSWARM_REDIS_URL": url, "MARKETSWARM_UNDERLYINGS": "SPX", "MARKETSWARM_DATA_DIR": str(tmp_path)}
    raw = redis.Redis.from_url(url).xlen(streams.RAW.key("SPX"))
    capture = tmp_path / "capture.jsonl"
    r = run_cli("record", str(capture), "--max-frames", str(raw), env=env)
    assert r.returncode == 0 and f"recorded {raw} frames" in r.stderr, r.stderr

    # As a terminal sees it, at the INFO level: the progress display, no log line through it.
    term = {"MARKETSWARM_LOG_LEVEL": "INFO", "FORCE_COLOR": "1", "COLUMNS": "120"}
    out = tmp_path / "out"
    r = run_cli("replay", str(capture), "--export", str(out), env={"MARKETSWARM_DATA_DIR": str(tmp_path)} | term)
    assert r.returncode == 0, r.stderr[-3000:]
    frames, chains, events, rejects, versions = _summary(r)
    assert frames == raw and chains >= 1 and events > raw and rejects == 0 and versions > 0
    text = ANSI.sub("", r.stderr)
    assert "input frames" in text and " INFO " not in text and "took the lease" not in text
    assert orjson.loads((out / "SPX" / "butterfly.json").read_bytes())["tiles"]

    # Without the chain, nothing can be modelled: said, with the way out, and a non-zero exit.
    no_chain = tmp_path / "quotes.jsonl"
    lines = capture.read_bytes().splitlines(keepends=True)
    no_chain.write_bytes(b"".join(x for x in lines if b'"src":"massive.rest.chain"' not in x))
    r = run_cli("replay", str(no_chain), env={"MARKETSWARM_DATA_DIR": str(tmp_path)})
    line = one_error_line(r)
    assert r.returncode == 1 and "no heatmap or GEX model" in line and "needs an option chain" in line


def test_a_new_only_capture_opens_with_the_newest_chain_and_replays_to_models(populated: str, tmp_path: Path) -> None:
    url = populated
    env = {"MARKETSWARM_REDIS_URL": url, "MARKETSWARM_UNDERLYINGS": "SPX", "MARKETSWARM_DATA_DIR": str(tmp_path)}
    capture = tmp_path / "new.jsonl"
    base = {k: v for k, v in os.environ.items() if not k.startswith("MARKETSWARM_")}
    cmd = [*CLI, "record", str(capture), "--new-only", "--max-frames", "8"]
    proc = subprocess.Popen(cmd, env=base | env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def feed() -> None:
        m = SimMarket("SPX", 13, 800, T0)  # the populated market, continued past where it stopped
        t = T0
        for _ in range(12):
            t += SECOND // 4
            m.advance(t)
        client = aioredis.Redis.from_url(url)
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None:
                assert time.monotonic() < deadline, "the recorder did not see the new frames"
                t += SECOND // 4
                await write_recorded(client, [Recorded("SPX", f, t, d) for f, d in m.advance(t)])
                await asyncio.sleep(0.3)
        finally:
            await client.aclose()

    asyncio.run(feed())
    assert proc.wait(30) == 0
    first = next(x for x in map(orjson.loads, capture.read_bytes().splitlines()) if "data" in x)
    assert first["src"] == "massive.rest.chain" and first["rx_ns"] <= T0 + 12 * SECOND // 4
    r = run_cli("replay", str(capture), env={"MARKETSWARM_DATA_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    frames, chains, _, _, versions = _summary(r)
    assert frames == 9 and chains >= 1 and versions > 0


def test_views_json_local_times_ages_lag_and_the_environment_table(populated: str, tmp_path: Path) -> None:
    url = populated
    env = {"MARKETSWARM_REDIS_URL": url, "MARKETSWARM_UNDERLYINGS": "SPX", "COLUMNS": "250"}

    topo = orjson.loads(run_cli("topology", "--json", env=env).stdout)
    assert [a["agent"] for a in topo["agents"]] == [s.name for s in catalog.agents()]
    assert topo["agents"][0]["reads"] == "ms:{U}:raw.v1"

    # Lag in entries and in seconds: one raw entry no agent has read, a little while ago.
    client = redis.Redis.from_url(url)
    client.xadd(streams.RAW.key("SPX"), {"kind": "raw", "v": "1", "src": "sim", "rx_ns": str(T0), "data": b"[]"})
    time.sleep(0.5)
    top = orjson.loads(run_cli("top", "--json", "--interval-s", "0.2", env=env).stdout)
    normalize = next(g for g in top["groups"] if g["agent"] == "normalize")
    assert normalize["lag"] == 1 and 0.4 <= normalize["lag_s"] < 60 and "entries_per_s" in normalize
    assert all(g["lag_s"] == 0 for g in top["groups"] if g.get("exists") and g["lag"] == 0 and not g["versioned"])
    # On a diffs stream an entry id is a version: lag in versions, never a time since 1970.
    derived = [g for g in top["groups"] if g.get("exists") and g["versioned"]]
    assert derived and all(g["lag_s"] is None and g["lag_versions"] is not None for g in derived)
    shown = run_cli("offsets", "show", env=env).stdout
    assert "behind" in shown

    under = run_cli("inspect", "underlying", "SPX", env=env)
    assert under.returncode == 0, under.stderr
    data = orjson.loads(run_cli("inspect", "underlying", "SPX", "--json", env=env).stdout)
    assert all(m["version_age_s"] is None or m["version_age_s"] >= 0 for m in data["models"])
    tries = [x.removeprefix("try:").strip() for x in under.stdout.splitlines() if "marketswarm inspect" in x]
    assert len(tries) == 2, under.stdout  # a contract and a tile to drill into, ready to copy
    contract = tries[0].split()[-1]
    tile_key = tries[1].split("'")[1]
    for argv in (["inspect", "contract", contract], ["inspect", "tile", "SPX", "butterfly", tile_key]):
        shown = run_cli(*argv, env=env)
        assert shown.returncode == 0, shown.stderr
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", shown.stdout), shown.stdout
        assert "ts_ns" not in shown.stdout and "1970" not in shown.stdout

    helped = run_cli("--help", env={"COLUMNS": "120"}).stdout
    table = helped[helped.index("Environment:") :].splitlines()
    assert re.match(r"\s+VARIABLE\s+DEFAULT\s+MEANING", table[1])
    for var, _, _ in env_help():
        assert any(re.match(rf"\s+{var}\s+\S", line) for line in table), var
    assert all(len(line) <= 120 for line in table)

    # A version no derive agent has read yet (last: the diffs entry is no real diff): behind in versions.
    top_version = client.xrevrange(streams.DIFFS["butterfly"].key("SPX"), count=1)
    version = int(top_version[0][0].split(b"-")[0]) if top_version else 0
    client.xadd(streams.DIFFS["butterfly"].key("SPX"), {"x": "1"}, id=f"{version + 3}-0")
    offsets = orjson.loads(run_cli("offsets", "show", "--json", env=env).stdout)["groups"]
    flies = next(g for g in offsets if g["agent"] == "derive.best-flies")
    assert flies["lag"] >= 1 and flies["lag_versions"] >= 3 and flies["lag_s"] is None, flies
    assert "version" in run_cli("offsets", "show", env=env).stdout
