"""Redis connections, the same for every agent and source, and reading their replies.

One URL for a single server and for a cluster: ``create_redis`` asks the server it names whether
cluster mode is on (``INFO cluster``) and, if so, returns a cluster client that discovers the other
nodes from it. ``rediss://`` (TLS) and ``user:password@`` work for both.
"""

from __future__ import annotations

import functools
import logging
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
import redis.cluster
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError

log = logging.getLogger(__name__)

# Commands whose keys redis-py would otherwise look up on a server (COMMAND GETKEYS, "movable
# keys"): outside its retry loop, on one fixed node, so a dead node stalls every read for a failover.
_STREAMS_KEYWORD = {"XREADGROUP": 3, "XREAD": 0}  # after GROUP group consumer  # where to start looking for STREAMS


class Cluster(RedisCluster):  # type: ignore[misc]
    """redis-py's asyncio cluster client, finding the keys of XREAD/XREADGROUP locally."""

    async def _determine_slot(self, command: Any, *args: Any) -> int:
        name = str(command).upper()
        if name in _STREAMS_KEYWORD:
            words = [a.decode() if isinstance(a, bytes) else str(a) for a in args]
            at = next(i for i in range(_STREAMS_KEYWORD[name], len(words)) if words[i].upper() == "STREAMS")
            keys = words[at + 1 :][: (len(words) - at - 1) // 2]
            slots = {self.keyslot(k) for k in keys}
            if len(slots) != 1:
                raise RedisClusterException(f"{name} keys must share one slot: {keys}")
            return int(slots.pop())
        slot: int = await super()._determine_slot(command, *args)
        return slot


@functools.lru_cache(maxsize=32)
def cluster_seeds(url: str) -> tuple[tuple[str, int], ...] | None:
    """The nodes of the cluster the server at ``url`` belongs to, or None when it is a single server
    (or cannot be asked now: the single-node client then reports the connection error on first use,
    as it always did). The seeds let clients made later in this process find the cluster even when
    the node the URL names has died since."""
    client = redis.Redis.from_url(url, socket_connect_timeout=5.0, socket_timeout=5.0, driver_info=None)
    try:
        if not client.info("cluster").get("cluster_enabled"):
            return None
        lines = client.execute_command("CLUSTER", "NODES")
    except RedisError:
        cluster_seeds.cache_clear()  # ask again next time
        return None
    finally:
        client.close()
    text = lines.decode() if isinstance(lines, bytes) else str(lines)
    seeds = []
    for line in text.splitlines():
        addr = line.split()[1].split("@", 1)[0]  # ip:port@bus-port[,hostname]
        host, _, port = addr.rpartition(":")
        if host and port.isdigit() and "fail" not in line.split()[2]:
            seeds.append((host, int(port)))
    return tuple(seeds)


def create_redis(url: str, block_ms: int = 0, *, wait_s: float | None = None, **kwargs: Any) -> aioredis.Redis:
    """A client whose socket timeout always exceeds the longest BLOCK it will issue: for one server,
    or for the whole cluster when ``url`` names any node of one. With ``wait_s`` (one server), a
    command finding all ``max_connections`` busy waits up to that long for one (then raises
    ConnectionError) instead of failing at once: a bounded, queued budget."""
    # Generous: a CPU-bound step can hold the event loop for seconds, and a reply that arrived in
    # the meantime must not count as a timeout.
    timeout_s = block_ms / 1000 + 30.0
    common: dict[str, Any] = {
        "driver_info": None,  # no CLIENT SETINFO: one command less per connection, and none to allow
        "decode_responses": False,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30,
    }
    seeds = cluster_seeds(url)
    if seeds is not None:
        if urlsplit(url).path not in ("", "/", "/0"):
            raise ValueError(f"{url}: a Redis Cluster has only database 0")
        nodes = [ClusterNode(host, port) for host, port in seeds]
        client: Any = Cluster.from_url(url, startup_nodes=nodes, **common, **kwargs)
        return client
    if wait_s is not None:
        pool = aioredis.BlockingConnectionPool.from_url(url, timeout=wait_s, **common, **kwargs)
        blocking = aioredis.Redis(connection_pool=pool)
        blocking.auto_close_connection_pool = True  # aclose() closes the pool it was given
        return blocking
    return aioredis.Redis.from_url(url, **common, **kwargs)


def create_blocking_redis(url: str, socket_timeout: float = 10.0) -> redis.Redis:
    """A blocking client for one server or a whole cluster, like ``create_redis`` (for threads and
    short commands: the keeper, `marketswarm check`)."""
    seeds = cluster_seeds(url)
    if seeds is not None:
        nodes = [redis.cluster.ClusterNode(host, port) for host, port in seeds]
        client: Any = redis.RedisCluster.from_url(
            url, startup_nodes=nodes, socket_timeout=socket_timeout, socket_connect_timeout=5.0, driver_info=None
        )
        return client
    return redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=5.0, driver_info=None)


def text(value: bytes | str | int) -> str:
    """A Redis reply as text (replies are bytes: clients here do not decode responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def error_code(exc: ResponseError) -> str:
    """The code of a Redis error reply: its first word (NOGROUP, BUSYGROUP, WRONGTYPE, MOVED...)."""
    return str(exc).split(" ", 1)[0]


async def ensure_group(redis: aioredis.Redis, key: str, group: str) -> None:
    """XGROUP CREATE key group 0 MKSTREAM, ignoring only BUSYGROUP.

    A new group starts at the beginning of the retained stream, not at ``$``: an agent that starts
    after its source (or a strategy added later) must still see the epoch's chain snapshot and
    everything after it, or it could never build its state."""
    try:
        await redis.xgroup_create(key, group, id="0", mkstream=True)
    except ResponseError as exc:
        if error_code(exc) != "BUSYGROUP":
            raise


def find_group(groups: list[dict[Any, Any]], name: str) -> dict[Any, Any] | None:
    """The row of group ``name`` in an XINFO GROUPS reply, or None."""
    return next((g for g in groups if text(g["name"]) == name), None)
