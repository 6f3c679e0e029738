"""Webhook delivery of the alerts: each receiver of the rules file, underlying and alerts stream has a task.

A task reads an alerts stream (``streams.ALERTS``) after the last alert it gave its receiver (kept in
``streams.deliveries_key`` by receiver and stream, so a restarted courier goes on where it stopped:
at least once) and POSTs each alert the receiver wants, as Alertmanager v4 JSON or as the plain
alert; the body carries the alert's fingerprint, so a receiver can drop a repeat. A try that does not
end in a 2xx answer within the receiver's timeout is retried after ``backoff_s``, doubling to
``max_backoff_s``, until ``deadline_s`` after the first try; then the alert is dead-lettered in
``ms:{U}:alerts:dead.v1`` with the last error, counted, and the receiver goes on with the next one.
A receiver's first start takes the alerts of the last ``deadline_s`` (older ones could not be
delivered in time anyway).

A task delivers the alerts of one read (up to ``READ_COUNT``) concurrently, so a receiver that stopped
answering holds its stream back by one deadline per batch, not per alert. After ``DOWN_AFTER``
consecutive failed tries a receiver is down: its alerts take turns, one try in flight at a time, each
until its own deadline, so a dead receiver costs one connection and few CPU cycles. Each receiver has
its own HTTP client and connections, so a slow or dead receiver delays only itself,
and the courier is its own process: it never holds up a model. Webhook URLs carry tokens: every log
line names the receiver and the masked URL (``mask_webhook``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from marketswarm.schemas import alerts, codec
from marketswarm.topology import streams
from marketswarm.topology.metrics import Metrics

log = logging.getLogger(__name__)
# httpx logs every request with its URL at INFO: webhook URLs hold tokens, so only its warnings.
logging.getLogger("httpx").setLevel(logging.WARNING)
READ_COUNT = 50  # alerts read, and delivered concurrently, at a time
DOWN_AFTER = 3  # consecutive failed tries after which a receiver is down: one try at a time
JSON = {"content-type": "application/json"}
KEEPALIVE = 8  # connections a receiver's pool keeps open
BLOCK_MS = 1000
MAX_ERROR_CHARS = 300


def mask_webhook(url: str) -> str:
    """``url`` with everything after the host masked (paths and queries of webhooks hold tokens)."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}/***" if rest != host else f"{scheme}://{host}"


def body_of(alert: alerts.Alert, receiver: alerts.Receiver) -> bytes:
    if receiver.format == "alertmanager":
        return orjson.dumps(alerts.alertmanager_json(alert, receiver.name))
    return orjson.dumps(alerts.plain_json(alert))


@dataclass
class Health:
    """A receiver as its tries found it: consecutive failures; while down, whose turn it is to try."""

    failures: int = 0
    error: str = ""
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)


class Courier:
    """Delivers the alerts of ``underlyings`` to ``receivers`` until ``stop`` is set."""

    def __init__(
        self,
        redis: aioredis.Redis,
        receivers: Sequence[alerts.Receiver],
        underlyings: Sequence[str],
        metrics: Metrics,
        stop: asyncio.Event,
    ) -> None:
        self.redis, self.receivers, self.underlyings = redis, receivers, underlyings
        self.metrics, self.stop = metrics, stop
        self.health = {r.name: Health() for r in receivers}

    async def run(self) -> None:
        if not self.receivers:
            log.info("no webhook receivers in the rules file: nothing to deliver")
            await self.stop.wait()
            return
        for r in self.receivers:
            log.info("delivering alerts to %s at %s", r.name, mask_webhook(r.url))
        # A client (a connection pool) per receiver: one that hangs holds only its own connections.
        most = READ_COUNT * len(self.underlyings) * len(streams.ALERTS)
        pool = httpx.Limits(max_connections=most, max_keepalive_connections=KEEPALIVE)
        clients = {r.name: httpx.AsyncClient(follow_redirects=False, limits=pool) for r in self.receivers}
        every = [(r, u, spec) for r in self.receivers for u in self.underlyings for spec in streams.ALERTS.values()]
        tasks = [asyncio.create_task(self._receiver(clients[r.name], r, u, spec)) for r, u, spec in every]
        try:
            await self.stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in clients.values():
                await c.aclose()

    async def _receiver(self, client: httpx.AsyncClient, r: alerts.Receiver, u: str, spec: streams.StreamSpec) -> None:
        key, positions, field = spec.key(u), streams.deliveries_key(u), f"{r.name}|{spec.name}"
        pos: str | None = None
        while not self.stop.is_set():
            try:
                if pos is None:
                    saved = await self.redis.hget(positions, field)
                    pos = (
                        saved.decode()
                        if saved
                        else f"{max(0, time.time_ns() // 1_000_000 - int(r.deadline_s * 1000))}-0"
                    )
                reply = await self.redis.xread({key: pos}, count=READ_COUNT, block=BLOCK_MS)
                for _key, entries in reply or ():
                    # A batch is delivered concurrently (a receiver de-duplicates and orders by
                    # fingerprint and startsAt), and the position moves past it once every alert of
                    # it was delivered or dead-lettered.
                    done = await asyncio.gather(*(self._one(client, r, u, i.decode(), f) for i, f in entries))
                    if not all(done):
                        return  # stopping mid-retry: the position stays, a restart tries again
                    pos = entries[-1][0].decode()
                    await self.redis.hset(positions, field, pos)
            except (RedisError, OSError) as exc:
                log.warning("%s of %s for %s: the store failed (%s); again in 1 s", spec.name, u, r.name, exc)
                await self._sleep(1.0)

    async def _one(self, client: httpx.AsyncClient, r: alerts.Receiver, u: str, eid: str, fields: Any) -> bool:
        """Deliver one alert, or dead-letter it; False when stopped before either."""
        try:
            alert = codec.decode(streams.Payload.ALERT, fields)
        except codec.DecodeError as exc:
            await self._dead(r, u, eid, fields, f"undecodable alert: {exc}", 0)
            return True
        if not r.wants(alert.rule):
            return True
        body, first, delay, tries = body_of(alert, r), time.monotonic(), r.backoff_s, 0
        health = self.health[r.name]
        while True:
            tries += 1
            if health.failures >= DOWN_AFTER:
                # The receiver is down: one try at a time for all of its alerts, each waiting for its
                # turn until its deadline, so a dead receiver costs one connection, not one per alert.
                try:
                    async with asyncio.timeout(max(0.0, r.deadline_s - (time.monotonic() - first))):
                        async with health.turn:
                            error = await self._post(client, r, body, alert, health)
                except TimeoutError:
                    error = f"the receiver is down (its last error: {health.error})"
            else:
                error = await self._post(client, r, body, alert, health)
            if error is None:
                return True
            if self.stop.is_set():
                return False
            if time.monotonic() - first + delay > r.deadline_s:
                await self._dead(r, u, eid, fields, error, tries)
                return True
            # The first failure of an alert is a warning; its retries are debug (a receiver that is down
            # would otherwise log a line per alert per try), and its dead letter an error.
            log.log(
                logging.WARNING if tries == 1 else logging.DEBUG,
                "alert %s (%s) to %s at %s: %s; try %d again in %.1f s",
                alert.fingerprint, alert.rule, r.name, mask_webhook(r.url), error, tries + 1, delay,
            )  # fmt: skip
            await self._sleep(delay)
            delay = min(delay * 2, r.max_backoff_s)

    async def _post(
        self, client: httpx.AsyncClient, r: alerts.Receiver, body: bytes, alert: alerts.Alert, health: Health
    ) -> str | None:
        """One try; None when the receiver took it, else the error (masked)."""
        try:
            resp = await client.post(r.url, content=body, headers=JSON, timeout=r.timeout_s)
            if 200 <= resp.status_code < 300:
                health.failures = 0
                self.metrics.alert_deliveries.labels(r.name, "delivered").inc()
                self.metrics.alert_delivery_seconds.labels(r.name).observe((time.time_ns() - alert.t_ns) / 1e9)
                return None
            error = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        health.failures += 1
        health.error = error = error.replace(r.url, mask_webhook(r.url))[:MAX_ERROR_CHARS]
        self.metrics.alert_deliveries.labels(r.name, "failed").inc()
        return error

    async def _dead(self, r: alerts.Receiver, u: str, eid: str, fields: Any, error: str, tries: int) -> None:
        record: dict[str, Any] = {f"orig.{k.decode()}": v for k, v in fields.items()}
        record.update({"id": eid, "receiver": r.name, "tries": tries, "error": error})
        spec = streams.ALERTS_DEAD
        await self.redis.xadd(spec.key(u), record, maxlen=streams.ALERTS_DEAD_MAXLEN, approximate=True)
        self.metrics.alert_deliveries.labels(r.name, "dead").inc()
        self.metrics.alert_dead_letters.labels(r.name).inc()
        log.error("alert %s of %s to %s at %s dead-lettered after %d tries: %s",
                  eid, u, r.name, mask_webhook(r.url), tries, error)  # fmt: skip

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
