"""`make bench`, alerts: what webhook delivery costs the live feeds, and how fast an alert reaches a receiver.

Eight passes at 5k events/s (the e2e suite's offering and tabs), agents restarted for each, in an
ABBA order so no drift favours one side: with the courier (`marketswarm alerts deliver`) delivering
to two loopback receivers, one answering at once and one that never answers (its deliveries time
out, are retried and dead-lettered), and without a courier. The rules are tuned to fire often
(``BENCH_RULES``). Reported: the event-to-browser p99 with the courier against without (a dead
receiver must not slow the models), every alert's latency from its event time to the answering
receiver's receipt (p50, p99), and the dead receiver's dead letters. The vigil agent's own CPU at
5k events/s is in the e2e suite's attribution rows (one process per agent kind).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis

from marketswarm.topology import streams
from tests.bench.bench import Row

ALERT_PASSES = (False, True, True, False, False, True, True, False)
# Every rule on, tuned to fire about once a second in all over the simulated market (a busy desk's
# alerts, several times what the shipped rules fire), so each pass has alerts to time.
BENCH_RULES = """
[rules.flip_cross]
hysteresis_pct = 0.0
cooldown_s = 5
[rules.wall_near]
within_pct = 1.0
hysteresis_pct = 0.0
cooldown_s = 5
[rules.wall_break]
hysteresis_pct = 0.0
cooldown_s = 5
[rules.mode_change]
hysteresis_pct = 0.0
cooldown_s = 5
[rules.gravity_move]
strikes = 1
cooldown_s = 5
[rules.net_premium]
total_usd = 200000
strike_usd = 200000
cooldown_s = 10
[rules.best_fly]
min_reward_risk = 5
cooldown_s = 30
"""


class _Answering(BaseHTTPRequestHandler):
    received: list[tuple[int, int]] = []  # (receipt ns, the alert's event time ns)
    since_ns = 0  # alerts fired before this (the courier's start) are not counted

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = orjson.loads(self.rfile.read(int(self.headers["content-length"])))
        if int(body["t_ns"]) >= self.since_ns:
            self.received.append((time.time_ns(), int(body["t_ns"])))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def alerts_cost(exe: str, env: dict[str, str], url: str, base: str, shared: dict[str, float], gw: int) -> list[Row]:
    from tests.bench.e2e import _cpu_s, _e2e, _stop, process_groups

    answering = ThreadingHTTPServer(("127.0.0.1", 0), _Answering)
    threading.Thread(target=answering.serve_forever, daemon=True).start()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead.listen(1024)  # connections queue and are never accepted: every try times out
    tmp = Path(tempfile.mkdtemp(prefix="ms-bench-alerts-"))
    rules = tmp / "rules.toml"
    rules.write_text(
        BENCH_RULES
        + f'[[receivers]]\nname = "answering"\nformat = "json"\nurl = "http://127.0.0.1:{answering.server_port}/"\n'
        + "deadline_s = 10\n"
        + f'[[receivers]]\nname = "dead"\nurl = "http://127.0.0.1:{dead.getsockname()[1]}/hook/TOKEN"\n'
        + "timeout_s = 1\nbackoff_s = 0.2\nmax_backoff_s = 1\ndeadline_s = 3\n"
    )
    alert_env = {**env, "MARKETSWARM_RULES": str(rules)}
    pooled: dict[bool, list[np.ndarray]] = {True: [], False: []}
    courier_cpu: list[float] = []
    r = redis.Redis.from_url(url)
    fired0 = sum(r.xlen(spec.key(u)) for u in ("SPX", "NDX") for spec in streams.ALERTS.values())
    try:
        for on in ALERT_PASSES:
            procs = [subprocess.Popen([exe, "agent", *group], env=alert_env) for group in process_groups()]
            if on:
                # Each pass's courier starts afresh (the alerts of the passes without one are not its
                # to catch up on), and its alerts count from then on.
                for u in ("SPX", "NDX"):
                    r.delete(streams.deliveries_key(u))
                _Answering.since_ns = time.time_ns() + 4_000_000_000  # the courier up (imports, connections)
                procs.append(subprocess.Popen([exe, "alerts", "deliver"], env=alert_env))
            try:
                pids = {"gateway": gw, **{f"p{i}": p.pid for i, p in enumerate(procs)}}
                w0, c0 = time.monotonic(), _cpu_s(procs[-1].pid)
                asyncio.run(_e2e(url, base, shared, pids, ((5_000, "alerts"),), attribute=False, collect=pooled[on]))
                if on:
                    time.sleep(1.0)  # the last deliveries of the pass
                    courier_cpu.append((_cpu_s(procs[-1].pid) - c0) / (time.monotonic() - w0))
            finally:
                _stop(procs)
        fired = sum(r.xlen(spec.key(u)) for u in ("SPX", "NDX") for spec in streams.ALERTS.values()) - fired0
        dead_letters = sum(r.xlen(streams.ALERTS_DEAD.key(u)) for u in ("SPX", "NDX"))
    finally:
        r.close()
        answering.shutdown()
        answering.server_close()
        dead.close()
        with contextlib.suppress(OSError):
            rules.unlink()
            tmp.rmdir()
    with_it, without = (float(np.percentile(np.concatenate(pooled[k]), 99)) for k in (True, False))
    lat = np.array([(got - t) / 1e6 for got, t in _Answering.received])
    rows = [
        Row(
            "e2e",
            f"offered 5,000/s, webhooks delivered (one receiver never answers): event-to-browser p99, "
            f"{len(pooled[True])} passes; the courier took {100 * float(np.mean(courier_cpu)):.1f} % of a core",
            with_it,
            "ms",
            without,
            f"p99 without the courier, {len(pooled[False])} passes",
            ">= 0.95 (within 5 %)",
            key="e2e_sse_p99_ms_at_5000_with_webhooks",
        )
    ]
    if len(lat):
        rows.append(
            Row(
                "e2e",
                f"alert latency, event time to a webhook's receipt: p99 over {len(lat)} alerts, p50 "
                f"{np.percentile(lat, 50):.0f} ms ({fired} fired, {dead_letters} dead letters of the silent receiver)",
                float(np.percentile(lat, 99)),
                "ms",
                key="alert_webhook_p99_ms",
            )
        )
    return rows
