"""The topology over TLS (``rediss://``) with a password in the URL, on Debian's redis-server (built
with TLS; the embedded valkey-server is not)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from marketswarm.agents import catalog
from marketswarm.agents.sources.files import read_inputs, write_recorded
from marketswarm.ops.embedded import free_port
from marketswarm.ops.inprocess import run_until_idle
from marketswarm.topology import streams
from marketswarm.topology.connections import create_redis, ensure_group
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.reading import read_model
from marketswarm.topology.settings import Settings

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-tls"


def make_certs(d: Path, openssl: str) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 signed by it."""

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ms-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "san.ext", "-out", "server.crt")  # fmt: skip
    return d / "ca.crt", d / "server.crt", d / "server.key"


@pytest.fixture(scope="module")
def tls_url(tmp_path_factory: pytest.TempPathFactory, debian_tools: Callable[[str, str], str]) -> Iterator[str]:
    server = debian_tools("redis-server", "redis-server")
    openssl = debian_tools("openssl", "openssl")
    d = tmp_path_factory.mktemp("tls")
    ca, crt, key = make_certs(d, openssl)
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--tls-cert-file", str(crt),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
         "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(d)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"rediss://default:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.skip(f"{server} cannot serve TLS here: {err[-500:]}")
        try:
            if redis.Redis.from_url(url, socket_timeout=2).ping():
                break
        except redis.RedisError:
            assert time.monotonic() < deadline, "the TLS server did not answer"
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(d, ignore_errors=True)


def test_topology_over_tls_with_a_password(tls_url: str, real_data: Path) -> None:
    asyncio.run(_topology(tls_url, real_data))
    env = dict(os.environ, MARKETSWARM_REDIS_URL=tls_url, MARKETSWARM_UNDERLYINGS="QQQ")
    done = subprocess.run([sys.executable, "-m", "marketswarm.ops", "inspect", "--json"], env=env,
                          capture_output=True)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"***@127.0.0.1" in done.stdout  # the password is masked
    plain = redis.Redis(port=int(tls_url.split(":")[3].split("/")[0]), socket_timeout=2)
    with pytest.raises(redis.RedisError):
        plain.ping()  # no plain-text port


async def _topology(tls_url: str, real_data: Path) -> None:
    frames = read_inputs([real_data / "cboe/qqq_2023-05-26_1721ET.csv"])
    st = Settings(underlyings=["QQQ"], idle_flush=False, block_ms=100, consumer="tls-test")
    client = create_redis(tls_url)
    try:
        assert client.connection_pool.connection_class.__name__ == "SSLConnection"
        for spec in catalog.agents():
            await ensure_group(client, spec.reads.key("QQQ"), spec.name)
        await write_recorded(client, frames, settings=st)
        await run_until_idle(tls_url, st, ["QQQ"], metrics=Metrics(CollectorRegistry()), timeout_s=300)
        for s in streams.STRATEGIES:
            body = await read_model(client, "QQQ", s)
            assert body is not None and orjson.loads(body)["version"] >= 1
        # The keeper's own (blocking) connection spoke TLS too: the stateful agents' heartbeats.
        assert await client.exists(streams.heartbeat_key("publish.gex", "tls-test"))
    finally:
        await client.aclose()
