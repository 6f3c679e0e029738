"""The derived model agents: market mode, dealer gravity, liquidity intent and best butterflies.

Each is its own pipeline, with its own consumer group and the publisher of its own model
(agents/derive/publishing.py):

* ``derive.market-mode`` and ``derive.gravity`` follow the GEX model's diffs: a document per GEX
  version (schemas/levels.py), published when it changed.
* ``derive.best-flies`` follows the butterfly heatmap's diffs: a document per butterfly version
  (agents/derive/flies.py), with the dealer gravity in force looked up (a side input).
* ``derive.intent`` reads the changes stream: every quote and counted print makes the trade flow
  (agents/derive/flow.py); the structure layer is computed from the GEX model looked up (a side
  input). It publishes at most one version per ``INTENT_INTERVAL_S`` of event time, and what
  changed after the last one when input goes quiet (or at the end of a replay). Its flow is
  checkpointed every ``CHECKPOINT_EVERY_S`` of event time; a restore re-applies the changes
  acknowledged since.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from marketswarm.agents.derive import flies
from marketswarm.agents.derive.flow import Flow
from marketswarm.agents.derive.publishing import Follower, ModelView, Versions, derived_writes
from marketswarm.schemas import levels
from marketswarm.schemas.documents import HEADER_FIELD
from marketswarm.schemas.events import ChangeBatch, FillChange, QuoteChange, SpotChange
from marketswarm.schemas.markettime import expiry_close_ns
from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec, Count, Effects, Entry, Processor, Resume
from marketswarm.topology.published import CHECKPOINT_EVERY_S, Published

INTENT_INTERVAL_S = 1.0  # event time between versions of the intent model
READ_EVERY_S = 0.25  # intent and best flies read their input at most this often (not latency-critical)
Derived = streams.Derived


def gex_rows(model: Published) -> levels.GexRows | None:
    """A GEX model's rows and header fields; None before it has a spot."""
    h = model.meta
    if h.get("spot") is None:
        return None
    if model.geometry is None:
        return levels.GexRows.of(h, np.zeros(0), np.zeros((0, 3)))
    return levels.GexRows.of(h, model.geometry.strikes_x1000() / 1000.0, model.vals)


class MarketMode(Follower):
    source, name = streams.Strategy.GEX, Derived.MARKET_MODE

    def compute(self) -> dict[str, Any] | None:
        g = gex_rows(self.model)
        if g is None:
            return None
        h = self.model.meta
        return {**levels.market_mode(g), "stale": h.get("stale", False), "vix": h.get("vix"), "regime": h.get("regime")}


class Gravity(Follower):
    source, name = streams.Strategy.GEX, Derived.GRAVITY

    def compute(self) -> dict[str, Any] | None:
        g = gex_rows(self.model)
        return None if g is None or self.model.geometry is None else levels.gravity(g)


class BestFlies(Follower):
    source, name = streams.Strategy.BUTTERFLY, Derived.BEST_FLIES

    def __init__(self, underlying: str, history: bool = True) -> None:
        super().__init__(underlying, history)
        self.gravity: dict[str, Any] | None = None
        self.gravity_key = streams.model_key(underlying, Derived.GRAVITY)
        self.closes: tuple[str, dict[str, int]] = ("", {})  # per epoch: each expiry's close
        self.among: tuple[tuple[str, tuple[str, ...]], flies.Candidates] | None = None
        self.last: tuple[Any, dict[str, Any]] | None = None  # (inputs, document) of the last compute

    def _clear(self) -> None:
        super()._clear()
        self.last = None  # the model is reloaded: the last document may be of a state never committed

    def side_reads(self) -> Sequence[tuple[Any, ...]]:
        return [*super().side_reads(), ("HGET", self.gravity_key, HEADER_FIELD)]

    def take_side(self, replies: Sequence[Any]) -> None:
        super().take_side(replies[:-1])
        self.gravity = orjson.loads(replies[-1]) if replies[-1] is not None else None

    def compute(self) -> dict[str, Any] | None:
        """Recomputed only when the diff touched a tile of the nearest expiries, or those expiries or
        the gravity in force changed: otherwise the document is the last one."""
        m, diff = self.model, self.diff
        if m.geometry is None or diff is None:
            return None
        g = self.gravity or {}
        asof = int(m.meta["asof_ns"])
        if self.closes[0] != m.geometry.epoch:
            self.closes = (m.geometry.epoch, {e: expiry_close_ns(e) for e in set(m.geometry.expiries)})
        expiries = tuple(sorted(e for e, c in self.closes[1].items() if c > asof)[: flies.EXPIRIES])
        if self.among is None or self.among[0] != (m.geometry.epoch, expiries):
            self.among = ((m.geometry.epoch, expiries), flies.Candidates.of(m.geometry, list(expiries)))
        among = self.among[1]
        inputs = (self.among[0], g.get("level"), g.get("em"), g.get("spot"), m.meta.get("regime"))
        touched = diff.reset or diff.cols.dense or bool(among.mask[diff.cols.positions()].any())
        if self.last is not None and self.last[0] == inputs and not touched:
            return self.last[1]
        vix, regime = m.meta.get("vix"), m.meta.get("regime")
        doc = {
            "spot": g.get("spot"),
            "gravity": {"level": g.get("level"), "em": g.get("em")},
            "vix": vix,
            "regime": regime,
            "expiries": list(expiries),
            "flies": flies.best_flies(m.geometry, m.vals, asof, g, among, regime),
        }
        self.last = (inputs, doc)
        return doc


class Intent(Processor):
    def __init__(self, underlying: str, history: bool = True) -> None:
        self.u = underlying
        self.versions = Versions(underlying, Derived.INTENT, history)
        self.checkpoint = streams.derive_checkpoint_key(underlying, Derived.INTENT)
        self.gex = ModelView(underlying, streams.Strategy.GEX)
        self.max_hold_s = INTENT_INTERVAL_S
        self._clear()

    def _clear(self) -> None:
        self.flow = Flow()
        self.dirty = False
        self.published_ns = 0
        self.checkpoint_ns = 0
        self.structure: tuple[int, dict[str, Any] | None] = (-1, None)

    def state_reads(self) -> Sequence[tuple[Any, ...]]:
        return [("HMGET", self.checkpoint, streams.STATE_FIELD, streams.THROUGH_FIELD), *self.versions.reads()]

    def load(self, replies: Sequence[Any]) -> Sequence[Resume]:
        self._clear()
        state, through = replies[0]
        if state is not None:
            self.flow = Flow.load(state)
            self.checkpoint_ns = self.flow.now_ns
        self.versions.load(replies[1:])
        self.published_ns = self.versions.asof_ns
        self.dirty = True  # compared with the last version when next published
        return [Resume(streams.CHANGES, through.decode() if through is not None else "0-0")]

    def reapply(self, stream: streams.StreamSpec, entries: Sequence[Entry]) -> Sequence[Resume]:
        for entry in entries:
            self._apply(entry.value)
        return ()

    def side_reads(self) -> Sequence[tuple[Any, ...]]:
        return self.gex.reads()

    def take_side(self, replies: Sequence[Any]) -> None:
        self.gex.take(replies)
        if self.gex.model.version != self.structure[0]:
            g = gex_rows(self.gex.model)
            self.structure = (self.gex.model.version, None if g is None else levels.structure(g))
            self.dirty = True

    def _apply(self, cb: ChangeBatch) -> None:
        flow = self.flow
        for ch in cb.changes:
            if isinstance(ch, QuoteChange):
                flow.quote(ch)
            elif isinstance(ch, FillChange):
                self.dirty |= flow.fill(ch)
            elif not isinstance(ch, SpotChange):
                continue
            if ch.ts_ns > flow.now_ns and not getattr(ch, "rx_time", False):  # provider time moves the windows
                flow.advance(ch.ts_ns)
                self.dirty = True

    def process(self, batch: Sequence[Entry]) -> Effects:
        effects = Effects()
        prints = self.flow.prints
        published = 0
        for entry in batch:
            self._apply(entry.value)
            if self.dirty and self.flow.now_ns - self.published_ns >= INTENT_INTERVAL_S * 1e9:
                published += self._publish(effects)
        if batch and self.flow.now_ns - self.checkpoint_ns >= CHECKPOINT_EVERY_S * 1e9:
            effects.commands.append(
                ("HSET", self.checkpoint, streams.STATE_FIELD, self.flow.dump(), streams.THROUGH_FIELD, batch[-1].id)
            )
            self.checkpoint_ns = self.flow.now_ns
        counted = self.flow.prints - prints
        effects.counts = self.versions.counts(published)
        if counted:
            effects.counts.append(Count("trade_flow_prints", (self.u,), counted))
        effects.events_out = published
        return effects

    def _publish(self, effects: Effects) -> bool:
        self.dirty = False
        h = self.gex.model.meta
        fields = {"spot": h.get("spot"), "structure": self.structure[1], "flow": self.flow.view()}
        if not self.versions.publish(effects, fields, str(h.get("epoch", "")), self.flow.now_ns):
            return False
        self.published_ns = self.flow.now_ns
        return True

    def holding(self) -> bool:
        return self.dirty and self.flow.now_ns > 0

    def flush(self) -> Effects | None:
        if not self.holding():
            return None
        effects = Effects()
        published = self._publish(effects)
        effects.events_out = int(published)
        effects.counts = self.versions.counts(int(published))
        return effects if effects.outputs else None


# The intent agent takes quotes, counted prints, and anything that moves event time; not last trades.
def _intent_wants(fields: Mapping[bytes, bytes]) -> bool:
    return any(tag in fields.get(b"data", b"") for tag in (b'"c":"q"', b'"c":"f"', b'"c":"s"'))


# In data-flow order, the one that reads every changes entry (intent) second: `marketswarm run` deals
# agent kinds round-robin over its processes (ops/supervisor.py), and in this order it
# shares a process with the lightest of the changes readers instead of with normalize.
DERIVED_AGENTS = (
    AgentSpec(
        name="derive.market-mode",
        reads=streams.DIFFS[streams.Strategy.GEX],
        writes=derived_writes(Derived.MARKET_MODE),
        make=lambda settings, u: MarketMode(u, settings.history),
        stateful=True,
        doc="Market mode (compression, expansion, transition) and its score, per GEX version.",
    ),
    AgentSpec(
        name="derive.intent",
        reads=streams.CHANGES,
        writes=derived_writes(Derived.INTENT),
        make=lambda settings, u: Intent(u, settings.history),
        stateful=True,
        doc="Liquidity intent: GEX structure (bias, pin) and the trade flow bought/sold by strike.",
        accepts=_intent_wants,
        looks_up=(streams.DIFFS[streams.Strategy.GEX],),
        read_every_s=READ_EVERY_S,
    ),
    AgentSpec(
        name="derive.gravity",
        reads=streams.DIFFS[streams.Strategy.GEX],
        writes=derived_writes(Derived.GRAVITY),
        make=lambda settings, u: Gravity(u, settings.history),
        stateful=True,
        doc="Dealer gravity: expected move, the level dealers pull towards, the walls' band, per GEX version.",
    ),
    AgentSpec(
        name="derive.best-flies",
        reads=streams.DIFFS[streams.Strategy.BUTTERFLY],
        writes=derived_writes(Derived.BEST_FLIES),
        make=lambda settings, u: BestFlies(u, settings.history),
        stateful=True,
        doc="The top butterflies of the nearest expiries by reward/risk and dealer gravity, per butterfly version.",
        max_batch=20,
        looks_up=(streams.DIFFS[Derived.GRAVITY],),
        read_every_s=READ_EVERY_S,
    ),
)
