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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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


class Keeper:
    """Writes ``heartbeat_key`` every ``interval_s`` and renews the leases it holds, while the agent's
    event loop turned within ``stall_s`` (see ``turned``)."""

    def __init__(
        self, client: redis.Redis, name: str, heartbeat_key: str, heartbeat_ttl_s: int, lease_ttl_ms: int
    ) -> None:
        self.client = client
        self.name = name
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
                self.client.set(self.heartbeat_key, str(time.time()), ex=self.heartbeat_ttl_s)
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


RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Leases:
    """The per-underlying leases of one stateful agent. A lease's value, ``<consumer>:<token>``, is the
    fencing token every commit checks inside its script; the keeper renews the leases held."""

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
        """Hold the lease on ``u`` (kept if still held); False while another consumer holds it."""
        lease = self.key(u)
        if u in self.values and self.keeper.holds(lease):
            return True
        self.values.pop(u, None)
        token = await self.redis.incr(streams.lease_token_key(u, self.agent))
        value = f"{self.consumer}:{token}"
        if await self.redis.set(lease, value, nx=True, px=self.ttl_ms):
            self.values[u] = value
            self.keeper.hold(lease, value)
            log.info("%s: took the lease on %s (token %s)", self.agent, u, token)
            return True
        return False

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
