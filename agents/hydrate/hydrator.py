"""The hydrate agent: owns epochs and admits values into the live market state, atomically in Redis.

A chain snapshot declares topology: its geometry (the set of listed contracts: expiries x strikes x
sides) hashes to an epoch id. A new geometry creates a warming epoch, carries the newer values of
the active epoch over, applies the snapshot's values and is promoted by one pointer switch; the old
epoch is retired with a TTL. Quotes and trades never create structure: an event for a contract
outside the active epoch is counted (outcome X) and dropped.

Admission, per contract slot (``q`` bid/ask, ``t`` last trade, ``g`` chain analytics) and for spot:
A a new slot is admitted; B an existing slot takes only a strictly newer (event time, sequence);
C older or equal is discarded. Times are the provider's: a value it gave no time (a chain quote
without ``last_updated``) goes in at the poll's time but never beats a provider-timed one, so a poll
cannot overwrite a newer streamed quote or spot with an older value (``newness``). Each distinct fill
adds its size to the volume once (a fill ledger keyed by symbol, time, sequence, price and size, kept
for ``fill_window_s`` of event time), and only when its conditions count toward volume; only prints
whose conditions allow it set the last trade (schemas/trade_conditions.py).

All of it runs as a step function of the batch's commit script (topology/commit.py), before its XACK,
so replicas and redelivery cannot regress state. The step itself only builds the function's keys and
arguments; every key it touches is declared, including the epochs' hashes: the step names the active
epoch it read at restore, and the script refuses the batch (MSCONFLICT, before writing) when another
replica promoted one since, so the runtime restores and steps again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any, NamedTuple

import orjson

from marketswarm.schemas import codec, trade_conditions
from marketswarm.schemas.events import (
    ChainSnapshot,
    EpochChange,
    EventBatch,
    FillChange,
    GreeksChange,
    ProviderStatus,
    Quote,
    QuoteChange,
    Spot,
    SpotChange,
    Trade,
    TradeChange,
    VolChange,
    VolIndex,
)
from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec, Count, Effects, Entry, Processor, Resume, ScriptCall
from marketswarm.topology.settings import Settings

SCRIPT = resources.files("marketswarm.agents.hydrate").joinpath("hydrate.lua").read_text()
OUTCOMES = ("A", "B", "C", "X")


NEWNESS_TS_MAX = 10**19 - 1
NEWNESS_SEQ_MAX = 10**12 - 1
# Geometry plausibility: a snapshot listing fewer than this share of the active epoch's contracts (one
# page of a multi-page poll, a truncated response) is held, its values admitted into the active
# epoch, until the same geometry has come in every snapshot for SHRINK_CONFIRM_S of event time (a
# real change persists over polls; a burst of copies confirms nothing).
SHRINK_CONFIRM_RATIO = 0.5
SHRINK_CONFIRM_S = 20


def newness(ts_ns: int, seq: int = 0, *, rx_time: bool = False) -> str:
    """Admission order as a fixed-width string ``<class:1><ts_ns:19><seq:12>``, so that string order is
    admission order inside the script. Class ``1`` is a time the provider gave, class ``0`` a receive
    time (the provider gave none): a value only stamped on receipt never beats a provider-timed one,
    however late it arrived. Out-of-range numbers are clamped to the width."""
    ts = min(max(ts_ns, 0), NEWNESS_TS_MAX)
    return f"{0 if rx_time else 1}{ts:019d}{min(max(seq, 0), NEWNESS_SEQ_MAX):012d}"


def epoch_id(underlying: str, symbols: Sequence[str], deliverables: Mapping[str, int] | None = None) -> str:
    """The geometry's hash: the same listed contracts (and the same adjusted deliverables, which
    change what a contract is) always give the same epoch id."""
    h = hashlib.sha1(underlying.encode())
    for s in symbols:
        h.update(b"\n" + s.encode())
    for s, shares in sorted((deliverables or {}).items()):
        h.update(f"\n{s}={shares}".encode())
    return h.hexdigest()[:12]


def geometry_summary(snap: ChainSnapshot) -> bytes:
    expiries: dict[str, set[int]] = {}
    for c in snap.contracts:
        expiries.setdefault(c.expiry, set()).add(c.strike_x1000)
    return orjson.dumps(
        {
            "underlying": snap.underlying,
            "contracts": len(snap.contracts),
            "expiries": {
                e: {"strikes": len(k), "min": min(k) / 1000, "max": max(k) / 1000} for e, k in sorted(expiries.items())
            },
        }
    )


def chain_args(snap: ChainSnapshot, args: list[Any]) -> str:
    """Append the C / S... / W / P records of a chain snapshot; return its epoch id. Quotes, last
    trades and spot go in at the provider's times (the poll's time, marked, where it gave none)."""
    symbols = [c.symbol for c in snap.contracts]
    deliverables = {c.symbol: c.shares for c in snap.contracts if c.shares is not None}
    epoch = epoch_id(snap.underlying, symbols, deliverables)
    args += ["C", epoch, geometry_summary(snap), snap.ts_ns, len(symbols)]
    for c in snap.contracts:
        args += [c.symbol, f"{c.expiry}|{c.side}|{c.strike_x1000}|{c.root}"]
    announce = EpochChange(
        epoch=epoch,
        ts_ns=snap.ts_ns,
        symbols=tuple(symbols),
        spot=snap.spot,
        deliverables=deliverables,
        delayed=snap.delayed,
    )
    args.append(codec.encode_json(announce))
    for c in snap.contracts:
        qts, q_rx = (c.quote_ts_ns, False) if c.quote_ts_ns is not None else (snap.ts_ns, True)
        quote = QuoteChange(sym=c.symbol, ts_ns=qts, bid=c.bid, ask=c.ask, rx_time=q_rx)
        args += ["S", c.symbol, "q", newness(qts, rx_time=q_rx), codec.encode_json(quote)]
        g = GreeksChange(
            sym=c.symbol, ts_ns=snap.ts_ns, iv=c.iv, delta=c.delta, gamma=c.gamma, oi=c.oi, volume=c.volume
        )
        args += ["S", c.symbol, "g", newness(snap.ts_ns), codec.encode_json(g)]
        if c.last is not None and trade_conditions.effect(c.trade_conditions).last:
            tts, t_rx = (c.trade_ts_ns, False) if c.trade_ts_ns is not None else (snap.ts_ns, True)
            trade = TradeChange(sym=c.symbol, ts_ns=tts, px=c.last, rx_time=t_rx)
            args += ["S", c.symbol, "t", newness(tts, rx_time=t_rx), codec.encode_json(trade)]
    args += ["W", epoch, snap.ts_ns]
    if snap.spot is not None:
        sts, s_rx = (snap.spot_ts_ns, False) if snap.spot_ts_ns is not None else (snap.ts_ns, True)
        spot = SpotChange(ts_ns=sts, value=snap.spot, rx_time=s_rx, delayed=snap.spot_delayed)
        args += ["P", newness(sts, rx_time=s_rx), codec.encode_json(spot)]
    return epoch


def batch_args(batch: Sequence[Entry]) -> tuple[list[Any], int, list[str], dict[str, int]]:
    """The script's records for a batch of events entries, how many events they carry, the epochs
    of its chain snapshots, and its trade prints counted by what their conditions make them."""
    args: list[Any] = []
    n = 0
    epochs: list[str] = []
    prints: dict[str, int] = {}
    for entry in batch:
        eb: EventBatch = entry.value
        args += ["G", entry.id, eb.rx_ns]
        for ev in eb.events:
            n += 1
            if isinstance(ev, Quote):
                change = QuoteChange(sym=ev.symbol, ts_ns=ev.ts_ns, seq=ev.seq, bid=ev.bid, ask=ev.ask)
                args += ["S", ev.symbol, "q", newness(ev.ts_ns, ev.seq), codec.encode_json(change)]
            elif isinstance(ev, Trade):
                effect = trade_conditions.effect(ev.conditions)
                prints[effect.label] = prints.get(effect.label, 0) + 1
                if effect.volume:
                    fill = f"{ev.symbol}|{ev.ts_ns}|{ev.seq}|{ev.px!r}|{ev.size}"
                    counted = FillChange(sym=ev.symbol, ts_ns=ev.ts_ns, seq=ev.seq, px=ev.px, size=ev.size)
                    args += ["F", ev.symbol, fill, ev.size, ev.ts_ns // 1_000_000, codec.encode_json(counted)]
                if effect.last:
                    change_t = TradeChange(sym=ev.symbol, ts_ns=ev.ts_ns, seq=ev.seq, px=ev.px, size=ev.size)
                    args += ["S", ev.symbol, "t", newness(ev.ts_ns, ev.seq), codec.encode_json(change_t)]
            elif isinstance(ev, Spot):
                spot = SpotChange(ts_ns=ev.ts_ns, value=ev.value, rx_time=ev.rx_time, delayed=ev.delayed)
                args += ["P", newness(ev.ts_ns, rx_time=ev.rx_time), codec.encode_json(spot)]
            elif isinstance(ev, VolIndex):
                vol = VolChange(name=ev.name, ts_ns=ev.ts_ns, value=ev.value, rx_time=ev.rx_time, delayed=ev.delayed)
                args += ["V", newness(ev.ts_ns, rx_time=ev.rx_time), codec.encode_json(vol)]
            elif isinstance(ev, ChainSnapshot):
                epochs.append(chain_args(ev, args))
            elif isinstance(ev, ProviderStatus):
                pass  # statuses are for operators (metrics at the source), not for the market state
    return args, n, epochs, prints


class Admission(NamedTuple):
    """What one hydrate commit did: the reply of agents/hydrate/hydrate.lua, typed."""

    new: int  # A: a slot's first value
    newer: int  # B: a strictly newer value
    stale: int  # C: not newer, discarded
    unknown: int  # X: a contract outside the target epoch
    promotions: int
    fills: int  # counted into volume
    duplicate_fills: int
    fills_beyond_window: int
    active: str  # the active epoch after the batch ("" for none)
    held_snapshots: int  # far smaller geometries held until confirmed
    appended: int  # entries appended to the changes stream

    @classmethod
    def of(cls, reply: Sequence[Any]) -> Admission:
        a, b, c, x, promotions, fills, duplicates, beyond = (int(v) for v in reply[:8])
        active = reply[8].decode() if isinstance(reply[8], bytes) else str(reply[8])
        return cls(a, b, c, x, promotions, fills, duplicates, beyond, active, int(reply[9]), int(reply[10]))


class Hydrator(Processor):
    def __init__(self, settings: Settings, underlying: str) -> None:
        """``settings``: the epoch retirement TTL and the fill window (a model setting)."""
        self.u = underlying
        self.keys = [
            streams.epoch_pointer_key(underlying),
            streams.CHANGES.key(underlying),
            streams.fills_key(underlying),
            streams.spot_key(underlying),
            streams.epochs_index_key(underlying),
            streams.vol_index_key(underlying),
        ]
        self.header = [
            settings.epoch_retire_ttl_s,
            int(settings.fill_window_s * 1000),
            SHRINK_CONFIRM_RATIO,
            SHRINK_CONFIRM_S * 1_000_000_000,
        ]
        self.events_key = streams.EVENTS.key(underlying)
        self.changes_key = streams.CHANGES.key(underlying)
        self.active = ""  # the active epoch as last read or committed ("" for none)

    def state_reads(self) -> Sequence[tuple[Any, ...]]:
        """The state lives in Redis; only the active epoch's id is kept, to declare its keys."""
        return [("GET", streams.epoch_pointer_key(self.u))]

    def load(self, replies: Sequence[Any]) -> Sequence[Resume]:
        self.active = replies[0].decode() if replies[0] is not None else ""
        return ()

    def process(self, batch: Sequence[Entry]) -> Effects:
        records, n, snapshot_epochs, prints = batch_args(batch)
        epochs = list(dict.fromkeys([e for e in (self.active, *snapshot_epochs) if e]))
        keys = list(self.keys)
        for e in epochs:
            keys += [streams.epoch_meta_key(self.u, e), streams.state_key(self.u, e)]
        args = [self.active, *self.header, len(epochs), *epochs, *records]

        def committed(results: Mapping[str, Any]) -> list[Count]:
            done = Admission.of(results["hydrate"])
            self.active = done.active
            counts = [
                Count("admissions", ("hydrate", self.events_key, outcome), c)
                for outcome, c in zip(OUTCOMES, (done.new, done.newer, done.stale, done.unknown), strict=True)
            ]
            counts += [
                Count("epoch_promotions", (self.u,), done.promotions),
                Count("dropped", ("hydrate", self.events_key, "duplicate_fill"), done.duplicate_fills),
                Count("dropped", ("hydrate", self.events_key, "fill_beyond_window"), done.fills_beyond_window),
                Count("epoch_holds", (self.u,), done.held_snapshots),
                Count("entries_out", ("hydrate", self.changes_key), done.appended),  # the script appends them
            ]
            return [c for c in counts if c.value]

        counts = [Count("trade_conditions", (self.u, label), c) for label, c in prints.items()]
        scripts = [ScriptCall("hydrate", SCRIPT, keys, args)]
        return Effects(scripts=scripts, counts=counts, on_commit=committed, events_out=n)


HYDRATE = AgentSpec(
    name="hydrate",
    reads=streams.EVENTS,
    writes=(streams.CHANGES,),
    make=Hydrator,
    doc="Epochs and admission (A/B/C) into the market state; admitted changes to the changes stream.",
)
