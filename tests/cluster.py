"""The test suite's Redis Cluster: embedded servers (ops/embedded.py) formed into a cluster,
and what tests do to it: flush, find a slot's master, kill -9 and revive a node, migrate a slot. The
benchmark's cluster suite uses it too."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import redis

from marketswarm.ops.embedded import EmbeddedServer, find_binary, free_port

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


class LocalCluster(EmbeddedCluster):
    def flush(self) -> None:
        for m in range(len(self.servers)):
            if self.is_master(m):
                self.client(m).flushall()

    def is_master(self, i: int) -> bool:
        """Server ``i`` runs and is a master now (a failover may have promoted a replica)."""
        return self.servers[i].proc is not None and self.client(i).execute_command("ROLE")[0] in (b"master", "master")

    def master_of(self, key: str) -> int:
        """The index of the server that owns ``key``'s slot now (by its own account, and agreed by
        the others' slot maps)."""
        slot = int(self.client(0 if self.servers[0].proc else 1).execute_command("CLUSTER", "KEYSLOT", key))
        for i, s in enumerate(self.servers):
            if s.proc is None:
                continue
            for line in self.client(i).execute_command("CLUSTER", "NODES").decode().splitlines():
                parts = line.split()
                if "myself" not in parts[2] or "master" not in parts[2]:
                    continue
                for r in parts[8:]:
                    lo, _, hi = r.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        return i
        raise LookupError(key)

    def migrate_slot_of(self, key: str, to: int, batch: int = 10, pause_s: float = 0.0) -> int:
        """Move the slot of ``key`` to master ``to`` as redis-cli --cluster reshard does: IMPORTING and
        MIGRATING, MIGRATE of its keys a few at a time, then SETSLOT NODE everywhere. Returns the
        number of keys moved."""
        src = self.master_of(key)
        assert src != to
        a, b = self.client(src), self.client(to)
        slot = int(a.execute_command("CLUSTER", "KEYSLOT", key))
        a_id, b_id = a.execute_command("CLUSTER", "MYID"), b.execute_command("CLUSTER", "MYID")
        b.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", a_id)
        a.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", b_id)
        moved = 0
        while True:
            keys = a.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            a.execute_command("MIGRATE", "127.0.0.1", self.servers[to].port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause_s)
        for c in (b, a):
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", b_id)
        for i, s in enumerate(self.servers):
            if s.proc is not None and i not in (src, to):
                with contextlib.suppress(redis.ResponseError):  # replicas learn it from their masters
                    self.client(i).execute_command("CLUSTER", "SETSLOT", slot, "NODE", b_id)
        return moved

    def kill(self, i: int) -> None:
        """kill -9 of one server."""
        proc = self.servers[i].proc
        assert proc is not None
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
        self.servers[i].proc = None

    def revive(self, i: int) -> None:
        """Start a killed server again: it rejoins from its nodes.conf (as a replica of whoever
        took its slots)."""
        self.servers[i].start()
        self._wait(lambda: self.client(i).info("replication").get("role") == "slave")
        self.wait_ok()
