"""Reading published models: the last checkpoint (the model hash) plus the diffs after it.

The publisher appends a diff for every version but writes the whole model hash only at checkpoints
(a new epoch, and every ``CHECKPOINT_EVERY_S`` of event time or ``CHECKPOINT_EVERY_VERSIONS``), so a
version costs one XADD, not one HSET per tile. The current model is the checkpoint with the diffs
after it applied: the gateway, export and the publisher's own restore all read it here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis

from marketswarm.agents.publish.assemble import assemble, split_model_hash, with_values
from marketswarm.schemas import codec
from marketswarm.schemas.models import Diff, is_null
from marketswarm.topology import streams

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_S = 5.0
CHECKPOINT_EVERY_VERSIONS = 200


@dataclass
class Published:
    version: int = 0
    header: bytes | None = None
    tiles: dict[str, bytes] = field(default_factory=dict)
    # Numbers received since a tile was last whole: folded in once, when the tiles are read (a tile
    # updated by 200 diffs is rebuilt once, not 200 times).
    numbers: dict[str, bytes] = field(default_factory=dict)

    @property
    def meta(self) -> dict[str, object]:
        return orjson.loads(self.header) if self.header else {}

    def apply(self, diff: Diff) -> None:
        if diff.reset:
            self.tiles, self.numbers = {}, {}
        for k, v in diff.upserts.items():
            self.tiles[k] = bytes(v)
            self.numbers.pop(k, None)
        for k, v in diff.values.items():
            self.numbers[k] = bytes(v)
        for k in diff.removes:
            self.tiles.pop(k, None)
            self.numbers.pop(k, None)
        if not is_null(diff.header):
            self.header = bytes(diff.header)
        self.version = diff.version

    def fold(self) -> Published:
        for k, v in self.numbers.items():
            if k in self.tiles:
                self.tiles[k] = with_values(self.tiles[k], v)
        self.numbers = {}
        return self

    def body(self, strategy: str) -> bytes | None:
        return assemble(strategy, self.header, self.tiles) if self.header is not None else None


def diff_version(entry_id: bytes | str) -> int:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.split("-")[0])


async def load_published(redis: aioredis.Redis, u: str, strategy: str) -> Published:
    """The current canonical model: checkpoint + diffs since (empty Published if none yet)."""
    key = streams.DIFFS[strategy].key(u)
    raw = await redis.hgetall(streams.model_key(u, strategy))
    header, tiles = split_model_hash(raw)
    out = Published(version=int(orjson.loads(header)["version"]) if header else 0, header=header, tiles=tiles)
    for entry_id, fields in await redis.xrange(key, min=f"({out.version}-0"):
        v = diff_version(entry_id)
        if v != out.version + 1:
            log.error(
                "%s: diffs %d..%d are missing after the checkpoint; serving what remains", key, out.version + 1, v - 1
            )
        out.apply(codec.decode(streams.Payload.DIFF, fields))
    return out.fold()


async def read_model(redis: aioredis.Redis, u: str, strategy: str) -> bytes | None:
    """The canonical model's JSON, as REST serves it and export writes it."""
    return (await load_published(redis, u, strategy)).body(strategy)


async def top_version(redis: aioredis.Redis, u: str, strategy: str) -> int | None:
    """The newest published version (cheap: one entry), None before the first."""
    last = await redis.xrevrange(streams.DIFFS[strategy].key(u), count=1)
    return diff_version(last[0][0]) if last else None
