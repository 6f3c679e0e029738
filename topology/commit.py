"""The commit: a batch's effects and its XACK in one server-side script, on keys of one slot.

A step's ``Effects`` become one call of topology/commit.lua (EVALSHA, loaded on first use and again
on a node that lacks it): the lease check first (fencing), then the effects in order, then the XACK
last. Any error stops the script before the XACK, so an effect that failed never acknowledges its
batch: the entries stay pending and the runtime retries or dead-letters them. A server refuses the
script before it runs when it is out of memory (the script declares itself with a shebang).

The script may stop half-way (a WRONGTYPE in the middle of the effects): what ran before stays, as it
would after a crash of any writer. The effects are written to be redone: state writes are idempotent
or compare newness, an XADD with an explicit id that is already in its stream counts as done.

Every key is declared (KEYS) and every key carries the same hash tag, so on Redis Cluster the call is
one round trip to the node that owns the underlying's slot; ``encode`` refuses keys of two tags.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from marketswarm.topology import streams
from marketswarm.topology.agent import Effects, ScriptCall
from marketswarm.topology.connections import error_code

log = logging.getLogger(__name__)

TEMPLATE = resources.files("marketswarm.topology").joinpath("commit.lua").read_text()
STEPS_MARK = "-- @@STEPS@@"
# A command with more arguments than this is split (HSET and RPUSH only): Lua's unpack has a limit.
MAX_COMMAND_ARGS = 4000
SPLITTABLE = {"HSET": 2, "RPUSH": 1}  # command -> arguments per item

# Error replies of the script itself (the prefix is the reply's first word).
LEASE_LOST = "MSLEASE"
CONFLICT = "MSCONFLICT"
# Replies that say "not now" rather than "not ever": the batch stays pending and is read and committed
# again after a pause, without counting as a failure of its entries.
TRANSIENT = (
    "OOM",
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "NOREPLICAS",
    "MOVED",
    "ASK",
    "NOSCRIPT",
    "UNBLOCKED",
)


class LeaseLostError(RuntimeError):
    """A stateful agent commits after another replica took its lease: it stops writing."""


class ConflictError(RuntimeError):
    """The step assumed state that changed under it (another replica moved it): restore, step again."""


class EffectError(RuntimeError):
    """An effect failed for good (WRONGTYPE, a script error): its entries stay pending and fail."""


def classify(exc: ResponseError) -> Exception:
    """The runtime's reading of an error reply of the commit."""
    text, word = str(exc), error_code(exc)
    if word == LEASE_LOST:
        return LeaseLostError(text)
    if word == CONFLICT:
        return ConflictError(text)
    if word in TRANSIENT:
        return cast(Exception, exc)
    return EffectError(text)


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the first non-empty ``{...}``, else the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


@dataclass(frozen=True)
class Call:
    """One encoded commit: the script's KEYS and ARGV."""

    keys: list[str]
    args: list[Any]
    steps: tuple[ScriptCall, ...]


def encode(
    stream: str,
    group: str,
    effects: Effects,
    ack_ids: Sequence[str],
    *,
    lease: str | None = None,
    token: str | None = None,
    clear_errors: bool = False,
) -> Call:
    """KEYS and ARGV of commit.lua for a batch's effects (see the script for the layout)."""
    keys = [stream, streams.errors_key(stream), lease if lease is not None else stream]
    index: dict[str, int] = {}

    def k(key: str) -> int:
        if key not in index:
            keys.append(key)
            index[key] = len(keys)
        return index[key]

    ops: list[Any] = []
    for cmd in effects.commands:
        name, key, *rest = cmd
        per = SPLITTABLE.get(str(name).upper())
        chunk = MAX_COMMAND_ARGS - MAX_COMMAND_ARGS % per if per else len(rest)
        if not per and len(rest) > MAX_COMMAND_ARGS:
            raise ValueError(f"{name} with {len(rest)} arguments cannot be committed (at most {MAX_COMMAND_ARGS})")
        for a in range(0, max(1, len(rest)), max(1, chunk)):
            part = rest[a : a + chunk]
            ops += ["K", name, k(key), len(part), *part]
    for script in effects.scripts:
        ops += ["S", script.name, len(script.keys), *(k(key) for key in script.keys), len(script.args), *script.args]
    for out in effects.outputs:
        fields = [x for kv in out.fields.items() for x in kv]
        ops += ["X", k(out.key), out.id, len(fields), *fields]
    tags = {hash_tag(key) for key in keys}
    if len(tags) > 1:
        raise ValueError(f"a commit must stay in one slot; its keys carry the tags {sorted(tags)}")
    args: list[Any] = [group, token or "", "1" if clear_errors else "0", len(ack_ids), *ack_ids, *ops]
    return Call(keys, args, tuple(effects.scripts))


def compose(steps: Mapping[str, str]) -> str:
    """commit.lua with the agent's step functions spliced in (sorted by name: one body, one SHA)."""
    funcs = [
        f"steps[{name!r}] = function(K, first, last)\n{body.rstrip()}\nend" for name, body in sorted(steps.items())
    ]
    return TEMPLATE.replace(STEPS_MARK, "\n".join(funcs))


@dataclass(frozen=True)
class Replication:
    """Synchronous replication of a writer's writes: WAIT for ``replicas`` after each, on the same
    connection (WAIT waits for that connection's own writes), at most ``timeout_ms``. A WAIT that
    times out cannot undo the write: it is logged and reported to ``on_lagging`` (a metric)."""

    replicas: int
    timeout_ms: int = 1000
    on_lagging: Callable[[int], None] | None = None

    def queue_wait(self, pipe: Any, redis: Any, key: str) -> None:
        """Queue WAIT in ``pipe`` after writes to ``key``: on the node that owns the key's slot in a
        cluster, on the pipeline's one connection on a single server."""
        target = {"target_nodes": redis.get_node_from_key(key)} if isinstance(redis, RedisCluster) else {}
        pipe.execute_command("WAIT", self.replicas, self.timeout_ms, **target)

    def check(self, acked: Any) -> None:
        if isinstance(acked, BaseException):
            raise acked
        if int(acked) < self.replicas:
            log.warning("a write was acknowledged by %s of %d replicas within %d ms", acked, self.replicas,
                        self.timeout_ms)  # fmt: skip
            if self.on_lagging is not None:
                self.on_lagging(int(acked))


class Committer:
    """Runs commits on one client; keeps one registered script per set of step functions. With a
    ``replication``, each commit is followed by its WAIT, in the same round trip."""

    def __init__(self, redis: Any, replication: Replication | None = None) -> None:
        self.redis = redis
        self.replication = replication if replication is not None and replication.replicas > 0 else None
        self._scripts: dict[frozenset[tuple[str, str]], Any] = {}

    def script(self, steps: Sequence[ScriptCall]) -> Any:
        bodies = frozenset((s.name, s.body) for s in steps)
        script = self._scripts.get(bodies)
        if script is None:
            script = self.redis.register_script(compose(dict(bodies)))
            self._scripts[bodies] = script
        return script

    async def __call__(self, call: Call) -> list[Any]:
        """Run a commit; raises what ``classify`` makes of an error reply."""
        script = self.script(call.steps)
        try:
            if self.replication is None:
                return list(await script(keys=call.keys, args=call.args))
            return await self._replicated(script, call, self.replication)
        except ResponseError as exc:
            raise classify(exc) from exc

    async def _replicated(self, script: Any, call: Call, replication: Replication) -> list[Any]:
        for attempt in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                # As a raw command: redis-py's cluster pipeline refuses its evalsha() helper.
                pipe.execute_command("EVALSHA", script.sha, len(call.keys), *call.keys, *call.args)
                replication.queue_wait(pipe, self.redis, call.keys[0])
                result, acked = await pipe.execute(raise_on_error=False)
            if isinstance(result, NoScriptError) and attempt == 0:
                await self.redis.script_load(script.script)  # a new or promoted node: load, once
                continue
            if isinstance(result, BaseException):
                raise result
            replication.check(acked)
            return list(result)
        raise AssertionError("unreachable")
