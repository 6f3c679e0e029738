"""How a derived model is kept and published: its versions, the model it follows, the one it looks up.

* ``Versions``: each derived agent is the publisher of its own model. A version is declared when the
  document changed (not its as-of time alone): the next version number, a diff on
  ``ms:{U}:diffs:{name}.v2`` with id ``<version>-0`` whose header is the whole document (these models
  are small), and the model hash's header rewritten, so the hash is always the current version.
  History goes in the same commit (topology/history.py): the first version after a minute boundary
  carries the keyframe of the version before it, and the models with a level series (market mode,
  gravity, intent) observe their levels at every document computed, versions or not.
* ``Follower``: an agent whose input is another model's diffs (market mode and gravity follow GEX,
  best butterflies the butterfly heatmap), held as columns and checkpointed by topology/following.py;
  it computes its document per version of that model.
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
from marketswarm.schemas.documents import HEADER_FIELD, header_fields, header_json
from marketswarm.schemas.history import Keyframe, LevelTrack, keyframe_boundary, level_values
from marketswarm.schemas.models import Diff
from marketswarm.topology import history, streams
from marketswarm.topology.agent import Count, Effects, Entry
from marketswarm.topology.following import Following
from marketswarm.topology.published import Published, apply_diffs, checkpoint_read, from_checkpoint, version_output

SIDE_DIFFS_PER_READ = 500
SIDE_READ_EVERY_S = 0.25  # wall time between reads of a model looked up


def derived_writes(name: str) -> tuple[streams.StreamSpec, ...]:
    """The streams a derived model's agent appends to: its diffs and its history."""
    return (
        streams.DIFFS[name],
        streams.KEYFRAMES[name],
        *([streams.LEVELS[name]] if name in streams.LEVELS else []),
    )


class Versions:
    """The versions of one derived model of one underlying."""

    def __init__(self, u: str, name: str, history: bool = True) -> None:
        self.u, self.name = u, name
        self.history = history  # keyframes and level points
        self.key = streams.model_key(u, name)
        self.version = 0
        self.asof_ns = 0
        self.epoch = ""
        self.fields: dict[str, Any] | None = None
        self.header: bytes | None = None
        self.levels = LevelTrack() if history and name in streams.LEVELS else None

    def reads(self) -> list[tuple[Any, ...]]:
        """The commands ``load`` takes the replies of: the model's header (and its last level point)."""
        head = ("HGET", self.key, HEADER_FIELD)
        return [head, history.last_level_read(self.u, self.name)] if self.levels is not None else [head]

    def load(self, replies: Sequence[Any]) -> None:
        self.version, self.asof_ns, self.epoch, self.fields, self.header = 0, 0, "", None, replies[0]
        if self.header is not None:
            h = orjson.loads(self.header)
            self.version, self.asof_ns, self.epoch = int(h["version"]), int(h["asof_ns"]), str(h["epoch"])
            self.fields = header_fields(h)
        if self.levels is not None:
            values = level_values(self.name, self.fields) if self.fields is not None else None
            self.levels.restore(history.last_level(replies[1]), self.asof_ns // 1_000_000, values)

    def counts(self, n: int) -> list[Count]:
        """``n`` published versions (marketswarm_versions_published_total)."""
        return [Count("versions", (self.u, self.name, "value"), n)] if n else []

    def publish(
        self, effects: Effects, fields: dict[str, Any], epoch: str, asof_ns: int, reason: str = "value"
    ) -> bool:
        """Add to ``effects`` the diff and the model write of a new version (and its history); False
        when ``fields`` did not change. ``fields`` starts with ``spot`` (the header's place for it)."""
        if self.levels is not None:
            points = self.levels.observe(asof_ns // 1_000_000, level_values(self.name, fields))
            effects.outputs += history.level_outputs(self.u, self.name, points)
        if fields == self.fields:
            return False
        boundary = keyframe_boundary(self.asof_ns, asof_ns) if self.history and self.header else None
        if boundary is not None and self.header is not None:
            frame = Keyframe(
                version=self.version,
                epoch=self.epoch,
                asof_ns=self.asof_ns,
                header=codec.compress(self.header),
                zipped=True,
            )
            effects.outputs.append(history.keyframe_output(self.u, self.name, boundary, frame))
        self.version += 1
        self.fields, self.asof_ns, self.epoch = fields, asof_ns, epoch
        self.header = header = header_json(self.u, self.name, self.version, epoch, asof_ns, fields)
        diff = Diff(
            underlying=self.u, strategy=self.name, version=self.version, prev_version=self.version - 1,
            epoch=epoch, asof_ns=asof_ns, reason=reason, header=header,
        )  # fmt: skip
        effects.outputs.append(version_output(diff))
        effects.commands.append(("HSET", self.key, HEADER_FIELD, header))
        return True


class Follower(Following):
    """A derived model computed per version of the model it follows (``source``)."""

    name: str

    def __init__(self, u: str, history: bool = True) -> None:
        self.versions = Versions(u, self.name, history)
        super().__init__(u, streams.derive_checkpoint_key(u, self.name))

    def own_reads(self) -> list[tuple[Any, ...]]:
        return self.versions.reads()

    def load_own(self, replies: Sequence[Any]) -> None:
        self.versions.load(replies)

    def compute(self) -> dict[str, Any] | None:
        """The document for the followed model as it stands (None: nothing to publish yet)."""
        raise NotImplementedError

    def on_version(self, effects: Effects) -> int:
        fields = self.compute()
        if fields is None:
            return 0
        h = self.model.meta
        return int(self.versions.publish(effects, fields, str(h["epoch"]), int(h["asof_ns"])))

    def process(self, batch: Sequence[Entry]) -> Effects:
        effects = super().process(batch)
        effects.counts = self.versions.counts(effects.events_out)
        return effects


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
