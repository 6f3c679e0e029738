"""How a derived model is kept and published: its versions, the model it follows, the one it looks up.

* ``Versions``: each derived agent is the publisher of its own model. A version is declared when the
  document changed (not its as-of time alone): the next version number, a diff on
  ``ms:{U}:diffs:{name}.v2`` with id ``<version>-0`` whose header is the whole document (these models
  are small), and the model hash's header rewritten, so the hash is always the current version.
* ``Follower``: an agent whose input is another model's diffs (market mode and gravity follow GEX,
  best butterflies the butterfly heatmap). It holds that model as columns, computes its document per
  version of it, and checkpoints the followed model every ``CHECKPOINT_EVERY_S`` of event time (and
  at each new epoch) with the diff it went through; a restore loads that and re-applies the diffs
  acknowledged since, so no version of the followed model is skipped or applied twice.
* ``ModelView``: a model another agent looks up (a side input, read by the runtime before a step):
  the checkpoint once, then the diffs after the version held, at most every ``SIDE_READ_EVERY_S``.

Pure: the runtime does every read and commits every write.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from marketswarm.schemas import codec
from marketswarm.schemas.documents import COLS_FIELD, GEOMETRY_FIELD, HEADER_FIELD, header_fields, header_json
from marketswarm.schemas.models import Diff, dense_columns
from marketswarm.topology import streams
from marketswarm.topology.agent import Count, Effects, Entry, Output, Processor, Resume
from marketswarm.topology.published import (
    CHECKPOINT_EVERY_S,
    Published,
    apply_diffs,
    checkpoint_read,
    from_checkpoint,
    version_output,
)

SIDE_DIFFS_PER_READ = 500
SIDE_READ_EVERY_S = 0.25  # wall time between reads of a model looked up


class Versions:
    """The versions of one derived model of one underlying."""

    def __init__(self, u: str, name: str) -> None:
        self.u, self.name = u, name
        self.key = streams.model_key(u, name)
        self.version = 0
        self.asof_ns = 0
        self.fields: dict[str, Any] | None = None

    def read(self) -> tuple[Any, ...]:
        return ("HGET", self.key, HEADER_FIELD)

    def load(self, reply: bytes | None) -> None:
        self.version, self.asof_ns, self.fields = 0, 0, None
        if reply is not None:
            h = orjson.loads(reply)
            self.version, self.asof_ns = int(h["version"]), int(h["asof_ns"])
            self.fields = header_fields(h)

    def counts(self, n: int) -> list[Count]:
        """``n`` published versions (marketswarm_versions_published_total)."""
        return [Count("versions", (self.u, self.name, "value"), n)] if n else []

    def publish(
        self, fields: dict[str, Any], epoch: str, asof_ns: int, reason: str = "value"
    ) -> tuple[Output, tuple[Any, ...]] | None:
        """The diff and the model write of a new version, or None when ``fields`` did not change.
        ``fields`` starts with ``spot`` (the header's place for it)."""
        if fields == self.fields:
            return None
        self.version += 1
        self.fields, self.asof_ns = fields, asof_ns
        header = header_json(self.u, self.name, self.version, epoch, asof_ns, fields)
        diff = Diff(
            underlying=self.u, strategy=self.name, version=self.version, prev_version=self.version - 1,
            epoch=epoch, asof_ns=asof_ns, reason=reason, header=header,
        )  # fmt: skip
        return version_output(diff), ("HSET", self.key, HEADER_FIELD, header)


class Follower(Processor):
    """A derived model computed per version of the model it follows (``source``)."""

    source: str
    name: str

    def __init__(self, u: str) -> None:
        self.u = u
        self.versions = Versions(u, self.name)
        self.checkpoint = streams.derive_checkpoint_key(u, self.name)
        self._clear()

    def _clear(self) -> None:
        self.model = Published(self.source)
        self.checkpoint_ns = 0
        self.checkpoint_epoch = ""
        self.bootstrap: Published | None = None
        self.diff: Diff | None = None  # the followed model's diff ``compute`` is called for

    def side_reads(self) -> Sequence[tuple[Any, ...]]:
        """Nothing followed yet: the followed model's checkpoint, in case its first diffs are gone
        (an agent deployed into a running system); otherwise nothing."""
        return [checkpoint_read(self.u, self.source)] if self.model.version == 0 else []

    def take_side(self, replies: Sequence[Any]) -> None:
        self.bootstrap = from_checkpoint(self.source, replies[0]) if replies else None

    def state_reads(self) -> Sequence[tuple[Any, ...]]:
        return [
            ("HMGET", self.checkpoint, HEADER_FIELD, GEOMETRY_FIELD, COLS_FIELD, streams.THROUGH_FIELD),
            self.versions.read(),
        ]

    def load(self, replies: Sequence[Any]) -> Sequence[Resume]:
        self._clear()
        header, geometry, cols, through = replies[0]
        self.model = from_checkpoint(self.source, [header, geometry, cols])
        if self.model.header is not None:
            h = self.model.meta
            self.checkpoint_ns, self.checkpoint_epoch = int(h["asof_ns"]), str(h["epoch"])
        self.versions.load(replies[1])
        return [Resume(streams.DIFFS[self.source], through.decode() if through is not None else "0-0")]

    def reapply(self, stream: streams.StreamSpec, entries: Sequence[Entry]) -> Sequence[Resume]:
        self._apply(entries)
        return ()

    def _apply(self, entries: Sequence[Entry]) -> None:
        fresh = [(e.id, e.value) for e in entries if e.value.version > self.model.version]
        apply_diffs(self.model, streams.DIFFS[self.source].key(self.u), fresh)

    def compute(self) -> dict[str, Any] | None:
        """The document for the followed model as it stands (None: nothing to publish yet)."""
        raise NotImplementedError

    def process(self, batch: Sequence[Entry]) -> Effects:
        effects = Effects()
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
            fields = self.compute()
            h = self.model.meta
            done = None if fields is None else self.versions.publish(fields, str(h["epoch"]), int(h["asof_ns"]))
            if done is not None:
                effects.outputs.append(done[0])
                effects.commands.append(done[1])
        if batch and self.model.header is not None:
            h = self.model.meta
            if (
                h["epoch"] != self.checkpoint_epoch
                or int(h["asof_ns"]) - self.checkpoint_ns >= CHECKPOINT_EVERY_S * 1e9
            ):
                effects.commands += self._checkpoint(batch[-1].id)
        effects.events_out = len(effects.outputs)
        effects.counts = self.versions.counts(len(effects.outputs))
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


class ModelView:
    """A published model looked up by another agent: its checkpoint, then the diffs after it."""

    def __init__(self, u: str, strategy: str) -> None:
        self.u, self.strategy = u, strategy
        self.key = streams.DIFFS[strategy].key(u)
        self.model = Published(strategy)
        self.reload = True
        self.read_at = -SIDE_READ_EVERY_S

    def reads(self) -> list[tuple[Any, ...]]:
        """What to read for the newest version: nothing if it was read less than ``SIDE_READ_EVERY_S``
        ago (a live agent steps many times a second; the model it looks up changes far less often)."""
        if not self.reload and time.monotonic() - self.read_at < SIDE_READ_EVERY_S:
            return []
        after = ("XRANGE", self.key, f"({self.model.version}-0", "+", "COUNT", SIDE_DIFFS_PER_READ)
        return [checkpoint_read(self.u, self.strategy), after] if self.reload else [after]

    def take(self, replies: Sequence[Any]) -> None:
        if not replies:
            return
        self.read_at = time.monotonic()
        if self.reload:
            loaded = from_checkpoint(self.strategy, replies[0])
            if loaded.version >= self.model.version:
                self.model = loaded
            self.reload = False
        diffs = [(i.decode(), codec.decode(streams.Payload.DIFF, f)) for i, f in replies[-1]]
        fresh = [(i, d) for i, d in diffs if d.version > self.model.version]
        if fresh and fresh[0][1].version != self.model.version + 1:
            self.reload = True  # the diffs after our version are gone: the checkpoint, next time
            return
        apply_diffs(self.model, self.key, fresh)
