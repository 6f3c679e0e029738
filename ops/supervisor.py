"""`marketswarm run`: the whole topology on one machine, one child process per agent kind.

Children are the same commands Kubernetes runs (`marketswarm agent NAME`, `marketswarm source KIND`,
`marketswarm gateway`), so a local run exercises the deployed shape. A child that dies is restarted
with backoff; so is the embedded server, on the same port (the children's URL stays valid, and they
resume by themselves: their Redis errors are retried). On SIGINT/SIGTERM the children get SIGTERM
(they drain their in-flight batch), then the embedded server stops last, flushing its append-only file.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

# A child that dies is restarted after this backoff, doubled per consecutive crash up to the cap:
# a crash loop (bad config, Redis gone) must not burn a core.
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
# A child that stayed up this long resets its backoff.
HEALTHY_AFTER_S = 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff_s: float = RESTART_BACKOFF_S
    restart_at: float | None = None
    restarts: int = field(default=0)


class Server(Protocol):
    """What the supervisor needs of the embedded server (ops/embedded.py)."""

    def alive(self) -> bool: ...

    def restart(self) -> str: ...


class Supervisor:
    def __init__(self, env: dict[str, str], grace_s: float, server: Server | None = None) -> None:
        self.env = env
        self.grace_s = grace_s
        self.children: list[Child] = []
        self.stopping = threading.Event()
        self.server = server
        self.server_backoff_s = RESTART_BACKOFF_S
        self.server_restart_at: float | None = None
        self.server_restarts = 0

    def add(self, name: str, *args: str) -> None:
        exe = shutil.which("marketswarm", path=str(Path(sys.executable).parent)) or "marketswarm"
        self.children.append(Child(name, [exe, *args]))

    def _spawn(self, child: Child) -> None:
        # New session: the terminal's Ctrl-C reaches only us; we stop children in order.
        child.proc = subprocess.Popen(child.argv, env=self.env, start_new_session=True)
        child.started = time.monotonic()
        child.restart_at = None

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        return self.supervise()

    def supervise(self) -> int:
        """Start the children and keep them (and the embedded server) running until ``stopping``."""
        for child in self.children:
            self._spawn(child)
        while not self.stopping.wait(0.2):
            now = time.monotonic()
            self._watch_server(now)
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    code = child.proc.returncode
                    if now - child.started > HEALTHY_AFTER_S:
                        child.backoff_s = RESTART_BACKOFF_S
                    log.error("%s exited with %s; restarting in %.0fs", child.name, code, child.backoff_s)
                    child.restart_at = now + child.backoff_s
                    child.backoff_s = min(child.backoff_s * 2, RESTART_BACKOFF_MAX_S)
                    child.proc = None
                    child.restarts += 1
                if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                    self._spawn(child)
        self.stop()
        return 0

    def _watch_server(self, now: float) -> None:
        if self.server is None or self.server.alive():
            return
        if self.server_restart_at is None:
            log.error("the embedded server exited; restarting it in %.0fs", self.server_backoff_s)
            self.server_restart_at = now + self.server_backoff_s
            return
        if now < self.server_restart_at:
            return
        try:
            self.server.restart()
        except Exception as exc:  # noqa: BLE001 - e.g. its port taken meanwhile: try again later
            self.server_backoff_s = min(self.server_backoff_s * 2, RESTART_BACKOFF_MAX_S)
            self.server_restart_at = time.monotonic() + self.server_backoff_s
            log.error("the embedded server did not restart (%s); trying again in %.0fs", exc, self.server_backoff_s)
            return
        self.server_restarts += 1
        self.server_restart_at, self.server_backoff_s = None, RESTART_BACKOFF_S
        log.warning("the embedded server is back (restart %d)", self.server_restarts)

    def stop(self) -> None:
        live = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for c in live:
            assert c.proc is not None
            c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + 5
        for c in live:
            assert c.proc is not None
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", c.name)
                c.proc.kill()
                c.proc.wait()


def auto_processes(cores: int | None = None) -> int:
    """Agent processes for one machine: one more than its cores. Each process pays a fixed price per
    entry it reads (event loop, round trips); on a 2-core machine, ten agent processes (one per
    kind) spend about 30% more CPU than three, and queue behind each other (`make bench` measured)."""
    return (cores or os.cpu_count() or 2) + 1


def group_agents(names: list[str], processes: int) -> list[list[str]]:
    """Agent kinds per process, dealt round-robin in data-flow order over ``processes`` (0 = auto:
    ``auto_processes()``); one kind per process when there are at least as many as kinds, the shape
    Kubernetes runs."""
    if processes <= 0:
        processes = auto_processes()
    if processes >= len(names):
        return [[n] for n in names]
    groups: list[list[str]] = [[] for _ in range(processes)]
    for i, n in enumerate(names):
        groups[i % processes].append(n)
    return groups


def child_env(redis_url: str, metrics_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MARKETSWARM_REDIS_URL"] = redis_url
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    return env
