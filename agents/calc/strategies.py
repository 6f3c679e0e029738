"""Calc agents for the heatmap strategies: single, vertical and butterfly, each its own consumer group.

Tiles, per (expiry, side) series of the epoch's heatmap grid (agents/calc/grid.py):

* single    (strike K, width 0):   mid(K)
* vertical  (long leg K, width w): call mid(K) - mid(K+w); put mid(K) - mid(K-w)   (a debit spread)
* butterfly (center K, width w):   mid(K-w) - 2 mid(K) + mid(K+w)

A tile exists only when every leg has a mid. Its score is reward/risk for the debit structures,
(w - debit) / debit, and null for singles and for non-positive debits (no risk, or an arbitrage
quote). ``legs_ts_ns`` are the quote times of the legs behind the tile's current value.

Changes are coalesced per bucket of ``calc_bucket_ms`` event time: the first entry of another bucket
closes the open one, which emits one TileBatch of the tiles touching the contracts changed in it
(recomputed vectorized over the tile arrays; only tiles whose value changed, appeared or vanished).
A new epoch emits a reset at once; when input goes quiet the open bucket is flushed. The calc's
inputs and its open bucket are checkpointed in Redis at each new epoch and every few seconds, in the
same commit as the XACK; a restart or a standby taking over loads the checkpoint and re-applies the
changes acked since, so it resumes exactly at the acked position. The staged stream is therefore a
function of the changes stream alone (bucket boundaries are event times, not read batches), which
makes replays reproducible.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import partial
from typing import Any

import msgspec
import numpy as np
import orjson
import redis.asyncio as aioredis

from marketswarm.agents.calc.grid import Grid, Tiles, Window, build_tiles
from marketswarm.schemas import codec
from marketswarm.schemas.events import ChangeBatch, EpochChange, QuoteChange, SpotChange
from marketswarm.schemas.models import NULL, TileBatch, TileColumns, tile_columns
from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec, Effects, Entry, Output
from marketswarm.topology.connections import acked_since
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings

_quote_dec = msgspec.json.Decoder(QuoteChange)
CHECKPOINT_EVERY_S = 5.0  # event time between full checkpoints of a calc's inputs
_spot_dec = msgspec.json.Decoder(SpotChange)


def tile_values(
    tiles: Tiles, mid: np.ndarray, ok: np.ndarray, sel: np.ndarray | slice
) -> tuple[np.ndarray, np.ndarray]:
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

    def __init__(self, settings: Settings, underlying: str, metrics: Metrics, strategy: str) -> None:
        self.u = underlying
        self.strategy = strategy
        self.metrics = metrics
        self.agent = f"calc.{strategy}"
        self.window = Window(settings.heatmap_expiries, settings.heatmap_range_pct, settings.max_width_steps)
        self.bucket_ns = settings.calc_bucket_ms * 1_000_000
        self.checkpoint = streams.calc_checkpoint_key(underlying, strategy)
        self.out_spec = streams.STAGED[strategy]
        self.out_key = self.out_spec.key(underlying)
        self.n_legs = {"single": 1, "vertical": 2, "butterfly": 3}[strategy]
        self._clear()

    def _clear(self) -> None:
        self.grid: Grid | None = None
        self.tiles: Tiles | None = None
        self.values = np.zeros(0)  # value per tile as last emitted; nan = absent
        self.spot: SpotChange | None = None
        # Coalescing: changes since the last emitted TileBatch, and the event-time bucket they are in.
        self.dirty: set[int] = set()
        self.header: bytes | None = None
        self.open_bucket: int | None = None
        self.last: dict[str, Any] = {"src": "", "rx_ns": 0, "ts_ns": 0}
        self.checkpoint_ns = 0

    # --- state ---------------------------------------------------------------------------

    def _set_grid(self, grid: Grid) -> None:
        self.grid = grid
        self.tiles = build_tiles(grid, self.strategy)
        self.values = np.full(len(self.tiles.keys), np.nan)

    async def restore(self, redis: aioredis.Redis) -> None:
        """The last checkpoint, then the changes acked since it re-applied (their outputs were
        committed then): the state is exactly that of the acked position."""
        raw = await redis.hgetall(self.checkpoint)
        self._clear()
        fields = {k.decode(): v for k, v in raw.items()}
        through = "0-0"
        if "_spot" in fields:
            self.spot = _spot_dec.decode(fields["_spot"])
        if "_epoch" in fields:
            symbols = orjson.loads(fields["_symbols"])
            self._set_grid(Grid(fields["_epoch"].decode(), symbols, None, self.window))
            assert self.grid is not None and self.tiles is not None
            for sym in symbols:
                if sym in fields:
                    self.grid.apply(_quote_dec.decode(fields[sym]))
            pend = orjson.loads(fields["_pending"])
            self.dirty = {self.grid.pos[s] for s in pend["dirty"] if s in self.grid.pos}
            self.header = pend["header"].encode() if pend["header"] is not None else None
            self.open_bucket, self.last, through = pend["open"], pend["last"], pend["through"]
            self.checkpoint_ns = pend["checkpoint_ns"]
            # The values last emitted, exactly: whether a tile goes out again depends on them.
            emitted = np.frombuffer(fields.get("_values", b""), dtype=np.float64)
            if len(emitted) == len(self.tiles.keys):
                self.values = emitted.copy()
            else:  # a checkpoint from before this field: recompute, and force the pending tiles out
                mid, ok = self.grid.mids()
                values, valid = tile_values(self.tiles, mid, ok, slice(None))
                self.values = np.where(valid, values, np.nan)
                if self.dirty:
                    self.values[self.tiles.touching(sorted(self.dirty))] = np.inf
        elif "_pending" in fields:
            through = orjson.loads(fields["_pending"])["through"]
        key = streams.CHANGES.key(self.u)
        for entry_id, entry_fields in await acked_since(redis, key, self.agent, through):
            with contextlib.suppress(codec.DecodeError):
                self._step(Entry(entry_id.decode(), codec.decode(streams.Payload.CHANGES, entry_fields)))

    def _checkpoint(self) -> list[tuple[Any, ...]]:
        """The whole state as of the last entry: written at a new epoch and every CHECKPOINT_EVERY_S."""
        fields: dict[str, bytes] = {}
        if self.spot is not None:
            fields["_spot"] = codec.encode_json(self.spot)
        pend: dict[str, Any] = {"through": self.last["src"] or "0-0", "open": self.open_bucket, "last": self.last}
        pend["checkpoint_ns"] = self.checkpoint_ns = int(self.last["ts_ns"])
        if self.grid is not None:
            grid = self.grid
            fields["_epoch"] = grid.epoch.encode()
            fields["_symbols"] = orjson.dumps(grid.symbols)
            fields.update({grid.symbols[p]: codec.encode_json(grid.quote(int(p))) for p in np.flatnonzero(grid.seen)})
            pend["dirty"] = sorted(grid.symbols[p] for p in self.dirty)
            fields["_values"] = self.values.astype(np.float64).tobytes()
            pend["header"] = self.header.decode() if self.header is not None else None
        fields["_pending"] = orjson.dumps(pend)
        args: list[Any] = []
        for k, v in fields.items():
            args += [k, v]
        return [("DEL", self.checkpoint), ("HSET", self.checkpoint, *args)]

    # --- the step ------------------------------------------------------------------------

    def process(self, batch: Sequence[Entry]) -> Effects:
        outputs: list[Output] = []
        epoch = self.grid.epoch if self.grid is not None else None
        for entry in batch:
            outputs.extend(self._step(entry))
        commands: list[tuple[Any, ...]] = []
        new_epoch = self.grid is not None and self.grid.epoch != epoch
        if new_epoch or int(self.last["ts_ns"]) - self.checkpoint_ns >= CHECKPOINT_EVERY_S * 1e9:
            commands = self._checkpoint()
        return Effects(outputs=outputs, commands=commands, on_commit=self._metrics, events_out=len(outputs))

    def _step(self, entry: Entry) -> list[Output]:
        """One changes entry: close the open bucket if this one is in another, then apply it."""
        outputs: list[Output] = []
        cb: ChangeBatch = entry.value
        ts_max = max((ch.ts_ns for ch in cb.changes), default=0)
        bucket = ts_max // self.bucket_ns
        # Any other bucket closes the open one: a late or early timestamp must never hold output back.
        if bucket != self.open_bucket and (self.dirty or self.header is not None):
            outputs.extend(self._emit(reset=False))
        self.open_bucket = bucket
        reset_now = False
        for ch in cb.changes:
            if isinstance(ch, QuoteChange):
                if self.grid is not None:
                    p = self.grid.apply(ch)
                    if p is not None:
                        self.dirty.add(p)
            elif isinstance(ch, SpotChange):
                if self.spot is None or ch.ts_ns > self.spot.ts_ns:
                    self.spot = ch
                    self.header = orjson.dumps({"spot": ch.value, "spot_ts_ns": ch.ts_ns})
            elif isinstance(ch, EpochChange) and (self.grid is None or ch.epoch != self.grid.epoch):
                if self.dirty or self.header is not None:
                    outputs.extend(self._emit(reset=False))  # the old epoch's last values first
                spot = ch.spot if ch.spot is not None else (self.spot.value if self.spot else None)
                grid = Grid(ch.epoch, ch.symbols, spot, self.window)
                if self.grid is not None:
                    grid.carry_from(self.grid)
                self._set_grid(grid)
                self.dirty = set()
                reset_now = True
        self.last = {"src": entry.id, "rx_ns": cb.rx_ns, "ts_ns": max(self.last["ts_ns"], ts_max)}
        if reset_now:
            outputs.extend(self._emit(reset=True))
        return outputs

    def flush(self) -> Effects | None:
        if self.grid is None or not (self.dirty or self.header is not None):
            return None
        outputs = self._emit(reset=False)
        # A flush is not an entry a restore could re-apply: checkpoint right after it.
        return Effects(outputs=outputs, commands=self._checkpoint(), on_commit=self._metrics, events_out=len(outputs))

    def _metrics(self, _: list[Any]) -> None:
        if self.tiles is not None and len(self.tiles.keys):
            coverage = float(np.isfinite(self.values).sum()) / len(self.tiles.keys)
            self.metrics.tile_coverage.labels(self.u, self.strategy).set(coverage)

    def _emit(self, *, reset: bool) -> list[Output]:
        """The TileBatch of everything changed since the last one (all valid tiles on a reset)."""
        header, self.header = self.header, None
        if self.grid is None or self.tiles is None:
            return []
        positions = sorted(self.dirty)
        self.dirty = set()
        upserts, cols, removes, n = self._recompute(positions, reset)
        if n:
            self.metrics.tiles_recomputed.labels(self.agent, self.u).inc(n)
        if not (reset or upserts or cols or removes or header is not None):
            return []
        seen_ext = np.append(self.grid.seen, True)
        pending = int((~seen_ext[self.tiles.legs].all(axis=1)).sum()) if len(self.tiles.keys) else 0
        tb = TileBatch(
            strategy=self.strategy,
            underlying=self.u,
            epoch=self.grid.epoch,
            src=str(self.last["src"]),
            rx_ns=int(self.last["rx_ns"]),
            ts_ns=int(self.last["ts_ns"]),
            slots=len(self.tiles.keys),
            pending=pending,
            reset=reset,
            upserts=upserts,
            cols=cols,
            removes=tuple(removes),
            header=msgspec.Raw(header) if header is not None else NULL,
        )
        return [Output(self.out_spec, self.out_key, codec.encode_tiles(tb))]

    def _recompute(
        self, positions: list[int], reset: bool
    ) -> tuple[dict[str, msgspec.Raw], TileColumns | None, list[str], int]:
        """(whole tiles that appeared, the new numbers of tiles that changed, keys that vanished,
        tiles recomputed)."""
        assert self.grid is not None and self.tiles is not None
        if reset:
            sel = np.arange(len(self.tiles.keys))
        elif positions:
            sel = self.tiles.touching(positions)
        else:
            return {}, None, [], 0
        if not len(sel):
            return {}, None, [], 0
        mid, ok = self.grid.mids()
        values, valid = tile_values(self.tiles, mid, ok, sel)
        old = self.values[sel]
        new = np.where(valid, values, np.nan)
        changed = valid if reset else ~((old == new) | (np.isnan(old) & np.isnan(new)))
        idx, vals, before = sel[changed], new[changed], old[changed]
        self.values[sel] = new
        gone = np.isnan(vals)
        removes = [self.tiles.keys[t] for t in idx[gone]]
        idx, vals, before = idx[~gone], vals[~gone], before[~gone]
        if not len(idx):
            return {}, None, removes, len(sel)
        # Tiles the publisher already has get only their numbers; new ones (or all, on a reset, or
        # any whose last emitted value is unknown after a restart) go whole.
        whole = np.ones(len(idx), dtype=bool) if reset else ~np.isfinite(before)
        sc = scores(vals, self.tiles.width_x1000[idx])
        ts_ext = np.append(self.grid.ts, 0)
        leg_ts = ts_ext[self.tiles.legs[idx, : self.n_legs]]
        keys = self.tiles.keys
        upd = ~whole
        cols = None
        if upd.any():  # numbers only, as columns: no per-tile encoding here
            cols = tile_columns([keys[t] for t in idx[upd].tolist()], vals[upd], sc[upd], leg_ts[upd])
        upserts: dict[str, msgspec.Raw] = {}
        if whole.any():
            iw = idx[whole]
            v_txt = orjson.dumps(vals[whole].tolist()).decode()[1:-1].split(",")
            s_txt = orjson.dumps(sc[whole].tolist()).decode()[1:-1].split(",")
            l_txt = orjson.dumps(leg_ts[whole].tolist()).decode()[2:-2].split("],[")
            prefix = self.tiles.prefix
            upserts = {
                keys[t]: msgspec.Raw(f'{prefix[t]}"value":{v},"score":{sv},"legs_ts_ns":[{lt}]}}'.encode())
                for t, v, sv, lt in zip(iw.tolist(), v_txt, s_txt, l_txt, strict=True)
            }
        return upserts, cols, removes, len(sel)


CALC_AGENTS = tuple(
    AgentSpec(
        name=f"calc.{s}",
        reads=streams.CHANGES,
        writes=(streams.STAGED[s],),
        make=partial(TileCalc, strategy=s),
        stateful=True,
        doc=f"{s} tiles of the heatmap grid, recomputed where contracts changed.",
        max_batch=100,
    )
    for s in streams.HEATMAP_STRATEGIES
)
