"""An agent whose input is a published model's diffs: it holds that model as columns, version by version.

The derived models (agents/derive/) and the alerts (agents/vigil/) follow a model this way. The
followed model is checkpointed every ``CHECKPOINT_EVERY_S`` of event time (and at each new epoch) in
the follower's own hash, with the diff it went through; a restore loads that and re-applies the diffs
acknowledged since, so no version of the followed model is skipped or applied twice. A follower
deployed into a running system whose first diffs are gone starts from the followed model's own
checkpoint. Subclasses say what each version means in ``on_version``. Pure: the runtime does the I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from marketswarm.schemas import codec
from marketswarm.schemas.documents import COLS_FIELD, GEOMETRY_FIELD, HEADER_FIELD
from marketswarm.schemas.models import Diff, dense_columns
from marketswarm.topology import streams
from marketswarm.topology.agent import Effects, Entry, Processor, Resume
from marketswarm.topology.published import (
    CHECKPOINT_EVERY_S,
    Published,
    apply_diffs,
    checkpoint_read,
    from_checkpoint,
)


class Following(Processor):
    """Follows ``source``'s diffs for one underlying; its checkpoint is the hash ``checkpoint``."""

    source: str

    def __init__(self, u: str, checkpoint: str) -> None:
        self.u = u
        self.checkpoint = checkpoint
        self._clear()

    def _clear(self) -> None:
        self.model = Published(self.source)
        self.checkpoint_ns = 0
        self.checkpoint_epoch = ""
        self.bootstrap: Published | None = None
        self.diff: Diff | None = None  # the followed model's diff ``on_version`` is called for

    # --- what a subclass adds to the state it restores ----------------------------------------------

    def own_reads(self) -> list[tuple[Any, ...]]:
        """Commands whose replies ``load_own`` takes (restored with the followed model)."""
        return []

    def load_own(self, replies: Sequence[Any]) -> None:
        """The replies of ``own_reads``, after the followed model was loaded."""

    def on_version(self, effects: Effects) -> int:
        """A new version of the followed model (``self.model``, ``self.diff``): add its effects; the
        events it published."""
        raise NotImplementedError

    # --- the runtime's hooks --------------------------------------------------------------------

    def side_reads(self) -> Sequence[tuple[Any, ...]]:
        """Nothing followed yet: the followed model's checkpoint, in case its first diffs are gone
        (an agent deployed into a running system); otherwise nothing."""
        return [checkpoint_read(self.u, self.source)] if self.model.version == 0 else []

    def take_side(self, replies: Sequence[Any]) -> None:
        self.bootstrap = from_checkpoint(self.source, replies[0]) if replies else None

    def state_reads(self) -> Sequence[tuple[Any, ...]]:
        return [
            ("HMGET", self.checkpoint, HEADER_FIELD, GEOMETRY_FIELD, COLS_FIELD, streams.THROUGH_FIELD),
            *self.own_reads(),
        ]

    def load(self, replies: Sequence[Any]) -> Sequence[Resume]:
        self._clear()
        header, geometry, cols, through = replies[0]
        self.model = from_checkpoint(self.source, [header, geometry, cols])
        if self.model.header is not None:
            h = self.model.meta
            self.checkpoint_ns, self.checkpoint_epoch = int(h["asof_ns"]), str(h["epoch"])
        self.load_own(replies[1:])
        return [Resume(streams.DIFFS[self.source], through.decode() if through is not None else "0-0")]

    def reapply(self, stream: streams.StreamSpec, entries: Sequence[Entry]) -> Sequence[Resume]:
        self._apply(entries)
        return ()

    def _apply(self, entries: Sequence[Entry]) -> None:
        fresh = [(e.id, e.value) for e in entries if e.value.version > self.model.version]
        apply_diffs(self.model, streams.DIFFS[self.source].key(self.u), fresh)

    def process(self, batch: Sequence[Entry]) -> Effects:
        effects = Effects()
        published = 0
        for entry in batch:
            diff = entry.value
            boot = self.bootstrap
            if self.model.version == 0 and diff.version > 1 and not diff.reset and boot is not None:
                if boot.version >= diff.version - 1:  # the diffs before this one are gone: start there
                    self.model, self.bootstrap = boot, None
            if diff.version <= self.model.version:
                continue  # already in the model (a checkpoint taken past it)
            self._apply([entry])
            self.diff = diff
            published += self.on_version(effects)
        if batch and self.model.header is not None:
            h = self.model.meta
            if (
                h["epoch"] != self.checkpoint_epoch
                or int(h["asof_ns"]) - self.checkpoint_ns >= CHECKPOINT_EVERY_S * 1e9
            ):
                effects.commands += self._checkpoint(batch[-1].id)
        effects.events_out = published
        return effects

    def _checkpoint(self, through: str) -> list[tuple[Any, ...]]:
        m = self.model
        assert m.header is not None
        h = m.meta
        fields: list[Any] = [HEADER_FIELD, m.header, streams.THROUGH_FIELD, through]
        commands: list[tuple[Any, ...]] = []
        if m.geometry is not None:
            fields += [COLS_FIELD, codec.encode_packed(dense_columns(m.vals, m.cts))]
            if h["epoch"] != self.checkpoint_epoch:
                commands.append(("DEL", self.checkpoint))
                fields += [GEOMETRY_FIELD, codec.encode_packed(m.geometry)]
        commands.append(("HSET", self.checkpoint, *fields))
        self.checkpoint_ns, self.checkpoint_epoch = int(h["asof_ns"]), str(h["epoch"])
        return commands
