"""A published model as columns: the last checkpoint (the model hash) with the diffs after it applied.

The publisher appends a diff for every version but writes the model hash only at checkpoints (a new
epoch, and every ``CHECKPOINT_EVERY_S`` of event time or ``CHECKPOINT_EVERY_VERSIONS``), so a version
costs one XADD. The current model is the checkpoint with the diffs after it applied: readers get it
through topology/reading.py, the publisher's restore through the runtime; JSON is built from it
by schemas/documents.py. Pure: no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from marketswarm.schemas import codec
from marketswarm.schemas.documents import COLS_FIELD, GEOMETRY_FIELD, HEADER_FIELD, model_json, snapshot_json
from marketswarm.schemas.models import Columns, Diff, Geometry, value_columns
from marketswarm.topology import streams
from marketswarm.topology.agent import Output

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_S = 5.0  # event time between checkpoints: of a model, a calc's inputs, a derived agent's state
CHECKPOINT_EVERY_VERSIONS = 200


class GapError(RuntimeError):
    """Raised by ``catch_up(strict=True)`` when the diffs after a model's version are not all there
    (trimmed, or the model was rebuilt): the reader must start again from the checkpoint."""


@dataclass
class Published:
    """A published model as columns: the epoch's geometry, every position's numbers, every contract's
    quote time, and the version's header."""

    strategy: str
    version: int = 0
    header: bytes | None = None
    geometry: Geometry | None = None
    vals: np.ndarray = field(default_factory=lambda: np.zeros((0, 1)))
    cts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def meta(self) -> dict[str, Any]:
        return orjson.loads(self.header) if self.header else {}

    @property
    def present(self) -> int:
        return int((~np.isnan(self.vals[:, 0])).sum()) if len(self.vals) else 0

    def start(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self.vals = np.full((geometry.size, len(value_columns(self.strategy))), np.nan)
        self.cts = np.zeros(len(geometry.contracts), dtype=np.int64)

    def apply(self, diff: Diff) -> None:
        if diff.reset and diff.geometry is not None:
            self.start(diff.geometry)
        if self.geometry is not None:
            self._take(diff.cols)
        self.header = diff.header
        self.version = diff.version

    def _take(self, cols: Columns) -> None:
        cols.scatter(self.vals)
        if cols.dense:
            self.cts[:] = cols.contract_times()
            return
        cpos = cols.contract_positions()
        if len(cpos):
            self.cts[cpos] = cols.contract_times()

    def body(self) -> bytes | None:
        """The model's JSON (REST, export)."""
        if self.header is None:
            return None
        if self.strategy in streams.DERIVED:
            return self.header  # a derived model's header is the whole document
        return model_json(self.strategy, self.geometry, self.vals, self.cts, self.header)

    def snapshot(self) -> bytes | None:
        """The model as columns (the SSE snapshot event)."""
        if self.header is None:
            return None
        return snapshot_json(self.geometry, self.vals, self.cts, self.header)


def version_output(diff: Diff) -> Output:
    """A new version's entry on its diffs stream, ``ms:{U}:diffs:{S}.v2``, with id ``<version>-0``: the
    one way a version is published, by the publishers and the derived models alike (a version is
    an entry id, so the stream is the SSE history and ``Last-Event-ID`` is a version)."""
    spec = streams.DIFFS[diff.strategy]
    return Output(spec, spec.key(diff.underlying), codec.encode_diff(diff), id=f"{diff.version}-0")


def diff_version(entry_id: bytes | str) -> int:
    """A diff's version: the diffs streams use ``<version>-0`` as entry ids."""
    return streams.entry_id_ms(entry_id)


def apply_diffs(published: Published, key: str, diffs: Sequence[tuple[str, Diff]], *, strict: bool = False) -> None:
    """Apply diffs (entry id, diff) of ``key`` that follow ``published.version``, in place. A gap is
    logged (and what remains is applied), or with ``strict`` raised as GapError before anything is
    applied past it."""
    for entry_id, diff in diffs:
        v = diff_version(entry_id)
        if v != published.version + 1:
            if strict:
                raise GapError(f"{key}: diffs {published.version + 1}..{v - 1} are missing")
            log.error("%s: diffs %d..%d are missing; serving what remains", key, published.version + 1, v - 1)
        published.apply(diff)


def checkpoint_read(u: str, strategy: str) -> tuple[Any, ...]:
    """The command that reads a model's checkpoint (its reply is what ``from_checkpoint`` takes)."""
    return ("HMGET", streams.model_key(u, strategy), HEADER_FIELD, GEOMETRY_FIELD, COLS_FIELD)


def from_checkpoint(strategy: str, reply: Sequence[bytes | None]) -> Published:
    """The model as of its checkpoint (an empty Published if none yet); diffs after it still apply."""
    header, geometry, cols = reply
    out = Published(strategy=strategy)
    if header is not None:
        out.header = header
        out.version = int(orjson.loads(header)["version"])
        if geometry is not None and cols is not None:
            out.start(codec.decode_geometry(geometry))
            out._take(codec.decode_packed(cols, Columns))
    return out
