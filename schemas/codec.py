"""The one codec: how each stream payload is laid out in Redis entry fields, and back.

Every entry has ``kind``, ``v`` and ``data`` (the payload's JSON, or the provider's raw bytes);
routing fields (``src``, ``rx_ns``, ``epoch``) stay beside the payload, never inside it. Past calc the
payloads are columns (schemas/models.py): MessagePack with packed little-endian arrays, version 2 of
the staged and diffs streams; checkpoints of calc and publish state use the same encoding.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, TypeVar

import msgspec
import orjson

from marketswarm.schemas.alerts import Alert
from marketswarm.schemas.events import Change as _Change
from marketswarm.schemas.events import ChangeBatch, EventBatch
from marketswarm.schemas.events import Event as _Event
from marketswarm.schemas.history import Keyframe
from marketswarm.schemas.models import Diff, Geometry, Reject, Staged
from marketswarm.schemas.payloads import Payload

T = TypeVar("T")
COLUMNAR = (Payload.TILES, Payload.DIFF)  # version 2: columns (v1 carried per-tile JSON)


class DecodeError(ValueError):
    """Raised when a stream entry cannot be decoded into its stream's payload type."""


class RawFormat(StrEnum):
    """The raw frames' formats (``RawFrame.src``): sources name the format they wrote, normalize parses by it."""

    WS = "massive.ws"
    WS_DELAYED = "massive.ws.delayed"  # the same frames from the provider's delayed feed
    REST_CHAIN = "massive.rest.chain"
    REST_INDICES = "massive.rest.indices"
    CBOE_CSV = "cboe.csv"


class RawFrame(msgspec.Struct, frozen=True, kw_only=True):
    """Provider bytes exactly as received, plus the receive time and what produced them."""

    src: str  # a RawFormat; kept a str so that an unknown one reaches normalize and is rejected with its reason
    rx_ns: int
    data: bytes


_enc = msgspec.json.Encoder()
_events_dec = msgspec.json.Decoder(tuple[_Event, ...])
_changes_dec = msgspec.json.Decoder(tuple[_Change, ...])
_pack = msgspec.msgpack.Encoder()
_staged_dec = msgspec.msgpack.Decoder(Staged)
_diff_dec = msgspec.msgpack.Decoder(Diff)
_geometry_dec = msgspec.msgpack.Decoder(Geometry)
_reject_dec = msgspec.json.Decoder(Reject)
_keyframe_dec = msgspec.msgpack.Decoder(Keyframe)
_alert_dec = msgspec.json.Decoder(Alert)
HISTORY_ZLIB_LEVEL = 1  # keyframes and geometries: about 3.5x smaller, ~1-3 ms for a butterfly grid


def encode_json(value: Any) -> bytes:
    """Encode a Struct, or a list of Structs, to JSON."""
    return _enc.encode(value)


def encode_raw(frame: RawFrame) -> dict[str, Any]:
    return {"kind": "raw", "v": 1, "src": frame.src, "rx_ns": frame.rx_ns, "data": frame.data}


def encode_events(batch: EventBatch) -> dict[str, Any]:
    return {"kind": "events", "v": 1, "src": batch.src, "rx_ns": batch.rx_ns, "data": _enc.encode(batch.events)}


def encode_staged(staged: Staged) -> dict[str, Any]:
    return {"kind": "tiles", "v": 2, "data": _pack.encode(staged)}


def encode_diff(diff: Diff) -> dict[str, Any]:
    return {"kind": "diff", "v": 2, "version": diff.version, "data": _pack.encode(diff)}


def encode_packed(value: Any) -> bytes:
    """MessagePack of a Struct whose arrays are packed bytes (checkpoints, model hash fields)."""
    return _pack.encode(value)


def decode_packed(raw: bytes, type_: type[T]) -> T:
    """The inverse of ``encode_packed``; raises DecodeError."""
    try:
        return msgspec.msgpack.decode(raw, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"{type_.__name__}: {exc}") from exc


def decode_geometry(raw: bytes) -> Geometry:
    try:
        return _geometry_dec.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"geometry: {exc}") from exc


def encode_reject(reject: Reject) -> dict[str, Any]:
    return {"kind": "reject", "v": 1, "reason": reject.reason, "data": _enc.encode(reject)}


def encode_levels(values: Sequence[Any]) -> dict[str, Any]:
    """A level point: its values in ``LEVEL_SOURCES`` order (the entry id is its time)."""
    return {"kind": "levels", "v": 1, "data": orjson.dumps(list(values))}


def encode_alert(alert: Alert) -> dict[str, Any]:
    """An alert: its JSON (what REST and SSE serve as is), its rule for XRANGE readers that filter."""
    return {"kind": "alert", "v": 1, "rule": alert.rule, "data": _enc.encode(alert)}


def compress(raw: bytes) -> bytes:
    return zlib.compress(raw, HISTORY_ZLIB_LEVEL)


def encode_keyframe(frame: Keyframe) -> dict[str, Any]:
    return {"kind": "keyframe", "v": 1, "version": frame.version, "data": _pack.encode(frame)}


def encode_geometry(geometry: Geometry) -> dict[str, Any]:
    return {"kind": "geometry", "v": 1, "epoch": geometry.epoch, "data": compress(_pack.encode(geometry))}


def _field(fields: Mapping[bytes, bytes], name: bytes) -> bytes:
    try:
        return fields[name]
    except KeyError:
        raise DecodeError(f"entry has no {name.decode()!r} field") from None


def decode(payload: Payload, fields: Mapping[bytes, bytes]) -> Any:
    """Decode an entry's fields into the payload type of its stream; raise DecodeError if impossible."""
    try:
        kind = _field(fields, b"kind").decode()
        if kind != payload.value:
            raise DecodeError(f"entry kind {kind!r} on a {payload.value!r} stream")
        if _field(fields, b"v") != (b"2" if payload in COLUMNAR else b"1"):
            raise DecodeError(f"unsupported version {fields[b'v']!r} of {kind}")
        data = _field(fields, b"data")
        if payload is Payload.RAW:
            return RawFrame(src=_field(fields, b"src").decode(), rx_ns=int(_field(fields, b"rx_ns")), data=data)
        if payload is Payload.EVENTS:
            return EventBatch(
                src=_field(fields, b"src").decode(),
                rx_ns=int(_field(fields, b"rx_ns")),
                events=_events_dec.decode(data),
            )
        if payload is Payload.CHANGES:
            return ChangeBatch(
                src=_field(fields, b"src").decode(),
                rx_ns=int(_field(fields, b"rx_ns")),
                epoch=_field(fields, b"epoch").decode(),
                changes=_changes_dec.decode(data),
            )
        if payload is Payload.TILES:
            return _staged_dec.decode(data)
        if payload is Payload.DIFF:
            return _diff_dec.decode(data)
        if payload is Payload.REJECT:
            return _reject_dec.decode(data)
        if payload is Payload.LEVELS:
            return tuple(orjson.loads(data))
        if payload is Payload.KEYFRAME:
            return _keyframe_dec.decode(data)
        if payload is Payload.GEOMETRY:
            return _geometry_dec.decode(zlib.decompress(data))
        if payload is Payload.ALERT:
            return _alert_dec.decode(data)
    except DecodeError:
        raise
    except (
        msgspec.DecodeError,
        msgspec.ValidationError,
        orjson.JSONDecodeError,
        ValueError,
        UnicodeDecodeError,
        zlib.error,
    ) as exc:
        raise DecodeError(f"{payload.value}: {exc}") from exc
    raise DecodeError(f"no decoder for {payload}")


def event_count(value: Any) -> int:
    """How many events a decoded entry carries (for throughput metrics)."""
    if isinstance(value, EventBatch):
        return len(value.events)
    if isinstance(value, ChangeBatch):
        return len(value.changes)
    if isinstance(value, Staged):
        return value.cols.changed
    return 1
