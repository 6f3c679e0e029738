"""Heartbeat and lease renewal from a thread, so a long CPU-bound step can never starve them, and
only while the agent makes progress, so a wedged one hands its work over.

An agent's event loop is busy while a step runs (a full recompute, a large staged batch); a renewal
task on that loop would wait for it, and a lease could expire under an agent that is working. The
keeper renews on its own thread with its own (blocking) connection: Python switches threads every few
milliseconds even while another thread computes, and numpy releases the lock in its kernels.

A thread alone would also keep the leases of an agent whose step never returns (a deadlock, a
blocking call without a timeout), so no standby would ever take over. The event loop therefore
marks each turn (``turned``, from a task that runs every ``interval_s / 2``), and the keeper renews
and beats only while the loop turned within ``stall_s``, half the lease: a loop blocked longer stops
both, the lease lapses, a standby takes it with a new fencing token, and the blocked replica's next
commit, when it wakes, fails its script's lease check (LeaseLostError) and writes nothing.

The event loop still takes and gives up leases; the keeper only keeps them, and drops one it finds
lost (someone else holds it). ``Leases`` takes and gives up the leases of one agent, on the event loop.

Handover in seconds. Each run of an agent is an *incarnation* (``<pid>.<random>``), named in its
heartbeat's value and in every lease value it takes (``<consumer>:<incarnation>:<token>``). A lease
whose holder is known dead is taken at once, with a new fencing token, instead of after its TTL:

* the holder is an earlier incarnation of this very consumer: a consumer name is one process per
  agent (the pod name; the host name under ``marketswarm run``, one process per agent kind), so the
  process that restarts under that name is the proof that the earlier one is gone (the supervisor
  reaped it, or Kubernetes restarted the container);
* the holder's consumer has no heartbeat any more, or beats with another incarnation.

The take is a compare-and-set on the holder's exact value, so two replicas racing for a dead lease
cannot both win, and fencing stays exact whoever is judged dead: the holder's next commit finds a value
that is not its own and writes nothing. Two live processes sharing one consumer name would take the
lease from each other on every turn (writing nothing twice, but slowly); the keeper sees the other
incarnation in the heartbeat it overwrites and says so, every time, in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
import time
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.cluster
from redis.asyncio.cluster import RedisCluster as AsyncCluster
from redis.exceptions import RedisError

from marketswarm.topology import streams

log = logging.getLogger(__name__)

RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Connection settings carried over from the agent's client (the rest are asyncio-specific).
_SHARED_KWARGS = ("host", "port", "db", "username", "password", "path", "socket_connect_timeout", "ssl_ca_certs")


def blocking_twin(client: aioredis.Redis) -> redis.Redis:
    """A blocking client for the same server (or cluster) as an asyncio one."""
    if isinstance(client, AsyncCluster):
        kw = {k: v for k, v in client.connection_kwargs.items() if k in _SHARED_KWARGS and k not in ("host", "port")}
        nodes = [redis.cluster.ClusterNode(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()]
        ssl = client.connection_kwargs["connection_class"].__name__ == "SSLConnection"
        twin: Any = redis.RedisCluster(startup_nodes=nodes, socket_timeout=10, ssl=ssl, driver_info=None, **kw)
        return twin
    pool = client.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k in _SHARED_KWARGS}
    if "path" in kwargs:
        return redis.Redis(unix_socket_path=kwargs.pop("path"), socket_timeout=10, driver_info=None, **kwargs)
    ssl = pool.connection_class.__name__ == "SSLConnection"
    return redis.Redis(socket_timeout=10, ssl=ssl, driver_info=None, **kwargs)


def new_incarnation() -> str:
    """This run of an agent: its process id and a random part (a pid is reused across restarts)."""
    return f"{os.getpid()}.{secrets.token_hex(4)}"


def lease_value(consumer: str, incarnation: str, token: int) -> str:
    return f"{consumer}:{incarnation}:{token}"


def lease_holder(value: str) -> tuple[str, str] | None:
    """(consumer, incarnation) of a lease value; None for a value that names no incarnation."""
    parts = value.rsplit(":", 2)
    return (parts[0], parts[1]) if len(parts) == 3 and parts[0] and parts[1] else None


def beat_incarnation(value: bytes | str | None) -> str | None:
    """The incarnation a heartbeat's value names (``<incarnation> <unix time>``)."""
    if value is None:
        return None
    raw = value.decode() if isinstance(value, bytes) else value
    return raw.partition(" ")[0] or None


class Keeper:
    """Writes ``heartbeat_key`` every ``interval_s`` and renews the leases it holds, while the agent's
    event loop turned within ``stall_s`` (see ``turned``)."""

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        heartbeat_key: str,
        heartbeat_ttl_s: int,
        lease_ttl_ms: int,
        incarnation: str | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.incarnation = incarnation or new_incarnation()
        self.heartbeat_key = heartbeat_key
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.lease_ttl_ms = lease_ttl_ms
        # Written this often relative to the shorter TTL, so two renewals can be missed before "dead".
        self.interval_s = min(heartbeat_ttl_s, lease_ttl_ms / 1000) / 3
        # A loop that has not turned for this long is wedged, not busy: stop renewing (module doc).
        self.stall_s = lease_ttl_ms / 2000
        self._turned = time.monotonic()
        self._leases: dict[str, str] = {}  # lease key -> our value
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0
        self.beats = 0

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self.turned()  # the loop is turning now; ``follow`` keeps saying so
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"keeper:{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 5)
        self.client.close()

    def hold(self, lease_key: str, value: str) -> None:
        with self._lock:
            self._leases[lease_key] = value

    def drop(self, lease_key: str) -> None:
        with self._lock:
            self._leases.pop(lease_key, None)

    def holds(self, lease_key: str) -> bool:
        with self._lock:
            return lease_key in self._leases

    def turned(self) -> None:
        """Called from the agent's event loop at every turn of its progress task."""
        self._turned = time.monotonic()

    def stalled(self) -> bool:
        """True while the event loop has not turned within ``stall_s``."""
        return time.monotonic() - self._turned > self.stall_s

    async def follow(self) -> None:
        """The event loop's side: mark a turn every ``interval_s / 2`` until cancelled."""
        while True:
            self.turned()
            await asyncio.sleep(self.interval_s / 2)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            if self.stalled():
                log.error("%s: event loop stalled for %.1f s; leases left to lapse", self.name, started - self._turned)
                self._stop.wait(self.interval_s)
                continue
            try:
                self._beat()
                with self._lock:
                    held = list(self._leases.items())
                for key, value in held:
                    if self.client.eval(RENEW_LEASE, 1, key, value, self.lease_ttl_ms):
                        self.renewals += 1
                    else:
                        log.warning("%s: lease %s expired before renewal", self.name, key)
                        self.drop(key)
            except (RedisError, OSError):
                log.warning("%s: heartbeat or lease renewal failed", self.name, exc_info=True)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def first_beat(self) -> None:
        """The first heartbeat, before any lease is taken (blocking: call it from a worker thread), so a
        standby never finds this incarnation's lease without its heartbeat. A failure is logged; the
        keeper's thread beats again."""
        try:
            self._beat()
        except (RedisError, OSError) as exc:
            log.warning("%s: first heartbeat failed (%s); the keeper tries again", self.name, exc)

    def _beat(self) -> None:
        """Write the heartbeat; log when it replaced another live incarnation's (a duplicate consumer)."""
        before = self.client.set(
            self.heartbeat_key, f"{self.incarnation} {time.time():.3f}", ex=self.heartbeat_ttl_s, get=True
        )
        other = beat_incarnation(before)
        if self.beats and other not in (None, self.incarnation):
            log.error(
                "%s: another process (incarnation %s) beats as this consumer too: consumer names must be "
                "unique per agent (MARKETSWARM_CONSUMER); the two keep taking each other's leases",
                self.name, other,
            )  # fmt: skip
        self.beats += 1


RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# Compare-and-set: the lease still holds exactly the dead holder's value (no one else took it meanwhile).
TAKE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false
"""


class Leases:
    """The per-underlying leases of one stateful agent. A lease's value, ``<consumer>:<incarnation>:
    <token>``, is the fencing token every commit checks inside its script; the keeper renews the leases
    held. A lease whose holder is known dead is taken at once (module doc)."""

    def __init__(self, redis: aioredis.Redis, keeper: Keeper, agent: str, consumer: str, ttl_ms: int) -> None:
        self.redis = redis
        self.keeper = keeper
        self.agent = agent
        self.consumer = consumer
        self.ttl_ms = ttl_ms
        self.values: dict[str, str] = {}  # underlying -> our lease value

    def key(self, u: str) -> str:
        return streams.lease_key(u, self.agent)

    def value(self, u: str) -> str | None:
        """The value of the lease on ``u`` while this agent holds it."""
        return self.values.get(u)

    async def acquire(self, u: str) -> bool:
        """Hold the lease on ``u`` (kept if still held); False while a live consumer holds it."""
        lease = self.key(u)
        if u in self.values and self.keeper.holds(lease):
            return True
        self.values.pop(u, None)
        holder = await self.redis.get(lease)
        if holder is not None and not await self._dead(holder.decode()):
            return False
        token = await self.redis.incr(streams.lease_token_key(u, self.agent))
        value = lease_value(self.consumer, self.keeper.incarnation, token)
        if holder is None:
            taken = await self.redis.set(lease, value, nx=True, px=self.ttl_ms)
        else:
            taken = await self.redis.eval(TAKE_LEASE, 1, lease, holder, value, self.ttl_ms)
        if not taken:
            return False
        self.values[u] = value
        self.keeper.hold(lease, value)
        if holder is None:
            log.info("%s: took the lease on %s (token %s)", self.agent, u, token)
        else:
            dead = holder.decode()
            log.warning("%s: took the lease on %s (token %s) from %s, known dead", self.agent, u, token, dead)
        return True

    async def _dead(self, holder: str) -> bool:
        """The lease's holder is known dead: an earlier incarnation of this consumer, or a consumer whose
        heartbeat is gone or names another incarnation. A value of unknown shape waits for its TTL."""
        named = lease_holder(holder)
        if named is None:
            return False
        consumer, incarnation = named
        if consumer == self.consumer:
            return True  # this consumer's earlier run, or (kept by no keeper) this run's own lapsed value
        beat = await self.redis.get(streams.heartbeat_key(self.agent, consumer))
        return beat_incarnation(beat) != incarnation

    def lost(self, u: str) -> None:
        """Forget the lease on ``u``: a commit found it taken."""
        self.values.pop(u, None)
        self.keeper.drop(self.key(u))

    async def release(self, u: str) -> None:
        """Give the lease on ``u`` up, if this agent still holds it (a standby takes over at once)."""
        value = self.values.pop(u, None)
        self.keeper.drop(self.key(u))
        if value is None:
            return
        with contextlib.suppress(RedisError, OSError):
            await self.redis.eval(RELEASE_LEASE, 1, self.key(u), value)
