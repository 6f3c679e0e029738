"""Exactly-once-ish, proven: a counting agent process SIGKILLed at 20 random moments loses nothing and
counts nothing twice; poison entries end in the dead-letter stream with their error."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import redis

from marketswarm.topology import streams
from tests.rig import counting
from tests.rig.counting import COUNT, TEST_IN, encode_count, sums_key

pytestmark = pytest.mark.integration

U = "KILL"
KEY = TEST_IN.key(U)
EVENTS = 100_000
KILLS = 20


def spawn(url: str, consumer: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "MARKETSWARM_REDIS_URL": url,
            "MARKETSWARM_UNDERLYINGS": U,
            "MARKETSWARM_CONSUMER": consumer,
            "MARKETSWARM_BATCH_SIZE": "500",
            "MARKETSWARM_BLOCK_MS": "200",
            "MARKETSWARM_MIN_IDLE_MS": "300",
            "MARKETSWARM_CLAIM_INTERVAL_MS": "200",
            "MARKETSWARM_MAX_DELIVERIES": "3",
        }
    )
    return subprocess.Popen([sys.executable, counting.__file__], env=env)


def test_sigkill_at_random_moments_loses_and_doubles_nothing(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    rng = random.Random(20261122)
    expected: dict[bytes, int] = {}
    poison_ids: set[bytes] = set()
    r.xgroup_create(KEY, COUNT.name, id="$", mkstream=True)
    pipe = r.pipeline(transaction=False)
    for i in range(EVENTS):
        if i % 20_000 == 777:  # five poison entries: the step raises on them
            pipe.xadd(KEY, encode_count({"key": "k0", "n": 10**6, "poison": True}))
        elif i % 25_000 == 999:  # four undecodable entries
            pipe.xadd(KEY, {"kind": "test", "v": "1", "data": b"{not json"})
        else:
            k, n = f"k{rng.randrange(100)}", rng.randrange(1, 10)
            expected[k.encode()] = expected.get(k.encode(), 0) + n
            pipe.xadd(KEY, encode_count({"key": k, "n": n}))
        if i % 5000 == 4999:
            ids = pipe.execute()
            poison_ids.update(ids[j] for j in range(len(ids)) if (i - 4999 + j) % 20_000 == 777)
            poison_ids.update(ids[j] for j in range(len(ids)) if (i - 4999 + j) % 25_000 == 999)
    assert len(poison_ids) == 9

    for k in range(KILLS):
        proc = spawn(redis_url, consumer=f"counter-{k % 3}")  # new names leave PELs for XAUTOCLAIM
        time.sleep(rng.uniform(0.4, 1.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    proc = spawn(redis_url, consumer="counter-final")
    try:
        deadline = time.monotonic() + 120
        while not r.exists(streams.heartbeat_key(COUNT.name, "counter-final")) and time.monotonic() < deadline:
            time.sleep(0.05)  # running, with its signal handlers installed
        while time.monotonic() < deadline:
            group = r.xinfo_groups(KEY)[0]
            if group["lag"] == 0 and group["pending"] == 0:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    group = r.xinfo_groups(KEY)[0]
    assert group["pending"] == 0
    assert group["lag"] == 0
    assert r.hgetall(sums_key(U)) == {k: str(v).encode() for k, v in expected.items()}
    dead = r.xrange(streams.dlq_key(KEY))
    assert {f[b"id"] for _, f in dead} == poison_ids
    for _, fields in dead:
        assert fields[b"error"], fields
        assert b"PoisonError" in fields[b"error"] or b"undecodable" in fields[b"error"] or b"died" in fields[b"error"]
    r.close()
