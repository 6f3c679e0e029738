"""Webhook delivery against loopback receivers: one that fails its first tries, one that never answers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from marketswarm.agents.vigil.courier import Courier, mask_webhook
from marketswarm.schemas import alerts, codec
from marketswarm.topology import streams
from marketswarm.topology.metrics import Metrics

pytestmark = pytest.mark.integration


class Receiver:
    """A loopback HTTP server: answers 500 to the first ``fail`` tries of each fingerprint, then 200;
    with ``hang``, never answers at all."""

    def __init__(self, fail: int = 0, hang: bool = False) -> None:
        self.fail, self.hang = fail, hang
        self.tries: Counter[str] = Counter()
        self.received: list[tuple[float, dict[str, Any]]] = []  # (receipt time ns, body) of the 2xx answers
        self.closing = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hooks/SECRET-TOKEN?key=SECRET2"

    async def close(self) -> None:
        self.closing.set()
        self.server.close()
        for w in self.writers:
            w.close()
        await asyncio.sleep(0.05)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                length = next(int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length"))
                body = orjson.loads(await reader.readexactly(length))
                if self.hang:
                    await self.closing.wait()
                    return
                fp = body["alerts"][0]["fingerprint"] if "alerts" in body else body["fingerprint"]
                self.tries[fp] += 1
                status = b"500 Internal Server Error" if self.tries[fp] <= self.fail else b"200 OK"
                if status == b"200 OK":
                    self.received.append((time.time_ns(), body))
                writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def alert(i: int, t_ns: int, rule: str = "flip_cross") -> alerts.Alert:
    return alerts.Alert(
        fingerprint=alerts.fingerprint(rule, "SPX", "flip", "up", 5000.0 + i, t_ns), rule=rule,
        severity="warning", underlying="SPX", t_ns=t_ns, version=i, subject="flip",
        message=f"SPX spot crossed up through the flip {5000 + i}", values={"direction": "up", "spot": 5001.0 + i},
    )  # fmt: skip


async def test_at_least_once_with_backoff_and_dead_letters_without_delaying_others(
    aredis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    flaky, dead, plain = Receiver(fail=3), Receiver(hang=True), Receiver()
    urls = [await r.start() for r in (flaky, dead, plain)]
    receivers = [
        alerts.Receiver(name="flaky", url=urls[0], backoff_s=0.05, max_backoff_s=0.2, deadline_s=30),
        alerts.Receiver(name="dead", url=urls[1], timeout_s=0.3, backoff_s=0.05, max_backoff_s=0.1, deadline_s=1.0),
        alerts.Receiver(name="plain", url=urls[2], format="json", rules=["wall_break"]),
    ]
    now = time.time_ns()
    sent = [alert(i, now + i * 1_000_000) for i in range(4)] + [alert(9, now + 9_000_000, "wall_break")]
    for a in sent:
        await aredis.xadd(streams.ALERTS["gex"].key("SPX"), codec.encode_alert(a), id=f"{a.t_ns // 1_000_000}-0")
    metrics, stop = Metrics(), asyncio.Event()
    caplog.set_level(logging.INFO)
    task = asyncio.create_task(Courier(aredis, receivers, ["SPX"], metrics, stop).run())
    try:
        deadline = time.monotonic() + 30
        while len(flaky.received) < len(sent) or not plain.received:
            assert time.monotonic() < deadline, (flaky.tries, plain.received)
            await asyncio.sleep(0.05)
        # the flaky receiver and the plain one finished while the dead one still hangs on its first alerts
        assert await aredis.xlen(streams.ALERTS_DEAD.key("SPX")) < len(sent)
        while await aredis.xlen(streams.ALERTS_DEAD.key("SPX")) < len(sent):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
        for r in (flaky, dead, plain):
            await r.close()
    # at least once: every fingerprint, after three 500s each
    got = [b["alerts"][0]["fingerprint"] for _, b in flaky.received]
    assert sorted(got) == sorted(a.fingerprint for a in sent) and all(n == 4 for n in flaky.tries.values())
    body = next(b for _, b in flaky.received if b["alerts"][0]["fingerprint"] == sent[0].fingerprint)
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "flaky"
    assert body["groupLabels"] == {"alertname": "flip_cross", "underlying": "SPX"}
    [am] = body["alerts"]
    assert am["labels"]["alertname"] == "flip_cross" and am["labels"]["severity"] == "warning"
    assert am["annotations"]["summary"] == sent[0].message and am["startsAt"] == alerts.iso(sent[0].t_ns)
    assert am["endsAt"] == "0001-01-01T00:00:00Z" and am["fingerprint"] == sent[0].fingerprint
    # the plain receiver took only its rule, as the alert itself
    assert [b for _, b in plain.received] == [alerts.plain_json(sent[-1])]
    # the dead receiver's deliveries are dead-lettered, each with its receiver and error
    entries = await aredis.xrange(streams.ALERTS_DEAD.key("SPX"))
    assert {e[b"receiver"] for _, e in entries} == {b"dead"} and len(entries) == len(sent)
    assert all(b"ReadTimeout" in e[b"error"] for _, e in entries)
    assert metrics.alert_dead_letters.labels("dead")._value.get() == len(sent)
    assert metrics.alert_deliveries.labels("flaky", "delivered")._value.get() == len(sent)
    assert metrics.alert_deliveries.labels("flaky", "failed")._value.get() == 3 * len(sent)
    # positions are kept: a restarted courier delivers nothing twice
    positions = await aredis.hgetall(streams.deliveries_key("SPX"))
    last = f"{sent[-1].t_ns // 1_000_000}-0".encode()
    assert positions == {b"flaky|alerts": last, b"dead|alerts": last, b"plain|alerts": last}
    # webhook URLs hold tokens: never in a log line
    assert "SECRET" not in caplog.text and mask_webhook(urls[1]) in caplog.text
    assert mask_webhook(urls[0]) == urls[0].split("/hooks")[0] + "/***"
