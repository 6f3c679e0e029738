"""The agent runtime: the one consumer loop every MarketSwarm agent runs on.

An agent is data (an ``AgentSpec``, topology/agent.py; the production list is agents/catalog.py): a
name, the stream it reads, the streams it writes and a factory for its processor. The processor holds
the agent's logic as a step over a batch of typed entries that returns ``Effects``: entries to append
to output streams, state writes and server-side scripts. The step does no I/O; neither does the rest
of the processor: its state comes back through the runtime (topology/restore.py). Everything else is
here, written once:

* the consumer group is created from the stream's start with MKSTREAM (BUSYGROUP tolerated);
* a consumer first drains its own pending entries, then reads new ones in batches
  (XREADGROUP COUNT n BLOCK ms);
* a batch's effects and its XACK are committed in ONE server-side script on keys that share the
  underlying's hash slot (topology/commit.py), the XACK last: no input is acked without its effects,
  an effect that fails stops the script before the XACK, and a crash leaves the entries pending, to
  be read again with the same result;
* a batch whose step raises, or whose effects fail for good, is split in halves until the failing
  entries are alone: they stay pending (their error recorded in ``<stream>.errors``) and the others
  commit; a step that assumed state another replica changed is restored and stepped again;
* a reclaimer takes entries idle past ``min_idle_ms`` (XAUTOCLAIM, cursor followed to ``0-0``) and
  any entry delivered more than ``max_deliveries`` times is moved to ``<stream>.dlq`` with its error;
* stateful agents own each underlying through a lease with a fencing token; every commit checks
  the lease first, inside its script, so a replica that lost it cannot write; leases and the
  heartbeat are renewed from a thread (topology/keeper.py), so a long step cannot let them expire,
  and only while this loop turns, so a step stuck past half the lease hands the lease to a standby;
* after a commit, the streams the agent writes are trimmed to their byte and age bounds, never past
  an entry a group has not acknowledged (topology/retention.py);
* SIGTERM/SIGINT set an event: the loop finishes the in-flight batch and returns.

Delivery is at-least-once; steps are deterministic and state writes idempotent, which makes the
whole exactly-once-ish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError, TimeoutError

from marketswarm.schemas import codec
from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec, Count, Effects, Entry, Processor
from marketswarm.topology.commit import Committer, ConflictError, EffectError, LeaseLostError, Replication, encode
from marketswarm.topology.connections import ensure_group, error_code, text
from marketswarm.topology.failures import Failures
from marketswarm.topology.keeper import Keeper, Leases, blocking_twin
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.model_settings import adopt_model_settings
from marketswarm.topology.restore import read_side, restore
from marketswarm.topology.retention import Trimmer
from marketswarm.topology.settings import Settings
from marketswarm.topology.stopping import pause

log = logging.getLogger(__name__)

# After a Redis error other than NOGROUP the loop sleeps this long before reading again: long
# enough not to spin on a server that is restarting, short enough to resume within a second.
CONSUME_ERROR_BACKOFF_S = 0.5
# A step whose commit met state another replica changed is restored and stepped again this often.
CONFLICT_RETRIES = 5


class GroupMissingError(RuntimeError):
    """Raised when the group disappears under a running agent (NOGROUP): the agent must restart."""


class Runtime:
    """Runs one agent kind for a set of underlyings until stopped or a bound is reached."""

    def __init__(
        self,
        spec: AgentSpec,
        settings: Settings,
        redis: aioredis.Redis,
        metrics: Metrics,
        *,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self._model_settings_adopted = False
        self.redis = redis
        self.metrics = metrics
        self.stop = stop or asyncio.Event()
        self.group = spec.name
        self.consumer = settings.consumer
        self.batch_size = min(settings.batch_size, spec.max_batch or settings.batch_size)
        self.processed = 0  # entries acked or dead-lettered by this runtime
        self._last_activity = time.monotonic()
        self.failures = Failures(redis, self.group, self.consumer)
        self.trimmer = Trimmer(redis, metrics, spec.name)
        self.committer = Committer(
            redis,
            Replication(
                settings.min_replicas_ack,
                settings.replica_ack_timeout_ms,
                lambda _: metrics.replica_lag.labels(spec.name).inc(),
            ),
        )
        self.keeper = Keeper(
            blocking_twin(redis),
            spec.name,
            streams.heartbeat_key(spec.name, settings.consumer),
            settings.heartbeat_ttl_s,
            settings.lease_ttl_ms,
        )
        self.leases = Leases(redis, self.keeper, spec.name, settings.consumer, settings.lease_ttl_ms)

    # ------------------------------------------------------------------ public entry points

    async def run(
        self,
        underlyings: Sequence[str] | None = None,
        *,
        max_entries: int | None = None,
        idle_timeout_s: float | None = None,
    ) -> int:
        """Consume until stopped; or, for tests and debugging, until ``max_entries`` entries were
        handled or nothing arrived for ``idle_timeout_s`` seconds. Returns entries handled."""
        us = list(underlyings or self.settings.underlyings)
        self._last_activity = time.monotonic()
        if self.spec.stateful:
            await asyncio.to_thread(self.keeper.first_beat)  # before its first lease (keeper.py)
        self.keeper.start()
        progress = asyncio.create_task(self.keeper.follow(), name=f"{self.spec.name}:progress")
        tasks = [asyncio.create_task(self._partition(u), name=f"{self.spec.name}:{u}") for u in us]
        watcher = asyncio.create_task(self._watch_bounds(max_entries, idle_timeout_s))
        try:
            await asyncio.wait([*tasks, watcher], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.stop.set()
            # Let every partition finish (and commit) its in-flight batch, within the grace period.
            _, late = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_s)
            for t in (*late, watcher, progress):
                t.cancel()
            await asyncio.gather(watcher, progress, *tasks, return_exceptions=True)
            for u in us:
                await self.leases.release(u)
            await asyncio.to_thread(self.keeper.stop)
        for t in tasks:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        return self.processed

    async def _watch_bounds(self, max_entries: int | None, idle_timeout_s: float | None) -> None:
        if max_entries is None and idle_timeout_s is None:
            await self.stop.wait()  # unbounded (every deployed agent): nothing to poll
            return
        while not self.stop.is_set():
            if max_entries is not None and self.processed >= max_entries:
                break
            if idle_timeout_s is not None and time.monotonic() - self._last_activity > idle_timeout_s:
                break
            await pause(self.stop, 0.05)

    async def _restore(self, u: str, processor: Processor) -> None:
        """The processor's state as of what this group acknowledged (topology/restore.py)."""
        await restore(self.redis, processor, self.group, u, self.spec.accepts)

    async def _adopt_model_settings(self) -> Settings:
        """The recorded model settings in place of the environment's, read once (topology/model_settings.py)."""
        if not self._model_settings_adopted:
            self.settings = await adopt_model_settings(self.redis, self.settings, self.group)
            self._model_settings_adopted = True
        return self.settings

    # ------------------------------------------------------------------ the loop

    async def _partition(self, u: str) -> None:
        key = self.spec.reads.key(u)
        processor: Processor | None = None
        backoff = False
        while not self.stop.is_set():
            try:
                if backoff:
                    await pause(self.stop, CONSUME_ERROR_BACKOFF_S)
                    backoff = False
                if processor is None:
                    await ensure_group(self.redis, key, self.group)
                    await self.redis.sadd(streams.underlyings_key(), u)
                    processor = self.spec.make(await self._adopt_model_settings(), u)
                if self.spec.stateful:
                    if not await self.leases.acquire(u):
                        await pause(self.stop, self.settings.lease_ttl_ms / 3000)
                        continue
                    await self._restore(u, processor)
                    # Whoever held the lease before us is gone: its pending entries are ours now.
                    await self._reclaim(u, key, processor, min_idle_ms=0)
                else:
                    await self._restore(u, processor)
                await self._drain_own_pending(u, key, processor)
                await self._consume(u, key, processor)
            except (ResponseError, EffectError, ConflictError) as exc:
                if isinstance(exc, ResponseError) and error_code(exc) == "NOGROUP":
                    raise GroupMissingError(f"group {self.group} on {key} vanished: {exc}") from exc
                log.exception("redis error in %s on %s; retrying", self.group, key)
                self.metrics.redis_errors.labels(self.group, key).inc()
                backoff = True
            except LeaseLostError:
                log.warning("%s lost the lease for %s; standing by", self.group, u)
                self.leases.lost(u)
            except (RedisConnectionError, TimeoutError, OSError):
                if self.stop.is_set():
                    return
                log.exception("connection error in %s on %s; retrying", self.group, key)
                self.metrics.redis_errors.labels(self.group, key).inc()
                backoff = True
            except (RedisError, RedisClusterException) as exc:
                # A cluster in motion: a failover (CLUSTERDOWN, a slot not covered yet), a resharding
                # (TRYAGAIN). The entries stay pending; the client refreshes its slot map on retry.
                if self.stop.is_set():
                    return
                log.warning("%s on %s: %s; retrying", self.group, key, exc)
                self.metrics.redis_errors.labels(self.group, key).inc()
                backoff = True

    async def _consume(self, u: str, key: str, processor: Processor) -> None:
        next_claim = time.monotonic() + self.settings.claim_interval_ms / 1000
        stopped = asyncio.ensure_future(self.stop.wait())
        held_since: float | None = None  # wall (monotonic) time the processor began holding work
        try:
            while not self.stop.is_set():
                if time.monotonic() >= next_claim:
                    await self._reclaim(u, key, processor, min_idle_ms=self.settings.min_idle_ms)
                    next_claim = time.monotonic() + self.settings.claim_interval_ms / 1000
                block_ms = self.settings.block_ms
                if held_since is not None:  # read no longer than the held work may wait
                    wait_s = held_since + processor.max_hold_s - time.monotonic()
                    block_ms = max(1, min(block_ms, math.ceil(wait_s * 1000)))
                read = asyncio.ensure_future(
                    self.redis.xreadgroup(self.group, self.consumer, {key: ">"}, count=self.batch_size, block=block_ms)
                )
                await asyncio.wait([read, stopped], return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    # Cancelling a blocked read is safe: anything it was handed stays pending for this
                    # consumer and is drained first on the next start. It is not awaited: redis-py may
                    # finish a cancelled BLOCK before it gives the connection back, and a stop must not
                    # wait block_ms for it; closing the client ends it.
                    read.cancel()
                    read.add_done_callback(_retrieve)
                    return
                response = read.result()
                if response:
                    await self._handle(u, key, processor, response[0][1], redelivered=False)
                if self.spec.read_every_s and (not response or len(response[0][1]) < self.batch_size):
                    await pause(self.stop, self.spec.read_every_s)  # larger batches, fewer reads and commits
                held_since = self._held_since(processor, held_since)
                held_s = time.monotonic() - held_since if held_since is not None else 0.0
                if self.settings.idle_flush and (
                    not response or (held_since is not None and held_s >= processor.max_hold_s)
                ):
                    # Input went quiet, or work was held as long as it may be: out with it.
                    await self.flush(u, key, processor)
                    held_since = self._held_since(processor, None)
        finally:
            stopped.cancel()

    def _held_since(self, processor: Processor, since: float | None) -> float | None:
        """When the processor began holding work it will flush (None: it holds nothing, or it does
        not hold work on a deadline; only live runs flush on one, replays flush at the end)."""
        if not self.settings.idle_flush or not processor.holding():
            return None
        return since if since is not None else time.monotonic()

    async def _drain_own_pending(self, u: str, key: str, processor: Processor) -> None:
        """Re-read this consumer's own pending entries (from a previous life) before new ones."""
        last = "0"
        while not self.stop.is_set():
            response = await self.redis.xreadgroup(self.group, self.consumer, {key: last}, count=self.batch_size)
            if not response or not response[0][1]:
                return
            raw_entries = response[0][1]
            last = text(raw_entries[-1][0])
            await self._handle(u, key, processor, raw_entries, redelivered=True)

    async def _reclaim(self, u: str, key: str, processor: Processor, *, min_idle_ms: int) -> None:
        """XAUTOCLAIM entries idle past ``min_idle_ms`` from any consumer, following the cursor."""
        cursor: Any = "0-0"
        while not self.stop.is_set():
            result = await self.redis.xautoclaim(
                key, self.group, self.consumer, min_idle_ms, start_id=cursor, count=self.batch_size
            )
            cursor, claimed = result[0], result[1]
            deleted = result[2] if len(result) > 2 else []
            if deleted:
                # Trimmed before anyone acked them (Redis 7 drops them from the PEL itself).
                log.error("%d pending entries of %s were trimmed before being processed", len(deleted), key)
                self.metrics.trimmed_pending.labels(self.group, key).inc(len(deleted))
            if claimed:
                self.metrics.reclaimed.labels(self.group, key).inc(len(claimed))
                await self._handle(u, key, processor, claimed, redelivered=True)
            if text(cursor) == "0-0":
                return

    # ------------------------------------------------------------------ one batch

    async def _handle(
        self,
        u: str,
        key: str,
        processor: Processor,
        raw_entries: list[tuple[bytes, dict[bytes, bytes] | None]],
        *,
        redelivered: bool,
    ) -> None:
        self._last_activity = time.monotonic()
        started = time.perf_counter()
        labels = (self.group, key)
        dead: list[tuple[str, dict[bytes, bytes], int]] = []
        gone: list[str] = []
        counts: dict[str, int] = {}
        if redelivered:
            counts = await self.failures.delivery_counts(key, [text(i) for i, _ in raw_entries])
        good: list[Entry] = []
        skipped: list[str] = []  # entries the agent does not take (AgentSpec.accepts): acked as they are
        originals: dict[str, dict[bytes, bytes]] = {}
        for raw_id, fields in raw_entries:
            entry_id = text(raw_id)
            if fields is None:
                gone.append(entry_id)
                continue
            originals[entry_id] = fields
            deliveries = counts.get(entry_id, 1)
            if deliveries > self.settings.max_deliveries and entry_id not in self.failures.interrupted:
                dead.append((entry_id, fields, deliveries))
                continue
            if self.spec.accepts is not None and not self.spec.accepts(fields):
                skipped.append(entry_id)
                continue
            try:
                value = codec.decode(self.spec.reads.payload, fields)
            except codec.DecodeError as exc:
                log.warning("%s: entry %s of %s is undecodable: %s", self.group, entry_id, key, exc)
                self.metrics.step_failures.labels(*labels).inc()
                await self.failures.record(key, entry_id, f"undecodable entry: {exc}")
                continue
            good.append(Entry(entry_id, value))
        self.metrics.entries_in.labels(*labels).inc(len(raw_entries))
        self.metrics.events_in.labels(*labels).inc(sum(codec.event_count(e.value) for e in good))
        if gone:
            await self.redis.xack(key, self.group, *gone)
            self.metrics.trimmed_pending.labels(*labels).inc(len(gone))
        if dead:
            await self._dead_letter(u, key, dead)
        try:
            if good:
                await self._process(u, key, processor, good, skipped)
            elif skipped:
                await self._commit(u, key, Effects(), skipped)
        except (RedisError, RedisClusterException, OSError):
            self.failures.interrupt([*(e.id for e in good), *skipped])
            raise
        self.metrics.batch_duration.labels(*labels).observe(time.perf_counter() - started)

    async def _process(
        self, u: str, key: str, processor: Processor, good: list[Entry], skipped: Sequence[str] = ()
    ) -> None:
        for attempt in range(CONFLICT_RETRIES + 1):
            await read_side(self.redis, processor)
            try:
                effects = processor.process(good)
            except Exception as exc:  # the step failed: isolate the poison entries, commit the rest
                self.metrics.step_failures.labels(self.group, key).inc()
                await self._isolate(u, key, processor, good, skipped, _describe(exc))
                return
            try:
                await self._commit(u, key, effects, [e.id for e in good] + list(skipped))
            except ConflictError:
                await self._restore(u, processor)
                if attempt == CONFLICT_RETRIES:
                    raise  # kept changing under the step: the loop pauses, the entries stay pending
                continue
            except EffectError as exc:  # the effects failed for good and nothing was acked
                log.warning("%s: the commit of %d entries of %s failed: %s", self.group, len(good), key, exc)
                self.metrics.commit_failures.labels(self.group, key).inc()
                await self._restore(u, processor)
                await self._isolate(u, key, processor, good, skipped, f"commit failed: {exc}")
                return
            except (LeaseLostError, ResponseError):
                await self._restore(u, processor)
                raise
            except BaseException:
                # Connection dropped mid-commit: the entries stay pending; in-memory state is reloaded.
                with contextlib.suppress(Exception):
                    await self._restore(u, processor)
                raise
            await self._trim(u, processor, effects)
            return

    async def _isolate(
        self, u: str, key: str, processor: Processor, good: list[Entry], skipped: Sequence[str], error: str
    ) -> None:
        """A batch failed (its step raised, or its effects did): split it until the failing entries
        are alone. They stay pending with their error (retried, then dead-lettered) and the others commit."""
        if skipped:
            await self._commit(u, key, Effects(), list(skipped))
        if len(good) == 1:
            log.warning("%s: entry %s of %s failed: %s", self.group, good[0].id, key, error)
            await self.failures.record(key, good[0].id, error)
            await self._restore(u, processor)
            return
        # Bisect, in order: one poison entry in a batch of n costs about 2·log2(n) commits, not n,
        # so a batch that holds one is through quickly (and rarely caught by a crash half-way).
        await self._restore(u, processor)
        half = len(good) // 2
        await self._process(u, key, processor, good[:half])
        await self._process(u, key, processor, good[half:])

    async def flush(self, u: str, key: str, processor: Processor) -> bool:
        """Commit what the processor held back, without an input to ack; True if there was any."""
        await read_side(self.redis, processor)
        effects = processor.flush()
        if effects is None or not (effects.outputs or effects.commands or effects.scripts):
            return False
        try:
            await self._commit(u, key, effects, [])
        except BaseException:
            with contextlib.suppress(Exception):
                await self._restore(u, processor)
            raise
        await self._trim(u, processor, effects)
        return True

    async def _trim(self, u: str, processor: Processor, effects: Effects) -> None:
        """Keep the streams this agent writes within their bounds (topology/retention.py)."""
        streams_written = [(spec.key(u), spec) for spec in self.spec.writes]
        await self.trimmer.after_commit(effects.outputs, streams_written, processor.retention_floor)

    async def flush_all(self, underlyings: Sequence[str]) -> int:
        """One flush per underlying, for the end of a replay (taking leases as needed)."""
        n = 0
        for u in underlyings:
            if self.spec.stateful and not await self.leases.acquire(u):
                raise LeaseLostError(streams.lease_key(u, self.spec.name))
            processor = self.spec.make(await self._adopt_model_settings(), u)
            await self._restore(u, processor)
            n += await self.flush(u, self.spec.reads.key(u), processor)
            await self.leases.release(u)
        return n

    async def _commit(self, u: str, key: str, effects: Effects, ack_ids: list[str]) -> None:
        """Effects, then the XACK, in one script (topology/commit.py); raises LeaseLostError,
        ConflictError or EffectError, and leaves the entries pending whenever it raises."""
        lease = token = None
        if self.spec.stateful:
            lease = streams.lease_key(u, self.spec.name)
            token = self.leases.value(u)
            if token is None:
                raise LeaseLostError(lease)
        # Errors of acked entries are cleared with the XACK (also those another process recorded).
        call = encode(key, self.group, effects, ack_ids, lease=lease, token=token, clear_errors=bool(ack_ids))
        results = await self.committer(call)
        self._committed(key, effects, ack_ids, results)

    def _committed(self, key: str, effects: Effects, ack_ids: list[str], results: list[Any]) -> None:
        self.failures.settled(ack_ids)
        counts = [*effects.counts, Count("entries_acked", (self.group, key), len(ack_ids))]
        counts += [Count("entries_out", (self.group, out.key)) for out in effects.outputs]
        counts += [Count("events_out", (self.group, key), effects.events_out)] if effects.events_out else []
        if effects.on_commit is not None:
            counts += effects.on_commit({call.name: r for call, r in zip(effects.scripts, results, strict=False)}) or ()
        self.metrics.apply(counts)
        self.processed += len(ack_ids)

    async def _dead_letter(self, u: str, key: str, dead: list[tuple[str, dict[bytes, bytes], int]]) -> None:
        """Dead letters: move entries to ``<stream>.dlq`` with their error, and ack them, in
        one commit."""
        outputs = await self.failures.dead_letters(key, dead)
        ids = [d[0] for d in dead]
        lease = token = None
        if self.spec.stateful:  # fenced like every commit: a replica that lost the lease moves nothing
            lease, token = streams.lease_key(u, self.spec.name), self.leases.value(u) or "-"
        call = encode(key, self.group, Effects(outputs=outputs), ids, lease=lease, token=token, clear_errors=True)
        await self.committer(call)
        self.failures.settled(ids)
        self.processed += len(dead)
        self.metrics.dead_letters.labels(self.group, key).inc(len(dead))
        await self.trimmer.after_write(streams.DLQ, streams.dlq_key(key))

    # ------------------------------------------------------------------ liveness and leases


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Collect an abandoned task's outcome so it is never reported as unretrieved."""
    if not task.cancelled():
        task.exception()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
