"""History in Redis: what the publishers append for it (pure; topology/travel.py reads it back).

Every history stream is keyed by event time (schemas/history.py says what goes in them):

* ``ms:{U}:levels:{model}.v1``: level points, id ``<ms>-0``, by GEX's publisher and the derived models;
* ``ms:{U}:keyframes:{S}.v1``: each model as it stood at a minute boundary, id ``<minute ms>-0``,
  written with the first version after the boundary (the version before it is the one in force);
* ``ms:{U}:checkpoints:{S}.v1``: the heatmaps' and GEX's checkpoints (every few seconds), id
  ``<asof ms>-<version>``: where a read of a recent time starts applying the diffs;
* ``ms:{U}:geometries:{S}.v1``: each epoch's geometry, once, id ``<asof ms>-<version>`` of its first
  version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from marketswarm.schemas import codec
from marketswarm.schemas.history import Keyframe, Values
from marketswarm.schemas.models import Geometry
from marketswarm.topology import streams
from marketswarm.topology.agent import Output

# --- written by the publishers, in the commit of the version they belong to -------------------------


def level_outputs(u: str, model: str, points: Sequence[tuple[int, Values]]) -> list[Output]:
    spec = streams.LEVELS[model]
    return [Output(spec, spec.key(u), codec.encode_levels(values), id=f"{t}-0") for t, values in points]


def keyframe_output(u: str, model: str, boundary_ms: int, frame: Keyframe) -> Output:
    spec = streams.KEYFRAMES[model]
    return Output(spec, spec.key(u), codec.encode_keyframe(frame), id=f"{boundary_ms}-0")


def checkpoint_output(u: str, strategy: str, frame: Keyframe) -> Output:
    spec = streams.CHECKPOINTS[strategy]
    return Output(spec, spec.key(u), codec.encode_keyframe(frame), id=f"{frame.asof_ns // 1_000_000}-{frame.version}")


def geometry_output(u: str, strategy: str, asof_ns: int, version: int, geometry: Geometry) -> Output:
    spec = streams.GEOMETRIES[strategy]
    return Output(spec, spec.key(u), codec.encode_geometry(geometry), id=f"{asof_ns // 1_000_000}-{version}")


def last_level_read(u: str, model: str) -> tuple[Any, ...]:
    """The command that reads a model's last level point (its reply is what ``last_level`` takes)."""
    return ("XREVRANGE", streams.LEVELS[model].key(u), "+", "-", "COUNT", 1)


def last_level(reply: Sequence[Any]) -> tuple[int, Values] | None:
    if not reply:
        return None
    entry_id, fields = reply[0]
    return streams.entry_id_ms(entry_id), codec.decode(streams.Payload.LEVELS, fields)
