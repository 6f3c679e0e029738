"""Wire formats as only the tests need them: changes entries from Python, entry fields as Redis returns them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from marketswarm.schemas.events import ChangeBatch

_enc = msgspec.json.Encoder()


def encode_changes(batch: ChangeBatch) -> dict[str, Any]:
    """A changes entry as agents/hydrate/hydrate.lua writes it (tests/integration/test_hydrate.py holds the
    script to these bytes; schemas/codec.py decodes them)."""
    return {
        "kind": "changes",
        "v": 1,
        "src": batch.src,
        "rx_ns": batch.rx_ns,
        "epoch": batch.epoch,
        "data": _enc.encode(batch.changes),
    }


def as_redis(fields: Mapping[str, Any]) -> dict[bytes, bytes]:
    """An encoder's entry fields as Redis hands them back: bytes names, bytes values."""
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}
