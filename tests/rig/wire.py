"""Wire formats that only the tests write: the changes entries hydrate's script writes, from Python."""

from __future__ import annotations

from typing import Any

import msgspec

from marketswarm.schemas.events import ChangeBatch

_enc = msgspec.json.Encoder()


def encode_changes(batch: ChangeBatch) -> dict[str, Any]:
    """A changes entry as agents/hydrate.lua writes it (tests/integration/test_hydrate.py holds the
    script to these bytes; schemas/codec.py decodes them)."""
    return {
        "kind": "changes",
        "v": 1,
        "src": batch.src,
        "rx_ns": batch.rx_ns,
        "epoch": batch.epoch,
        "data": _enc.encode(batch.changes),
    }
