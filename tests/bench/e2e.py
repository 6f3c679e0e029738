"""`make bench`, end to end: the simulated market through every agent to a browser-like SSE client.

The topology runs as `marketswarm run` starts it (agents dealt over processes, default settings, the
gateway included). A recorded market is offered at increasing rates, paced by event time; SSE clients
read the gateway the way a browser tab does (one /sse/tab connection carrying a butterfly heatmap and
the four derived models, gzip accepted, events parsed; a tab per underlying), and each offered event's
latency is measured to the moment a client receives the first heatmap diff whose as-of time covers
it. Per rate: what was sustained, how long the backlog took to drain, the latency percentiles and the
bytes a whole tab receives (every feed it carries). Then nine more passes at 5k events/s, in three
Latin-square blocks: a REST client (its own process) fetching the whole butterfly model 10 times a
second from the tabs' gateway, the same client on a second gateway process, and none; the first's
p99 against the last's is what REST costs the live feeds, the second's says how much of that is the
shared cores rather than the gateway. Then, once more at 5k events/s with one process per agent kind,
where the cores went. Before all that, what history and webhooks cost (tests/bench/alerts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from marketswarm.agents import catalog
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.agents.sources.writer import RawWriter
from marketswarm.ops.embedded import free_port
from marketswarm.schemas.codec import RawFormat
from marketswarm.topology.connections import create_redis
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.observe import backlog, group_rows
from marketswarm.topology.settings import Settings
from tests.bench.bench import Row

NS = 1_000_000_000
# (events/s, pass): a reported rate (""), or one pass of the REST comparison at 5k events/s: a REST
# client polling the butterfly from the tabs' gateway ("rest"), from a second gateway process on the
# same machine ("elsewhere": what the machine's two cores pay for REST, whoever serves it), or no
# REST client ("alone"), in three blocks of a Latin square: each kind runs once first, once second
# and once third in its block, so no drift over the run (the machine slows and recovers) favours one;
# each kind's latencies are pooled over its three passes.
E2E_RATES = (
    (1_000, ""),
    (5_000, ""),
    (5_000, "rest"),
    (5_000, "elsewhere"),
    (5_000, "alone"),
    (5_000, "elsewhere"),
    (5_000, "alone"),
    (5_000, "rest"),
    (5_000, "alone"),
    (5_000, "rest"),
    (5_000, "elsewhere"),
    (10_000, ""),
    (20_000, ""),
    (40_000, ""),
    (60_000, ""),
)
ATTRIBUTE_AT = 5_000  # the rate at which each agent's CPU is measured (one process per agent kind)
# What history costs the live feeds: 5k events/s with the publishers writing it (MARKETSWARM_HISTORY)
# and without, agents restarted for each pass, in an ABBA order so no drift favours one; each side's
# latencies pooled over its passes.
HISTORY_PASSES = (False, True, True, False, False, True, True, False)
E2E_SECONDS = 8.0  # offered per rate
E2E_DRAIN_S = 20.0  # the longest wait for the backlog after offering stops
SUSTAINED_DRAIN_S = 5.0  # a rate counts as sustained when its backlog drained within this
E2E_UNDERLYINGS = ("SPX", "NDX")
HEATMAPS = ("single", "vertical", "butterfly")
TABS = (("SPX", "butterfly"), ("NDX", "butterfly"))  # dashboard tabs open during the run
TAB = TABS[0]  # the one whose bytes are measured
TAB_DERIVED = ("market_mode", "gravity", "intent", "best_flies")  # every dashboard tab carries them too
REST_PATH = "/api/models/SPX/butterfly"  # the REST client that must not slow the live feeds
REST_PER_S = 10.0
REST_RATE = 5_000  # events/s of the REST comparison's passes
PACE_S = 0.005  # the offering loop's tick


@dataclass
class Feed:
    """What one SSE client received: per diff (as-of event time, receive time), and bytes by time."""

    asof: list[int] = field(default_factory=list)
    recv: list[int] = field(default_factory=list)
    wire: list[tuple[int, int]] = field(default_factory=list)  # (receive time, bytes on the wire)
    plain: list[tuple[int, int]] = field(default_factory=list)  # (receive time, bytes decompressed)

    def bytes_between(self, t0: int, t1: int, plain: bool = False) -> int:
        return sum(n for t, n in (self.plain if plain else self.wire) if t0 <= t < t1)


def process_groups() -> list[list[str]]:
    """Agents per process, as `marketswarm run` starts them (MARKETSWARM_PROCESSES)."""
    from marketswarm.ops.supervisor import group_agents

    return group_agents([s.name for s in catalog.agents()], Settings().processes)


def e2e_suite(url: str, shared: dict[str, float]) -> list[Row]:
    """The simulated market at increasing rates through every agent and the gateway, as `run` starts
    them; then 5k events/s once more with one process per agent kind (as Kubernetes runs them), so
    each agent's share of the cores can be read off the operating system."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        MARKETSWARM_REDIS_URL=url,
        MARKETSWARM_UNDERLYINGS=",".join(E2E_UNDERLYINGS),
        MARKETSWARM_GATEWAY_PORT=str(port),
        MARKETSWARM_LOG_LEVEL="WARNING",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    exe = shutil.which("marketswarm", path=str(Path(sys.executable).parent)) or "marketswarm"
    base = f"http://127.0.0.1:{port}"
    gateway = subprocess.Popen([exe, "gateway"], env=env)
    port2 = free_port()  # the REST comparison's second gateway (serves no tab)
    gateway2 = subprocess.Popen([exe, "gateway"], env={**env, "MARKETSWARM_GATEWAY_PORT": str(port2)})
    shared["rest_elsewhere_port"] = port2
    rows: list[Row] = []
    try:
        rows += _history_cost(exe, env, url, base, shared, gateway.pid)
        from tests.bench.alerts import alerts_cost

        rows += alerts_cost(exe, env, url, base, shared, gateway.pid)
        attribution = ([[s.name] for s in catalog.agents()], ((ATTRIBUTE_AT, ""),))
        for groups, rates in ((process_groups(), E2E_RATES), attribution):
            procs = [subprocess.Popen([exe, "agent", *group], env=env) for group in groups]
            pids = {"+".join(g): p.pid for g, p in zip(groups, procs, strict=True)}
            pids["gateway"] = gateway.pid
            if "server_pid" in shared:
                pids["valkey"] = int(shared["server_pid"])
            try:
                rows += asyncio.run(_e2e(url, base, shared, pids, rates, attribute=len(rates) == 1))
            finally:
                _stop(procs)
    finally:
        _stop([gateway, gateway2])
    return rows


def _history_cost(exe: str, env: dict[str, str], url: str, base: str, shared: dict[str, float], gw: int) -> list[Row]:
    """The event-to-browser p99 at 5k events/s with history written and without (HISTORY_PASSES)."""
    pooled: dict[bool, list[np.ndarray]] = {True: [], False: []}
    for on in HISTORY_PASSES:
        hist_env = {**env, "MARKETSWARM_HISTORY": "true" if on else "false"}
        procs = [subprocess.Popen([exe, "agent", *group], env=hist_env) for group in process_groups()]
        try:
            pids = {"gateway": gw, **{f"p{i}": p.pid for i, p in enumerate(procs)}}
            asyncio.run(_e2e(url, base, shared, pids, ((5_000, "history"),), attribute=False, collect=pooled[on]))
        finally:
            _stop(procs)
    with_it, without = (float(np.percentile(np.concatenate(pooled[k]), 99)) for k in (True, False))
    return [
        Row(
            "e2e",
            f"offered 5,000/s, history written: event-to-browser p99, {len(pooled[True])} passes",
            with_it,
            "ms",
            without,
            f"p99 without history (MARKETSWARM_HISTORY=false), {len(pooled[False])} passes",
            ">= 0.95 (within 5 %)",
            key="e2e_sse_p99_ms_at_5000_with_history",
        )
    ]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(20)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _read_sse(base: str, u: str, strategy: str, feed: Feed, stop: asyncio.Event) -> None:
    """A dashboard tab: one connection carrying its heatmap and the four derived models, gzip accepted,
    events parsed as they arrive. Every byte of the tab counts; latency is the heatmap's diffs'."""
    feeds = ",".join(f"{u}:{m}" for m in (strategy, *TAB_DERIVED))
    main = f"{u}:{strategy}".encode()
    async with (
        httpx.AsyncClient(timeout=None) as client,
        client.stream("GET", f"{base}/sse/tab", params={"feeds": feeds}, headers={"Accept-Encoding": "gzip"}) as resp,
    ):
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if resp.headers.get("content-encoding") == "gzip" else None
        buf = b""
        async for chunk in resp.aiter_raw():
            now = time.time_ns()
            feed.wire.append((now, len(chunk)))
            text = inflate.decompress(chunk) if inflate is not None else chunk
            feed.plain.append((now, len(text)))
            buf += text
            while b"\r\n\r\n" in buf:
                event, buf = buf.split(b"\r\n\r\n", 1)
                if event.startswith(b"event: diff\r\ndata: " + main + b"\r\n"):
                    data = event.split(b"\r\ndata: ", 2)[2]
                    feed.asof.append(int(orjson.loads(data)["asof_ns"]))
                    feed.recv.append(now)
            if stop.is_set():
                return


POLLER = """
import socket, sys, time
host, port, path, per_s = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
request = f"GET {path} HTTP/1.1\\r\\nHost: {host}\\r\\nAccept-Encoding: identity\\r\\n\\r\\n".encode()
buf = bytearray(1 << 20)
view = memoryview(buf)
n = 0
sock = socket.create_connection((host, port))
while True:
    t = time.monotonic()
    sock.sendall(request)
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit(1)
        head += chunk
    top, _, body = head.partition(b"\\r\\n\\r\\n")
    length = int(next(h for h in top.split(b"\\r\\n") if h.lower().startswith(b"content-length:")).split(b":")[1])
    left = length - len(body)
    while left > 0:
        got = sock.recv_into(view, min(left, len(buf)))
        if not got:
            sys.exit(1)
        left -= got
    n += top.startswith(b"HTTP/1.1 200")
    print(n, flush=True)
    time.sleep(max(0.0, 1 / per_s - (time.monotonic() - t)))
"""


def _rest_client(base: str) -> subprocess.Popen[bytes]:
    """A REST client of its own (a process, as another program on the desk would be) fetching
    REST_PATH REST_PER_S times a second over one kept-alive connection, reading every byte of each
    response but parsing none (its own cost is not what is measured: it shares these two cores, where a
    real client would not); it prints its count of good fetches after each."""
    host, port = base.removeprefix("http://").split(":")
    args = [sys.executable, "-c", POLLER, host, port, REST_PATH, str(REST_PER_S)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def _stop_rest_client(proc: subprocess.Popen[bytes]) -> int:
    """Stop the client; its good fetches."""
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    lines = out.split()
    return int(lines[-1]) if lines else 0


def _offered_times(frames: list[tuple[str, bytes]]) -> tuple[list[int], np.ndarray]:
    """(per frame the time it may be written: its newest event; every event's time), in ns."""
    at: list[int] = []
    times: list[int] = []
    for fmt, data in frames:
        if fmt != RawFormat.WS:
            at.append(at[-1] if at else 0)
            continue
        ts = [int(e["t"]) * 1_000_000 for e in orjson.loads(data)]
        times.extend(ts)
        at.append(max(ts))
    return at, np.array(times, dtype=np.int64)


def _latencies_ms(events: np.ndarray, feed: Feed) -> tuple[np.ndarray, int]:
    """Each event's latency to the first received diff whose as-of covers it; and events never covered."""
    if not feed.asof or not len(events):
        return np.zeros(0), len(events)
    covered = np.maximum.accumulate(np.array(feed.asof, dtype=np.int64))
    recv = np.array(feed.recv, dtype=np.int64)
    i = np.searchsorted(covered, events, side="left")
    ok = i < len(covered)
    return (recv[i[ok]] - events[ok]) / 1e6, int((~ok).sum())


async def _e2e(
    url: str,
    base: str,
    shared: dict[str, float],
    pids: dict[str, int],
    rates: tuple[tuple[int, str], ...],
    attribute: bool,
    collect: list[np.ndarray] | None = None,
) -> list[Row]:
    """Offer ``rates`` in turn; with ``attribute``, report only where the cores went (one process per
    agent kind), else latency, throughput and bytes."""
    r = create_redis(url, block_ms=1000)
    writer = RawWriter(r, Metrics(CollectorRegistry()), "bench")
    specs = catalog.agents()
    rows: list[Row] = []
    now = time.time_ns()
    markets = {u: SimMarket(u, 5, 500, now) for u in E2E_UNDERLYINGS}
    # Warm up: chain snapshots, epochs, the first versions, the gateway answering.
    for _ in range(40):
        tick = time.time_ns()
        for u, m in markets.items():
            await writer.write(u, m.advance(tick), tick)
        await asyncio.sleep(0.05)
    await _wait_drained(r, specs, 60)
    async with httpx.AsyncClient() as http:
        for _ in range(600):
            ready = 0
            for u in E2E_UNDERLYINGS:
                for s in HEATMAPS:
                    with contextlib.suppress(httpx.HTTPError):
                        ready += (await http.get(f"{base}/api/models/{u}/{s}")).status_code == 200
            if ready == len(E2E_UNDERLYINGS) * len(HEATMAPS):
                break
            await asyncio.sleep(0.1)
    feeds = {tab: Feed() for tab in TABS}
    stop = asyncio.Event()
    readers = [asyncio.create_task(_read_sse(base, u, s, f, stop)) for (u, s), f in feeds.items()]
    await asyncio.sleep(1.0)
    sustained: list[float] = []
    gen_rate = 0.0
    pooled: dict[str, list[np.ndarray]] = {"alone": [], "rest": [], "elsewhere": []}  # the REST comparison
    fetched: list[float] = []  # its REST client's fetches per second, per pass
    elsewhere = base.rsplit(":", 1)[0] + f":{int(shared.get('rest_elsewhere_port', 0))}"
    for rate, compare in rates:
        # A recorded market, generated before it is offered (the generator must not share the cores
        # with the topology while it runs), then written paced by its event times.
        lead_s = 1.0 + (rate * E2E_SECONDS / gen_rate if gen_rate else 3.0)
        t0 = time.time_ns() + int(lead_s * NS)
        g0 = time.perf_counter()
        plan: dict[str, tuple[list[tuple[str, bytes]], list[int]]] = {}
        events: dict[str, np.ndarray] = {}
        for u, m in markets.items():
            m.rate = rate / len(markets)
            m.t_ns = max(m.t_ns, t0)  # a pause: the market resumes at t0, without trading in between
            m.next_spot_ns = max(m.next_spot_ns, m.t_ns)
            frames = m.advance(t0 + int(E2E_SECONDS * NS))
            at, events[u] = _offered_times(frames)
            plan[u] = (frames, at)
        n_events = sum(len(e) for e in events.values())
        gen_rate = n_events / (time.perf_counter() - g0)
        await asyncio.sleep(max(0.0, (t0 - time.time_ns()) / NS))
        cpu0 = {name: _cpu_s(pid) for name, pid in pids.items()}
        read0 = await _entries_read(r)
        lags: list[int] = []
        next_lag = time.monotonic()
        cursor = dict.fromkeys(markets, 0)
        poller = _rest_client(base if compare == "rest" else elsewhere) if compare in ("rest", "elsewhere") else None
        w0 = time.time_ns()
        while any(cursor[u] < len(plan[u][0]) for u in markets):
            tick = time.time_ns()
            for u, (frames, at) in plan.items():
                j = cursor[u]
                while j < len(frames) and at[j] <= tick:
                    j += 1
                if j > cursor[u]:
                    await writer.write(u, frames[cursor[u] : j], tick)
                    cursor[u] = j
            if time.monotonic() >= next_lag:
                lags.append(await backlog(r, E2E_UNDERLYINGS, specs, missing=1))
                next_lag += 0.5
            await asyncio.sleep(PACE_S)
        w1 = time.time_ns()
        gen_s = (w1 - w0) / NS
        if poller is not None:
            fetched.append(_stop_rest_client(poller) / gen_s)
        cpu = {name: (_cpu_s(pid) - cpu0[name]) / gen_s for name, pid in pids.items()}
        read = {a: n - read0.get(a, 0) for a, n in (await _entries_read(r)).items()}
        drained = await _wait_drained(r, specs, E2E_DRAIN_S)
        drain_s = (time.time_ns() - w1) / NS
        await asyncio.sleep(1.0)  # the last versions reach the clients
        offered = n_events / gen_s
        if drained and drain_s <= SUSTAINED_DRAIN_S:
            sustained.append(offered)
        label = f"offered {rate:,}/s"
        if attribute:
            rows += _attribution(label, cpu, read, gen_s)
            continue
        lat = [_latencies_ms(events[u], feeds[(u, s)]) for u, s in TABS]
        ms = np.concatenate([x for x, _ in lat]) if lat else np.zeros(0)
        uncovered = sum(n for _, n in lat)
        if compare in ("history", "alerts") and collect is not None:
            collect.append(ms)
            continue
        if compare:
            pooled[compare].append(ms)
            continue
        tab = feeds[TAB]
        wire, plain = tab.bytes_between(w0, w1), tab.bytes_between(w0, w1, plain=True)
        outcome = f"{'drained' if drained else 'NOT drained'} {drain_s:.1f}s after"
        rows.append(
            Row(
                "e2e",
                f"{label}: offered {offered:,.0f} events/s, {outcome}",
                offered if drained else n_events / (gen_s + drain_s),
                "events/s",
                shared.get("runtime_ceiling_1000"),
                "runtime ceiling (batch 1000)",
            )
        )
        rows.append(Row("e2e", f"{label}: max consumer lag", float(max(lags or [0])), "entries"))
        if len(ms):
            p50, p99 = np.percentile(ms, [50, 99])
            rows.append(Row("e2e", f"{label}: event-to-browser p50", float(p50), "ms"))
            key = f"e2e_sse_p99_ms_at_{rate}" if rate in (5_000, 20_000) else ""
            target = {5_000: "<= 100 ms", 20_000: "<= 250 ms"}.get(rate, "")
            rows.append(Row("e2e", f"{label}: event-to-browser p99", float(p99), "ms", target=target, key=key))
        if uncovered:
            rows.append(Row("e2e", f"{label}: events no diff covered before the next rate", float(uncovered), "events"))
        rows.append(
            Row(
                "e2e",
                f"{label}: SSE bytes/s, one whole tab ({TAB[0]} {TAB[1]} + {len(TAB_DERIVED)} derived feeds), gzip",
                wire / gen_s,
                "B/s",
                plain / gen_s,
                "the same events uncompressed",
                "<= 150,000" if rate == 5_000 else "",
                key="sse_bytes_per_s_at_5000" if rate == 5_000 else "",
            )
        )
        n_diffs = sum(1 for t in tab.recv if w0 <= t < w1)
        rows.append(Row("e2e", f"{label}: diffs/s, one tab", n_diffs / gen_s, "diffs/s"))
        if rate == ATTRIBUTE_AT:
            for name, share in sorted(cpu.items(), key=lambda kv: -kv[1]):
                rows.append(Row("e2e", f"{label}: CPU of process {name}", share * 100, "% of a core"))
    stop.set()
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    if not attribute and pooled["rest"]:
        alone, polled, other = (np.percentile(np.concatenate(pooled[k]), 99) for k in ("alone", "rest", "elsewhere"))
        client = f"a REST client fetching {REST_PATH} ({np.mean(fetched):.1f}/s)"
        rows.append(
            Row(
                "e2e",
                f"offered {REST_RATE:,}/s + {client} from the tabs' gateway: event-to-browser p99, "
                f"{len(pooled['rest'])} passes",
                float(polled),
                "ms",
                float(alone),
                f"p99 without it, {len(pooled['alone'])} passes",
                ">= 0.91 (within 10 %)",
                key="e2e_sse_p99_ms_at_5000_with_rest",
            )
        )
        rows.append(
            Row(
                "e2e",
                f"offered {REST_RATE:,}/s + {client} from another gateway process: event-to-browser p99, "
                f"{len(pooled['elsewhere'])} passes",
                float(other),
                "ms",
                float(alone),
                "p99 without it (what the shared cores pay, whoever serves REST)",
            )
        )
    if not attribute:
        rows.append(
            Row(
                "e2e",
                f"highest offered rate drained within {SUSTAINED_DRAIN_S:.0f} s",
                max(sustained or [0.0]),
                "events/s",
                target=">= 40,000",
                key="e2e_sustained_events_per_s",
            )
        )
    await r.aclose()
    return rows


def _attribution(label: str, cpu: dict[str, float], read: dict[str, int], gen_s: float) -> list[Row]:
    """Each agent's share of the cores (one process per kind), and its CPU per entry read."""
    publish = sum(v for k, v in cpu.items() if k.startswith("publish."))
    rows = [
        Row(
            "e2e",
            f"{label}: CPU of all publish agents",
            publish * 100,
            "% of a core",
            target="<= 15",
            key="publish_cpu_pct_at_5000",
        )
    ]
    for name, share in sorted(cpu.items(), key=lambda kv: -kv[1]):
        n = read.get(name, 0)
        per = f" ({read[name] / gen_s:,.0f} entries/s, {share * gen_s / n * 1e6:,.0f} us each)" if n else ""
        rows.append(Row("e2e", f"{label}, one process per agent: CPU of {name}{per}", share * 100, "% of a core"))
    return rows


async def _entries_read(r: Any) -> dict[str, int]:
    """Entries each agent's groups have read so far (XINFO GROUPS entries-read), over the underlyings."""
    out: dict[str, int] = {}
    for row in await group_rows(r, E2E_UNDERLYINGS, catalog.agents()):
        if row["exists"] and row.get("entries_read") is not None:
            out[row["agent"]] = out.get(row["agent"], 0) + int(row["entries_read"])
    return out


async def _wait_drained(r: Any, specs: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await backlog(r, E2E_UNDERLYINGS, specs, missing=1) == 0:
            return True
        await asyncio.sleep(0.05)
    return False
