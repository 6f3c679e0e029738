"""The alerts agents: the rules (schemas/rules.py) run on every version of the model each one watches.

One agent per watched model and underlying, each a follower of that model's diffs
(topology/following.py holds the model and checkpoints it): ``vigil`` follows GEX (spot, flip,
walls, and the market mode and dealer gravity computed from it as the derived models do),
``vigil.intent`` the liquidity intent model (the 5-minute trade flow), ``vigil.best-flies`` the best
butterflies. Each appends the alerts its rules fire to its own alerts stream (``streams.ALERTS``),
id ``<event ms>-<n>``, in the commit of the diffs that fired them; one writer per stream keeps the
ids in event time and a replay byte-identical. The rules' state goes in the same commit whenever it
changed (``streams.vigil_state_key``), so a restore re-applies the diffs acked since only to the
model, and fires nothing twice. Delivery (webhooks, the dashboard) reads the streams and never holds
up an agent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from marketswarm.schemas import alerts, codec, rules
from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec, Count, Effects, Entry, Output
from marketswarm.topology.following import Following


class Vigil(Following):
    """The rules watching ``source``, for one underlying."""

    watched: str  # the model's name in alerts.WATCHED

    def __init__(self, u: str, ruleset: alerts.RuleSet) -> None:
        self.ruleset = ruleset
        self.state_key = streams.vigil_state_key(u, self.watched)
        self.spec = streams.ALERTS[self.watched]
        super().__init__(u, streams.vigil_checkpoint_key(u, self.watched))

    def _clear(self) -> None:
        super()._clear()
        self.engine = self.make_engine(None)
        self.last_id = (0, -1)  # the last alert's id (ms, seq): ids only grow
        self.changed = False

    def make_engine(self, state: dict[str, Any] | None) -> Any:
        raise NotImplementedError

    def fired(self) -> list[alerts.Alert]:
        """The alerts of the followed model's new version (``self.model``)."""
        raise NotImplementedError

    def own_reads(self) -> list[tuple[Any, ...]]:
        return [("GET", self.state_key)]

    def load_own(self, replies: Sequence[Any]) -> None:
        if replies[0] is not None:
            saved = orjson.loads(replies[0])
            self.engine = self.make_engine(saved["rules"])
            self.last_id = (int(saved["last_id"][0]), int(saved["last_id"][1]))

    def on_version(self, effects: Effects) -> int:
        before = orjson.dumps(self.engine.state)
        fired = self.fired()
        self.changed |= fired != [] or orjson.dumps(self.engine.state) != before
        if self.engine.suppressed:
            effects.counts.append(Count("alerts_suppressed", (self.u,), self.engine.suppressed))
        for a in fired:
            ms = a.t_ns // 1_000_000
            self.last_id = (ms, 0) if ms > self.last_id[0] else (self.last_id[0], self.last_id[1] + 1)
            ms, seq = self.last_id
            effects.outputs.append(Output(self.spec, self.spec.key(self.u), codec.encode_alert(a), id=f"{ms}-{seq}"))
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


class GexVigil(Vigil):
    source, watched = streams.Strategy.GEX, "gex"

    def make_engine(self, state: dict[str, Any] | None) -> rules.GexRules:
        return rules.GexRules(self.u, self.ruleset, state)

    def fired(self) -> list[alerts.Alert]:
        m = self.model
        if m.geometry is None:
            strikes, vals = np.zeros(0), np.zeros((0, 3))
        else:
            strikes, vals = m.geometry.strikes_x1000() / 1000.0, m.vals
        obs = rules.observe(m.version, m.meta, strikes, vals)
        return [] if obs is None else list(self.engine.step(obs))


class DocumentVigil(Vigil):
    """Rules on a derived model: its version's header is the whole document."""

    def fired(self) -> list[alerts.Alert]:
        h = self.model.meta
        return list(self.engine.step(self.model.version, int(h["asof_ns"]), h))


class IntentVigil(DocumentVigil):
    source, watched = streams.Derived.INTENT, "intent"

    def make_engine(self, state: dict[str, Any] | None) -> rules.FlowRules:
        return rules.FlowRules(self.u, self.ruleset, state)


class FliesVigil(DocumentVigil):
    source, watched = streams.Derived.BEST_FLIES, "best_flies"

    def make_engine(self, state: dict[str, Any] | None) -> rules.FliesRules:
        return rules.FliesRules(self.u, self.ruleset, state)


def _maker(kind: type[Vigil]) -> Any:
    def make(settings: Any, u: str) -> Vigil:
        return kind(u, alerts.load_rules(settings.rules or alerts.DEFAULT_RULES).rules)

    return make


def _spec(name: str, kind: type[Vigil], doc: str) -> AgentSpec:
    return AgentSpec(
        name=name,
        reads=streams.DIFFS[kind.source],
        writes=(streams.ALERTS[kind.watched],),
        make=_maker(kind),
        stateful=True,
        doc=doc,
    )


VIGIL_AGENTS = (
    _spec("vigil", GexVigil, "Alerts on every GEX version: spot and the flip, the walls, market mode, gravity."),
    _spec(
        "vigil.intent", IntentVigil, "Alerts on every intent version: the 5-minute net premium, total and by strike."
    ),
    _spec("vigil.best-flies", FliesVigil, "Alerts on every best-flies version: a fly worth buying enters the list."),
)
