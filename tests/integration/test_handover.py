"""Crash handover: under `marketswarm run`, each agent process in turn is killed with SIGKILL. The
supervisor restarts it, the restarted agents take their leases at once (their earlier incarnation is
known dead) and every model goes on: no model goes without a diff for more than FRESH_S around a
kill, and no version is skipped or repeated. And fencing stays exact: a holder stopped (SIGSTOP) past
its lease loses it to a standby, and writes nothing when it wakes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from marketswarm.ops.embedded import free_port
from marketswarm.topology import streams
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.published import diff_version
from marketswarm.topology.runtime import Runtime
from marketswarm.topology.settings import Settings
from tests.rig.counting import LEASED, TEST_IN, encode_count, sums_key

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
U = "SPX"
FRESH_S = 5.0  # the acceptance bound: a fresh diff within this long of a kill
KILL_EVERY_S = 10.0
# Models that change on every market move; the derived documents change only when their content does.
LIVE_MODELS = (*streams.STRATEGIES, streams.Derived.MARKET_MODE, streams.Derived.GRAVITY)


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def agent_processes(run_pid: int) -> dict[str, int]:
    """The agent processes of a `marketswarm run`, by the agent kinds they run."""
    out = {}
    for pid in children(run_pid):
        args = argv(pid)
        if "agent" in args:
            out[" ".join(args[args.index("agent") + 1 :]).strip()] = pid
    return out


class DiffLog(threading.Thread):
    """Every diff of the models of U as it arrives: (monotonic time, version) per model."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.keys = {streams.DIFFS[m].key(U): m for m in streams.MODELS}
        self.seen: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self.stop = threading.Event()

    def run(self) -> None:
        last = {k: "$" for k in self.keys}
        while not self.stop.is_set():
            for key, entries in self.client.xread(last, block=200) or ():
                k = key.decode()
                for entry_id, _ in entries:
                    last[k] = entry_id.decode()
                    self.seen[self.keys[k]].append((time.monotonic(), diff_version(entry_id)))


@pytest.mark.timeout(300)
def test_a_killed_agent_process_hands_over_in_seconds(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = dict(
        os.environ,
        MARKETSWARM_REDIS_URL=redis_url,
        MARKETSWARM_GATEWAY_PORT=str(port),
        MARKETSWARM_DATA_DIR=str(tmp_path),
        MARKETSWARM_UNDERLYINGS=U,
        MARKETSWARM_LOG_LEVEL="WARNING",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    run = subprocess.Popen([sys.executable, "-m", "marketswarm.ops", "run"], env=env, stdout=subprocess.DEVNULL)
    diffs = DiffLog(redis_url)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert run.poll() is None, "marketswarm run exited"
            assert time.monotonic() < deadline, "no models within 120 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/gex/{U}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        diffs.start()
        time.sleep(KILL_EVERY_S)  # every model publishing, in steady state
        kills: list[tuple[float, str]] = []
        for kinds in sorted(agent_processes(run.pid)):
            pid = agent_processes(run.pid)[kinds]
            os.kill(pid, signal.SIGKILL)
            kills.append((time.monotonic(), kinds))
            time.sleep(KILL_EVERY_S)
        diffs.stop.set()
        diffs.join(5)
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(60)
        finally:
            if run.poll() is None:
                run.kill()
    assert len(kills) >= 2, kills
    for model in streams.MODELS:  # every version once, in order, across every kill
        versions = [v for _, v in diffs.seen[model]]
        if versions:
            assert versions == list(range(versions[0], versions[0] + len(versions))), model
    start, end = kills[0][0] - KILL_EVERY_S, kills[-1][0] + KILL_EVERY_S
    for model in LIVE_MODELS:
        times = [start] + [t for t, _ in diffs.seen[model]] + [end]
        gaps = [(b - a, a) for a, b in zip(times, times[1:], strict=False)]
        worst, at = max(gaps)
        assert worst <= FRESH_S, f"{model}: {worst:.1f} s without a diff from {at - start:.1f} s (kills: {kills})"


def wait_for(what: str, check: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


async def test_a_holder_stopped_past_its_lease_is_fenced_when_it_wakes(redis_url: str, tmp_path: Path) -> None:
    u, lease_ms = "STOP", 3000
    key, lease = TEST_IN.key(u), streams.lease_key(u, LEASED.name)
    r = redis.Redis.from_url(redis_url)
    r.xgroup_create(key, LEASED.name, id="0", mkstream=True)
    env = dict(
        os.environ,
        MARKETSWARM_REDIS_URL=redis_url,
        MARKETSWARM_UNDERLYINGS=u,
        MARKETSWARM_CONSUMER="paused",
        MARKETSWARM_LEASE_TTL_MS=str(lease_ms),
        MARKETSWARM_HEARTBEAT_TTL_S="2",
        MARKETSWARM_BLOCK_MS="50",
        COUNT_LEASED="1",
        COUNT_STEP_S="1.0",  # a step in flight when the process is stopped (shorter than the stall bound)
    )
    log = tmp_path / "paused.log"
    with log.open("wb") as sink:
        argv = [sys.executable, "tests/rig/counting.py"]
        holder = subprocess.Popen(argv, cwd=REPO, env=env, stderr=sink)  # noqa: ASYNC220 - it must be stoppable
    try:
        wait_for("the holder never took the lease", lambda: (r.get(lease) or b"").startswith(b"paused:"))
        r.xadd(key, encode_count({"key": "k", "n": 1}))
        wait_for("the holder never read the entry", lambda: r.xpending(key, LEASED.name)["pending"] == 1)
        holder.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        st = Settings(
            underlyings=[u], consumer="standby", lease_ttl_ms=lease_ms, heartbeat_ttl_s=2, block_ms=50, min_idle_ms=100
        )
        client = aioredis.Redis.from_url(redis_url)
        try:
            done = await Runtime(LEASED, st, client, Metrics(CollectorRegistry())).run(max_entries=1, idle_timeout_s=10)
        finally:
            await client.aclose()
        took_over_s = time.monotonic() - stopped_at
        assert done == 1 and r.hget(sums_key(u), "k") == b"1"
        assert took_over_s < lease_ms / 1000 + 2, f"the standby took over only after {took_over_s:.1f} s"
        assert r.get(streams.lease_token_key(u, LEASED.name)) == b"2"
        holder.send_signal(signal.SIGCONT)  # it finishes its step, and its commit is refused
        wait_for("the woken holder never found its lease gone", lambda: b"lost the lease" in log.read_bytes())
        assert r.hget(sums_key(u), "k") == b"1", "the fenced holder's commit went through"
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.send_signal(signal.SIGTERM)
        holder.wait(20)
        r.close()
