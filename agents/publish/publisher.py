"""The publisher: the single authority that declares reality for one (underlying, strategy).

It keeps the staged tiles its calc agent emits (in memory; re-derived on restart from the last
version and the staged entries acked since) and publishes a version when one of these holds,
checked after every staged entry, in stream order:

* structural completeness: the epoch's grid has no slot left waiting for a first quote (a new epoch
  is published only then, so the old model stays canonical until the new one is whole: no gap;
  a new epoch that never completes is published after ``NEW_EPOCH_PATIENCE_S`` of event time);
* value completeness: at least ``publish_min_tiles`` tiles, or ``publish_min_changed_pct`` % of them,
  changed since the last version;
* the time boundary: ``publish_interval_ms`` of event time passed since the last version, with
  something changed.

Publishing assigns the next version, makes the staged columns canonical and appends the diff (the
positions added, changed or removed, as columns; on a new epoch also its geometry) to
``ms:{U}:diffs:{S}.v2`` with entry id ``<version>-0``, so the stream is the SSE history and
``Last-Event-ID`` is a version. The whole model is checkpointed, as dense columns, to the model hash
at a new epoch and every few seconds (topology/published.py); between checkpoints a version costs
one XADD and one small state write, whatever its size. All conditions use event time, so a replay
publishes the same versions as the live run. A market that stops changing publishes nothing.

History (topology/history.py) goes in the same commits: the first version after a minute boundary
carries the keyframe of the version before it (the one in force at the boundary), a checkpoint is
also appended to the recent checkpoints, a new epoch's geometry is kept once, and GEX's versions
make its level points (spot, flip, walls, total).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from marketswarm.agents.publish.tiles import ColumnTable
from marketswarm.schemas import codec
from marketswarm.schemas.documents import COLS_FIELD, GEOMETRY_FIELD, HEADER_FIELD, header_fields, header_json
from marketswarm.schemas.history import Keyframe, LevelTrack, keyframe_boundary, level_values
from marketswarm.schemas.models import Diff, Staged
from marketswarm.topology import history, streams
from marketswarm.topology.agent import AgentSpec, Count, Effects, Entry, Output, Processor, ProcessorFactory, Resume
from marketswarm.topology.published import (
    CHECKPOINT_EVERY_S,
    CHECKPOINT_EVERY_VERSIONS,
    Published,
    apply_diffs,
    checkpoint_read,
    from_checkpoint,
    version_output,
)
from marketswarm.topology.settings import ModelSettings

NEW_EPOCH_PATIENCE_S = 2.5  # event time a new epoch may stay incomplete before it is published anyway


class Publisher(Processor):
    def __init__(self, model: ModelSettings, underlying: str, strategy: str, history: bool = True) -> None:
        self.u = underlying
        self.history = history  # keyframes, recent checkpoints, geometries and level points
        self.strategy = strategy
        self.min_tiles = model.publish_min_tiles
        self.min_pct = model.publish_min_changed_pct
        self.interval_ns = model.publish_interval_ms * 1_000_000
        self.max_hold_s = model.publish_interval_ms / 1000  # live: a change is published within this
        self.state_key = streams.publish_state_key(underlying, strategy)
        self.model = streams.model_key(underlying, strategy)
        self.diffs_spec = streams.DIFFS[strategy]
        self.diffs = self.diffs_spec.key(underlying)
        self.staged_key = streams.STAGED[strategy].key(underlying)
        self.group = f"publish.{strategy}"
        self._clear()

    def _clear(self) -> None:
        self.tiles = ColumnTable(self.strategy)
        self.fields: dict[str, Any] = {}  # header fields (spot, GEX totals)
        self.epoch = ""  # staged epoch
        self.epoch_started_ns = 0
        self.pending = 0
        self.max_ts_ns = 0
        self.version = 0
        self.pub_epoch = ""
        self.pub_asof_ns = 0
        self.header_dirty = False
        self.last_entry = "0-0"
        self.checkpoint_version = 0
        self.checkpoint_ns = 0
        self.restoring: tuple[Published, bytes | None] = (Published(self.strategy), None)
        self.header: bytes | None = None  # the last version's
        self.levels = LevelTrack() if self.history and self.strategy in streams.LEVELS else None
        self.last_point: tuple[int, tuple[Any, ...]] | None = None  # the level point written last

    # --- state -------------------------------------------------------------------------------

    def state_reads(self) -> Sequence[tuple[Any, ...]]:
        reads = [checkpoint_read(self.u, self.strategy), ("HGET", self.state_key, streams.STATE_FIELD)]
        return [*reads, history.last_level_read(self.u, self.strategy)] if self.levels is not None else reads

    def load(self, replies: Sequence[Any]) -> Sequence[Resume]:
        """The last version: the model's checkpoint, then the diffs after it (``reapply``); then the
        staged entries acked since that version re-applied: staging is never written tile by tile,
        it is re-derived from the stream."""
        self._clear()
        self.restoring = (from_checkpoint(self.strategy, replies[0]), replies[1])
        self.last_point = history.last_level(replies[2]) if self.levels is not None else None
        return [Resume(self.diffs_spec, f"{self.restoring[0].version}-0", acked=False)]

    def reapply(self, stream: streams.StreamSpec, entries: Sequence[Entry]) -> Sequence[Resume]:
        if stream is not self.diffs_spec:
            for entry in entries:
                self._apply(entry.value, entry.id)
            return ()
        published, state_raw = self.restoring
        self.restoring = (Published(self.strategy), None)  # not kept: the tiles copy its arrays
        apply_diffs(published, self.diffs, [(e.id, e.value) for e in entries])
        self.tiles.load(published.geometry, published.vals, published.cts)
        through = "0-0"
        if published.header is not None:
            h = orjson.loads(published.header)
            self.version, self.pub_epoch, self.pub_asof_ns = published.version, h["epoch"], h["asof_ns"]
            self.epoch, self.max_ts_ns = self.pub_epoch, self.pub_asof_ns
            self.fields = header_fields(h)
            self.header = published.header
        if self.levels is not None:
            values = level_values(self.strategy, self.fields) if self.header is not None else None
            self.levels.restore(self.last_point, self.pub_asof_ns // 1_000_000, values)
        if state_raw is not None:
            state = orjson.loads(state_raw)
            if state["version"] == self.version:
                through, self.epoch_started_ns, self.pending = (
                    state["through"],
                    state["epoch_started_ns"],
                    state["pending"],
                )
                self.checkpoint_version, self.checkpoint_ns = state["checkpoint_version"], state["checkpoint_ns"]
        self.last_entry = through
        return [Resume(streams.STAGED[self.strategy], through)]

    # --- the step ----------------------------------------------------------------------------

    def process(self, batch: Sequence[Entry]) -> Effects:
        outputs: list[Output] = []
        commands: list[tuple[Any, ...]] = []
        published: list[tuple[str, int, int, int]] = []  # (reason, version, tiles changed, rx_ns)
        for entry in batch:
            staged: Staged = entry.value
            self._apply(staged, entry.id)
            reason = self._reason(staged)
            if reason is not None:
                n = self._publish(reason, commands, outputs)
                if n is not None:
                    published.append((reason, self.version, n, staged.rx_ns))
        meta = {
            "epoch": self.epoch,
            "pending": self.pending,
            "max_ts_ns": self.max_ts_ns,
            "staged_tiles": len(self.tiles),
            "changed_since_version": self.tiles.pending_changes(),
        }
        commands.append(("HSET", self.state_key, streams.STAGING_FIELD, orjson.dumps(meta)))

        counts = []
        for reason, _version, n, rx_ns in published:
            counts += self._counts(reason, n)
            counts.append(Count("publish_latency", (self.u, self.strategy), rx_ns, "since"))
        return Effects(outputs=outputs, commands=commands, counts=counts, events_out=len(published))

    def _counts(self, reason: str, tiles_changed: int) -> list[Count]:
        return [
            Count("versions", (self.u, self.strategy, reason)),
            Count("tiles_changed", (self.u, self.strategy), tiles_changed),
        ]

    def holding(self) -> bool:
        """Changes staged and not yet published that a flush would publish (not a new epoch still
        waiting for its first quotes: that one waits for structural completeness)."""
        if not len(self.tiles) or (self.epoch == self.pub_epoch and self.tiles.unchanged() and not self.header_dirty):
            return False
        return not (self.epoch != self.pub_epoch and self.pending)

    def flush(self) -> Effects | None:
        """Publish what changed since the last version: input went quiet, or it was held ``max_hold_s``."""
        if not self.holding():
            return None
        commands: list[tuple[Any, ...]] = []
        outputs: list[Output] = []
        n = self._publish("idle", commands, outputs)
        if n is None:
            return None

        return Effects(outputs=outputs, commands=commands, counts=self._counts("idle", n), events_out=1)

    def _apply(self, staged: Staged, entry_id: str) -> None:
        if staged.epoch != self.epoch:
            self.epoch_started_ns = staged.ts_ns
            self.epoch = staged.epoch
        if staged.reset and staged.geometry is not None:
            self.tiles.reset(staged.geometry)
        self.tiles.apply(staged.cols)
        if staged.header is not None:
            self.fields.update(orjson.loads(staged.header))
            self.header_dirty = True
        self.pending = staged.pending
        self.max_ts_ns = max(self.max_ts_ns, staged.ts_ns)
        self.last_entry = entry_id

    def _reason(self, tb: Staged) -> str | None:
        staged = len(self.tiles)
        if self.epoch != self.pub_epoch:
            if self.pending == 0 and staged:
                return "structural"
            if tb.ts_ns - self.epoch_started_ns >= NEW_EPOCH_PATIENCE_S * 1e9 and staged:
                return "time"
            return None
        n = self.tiles.pending_changes()
        if n == 0 and not self.header_dirty:
            return None
        if n >= self.min_tiles or n * 100 >= self.min_pct * max(1, staged):
            return "value"
        if self.max_ts_ns - self.pub_asof_ns >= self.interval_ns:
            return "time"
        return None

    def _publish(self, reason: str, commands: list[tuple[Any, ...]], outputs: list[Output]) -> int | None:
        reset = self.epoch != self.pub_epoch
        boundary = keyframe_boundary(self.pub_asof_ns, self.max_ts_ns) if self.history and self.header else None
        before = self.tiles.checkpoint() if boundary is not None else None  # the version in force at it
        done = self.tiles.publish(reset, self.header_dirty)
        if done is None:
            return None
        cols, n = done
        if boundary is not None and before is not None and self.header is not None:
            frame = Keyframe(
                version=self.version, epoch=self.pub_epoch, asof_ns=self.pub_asof_ns,
                header=codec.compress(self.header), cols=codec.compress(codec.encode_packed(before)), zipped=True,
            )  # fmt: skip
            outputs.append(history.keyframe_output(self.u, self.strategy, boundary, frame))
        self.version += 1
        header = header_json(self.u, self.strategy, self.version, self.epoch, self.max_ts_ns, self.fields)
        self.header = header
        geometry = self.tiles.geometry if reset else None
        diff = Diff(
            underlying=self.u,
            strategy=self.strategy,
            version=self.version,
            prev_version=self.version - 1,
            epoch=self.epoch,
            asof_ns=self.max_ts_ns,
            reason=reason,
            reset=reset,
            geometry=geometry,
            cols=cols,
            header=header,
        )
        outputs.append(version_output(diff))
        if reset and geometry is not None and self.history:
            outputs.append(history.geometry_output(self.u, self.strategy, self.max_ts_ns, self.version, geometry))
        if self.levels is not None:
            points = self.levels.observe(self.max_ts_ns // 1_000_000, level_values(self.strategy, self.fields))
            outputs += history.level_outputs(self.u, self.strategy, points)
        if (
            reset
            or self.version - self.checkpoint_version >= CHECKPOINT_EVERY_VERSIONS
            or self.max_ts_ns - self.checkpoint_ns >= CHECKPOINT_EVERY_S * 1e9
        ):
            # A checkpoint: the whole model as dense columns, so readers replay at most a few seconds
            # of diffs. The geometry is written only with a new epoch.
            packed = codec.encode_packed(self.tiles.checkpoint())
            fields: list[Any] = [HEADER_FIELD, header, COLS_FIELD, packed]
            frame = Keyframe(version=self.version, epoch=self.epoch, asof_ns=self.max_ts_ns, header=header, cols=packed)
            if self.history:
                outputs.append(history.checkpoint_output(self.u, self.strategy, frame))
            if reset and geometry is not None:
                commands.append(("DEL", self.model))
                fields += [GEOMETRY_FIELD, codec.encode_packed(geometry)]
            commands.append(("HSET", self.model, *fields))
            self.checkpoint_version, self.checkpoint_ns = self.version, self.max_ts_ns
        state = {
            "version": self.version,
            "asof_ns": self.max_ts_ns,
            "through": self.last_entry,
            "epoch_started_ns": self.epoch_started_ns,
            "pending": self.pending,
            "checkpoint_version": self.checkpoint_version,
            "checkpoint_ns": self.checkpoint_ns,
        }
        commands.append(("HSET", self.state_key, streams.STATE_FIELD, orjson.dumps(state)))
        self.pub_epoch = self.epoch
        self.pub_asof_ns = self.max_ts_ns
        self.header_dirty = False
        return n

    def retention_floor(self, key: str) -> str | None:
        """The diffs after the last checkpoint make the current model: they are never trimmed."""
        return f"{self.checkpoint_version + 1}-0" if key == self.diffs else None


def _publisher(strategy: str) -> ProcessorFactory:
    return lambda settings, u: Publisher(settings.model_settings, u, strategy, settings.history)


PUBLISH_AGENTS = tuple(
    AgentSpec(
        name=f"publish.{s}",
        reads=streams.STAGED[s],
        writes=(
            streams.DIFFS[s],
            streams.KEYFRAMES[s],
            streams.CHECKPOINTS[s],
            streams.GEOMETRIES[s],
            *([streams.LEVELS[s]] if s in streams.LEVELS else []),
        ),
        make=_publisher(s),
        stateful=True,
        doc=f"Declares versions of the {s} model; diffs double as SSE history.",
        max_batch=20,
    )
    for s in streams.STRATEGIES
)
