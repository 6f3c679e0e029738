"""The model settings in force, recorded in Redis: written where input enters, adopted by every agent.

The settings a published model depends on (``settings.ModelSettings``: the calc bucket, the heatmap
window, the publish thresholds...) belong to the model, not to whichever process happens to run it.
The source (or `marketswarm run`, or a replay) records them once at start; each agent adopts the
recorded ones when it starts, so every agent of a system computes with the same numbers, `record`
copies them into a capture, and a replay of that capture reproduces the live run's versions whatever
its own environment says. Without a record an agent uses its environment.
"""

from __future__ import annotations

import logging

import orjson
import redis.asyncio as aioredis

from marketswarm.topology import streams
from marketswarm.topology.settings import ModelSettingsError, Settings

log = logging.getLogger(__name__)


async def record_model_settings(redis: aioredis.Redis, settings: Settings) -> None:
    """Record ``settings``' model settings as those in force (agents started later adopt them)."""
    await redis.set(
        streams.model_settings_key(), orjson.dumps(settings.model_settings.model_dump(), option=orjson.OPT_SORT_KEYS)
    )


async def recorded_model_settings(redis: aioredis.Redis) -> dict[str, object] | None:
    """The recorded model settings, or None if none were recorded."""
    raw = await redis.get(streams.model_settings_key())
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ModelSettingsError(f"{streams.model_settings_key()} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelSettingsError(f"{streams.model_settings_key()} is not an object")
    return value


async def adopt_model_settings(redis: aioredis.Redis, settings: Settings, who: str) -> Settings:
    """``settings`` with the recorded model settings in place of the environment's (logged where they
    differ); ``settings`` unchanged if none are recorded."""
    recorded = await recorded_model_settings(redis)
    if recorded is None:
        return settings
    adopted = settings.with_model_settings(recorded)
    differ = {
        k: (v, recorded[k])
        for k, v in settings.model_settings.model_dump().items()
        if k in recorded and v != recorded[k]
    }
    if differ:
        log.warning(
            "%s: using the recorded model settings, not this environment's: %s",
            who, ", ".join(f"{k}={new} (env {old})" for k, (old, new) in sorted(differ.items())),
        )  # fmt: skip
    return adopted
