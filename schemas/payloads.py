"""The kinds of payload a stream carries: each stream names one, and schemas/codec.py encodes each."""

from __future__ import annotations

from enum import StrEnum


class Payload(StrEnum):
    """What a stream's entries carry; schemas/codec.py owns how each is encoded."""

    RAW = "raw"  # provider bytes + receive time
    EVENTS = "events"  # typed market events (schemas/events.py)
    CHANGES = "changes"  # admitted state changes from hydrate
    TILES = "tiles"  # staged tile updates from a calc agent
    DIFF = "diff"  # a published version's diff
    REJECT = "reject"  # bad input with its reason
    DEAD = "dead"  # a dead letter: the original entry's fields, its group and error
    LEVELS = "levels"  # a point of a model's level series (schemas/history.py)
    KEYFRAME = "keyframe"  # a model as it stood at a time (schemas/history.py)
    GEOMETRY = "geometry"  # an epoch's geometry, kept for the keyframes
    ALERT = "alert"  # an alert a rule fired (schemas/alerts.py)
