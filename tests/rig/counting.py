"""A counting agent: per-key sums of a test stream. The runtime's proof of exactly-once-ish and its benchmark.

Each entry of ``ms:{U}:test.in.v1`` is a raw frame whose bytes are ``{"key": str, "n": int}``; the
agent adds ``n`` to ``key`` in ``ms:{U}:test.sums``. An entry with ``"poison": true`` makes the step
raise, which is how the tests check that one bad entry is isolated and dead-lettered without holding
back its batch. It is test rig, not part of the package: it uses the runtime as any agent does.

Run it as a process: ``python tests/rig/counting.py`` (settings from the environment); with
``COUNT_LEASED=1`` it runs ``LEASED`` (stateful: a lease per underlying), and ``COUNT_STEP_S`` makes
each step hold its event loop that long.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson

from marketswarm.schemas.codec import RawFrame, encode_raw
from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec, Effects, Entry, Processor, ScriptCall
from marketswarm.topology.connections import create_redis
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.runtime import Runtime
from marketswarm.topology.settings import Settings

# Test stream of the runtime's tests and benchmark: raw frames (a payload kind the runtime knows)
# whose bytes are the JSON of one count.
TEST_IN = streams.StreamSpec(
    "test.in", streams.per_underlying("test.in.v1"), streams.Payload.RAW, 512 * streams.MiB, ingress=True
)


def sums_key(u: str) -> str:
    """Hash: per-key sums kept by the counting agent."""
    return streams.per_underlying("test.sums").format(u=u)


def encode_count(value: dict[str, Any]) -> dict[str, Any]:
    """A test-stream entry carrying ``value`` (``key``, ``n``, and optionally ``poison``)."""
    return encode_raw(RawFrame(src="test", rx_ns=0, data=orjson.dumps(value)))


# One HINCRBY per distinct key, in one step function of the commit (one command carries the batch).
_ADD = """
for i = first, last, 2 do
  redis.call('HINCRBY', K[1], ARGV[i], ARGV[i + 1])
end
return (last - first + 1) / 2
"""


class PoisonError(ValueError):
    """Raised by the counting step for an entry marked poison (a test of isolation)."""


class Counter(Processor):
    def __init__(self, settings: Settings, underlying: str) -> None:
        self.sums_key = sums_key(underlying)
        self.step_s = float(os.environ.get("COUNT_STEP_S", "0"))

    def process(self, batch: Sequence[Entry]) -> Effects:
        if self.step_s:
            time.sleep(self.step_s)  # CPU-bound, as far as the event loop is concerned
        totals: dict[str, int] = {}
        for entry in batch:
            value: dict[str, Any] = orjson.loads(entry.value.data)
            if value.get("poison"):
                raise PoisonError(f"poison entry {entry.id}")
            totals[value["key"]] = totals.get(value["key"], 0) + int(value["n"])
        args: list[Any] = []
        for k, n in totals.items():
            args += [k, n]
        return Effects(scripts=[ScriptCall("add", _ADD, [self.sums_key], args)], events_out=len(batch))


COUNT = AgentSpec(
    name="count",
    reads=TEST_IN,
    writes=(),
    make=Counter,
    doc="Adds each entry's n to its key's sum (tests and benchmark of the runtime).",
)
# The same, stateful: one replica at a time per underlying, fenced by its lease.
LEASED = replace(COUNT, name="count.leased", stateful=True)


async def _main() -> None:
    settings = Settings()
    assert settings.redis_url, "MARKETSWARM_REDIS_URL is required"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    redis = create_redis(settings.redis_url, settings.block_ms)
    try:
        spec = LEASED if os.environ.get("COUNT_LEASED") == "1" else COUNT
        await Runtime(spec, settings, redis, Metrics(), stop=stop).run()
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(_main())
