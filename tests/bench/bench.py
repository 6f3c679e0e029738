"""`make bench`: throughput and latency figures, each beside a ceiling measured in the same run.

These machines are shared and noisy, so no figure stands alone: each row carries the ceiling it is
compared to (a bare loop of the same Redis commands, or the same computation's baseline) and the
ratio. The table is printed and written to ``.bench/results.json``.
"""

from __future__ import annotations

import asyncio
import json
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from marketswarm.ops.embedded import EmbeddedServer
from marketswarm.topology.connections import create_redis
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.runtime import Runtime
from marketswarm.topology.settings import Settings
from tests.cluster import EmbeddedCluster
from tests.rig.counting import COUNT, TEST_IN, encode_count, sums_key


@dataclass
class Row:
    suite: str
    name: str
    value: float
    unit: str
    ceiling: float | None = None
    ceiling_name: str = ""
    target: str = ""
    key: str = ""  # set: this figure goes into the report's "summary" under this name

    @property
    def ratio(self) -> float | None:
        """Our figure as a fraction of the same-run ceiling (for times: ceiling time over ours)."""
        if not self.ceiling or not self.value:
            return None
        if self.unit in ("s", "ms", "us"):
            return self.ceiling / self.value
        return self.value / self.ceiling


Suite = Callable[[str, dict[str, float]], list[Row]]  # (server URL, figures shared between suites)


async def _fill(r: aioredis.Redis, key: str, n: int) -> None:
    payload = encode_count({"key": "k", "n": 1})
    for start in range(0, n, 5000):
        async with r.pipeline(transaction=False) as pipe:
            for _ in range(min(5000, n - start)):
                pipe.xadd(key, payload)
            await pipe.execute()


async def _ceiling(url: str, key: str, n: int, batch: int) -> float:
    """Bare pipelined XREADGROUP + XACK over pre-filled entries: the most a hop can do here."""
    r = create_redis(url)
    await r.delete(key)
    await _fill(r, key, n)
    await r.xgroup_create(key, "bare", id="0")
    t0 = time.perf_counter()
    done = 0
    while done < n:
        resp = await r.xreadgroup("bare", "b", {key: ">"}, count=batch)
        entries = resp[0][1]
        await r.xack(key, "bare", *[e[0] for e in entries])
        done += len(entries)
    rate = n / (time.perf_counter() - t0)
    await r.aclose()
    return rate


async def _hop(url: str, u: str, n: int, batch: int, min_replicas_ack: int = 0) -> float:
    key = TEST_IN.key(u)
    r = create_redis(url)
    await r.delete(key, sums_key(u))
    await _fill(r, key, n)
    await r.xgroup_create(key, COUNT.name, id="0")
    st = Settings(
        underlyings=[u], consumer="bench", batch_size=batch, block_ms=100, redis_url=url,
        min_replicas_ack=min_replicas_ack,
    )  # fmt: skip
    runtime = Runtime(COUNT, st, r, Metrics(CollectorRegistry()))
    t0 = time.perf_counter()
    await runtime.run(max_entries=n)
    rate = n / (time.perf_counter() - t0)
    got = int(await r.hget(sums_key(u), "k") or 0)
    await r.aclose()
    if got != n:
        raise AssertionError(f"benchmark hop counted {got} of {n}")
    return rate


async def _round_trip_us(url: str, n: int = 3000) -> float:
    """One command's round trip with the asyncio client (PING): the floor under every hop."""
    r = create_redis(url)
    await r.ping()
    t0 = time.perf_counter()
    for _ in range(n):
        await r.ping()
    us = (time.perf_counter() - t0) / n * 1e6
    await r.aclose()
    return us


def runtime_suite(url: str, shared: dict[str, float]) -> list[Row]:
    rows = [Row("runtime", "one command round trip (PING, asyncio client)", asyncio.run(_round_trip_us(url)), "us")]
    for batch, n in ((1, 5_000), (100, 50_000), (1000, 200_000)):
        ceiling = asyncio.run(_ceiling(url, f"bench:bare:{batch}", n, batch))
        rate = asyncio.run(_hop(url, f"B{batch}", n, batch))
        shared[f"runtime_ceiling_{batch}"] = ceiling
        rows.append(
            Row(
                "runtime",
                f"one agent hop, batch {batch}",
                rate,
                "events/s",
                ceiling,
                f"bare XREADGROUP+XACK, batch {batch}",
                target=">= 50% of ceiling" if batch == 1000 else "",
            )
        )
        rows.append(
            Row(
                "runtime",
                f"one agent hop / bare loop, batch {batch}",
                rate / ceiling,
                "ratio",
                key=f"hop_ratio_batch_{batch}",
            )
        )
    return rows


def cluster_suite(url: str, shared: dict[str, float]) -> list[Row]:
    """One agent hop on a 3-master cluster (one replica each) against the same hop on one server,
    both without an append-only file, in this run; and the cost of waiting for a replica (WAIT 1
    after every commit) on the cluster."""
    n, batch = 50_000, 100
    with tempfile.TemporaryDirectory(prefix="ms-bench-one-") as tmp:
        with EmbeddedServer(Path(tmp), appendonly=False, record=False) as single:
            one = asyncio.run(_hop(single.url, "C1", n, batch))
    with EmbeddedCluster(masters=3, replicas_per_master=1) as cluster:
        clustered = asyncio.run(_hop(cluster.url, "C1", n, batch))
        replicated = asyncio.run(_hop(cluster.url, "C2", n, batch, min_replicas_ack=1))
    return [
        Row("cluster", f"one agent hop, one server, batch {batch}", one, "events/s"),
        Row(
            "cluster",
            f"one agent hop, 3-master cluster, batch {batch}",
            clustered,
            "events/s",
            one,
            "the same hop on one server",
            target=">= 50% of one server",
        ),  # fmt: skip
        Row("cluster", "cluster hop / one-server hop", clustered / one, "ratio", key="cluster_hop_ratio"),
        Row(
            "cluster",
            f"one agent hop, cluster, WAIT 1 per commit, batch {batch}",
            replicated,
            "events/s",
            clustered,
            "the same hop without WAIT",
        ),  # fmt: skip
        Row("cluster", "hop with WAIT 1 / without", replicated / clustered, "ratio", key="replica_ack_hop_ratio"),
    ]


def suites() -> dict[str, Suite]:
    """Every benchmark suite, in report order."""
    from tests.bench.e2e import e2e_suite
    from tests.bench.history import history_suite
    from tests.bench.models import columns_suite, normalize_suite
    from tests.bench.theo import theo_suite

    return {
        "runtime": runtime_suite,
        "cluster": cluster_suite,
        "normalize": normalize_suite,
        "columns": columns_suite,
        "theo": theo_suite,
        "e2e": e2e_suite,
        "history": history_suite,
    }


def main(out: Path, only: list[str] | None = None) -> list[Row]:
    console = Console(width=160)
    rows: list[Row] = []
    shared: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ms-bench-") as tmp:
        # AOF on, as `make run` has it: durability is the default, so the figures include its cost.
        server = EmbeddedServer(Path(tmp), appendonly=True, record=False)
        url = server.start()
        assert server.proc is not None
        shared["server_pid"] = float(server.proc.pid)
        try:
            for name, suite in suites().items():
                if only and name not in only:
                    continue
                console.print(f"[bold]{name}[/bold] ...")
                rows.extend(suite(url, shared))
        finally:
            server.stop()
    table = Table(title=f"MarketSwarm benchmarks ({platform.node()}, {_cpu()})")
    for col in ("suite", "measure", "value", "ceiling (same run)", "ratio", "target"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.suite,
            r.name,
            _fmt(r.value, r.unit),
            f"{_fmt(r.ceiling, r.unit)}  {r.ceiling_name}" if r.ceiling else "-",
            f"{r.ratio:.2f}" if r.ratio is not None else "-",
            r.target,
        )
    console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": {"node": platform.node(), "cpu": _cpu(), "python": platform.python_version()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": {r.key: r.value for r in rows if r.key},
        "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
    }
    out.write_text(json.dumps(report, indent=2))
    console.print(f"written to {out}")
    return rows


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f} {unit}"
    return f"{v:.3g} {unit}"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                import os

                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return platform.processor() or "unknown cpu"
