"""Calc agents for the heatmap strategies: single, vertical and butterfly, each its own consumer group.

Tiles, per (expiry, side) series of the epoch's heatmap grid (agents/calc/grid.py):

* single    (strike K, width 0):   mid(K)
* vertical  (long leg K, width w): call mid(K) - mid(K+w); put mid(K) - mid(K-w)   (a debit spread)
* butterfly (center K, width w):   mid(K-w) - 2 mid(K) + mid(K+w)

A tile exists only when every leg has a mid. Its score is reward/risk for the debit structures,
(w - debit) / debit, and null for singles and for non-positive debits (no risk, or an arbitrage
quote). ``legs_ts_ns`` are the quote times of the legs behind the tile's current value.

Each input entry (one changes batch) gives at most one TileBatch: only tiles touching changed
contracts are recomputed, vectorized over the tile arrays, and only tiles whose value changed, or that
appeared or vanished, are emitted. The calc's inputs are checkpointed in Redis with every commit, so
a restart or a standby taking over resumes exactly at the acked position: the staged stream is a
function of the changes stream alone, which makes replays reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import orjson
import redis.asyncio as aioredis

from marketswarm.agents.calc.grid import Grid, Tiles, Window, build_tiles
from marketswarm.schemas import codec
from marketswarm.schemas.events import ChangeBatch, EpochChange, QuoteChange, SpotChange
from marketswarm.schemas.models import NULL, TileBatch
from marketswarm.topology import streams
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.runtime import AgentSpec, Effects, Entry, Output
from marketswarm.topology.settings import Settings

_quote_dec = msgspec.json.Decoder(QuoteChange)
_spot_dec = msgspec.json.Decoder(SpotChange)


def tile_values(tiles: Tiles, mid: np.ndarray, ok: np.ndarray, sel: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
    """Values and validity of the selected tiles: the one vectorized kernel of every strategy."""
    mid_ext = np.append(np.nan_to_num(mid), 0.0)
    ok_ext = np.append(ok, True)
    legs = tiles.legs[sel]
    values = np.round((tiles.weights[sel] * mid_ext[legs]).sum(axis=1), 6)
    valid = ok_ext[legs].all(axis=1)
    return values, valid


def scores(values: np.ndarray, width_x1000: np.ndarray) -> np.ndarray:
    w = width_x1000 / 1000.0
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where((w > 0) & (values > 0), np.round((w - values) / values, 4), np.nan)
    return s


class TileCalc:
    """The step of one heatmap strategy for one underlying."""

    stateful = True

    def __init__(self, settings: Settings, underlying: str, metrics: Metrics, strategy: str) -> None:
        self.u = underlying
        self.strategy = strategy
        self.metrics = metrics
        self.agent = f"calc.{strategy}"
        self.window = Window(settings.heatmap_expiries, settings.heatmap_range_pct, settings.max_width_steps)
        self.checkpoint = streams.calc_checkpoint_key(underlying, strategy)
        self.out_key = streams.STAGED[strategy].key(underlying)
        self.grid: Grid | None = None
        self.tiles: Tiles | None = None
        self.values = np.zeros(0)  # value per tile as last emitted; nan = absent
        self.spot: SpotChange | None = None

    # --- state ---------------------------------------------------------------------------

    def _set_grid(self, grid: Grid) -> None:
        self.grid = grid
        self.tiles = build_tiles(grid, self.strategy)
        self.values = np.full(len(self.tiles.keys), np.nan)

    async def restore(self, redis: aioredis.Redis) -> None:
        raw = await redis.hgetall(self.checkpoint)
        self.grid, self.tiles, self.values, self.spot = None, None, np.zeros(0), None
        if not raw:
            return
        fields = {k.decode(): v for k, v in raw.items()}
        if "_spot" in fields:
            self.spot = _spot_dec.decode(fields["_spot"])
        if "_epoch" not in fields:
            return
        symbols = orjson.loads(fields["_symbols"])
        self._set_grid(Grid(fields["_epoch"].decode(), symbols, None, self.window))
        assert self.grid is not None and self.tiles is not None
        for sym in symbols:
            if sym in fields:
                self.grid.apply(_quote_dec.decode(fields[sym]))
        mid, ok = self.grid.mids()
        values, valid = tile_values(self.tiles, mid, ok, slice(None))
        self.values = np.where(valid, values, np.nan)

    # --- the step ------------------------------------------------------------------------

    def process(self, batch: Sequence[Entry]) -> Effects:
        outputs: list[Output] = []
        ckpt: dict[str, bytes] = {}
        commands: list[tuple[Any, ...]] = []
        recomputed = 0
        for entry in batch:
            cb: ChangeBatch = entry.value
            positions: list[int] = []
            reset = False
            header = None
            ts_ns = 0
            for ch in cb.changes:
                if isinstance(ch, QuoteChange):
                    ts_ns = max(ts_ns, ch.ts_ns)
                    if self.grid is not None:
                        p = self.grid.apply(ch)
                        if p is not None:
                            positions.append(p)
                            ckpt[ch.sym] = codec.encode_json(ch)
                elif isinstance(ch, SpotChange):
                    ts_ns = max(ts_ns, ch.ts_ns)
                    if self.spot is None or ch.ts_ns > self.spot.ts_ns:
                        self.spot = ch
                        ckpt["_spot"] = codec.encode_json(ch)
                        header = orjson.dumps({"spot": ch.value, "spot_ts_ns": ch.ts_ns})
                elif isinstance(ch, EpochChange):
                    ts_ns = max(ts_ns, ch.ts_ns)
                    if self.grid is None or ch.epoch != self.grid.epoch:
                        spot = ch.spot if ch.spot is not None else (self.spot.value if self.spot else None)
                        grid = Grid(ch.epoch, ch.symbols, spot, self.window)
                        if self.grid is not None:
                            grid.carry_from(self.grid)
                        self._set_grid(grid)
                        reset = True
                        positions = []
                        commands.append(("DEL", self.checkpoint))
                        keep = {k: v for k, v in ckpt.items() if k == "_spot"}
                        ckpt = {"_epoch": ch.epoch.encode(), "_symbols": orjson.dumps(grid.symbols), **keep}
                        ckpt.update({grid.symbols[p]: codec.encode_json(grid.quote(p)) for p in np.flatnonzero(grid.seen)})
            if self.grid is None or self.tiles is None:
                continue
            upserts, removes, n = self._recompute(positions, reset)
            recomputed += n
            if not (reset or upserts or removes or header is not None):
                continue
            mid_ok = self.grid.seen
            seen_ext = np.append(mid_ok, True)
            pending = int((~seen_ext[self.tiles.legs].all(axis=1)).sum()) if len(self.tiles.keys) else 0
            tb = TileBatch(
                strategy=self.strategy,
                underlying=self.u,
                epoch=self.grid.epoch,
                src=entry.id,
                rx_ns=cb.rx_ns,
                ts_ns=ts_ns,
                slots=len(self.tiles.keys),
                pending=pending,
                reset=reset,
                upserts=upserts,
                removes=tuple(removes),
                header=msgspec.Raw(header) if header is not None else NULL,
            )
            outputs.append(Output(streams.STAGED[self.strategy], self.out_key, codec.encode_tiles(tb)))
        if ckpt:
            args: list[Any] = []
            for k, v in ckpt.items():
                args += [k, v]
            commands.append(("HSET", self.checkpoint, *args))

        def committed(_: list[Any]) -> None:
            if recomputed:
                self.metrics.tiles_recomputed.labels(self.agent, self.u).inc(recomputed)
            if self.tiles is not None and len(self.tiles.keys):
                coverage = float(np.isfinite(self.values).sum()) / len(self.tiles.keys)
                self.metrics.tile_coverage.labels(self.u, self.strategy).set(coverage)

        return Effects(outputs=outputs, commands=commands, on_commit=committed, events_out=len(outputs))

    def _recompute(self, positions: list[int], reset: bool) -> tuple[dict[str, msgspec.Raw], list[str], int]:
        assert self.grid is not None and self.tiles is not None
        if reset:
            sel = np.arange(len(self.tiles.keys))
        elif positions:
            sel = self.tiles.touching(positions)
        else:
            return {}, [], 0
        if not len(sel):
            return {}, [], 0
        mid, ok = self.grid.mids()
        values, valid = tile_values(self.tiles, mid, ok, sel)
        old = self.values[sel]
        new = np.where(valid, values, np.nan)
        changed = ~((old == new) | (np.isnan(old) & np.isnan(new)))
        if reset:
            changed = valid  # a reset batch carries the whole valid set
        upserts: dict[str, msgspec.Raw] = {}
        removes: list[str] = []
        idx = sel[changed]
        sc = scores(new[changed], self.tiles.width_x1000[idx])
        legs = self.tiles.legs[idx]
        n = len(self.grid)
        for j, t in enumerate(idx):
            v = new[changed][j]
            key = self.tiles.keys[t]
            if np.isnan(v):
                removes.append(key)
                continue
            s = sc[j]
            leg_ts = ",".join(str(int(self.grid.ts[x])) for x in legs[j] if x != n)
            upserts[key] = msgspec.Raw(
                (
                    f'{self.tiles.prefix[t]}"value":{float(v)!r},"score":{"null" if np.isnan(s) else repr(float(s))},'
                    f'"legs_ts_ns":[{leg_ts}]}}'
                ).encode()
            )
        self.values[sel] = new
        return upserts, removes, len(sel)


def _factory(strategy: str):  # type: ignore[no-untyped-def]
    def make(settings: Settings, underlying: str, metrics: Metrics) -> TileCalc:
        return TileCalc(settings, underlying, metrics, strategy)

    return make


CALC_AGENTS = tuple(
    AgentSpec(
        name=f"calc.{s}",
        reads=streams.CHANGES,
        writes=(streams.STAGED[s],),
        make=_factory(s),
        stateful=True,
        doc=f"{s} tiles of the heatmap grid, recomputed where contracts changed.",
    )
    for s in streams.HEATMAP_STRATEGIES
)
