"""What an agent is, as data: its spec, the entries it reads, the effects its step returns.

A step is ``Processor.process``: a batch of typed entries in, ``Effects`` out, no I/O. The runtime
(topology/runtime.py) commits the effects and the XACK of the batch in one server-side script
(topology/commit.py), the XACK last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from marketswarm.topology import streams
from marketswarm.topology.settings import Settings


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


class Count(NamedTuple):
    """A metric sample a step asks for; the runtime applies it once the commit succeeded. ``metric``
    names an attribute of topology/metrics.py's ``Metrics``, ``labels`` its label values. ``how``:
    ``inc`` adds ``value`` (a counter), ``set`` sets it (a gauge), ``observe`` observes it (a
    histogram), ``since`` observes the seconds from ``value`` (epoch ns) to the commit (a latency)."""

    metric: str
    labels: tuple[str, ...]
    value: float = 1.0
    how: Literal["inc", "set", "observe", "since"] = "inc"


@dataclass
class Effects:
    """What a step wants committed together with the XACK of its batch."""

    outputs: list[Output] = field(default_factory=list)
    commands: list[tuple[Any, ...]] = field(default_factory=list)  # raw commands, e.g. ("HSET", k, f, v)
    scripts: list[ScriptCall] = field(default_factory=list)
    counts: list[Count] = field(default_factory=list)  # metric samples, applied once committed
    # Called once the commit succeeded with each script's result by its name: the step's state moves
    # on; it may return counts that depend on those results (what a script admitted).
    on_commit: Callable[[Mapping[str, Any]], Sequence[Count] | None] | None = None
    events_out: int = 0  # events carried by the outputs, for metrics


@dataclass(frozen=True)
class Resume:
    """Part of a restore: re-apply the entries of ``stream`` after ``after``: those this agent's group
    acknowledged (``acked``: its input, whose effects were committed then), or all of them (an
    output it replays, such as the diffs after its last checkpoint)."""

    stream: streams.StreamSpec
    after: str
    acked: bool = True


class Processor:
    """An agent's logic, and every hook the runtime calls on it. Subclasses override what they use.

    ``process`` is the step: a batch of typed entries in, ``Effects`` out; no I/O, deterministic
    given its inputs and state. State comes back the same way, through the runtime (topology/
    restore.py), at start, on taking a lease and after a failed commit: the runtime runs the commands
    of ``state_reads`` and hands their replies to ``load``, which rebuilds the state and names what
    to re-apply (``Resume``); the runtime reads those entries and hands them to ``reapply``, which may
    name more. A processor that coalesces overrides ``flush`` (called at the end of a replay and, with
    ``idle_flush``, when input went quiet) and ``holding`` with ``max_hold_s``: work held that long
    (wall time) is flushed even while input flows, so coalescing adds at most ``max_hold_s``."""

    max_hold_s: float = 0.0

    def state_reads(self) -> Sequence[tuple[Any, ...]]:
        """Redis commands whose replies ``load`` takes (read together, in one round trip)."""
        return ()

    def load(self, replies: Sequence[Any]) -> Sequence[Resume]:
        """Replace the whole in-memory state by the one ``replies`` hold; what to re-apply next."""
        return ()

    def reapply(self, stream: streams.StreamSpec, entries: Sequence[Entry]) -> Sequence[Resume]:
        """Re-apply entries whose effects were committed (state only); what to re-apply next."""
        return ()

    def side_reads(self) -> Sequence[tuple[Any, ...]]:
        """Redis commands the runtime runs before each step (a side input: another model looked up,
        as it is at that moment); their replies go to ``take_side``."""
        return ()

    def take_side(self, replies: Sequence[Any]) -> None:
        """The replies of ``side_reads``, before the step."""

    def process(self, batch: Sequence[Entry]) -> Effects:
        """Compute the effects of a batch."""
        raise NotImplementedError

    def flush(self) -> Effects | None:
        """Effects of work held back (coalesced), or None."""
        return None

    def holding(self) -> bool:
        """Work is held back that ``flush`` would emit."""
        return False

    def retention_floor(self, key: str) -> str | None:
        """The oldest entry id of ``key`` (a stream this agent writes) that retention must keep."""
        return None


# (settings, underlying): the spec picks what its processor uses, e.g. ``settings.model_settings``.
ProcessorFactory = Callable[[Settings, str], Processor]


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
    # Models it looks up as a side input (Processor.side_reads), by their diffs streams. Its output then
    # depends on when it ran, so a replay runs it after everything else has drained (inprocess.py).
    looks_up: tuple[streams.StreamSpec, ...] = ()
    # An agent whose output is not latency-critical reads at most this often while it keeps up: its
    # batches grow, and it pays the per-batch cost (a read, a commit) fewer times.
    read_every_s: float | None = None
