"""A command's settings and server: loaded once at its start, a bad value or an unreachable server one line."""

from __future__ import annotations

import logging
import sys
from typing import Any

from pydantic import ValidationError

from marketswarm.ops.mistakes import FAILED, Mistake, set_redis_url
from marketswarm.topology.settings import Settings


def load_settings(**overrides: Any) -> Settings:
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:  # a bad MARKETSWARM_* value fails at start-up
        bad = "; ".join(f"MARKETSWARM_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise Mistake(f"invalid settings: {bad}") from exc
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return settings


def redis_url_of(settings: Settings) -> str:
    from marketswarm.ops.embedded import NoServerError, resolve_url

    try:
        url = resolve_url(settings.redis_url, settings.data_dir)
    except NoServerError as exc:
        raise Mistake(str(exc), FAILED) from exc
    set_redis_url(url)
    return url
