"""The test suite's Redis Cluster: the embedded one (topology/embedded.py) with what tests do to it:
flush, find a slot's master, kill -9 and revive a node, migrate a slot."""

from __future__ import annotations

import contextlib
import time

import redis

from marketswarm.topology.shell.embedded import EmbeddedCluster


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
