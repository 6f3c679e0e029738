"""The topology with one least-privilege user per role (ops/redis/users.acl) on a server with ACLs on."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from marketswarm.agents import catalog
from marketswarm.agents.sources.files import Recorded, read_inputs, write_recorded
from marketswarm.ops.embedded import EmbeddedServer, find_binary, free_port
from marketswarm.ops.inprocess import run_until_idle
from marketswarm.topology import streams
from marketswarm.topology.connections import create_redis, ensure_group
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.observe import group_rows
from marketswarm.topology.reading import read_model
from marketswarm.topology.settings import Settings
from tests.conftest import REPO
from tests.integration.test_replay import sim_capture

pytestmark = pytest.mark.integration

ACL_FILE = REPO / "ops" / "redis" / "users.acl"
ROLES = ("source", "agent", "gateway", "operator")


@pytest.fixture(scope="module")
def acl_server() -> Iterator[dict[str, str]]:
    """A server of its own with the project's users (and an admin for the test's own checks); the
    default user is off. Yields the URL of each role."""
    tmp = Path(tempfile.mkdtemp(prefix="ms-test-acl-"))
    server = EmbeddedServer(tmp, binary=os.environ.get("MARKETSWARM_TEST_REDIS_SERVER") or find_binary(),
                            appendonly=False, record=False)  # fmt: skip
    server.start()
    try:
        admin = redis.Redis(port=server.port)
        admin.execute_command("ACL", "SETUSER", "ms-test-admin", "on", ">admin", "~*", "&*", "+@all")
        admin.execute_command("AUTH", "ms-test-admin", "admin")
        for line in ACL_FILE.read_text().splitlines():
            words = line.split()
            if not words:
                continue
            assert words[0] == "user"
            rules = [w.replace("CHANGE-ME-", "pw-") for w in words[2:]]
            admin.execute_command("ACL", "SETUSER", words[1], "reset", *rules)
        admin.close()
        urls = {role: f"redis://ms-{role}:pw-{role}@127.0.0.1:{server.port}/0" for role in ROLES}
        urls["admin"] = f"redis://ms-test-admin:admin@127.0.0.1:{server.port}/0"
        yield urls
    finally:
        server.proc.kill() if server.proc else None  # the default user is off: SIGKILL, not SHUTDOWN
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_every_role_does_its_work_and_nothing_more(acl_server: dict[str, str], tmp_path: Path,
                                                  real_data: Path) -> None:  # fmt: skip
    admin = redis.Redis.from_url(acl_server["admin"])
    admin.execute_command("ACL", "LOG", "RESET")
    inputs = [real_data / "cboe/ndx_2024-03-22_2140ET.csv", sim_capture(tmp_path / "spx.jsonl")]
    frames = read_inputs(inputs)
    us = sorted({f.underlying for f in frames})
    asyncio.run(_source_agents_gateway(acl_server, frames, us))

    # The gateway process itself, as a reader of everything it serves.
    port = free_port()
    env = dict(os.environ, MARKETSWARM_REDIS_URL=acl_server["gateway"], MARKETSWARM_UNDERLYINGS=",".join(us),
               MARKETSWARM_GATEWAY_PORT=str(port))  # fmt: skip
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "marketswarm.ops", "gateway"], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        for path in ("/readyz", "/metrics", "/api/underlyings", "/api/gex/NDX", "/api/models/SPX/butterfly",
                     "/api/geometry/SPX/vertical"):  # fmt: skip
            assert httpx.get(base + path, timeout=10).status_code == 200, path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)

    env = dict(os.environ, MARKETSWARM_REDIS_URL=acl_server["operator"], MARKETSWARM_UNDERLYINGS=",".join(us))
    for cmd in (["inspect", "--json"], ["offsets", "show", "--json"]):
        done = subprocess.run([sys.executable, "-m", "marketswarm.ops", *cmd], env=env, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-2000:]

    refused = admin.execute_command("ACL", "LOG")
    assert refused == [], refused  # no command of any role was refused
    gateway_sync = redis.Redis.from_url(acl_server["gateway"])
    with pytest.raises(redis.exceptions.NoPermissionError):
        gateway_sync.set(streams.spot_key("SPX"), "x")  # read only
    gateway_sync.close()
    for role in ("source", "agent", "gateway"):  # and none may touch another application's keys
        client = redis.Redis.from_url(acl_server[role])
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.get("other:key")
        client.close()
    assert not sum(admin.xlen(streams.dlq_key(spec.reads.key(u))) for spec in catalog.agents() for u in us)
    admin.close()


async def _source_agents_gateway(acl_server: dict[str, str], frames: list[Recorded], us: list[str]) -> None:
    """Groups (operator), input (source), the whole topology (agents), the models (gateway)."""
    st = Settings(underlyings=us, idle_flush=False, block_ms=100, min_replicas_ack=0)
    # The operator creates the groups (as `marketswarm run` would before the sources start).
    operator = create_redis(acl_server["operator"])
    for spec in catalog.agents():
        for u in us:
            await ensure_group(operator, spec.reads.key(u), spec.name)
    await operator.aclose()

    source = create_redis(acl_server["source"])
    await write_recorded(source, frames, settings=st)
    await source.aclose()

    await run_until_idle(acl_server["agent"], st, us, metrics=Metrics(CollectorRegistry()), timeout_s=300)

    gateway = create_redis(acl_server["gateway"])
    try:
        for u in us:
            for s in streams.STRATEGIES:
                body = await read_model(gateway, u, s)
                assert body is not None and orjson.loads(body)["version"] >= 1, (u, s)
        rows = await group_rows(gateway, us, catalog.agents())
        assert all(r["exists"] and r["lag"] == 0 and r["pending"] == 0 for r in rows)
    finally:
        await gateway.aclose()
