"""Published models as JSON: assembled from the canonical model hash (header + tiles), byte-stable.

The same bytes serve REST, the SSE snapshot event and ``export``, so a replay's export can be compared
byte for byte. Tiles are ordered by (expiry, side, strike, width); GEX rows by strike.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import orjson

HEADER_FIELD = "_header"


def iso(ts_ns: int) -> str:
    return dt.datetime.fromtimestamp(ts_ns / 1e9, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def tile_order(key: str) -> tuple[str, str, int, int]:
    expiry, side, strike, width = key.split("|")
    return expiry, side, int(strike), int(width)


def header_json(
    underlying: str, strategy: str, version: int, epoch: str, asof_ns: int, fields: Mapping[str, Any]
) -> bytes:
    """The model's own fields, in a fixed order, then the strategy's header fields (spot, GEX totals)."""
    head: dict[str, Any] = {
        "underlying": underlying,
        "strategy": strategy,
        "version": version,
        "epoch": epoch,
        "asof": iso(asof_ns) if asof_ns else None,
        "asof_ns": asof_ns,
        "spot": fields.get("spot"),
    }
    for k, v in fields.items():
        if k not in head and k != "spot_ts_ns":
            head[k] = v
    return orjson.dumps(head)


def assemble(strategy: str, header: bytes, tiles: Mapping[str, bytes]) -> bytes:
    """The full model JSON of a header and its tiles (heatmaps: ``tiles``; GEX: ``by_strike``)."""
    if strategy == "gex":
        body = b",".join(tiles[k] for k in sorted(tiles))
        return header[:-1] + b',"by_strike":[' + body + b"]}"
    body = b",".join(tiles[k] for k in sorted(tiles, key=tile_order))
    return header[:-1] + b',"tiles":[' + body + b"]}"


_VALUE = b',"value":'


def with_values(tile: bytes, values: bytes) -> bytes:
    """A tile JSON with its ``value``, ``score`` and ``legs_ts_ns`` replaced by ``[v, s, [ts...]]``.

    The calc agents write tiles as ``{...static...,"value":v,"score":s,"legs_ts_ns":[...]}`` with
    numbers formatted by orjson, so this gives exactly the bytes a whole tile would have had."""
    v, s, ts = orjson.loads(values)
    head = tile[: tile.rindex(_VALUE) + 1]
    return (
        head
        + b'"value":'
        + orjson.dumps(v)
        + b',"score":'
        + orjson.dumps(s)
        + b',"legs_ts_ns":'
        + orjson.dumps(ts)
        + b"}"
    )


def split_model_hash(raw: Mapping[bytes, bytes]) -> tuple[bytes | None, dict[str, bytes]]:
    """(header, tiles) from an HGETALL of a model or staging hash."""
    header = None
    tiles: dict[str, bytes] = {}
    for k, v in raw.items():
        key = k.decode()
        if key.startswith("_"):
            if key == HEADER_FIELD:
                header = v
            continue
        tiles[key] = v
    return header, tiles
