"""Test fixtures: a real Redis/Valkey server for the session, flushed between tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from marketswarm.ops.embedded import EmbeddedServer, find_binary
from tests.cluster import LocalCluster
from tests.rig.realdata import real_data as unpack_real_data

REPO = Path(__file__).resolve().parents[1]


def _docker_reachable() -> bool:
    sock = "/var/run/docker.sock"
    if os.environ.get("DOCKER_HOST"):
        return True
    if not os.path.exists(sock):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(sock)
        return True
    except OSError:
        return False


def debian_tool(binary: str, package: str) -> str:
    """A tool from Debian's packages: found on PATH, or installed by the suite when it may (root with
    apt-get); the calling test is skipped, loudly, where neither is possible."""
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
        subprocess.run(install, check=True, env=env, capture_output=True)
        found = shutil.which(binary)
        if found:
            return found
    pytest.skip(f"{binary} (Debian's {package}) is not installed and cannot be installed here (needs root)")


@pytest.fixture(scope="session")
def debian_tools() -> Callable[[str, str], str]:
    """``debian_tools(binary, package)``: the path of a Debian tool, installed when missing."""
    return debian_tool


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The server the suite talks to, in order of preference:

    1. ``MARKETSWARM_TEST_REDIS_URL`` (an existing server; it is flushed!);
    2. a container through testcontainers when a Docker engine is reachable;
    3. a local binary on a free loopback port: ``MARKETSWARM_TEST_REDIS_SERVER`` if set (CI points it at
       Debian's Redis 7.0), else the embedded valkey-server, else redis-server on PATH.
    """
    url = os.environ.get("MARKETSWARM_TEST_REDIS_URL")
    if url:
        yield url
        return
    binary = os.environ.get("MARKETSWARM_TEST_REDIS_SERVER")
    if not binary and _docker_reachable() and os.environ.get("MARKETSWARM_TEST_DOCKER", "1") == "1":
        try:
            from testcontainers.redis import RedisContainer

            with RedisContainer("redis:7") as container:
                host = container.get_container_host_ip()
                port = container.get_exposed_port(6379)
                yield f"redis://{host}:{port}/0"
                return
        except Exception:  # no usable engine after all: fall through to a local binary
            pass
    tmp = Path(tempfile.mkdtemp(prefix="ms-test-redis-"))
    server = EmbeddedServer(tmp, binary=binary or find_binary(), appendonly=False, record=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A flushed server for one test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    yield redis_server


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real chains, provider shapes and reference values the repository carries (tests/rig/realdata.py)."""
    return unpack_real_data()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A cluster of 3 masters with 2 replicas each, of the suite's server binary on loopback (see
    tests/cluster.py): after a failover every master still has a replica to WAIT for."""
    cluster = LocalCluster(os.environ.get("MARKETSWARM_TEST_REDIS_SERVER") or find_binary(), replicas_per_master=2)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> str:
    """A flushed cluster for one test: the URL of one of its nodes."""
    redis_cluster.wait_ok()
    redis_cluster.flush()
    return redis_cluster.url
