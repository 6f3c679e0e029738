"""Overload (make test-all): the simulated market offered far beyond what the machine sustains, for a
minute. The source sheds at the edge (and counts it); inside, nothing a group has not read is trimmed,
no lease lapses under the load, memory stays bounded, and the backlog drains once the market calms."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from marketswarm.agents import catalog
from marketswarm.ops.embedded import free_port
from marketswarm.ops.supervisor import group_agents
from marketswarm.topology import streams

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OVERLOAD_S = float(os.environ.get("MARKETSWARM_TEST_OVERLOAD_S", "60"))
RATE = 60_000  # events/s offered for one underlying: several times what two cores sustain
DRAIN_S = 60.0
MAX_USED_MEMORY = 1 << 30


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples in a Prometheus exposition."""
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{.*\}})? (\S+)$", text, re.M))


def backlog(r: redis.Redis) -> int:
    total = 0
    for spec in catalog.agents():
        for g in r.xinfo_groups(spec.reads.key("SPX")):
            total += int(g["lag"] or 0) + int(g["pending"])
    return total


@pytest.mark.timeout(600)
def test_overload_sheds_at_the_edge_and_loses_nothing_inside(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = dict(
        os.environ,
        MARKETSWARM_REDIS_URL=redis_url,
        MARKETSWARM_UNDERLYINGS="SPX",
        MARKETSWARM_GATEWAY_PORT=str(port),
        MARKETSWARM_SIM_RATE=str(RATE),
        MARKETSWARM_LOG_LEVEL="WARNING",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    exe = [sys.executable, "-m", "marketswarm.ops"]
    agents = [
        subprocess.Popen([*exe, "agent", *g], env=env) for g in group_agents([s.name for s in catalog.agents()], 0)
    ]
    gateway = subprocess.Popen([*exe, "gateway"], env=env)
    source = subprocess.Popen([*exe, "source", "sim"], env=env)
    r = redis.Redis.from_url(redis_url)
    peak_memory = 0
    try:
        deadline = time.monotonic() + OVERLOAD_S
        while time.monotonic() < deadline:
            peak_memory = max(peak_memory, int(r.info("memory")["used_memory"]))
            assert source.poll() is None and all(p.poll() is None for p in agents), "a process died"
            time.sleep(1)
        source.send_signal(signal.SIGTERM)
        source.wait(30)
        drained_at = time.monotonic() + DRAIN_S
        while backlog(r) and time.monotonic() < drained_at:
            time.sleep(0.5)
        assert backlog(r) == 0, "the backlog did not drain after the overload"
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    finally:
        for p in (source, gateway, *agents):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (source, gateway, *agents):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    assert metric(text, "marketswarm_shed_events_total") > 0, "the market was not beyond capacity"
    assert metric(text, "marketswarm_trimmed_unread_total") == 0
    assert metric(text, "marketswarm_trimmed_pending_total") == 0
    assert metric(text, "marketswarm_versions_published_total") > 0
    assert peak_memory < MAX_USED_MEMORY, peak_memory
    # Each stateful agent took its lease once: none lapsed while a step held its event loop.
    for spec in catalog.agents():
        if spec.stateful:
            assert r.get(streams.lease_token_key("SPX", spec.name)) == b"1", spec.name
