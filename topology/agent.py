"""What an agent is, as data: its spec, the entries it reads, the effects its step returns.

A step is ``Processor.process``: a batch of typed entries in, ``Effects`` out, no I/O. The runtime
(topology/runtime.py) commits the effects and the XACK of the batch in one server-side script
(topology/commit.py), the XACK last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple, Protocol

import redis.asyncio as aioredis

from marketswarm.topology import streams
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings


class Delivery(Enum):
    """What happens to an entry after its step; the runtime's acknowledgement policy."""

    COMMIT = "commit"  # effects, then XACK, in one script (topology/commit.py); an effect that fails
    # stops it before the XACK
    RETRY = "retry"  # no ack: stays pending, reclaimed after min_idle_ms, delivery count grows
    DEAD_LETTER = "dead_letter"  # delivered more than max_deliveries times: to <stream>.dlq, acked


class Entry(NamedTuple):
    """A decoded stream entry: its id and its typed value."""

    id: str
    value: Any


@dataclass(frozen=True)
class Output:
    """An entry to append to an output stream (trimmed by the stream's retention)."""

    spec: streams.StreamSpec
    key: str
    fields: Mapping[str, Any]
    id: str = "*"  # an explicit id, e.g. "<version>-0" on the diffs streams


@dataclass(frozen=True)
class ScriptCall:
    """A step function of the agent, run inside the commit script (topology/commit.lua).

    ``body`` is the body of a Lua function ``(K, first, last)``: ``K`` its keys (every key it touches,
    declared here), ``ARGV[first..last]`` its arguments. It may return ``{err = 'MSCONFLICT ...'}``
    before writing anything when the state it was built for changed: the runtime restores the
    processor and steps the batch again."""

    name: str
    body: str
    keys: Sequence[str]
    args: Sequence[Any]


@dataclass
class Effects:
    """What a step wants committed together with the XACK of its batch."""

    outputs: list[Output] = field(default_factory=list)
    commands: list[tuple[Any, ...]] = field(default_factory=list)  # raw commands, e.g. ("HSET", k, f, v)
    scripts: list[ScriptCall] = field(default_factory=list)
    # Called with the results of ``scripts``, in order, once the commit succeeded (metrics, state).
    on_commit: Callable[[list[Any]], None] | None = None
    events_out: int = 0  # events carried by the outputs, for metrics


class Processor(Protocol):
    """An agent's logic. ``process`` is the step: no I/O, deterministic given its inputs and state.

    A processor that coalesces may also define ``flush() -> Effects | None``, which the runtime calls
    at the end of a replay and, with ``idle_flush``, when input went quiet; and ``holding() -> bool``
    with ``max_hold_s``: the runtime flushes work held that long (wall time) even while input flows,
    so a coalescing agent adds at most ``max_hold_s`` of latency."""

    async def restore(self, redis: aioredis.Redis) -> None:
        """Load in-memory state from Redis: at start, on taking a lease, and after a failed commit."""

    def process(self, batch: Sequence[Entry]) -> Effects:
        """Compute the effects of a batch."""
        ...


ProcessorFactory = Callable[[Settings, str, Metrics], Processor]  # (settings, underlying, metrics)


@dataclass(frozen=True)
class AgentSpec:
    """An agent kind: the unit that `marketswarm agent NAME` runs and Kubernetes scales."""

    name: str  # also the consumer-group name
    reads: streams.StreamSpec
    writes: tuple[streams.StreamSpec, ...]
    make: ProcessorFactory
    stateful: bool = False  # one owner per underlying, through a lease
    doc: str = ""
    # Entries per read when each is heavy (a staged batch of thousands of tiles): a read must stay
    # short next to the lease TTL, since the step holds the event loop while it runs.
    max_batch: int | None = None
    # A cheap test of an entry's raw fields: entries it rejects are acknowledged without being
    # decoded or stepped (an agent that needs only some kinds of changes skips the rest).
    accepts: Callable[[Mapping[bytes, bytes]], bool] | None = None
