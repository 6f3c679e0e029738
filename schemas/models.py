"""Models: staged tiles (calc -> publish), published diffs, rejects, and the HTTP API's shapes.

Inside the topology a tile is an opaque, pre-encoded JSON object keyed by its tile key, so the
publisher can diff and assemble models without re-encoding them. The pydantic classes at the end are
the published JSON's contract at the API boundary (FastAPI's OpenAPI, and the tests validate
published models against them).
"""

from __future__ import annotations

from typing import Literal

import msgspec
import numpy as np
from pydantic import BaseModel, ConfigDict

# JSON null as a raw value: msgspec cannot decode ``Raw | None``, so "absent" is a raw null.
NULL = msgspec.Raw(b"null")


def is_null(raw: msgspec.Raw) -> bool:
    return bytes(raw) == b"null"


class TileColumns(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """New numbers of tiles the publisher already has, as columns (bytes travel base64 in JSON)."""

    keys: list[str]
    value: bytes  # float64, native order
    score: bytes  # float64, NaN = no score
    legs_ts: bytes  # int64, n_legs per tile
    n_legs: int


def tile_columns(keys: list[str], value: np.ndarray, score: np.ndarray, legs_ts: np.ndarray) -> TileColumns:
    return TileColumns(
        keys=keys,
        value=np.ascontiguousarray(value, dtype=np.float64).tobytes(),
        score=np.ascontiguousarray(score, dtype=np.float64).tobytes(),
        legs_ts=np.ascontiguousarray(legs_ts, dtype=np.int64).tobytes(),
        n_legs=int(legs_ts.shape[1]),
    )


class TileBatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A calc agent's staged update for one input entry."""

    strategy: str
    underlying: str
    epoch: str
    src: str  # the changes entry id it came from
    rx_ns: int  # receive time of the newest raw input behind it
    ts_ns: int  # event time: the newest input event behind it
    slots: int  # grid slots of the epoch for this strategy
    pending: int  # slots whose legs exist but have no quote yet (0 = structurally complete)
    reset: bool = False  # a new epoch: the staged set is replaced by ``upserts``
    upserts: dict[str, msgspec.Raw] = {}  # whole tiles: new ones, or all of them on a reset
    cols: TileColumns | None = None  # tiles already staged: their new value, score, legs_ts_ns
    removes: tuple[str, ...] = ()
    header: msgspec.Raw = NULL  # model-level fields (spot, GEX totals); null = unchanged


class Diff(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One published version: what changed since ``prev_version``."""

    underlying: str
    strategy: str
    version: int
    prev_version: int
    epoch: str
    asof_ns: int
    reason: str  # structural | value | time | idle
    reset: bool = False  # the tile set was replaced (new epoch): clients drop tiles not in upserts
    upserts: dict[str, msgspec.Raw] = {}  # whole tiles: added, or changed beyond their values
    values: dict[str, msgspec.Raw] = {}  # tiles the client has: their new [value, score, legs_ts_ns]
    removes: tuple[str, ...] = ()
    header: msgspec.Raw = NULL  # the version's model header (version, epoch, asof, spot, ...)


class DiffOut(msgspec.Struct, frozen=True, kw_only=True):
    """How a publisher writes a Diff: ``values`` already encoded as one JSON object (the same JSON a
    Diff decodes), so a version costs one encoder call for its numbers, not one per tile."""

    underlying: str
    strategy: str
    version: int
    prev_version: int
    epoch: str
    asof_ns: int
    reason: str
    reset: bool = False
    upserts: dict[str, msgspec.Raw] = {}
    values: msgspec.Raw = msgspec.Raw(b"{}")
    removes: tuple[str, ...] = ()
    header: msgspec.Raw = NULL


class Reject(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Bad input with its reason; nothing is lost, and this says why it went no further."""

    reason: str  # a RejectReason value
    detail: str
    source: str  # the raw entry id or the source that produced it
    rx_ns: int
    excerpt: str  # the offending element or the frame's first bytes


# --- the HTTP API (schemas of the published JSON) -------------------------------------------


class _Api(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TileOut(_Api):
    k: str
    expiry: str  # YYYY-MM-DD
    side: Literal["call", "put"]
    strike: float  # center for butterflies, long leg for verticals
    width: float  # 0 for singles
    value: float  # mid debit
    score: float | None  # reward/risk (width - debit) / debit; None when undefined
    legs: list[str]
    legs_ts_ns: list[int]


class HeatmapModel(_Api):
    underlying: str
    strategy: Literal["single", "vertical", "butterfly"]
    version: int
    epoch: str
    asof: str  # ISO 8601 UTC of the newest event behind the version
    asof_ns: int
    spot: float | None
    tiles: list[TileOut]


class GexStrike(_Api):
    strike: float
    call: float
    put: float
    net: float


class GexExpiry(_Api):
    expiry: str
    net: float


class GexView(_Api):
    total: float
    calls: float
    puts: float
    flip: float | None
    call_wall: float | None
    put_wall: float | None
    by_strike: list[GexStrike]


class GexModel(_Api):
    underlying: str
    strategy: Literal["gex"]
    version: int
    epoch: str
    asof: str
    asof_ns: int
    spot: float | None
    units: str
    convention: str
    total: float
    calls: float
    puts: float
    flip: float | None
    call_wall: float | None
    put_wall: float | None
    by_strike: list[GexStrike]
    by_expiry: list[GexExpiry]
    zero_dte: GexView | None
    stale: bool
