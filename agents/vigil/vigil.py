"""The alerts agent: the rules (schemas/alerts.py) run on every version of an underlying's GEX model.

``vigil`` follows the GEX diffs (topology/following.py holds the model as columns and checkpoints
it), observes each version (spot, flip, walls, and the market mode and dealer gravity computed from
it as the derived models do) and appends each alert a rule fires to ``ms:{U}:alerts.v1`` with id
``<event ms>-<n>``, in the commit of the diffs that fired it. The rules' state goes in the same
commit whenever it changed (``streams.vigil_state_key``), so a restore re-applies the diffs acked
since only to the model, and a replay fires the same alerts at the same times. Delivery (webhooks,
the dashboard) reads the stream and never holds up this agent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from marketswarm.schemas import alerts, codec
from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec, Count, Effects, Entry, Output
from marketswarm.topology.following import Following


class Vigil(Following):
    source = streams.Strategy.GEX

    def __init__(self, u: str, rules: alerts.RuleSet) -> None:
        self.rules = rules
        self.state_key = streams.vigil_state_key(u)
        super().__init__(u, streams.vigil_checkpoint_key(u))

    def _clear(self) -> None:
        super()._clear()
        self.engine = alerts.Engine(self.u, self.rules)
        self.last_id = (0, -1)  # the last alert's id (ms, seq): ids only grow
        self.changed = False

    def own_reads(self) -> list[tuple[Any, ...]]:
        return [("GET", self.state_key)]

    def load_own(self, replies: Sequence[Any]) -> None:
        if replies[0] is not None:
            saved = orjson.loads(replies[0])
            self.engine = alerts.Engine(self.u, self.rules, saved["rules"])
            self.last_id = (int(saved["last_id"][0]), int(saved["last_id"][1]))

    def on_version(self, effects: Effects) -> int:
        m = self.model
        if m.geometry is None:
            strikes, vals = np.zeros(0), np.zeros((0, 3))
        else:
            strikes, vals = m.geometry.strikes_x1000() / 1000.0, m.vals
        obs = alerts.observe(m.version, m.meta, strikes, vals)
        if obs is None:
            return 0
        before = orjson.dumps(self.engine.state)
        fired = self.engine.step(obs)
        self.changed |= fired != [] or orjson.dumps(self.engine.state) != before
        if self.engine.suppressed:
            effects.counts.append(Count("alerts_suppressed", (self.u,), self.engine.suppressed))
        for a in fired:
            ms = a.t_ns // 1_000_000
            self.last_id = (ms, 0) if ms > self.last_id[0] else (self.last_id[0], self.last_id[1] + 1)
            ms, seq = self.last_id
            spec = streams.ALERTS
            effects.outputs.append(Output(spec, spec.key(self.u), codec.encode_alert(a), id=f"{ms}-{seq}"))
            effects.counts += [
                Count("alerts_fired", (self.u, a.rule, a.severity)),
                Count("alert_commit_seconds", (self.u,), a.t_ns, "since"),
            ]
        return len(fired)

    def process(self, batch: Sequence[Entry]) -> Effects:
        effects = super().process(batch)
        if self.changed:
            state = {"rules": self.engine.state, "last_id": list(self.last_id)}
            effects.commands.append(("SET", self.state_key, orjson.dumps(state)))
            self.changed = False
        return effects


def _make(settings: Any, u: str) -> Vigil:
    return Vigil(u, alerts.load_rules(settings.rules or alerts.DEFAULT_RULES).rules)


VIGIL = AgentSpec(
    name="vigil",
    reads=streams.DIFFS[streams.Strategy.GEX],
    writes=(streams.ALERTS,),
    make=_make,
    stateful=True,
    doc="Alerts: the rules file's rules on every GEX version (flip, walls, market mode, gravity), in event time.",
)
