"""Calc agents for the heatmap strategies: single, vertical and butterfly, each its own consumer group.

Tiles, per (expiry, side) series of the epoch's heatmap grid (agents/calc/grid.py):

* single    (strike K, width 0):   mid(K)
* vertical  (long leg K, width w): call mid(K) - mid(K+w); put mid(K) - mid(K-w)   (a debit spread)
* butterfly (center K, width w):   mid(K-w) - 2 mid(K) + mid(K+w)

A tile exists only when every leg has a mid (its score, reward/risk, derives from its value and width
where the JSON is built: schemas/documents.py). Beside its mid a tile carries its natural debit, its
theo on the series' smile and its probability of profit at the natural debit (agents/calc/theo.py):
the columns ``value, natural, theo, pop`` (schemas/models.py ``value_columns``). Tiles are positions in the epoch's grid
(agents/calc/grid.py); what leaves is columns (schemas/models.py): the positions whose value changed,
appeared (a number) or vanished (NaN), and the quote times of the contracts quoted since the last
update, which the publisher keeps per contract (a tile's ``legs_ts_ns`` are its legs' quote times).

Changes are coalesced per bucket of ``calc_bucket_ms`` event time: the first entry of another bucket
closes the open one, which emits one staged update of the tiles touching the contracts changed in it
(recomputed vectorized over the tile arrays). A new epoch emits a reset, with the grid's geometry, at
once; when input goes quiet the open bucket is flushed. The calc's inputs (as arrays) and its open
bucket are checkpointed in Redis at each new epoch and every few seconds, in the same commit as the
XACK; a restart or a standby taking over loads the checkpoint and re-applies the changes acked since,
so it resumes exactly at the acked position. The staged stream is therefore a function of the changes
stream alone (bucket boundaries are event times, not read batches), which makes replays reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import orjson

from marketswarm.agents.calc.grid import Grid, Tiles, Window, build_tiles, geometry
from marketswarm.agents.calc.theo import Theo, tile_columns
from marketswarm.schemas import codec
from marketswarm.schemas.events import ChangeBatch, EpochChange, GreeksChange, QuoteChange, SpotChange, VolChange
from marketswarm.schemas.levels import vol_fields
from marketswarm.schemas.models import F64, I32, I64, Geometry, Staged, columns, pack, unpack, value_columns
from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec, Count, Effects, Entry, Output, Processor, ProcessorFactory, Resume
from marketswarm.topology.published import CHECKPOINT_EVERY_S
from marketswarm.topology.settings import ModelSettings

_spot_dec = msgspec.json.Decoder(SpotChange)
_vol_dec = msgspec.json.Decoder(VolChange)


class CalcState(msgspec.Struct, frozen=True, kw_only=True):
    """A heatmap calc's checkpoint: its inputs as arrays over the grid's positions, and what it sent."""

    through: str  # the last changes entry applied
    open_bucket: int | None
    last_src: str
    last_rx_ns: int
    last_ts_ns: int
    checkpoint_ns: int
    spot: bytes | None = None  # SpotChange JSON
    vix: bytes | None = None  # VolChange JSON
    header: bytes | None = None  # a header change not yet emitted
    chain_delayed: bool = False  # the epoch's chain is DELAYED data
    nonstandard: int = 0  # the epoch's contracts with a non-standard deliverable (left out of the grid)
    epoch: str | None = None
    symbols: tuple[str, ...] = ()
    bid: bytes = b""  # float64 per position (NaN = none)
    ask: bytes = b""
    ts: bytes = b""  # int64
    seq: bytes = b""  # int64
    seen: bytes = b""  # uint8
    values: bytes = b""  # float64 per tile x value column: the numbers last emitted (NaN = absent)
    iv: bytes = b""  # float64 per position: the chain's IV
    iv_changed: bool = False  # an IV changed since the last theo refresh
    theo_iv: bytes = b""  # the IVs, spot and event time of the last theo refresh
    theo_spot: float | None = None
    theo_ts_ns: int = 0
    theo_pop: bytes = b""  # float64 per tile: the probabilities of profit that refresh priced
    sent_ts: bytes = b""  # int64 per position: the quote times last emitted
    dirty: bytes = b""  # int32 positions changed since the last emission


def tile_values(tiles: Tiles, grid: Grid, sel: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
    """Mid values and validity of the selected tiles: the one vectorized kernel of every strategy
    (agents/calc/theo.py ``tile_columns``; it gathers only the selected tiles' legs, so a few changed
    tiles cost a few tiles' work)."""
    if isinstance(sel, slice):
        sel = np.arange(len(tiles))[sel]
    mid, _, valid = tile_columns(tiles, grid, sel, natural=False)
    return mid, valid


class TileCalc(Processor):
    """The step of one heatmap strategy for one underlying."""

    def __init__(self, model: ModelSettings, underlying: str, strategy: str) -> None:
        self.u = underlying
        self.strategy = strategy
        self.agent = f"calc.{strategy}"
        self.window = Window(model.heatmap_expiries, model.heatmap_range_pct, model.max_width_steps)
        self.bucket_ns = model.calc_bucket_ms * 1_000_000
        self.theo_step_bp, self.theo_refresh_s = model.theo_spot_step_bp, model.theo_refresh_s
        self.k = len(value_columns(strategy))
        self.max_hold_s = model.calc_bucket_ms / 1000  # live: held changes go out within a bucket
        self.checkpoint = streams.calc_checkpoint_key(underlying, strategy)
        self.flushes = streams.calc_flushes_key(underlying, strategy)
        self.out_spec = streams.STAGED[strategy]
        self.out_key = self.out_spec.key(underlying)
        self._clear()

    def _clear(self) -> None:
        self.grid: Grid | None = None
        self.tiles: Tiles | None = None
        self.geometry: Geometry | None = None
        self.values = np.zeros((0, len(value_columns(self.strategy))))  # per tile as last emitted; nan = absent
        self.theo: Theo | None = None
        self.iv_changed = False
        self.sent_ts = np.zeros(0, dtype=np.int64)  # quote time per position as last emitted
        self.spot: SpotChange | None = None
        self.vix: VolChange | None = None
        self.chain_delayed = False
        self.nonstandard = 0
        # Coalescing: changes since the last emitted update, and the event-time bucket they are in.
        self.dirty: set[int] = set()
        self.header: bytes | None = None
        self.open_bucket: int | None = None
        self.last: dict[str, Any] = {"src": "", "rx_ns": 0, "ts_ns": 0}
        self.checkpoint_ns = 0
        self.recomputed = 0  # tiles recomputed since the last commit (a metric, counted on commit)
        self.flush_points: set[str] = set()  # changes entries after which a live flush was committed

    # --- state ---------------------------------------------------------------------------

    def _set_grid(self, grid: Grid) -> None:
        self.grid = grid
        self.tiles = build_tiles(grid, self.strategy)
        self.geometry = geometry(self.u, self.strategy, grid, self.tiles)
        self.values = np.full((len(self.tiles), self.k), np.nan)
        self.theo = Theo(grid, self.tiles, self.strategy)
        self.iv_changed = True
        self.sent_ts = np.zeros(len(grid), dtype=np.int64)
        self._pending: tuple[int, int] = (-1, 0)  # (grid.first_seen it was counted at, tiles pending)

    def pending(self) -> int:
        """Tiles with a leg never quoted yet (0 = structurally complete); recounted only when a
        position was quoted for the first time."""
        assert self.grid is not None and self.tiles is not None
        if self._pending[0] != self.grid.first_seen:
            seen_ext = np.append(self.grid.seen, True)
            n = int((~seen_ext[self.tiles.legs].all(axis=1)).sum()) if len(self.tiles) else 0
            self._pending = (self.grid.first_seen, n)
        return self._pending[1]

    def state_reads(self) -> Sequence[tuple[Any, ...]]:
        return [("HGET", self.checkpoint, streams.STATE_FIELD), ("LRANGE", self.flushes, 0, -1)]

    def load(self, replies: Sequence[Any]) -> Sequence[Resume]:
        """The last checkpoint; then the changes acked since it are re-applied (their outputs were
        committed then), with the flushes made since it done again: the state is exactly that of
        the acked position."""
        raw, flushed = replies
        self._clear()
        self.flush_points = {f.decode() for f in flushed}
        through = "0-0"
        if raw is not None:
            st = codec.decode_packed(raw, CalcState)
            through = st.through
            self.open_bucket, self.checkpoint_ns, self.header = st.open_bucket, st.checkpoint_ns, st.header
            self.chain_delayed, self.nonstandard = st.chain_delayed, st.nonstandard
            self.last = {"src": st.last_src, "rx_ns": st.last_rx_ns, "ts_ns": st.last_ts_ns}
            if st.spot is not None:
                self.spot = _spot_dec.decode(st.spot)
            if st.vix is not None:
                self.vix = _vol_dec.decode(st.vix)
            if st.epoch is not None:
                self._set_grid(Grid(st.epoch, st.symbols, None, self.window))
                grid = self.grid
                assert grid is not None
                grid.bid[:] = unpack(st.bid, F64)
                grid.ask[:] = unpack(st.ask, F64)
                grid.ts[:] = unpack(st.ts, I64)
                grid.seq[:] = unpack(st.seq, I64)
                grid.seen[:] = unpack(st.seen, np.dtype(np.uint8)).astype(bool)
                grid.first_seen += 1
                self.values[:] = unpack(st.values, F64).reshape(-1, self.k)
                grid.iv[:] = unpack(st.iv, F64)
                assert self.theo is not None
                if st.theo_spot is not None:
                    self.theo.refresh(st.theo_spot, st.theo_ts_ns, unpack(st.theo_iv, F64))
                    self.theo.tile_pop = unpack(st.theo_pop, F64).copy()
                self.iv_changed = st.iv_changed
                self.sent_ts[:] = unpack(st.sent_ts, I64)
                self.dirty = set(unpack(st.dirty, I32).tolist())
        if through in self.flush_points:
            self._emit(reset=False)  # committed then: only its effect on the state is wanted
        self.recomputed = 0  # work of a restore, not of the model
        return [Resume(streams.CHANGES, through)]

    def reapply(self, stream: streams.StreamSpec, entries: Sequence[Entry]) -> Sequence[Resume]:
        for entry in entries:
            self._step(entry)
            if entry.id in self.flush_points:
                self._emit(reset=False)
        self.recomputed = 0
        return ()

    def _checkpoint(self) -> list[tuple[Any, ...]]:
        """The whole state as of the last entry: written at a new epoch and every CHECKPOINT_EVERY_S."""
        self.checkpoint_ns = int(self.last["ts_ns"])
        state: dict[str, Any] = {
            "through": self.last["src"] or "0-0",
            "open_bucket": self.open_bucket,
            "last_src": str(self.last["src"]),
            "last_rx_ns": int(self.last["rx_ns"]),
            "last_ts_ns": int(self.last["ts_ns"]),
            "checkpoint_ns": self.checkpoint_ns,
            "spot": codec.encode_json(self.spot) if self.spot is not None else None,
            "vix": codec.encode_json(self.vix) if self.vix is not None else None,
            "header": self.header,
            "chain_delayed": self.chain_delayed,
            "nonstandard": self.nonstandard,
        }
        if self.theo is not None and self.theo.spot is not None:
            theo = self.theo
            state.update(
                theo_iv=pack(theo.iv, F64),
                theo_spot=theo.spot,
                theo_ts_ns=theo.ts_ns,
                theo_pop=pack(theo.tile_pop, F64),
            )
        grid = self.grid
        if grid is not None:
            state.update(
                epoch=grid.epoch,
                symbols=tuple(grid.symbols),
                bid=pack(grid.bid, F64),
                ask=pack(grid.ask, F64),
                ts=pack(grid.ts, I64),
                seq=pack(grid.seq, I64),
                seen=pack(grid.seen, np.dtype(np.uint8)),
                values=pack(self.values, F64),
                iv=pack(grid.iv, F64),
                iv_changed=self.iv_changed,
                sent_ts=pack(self.sent_ts, I64),
                dirty=pack(sorted(self.dirty), I32),
            )
        return [
            ("HSET", self.checkpoint, streams.STATE_FIELD, codec.encode_packed(CalcState(**state))),
            ("DEL", self.flushes),
        ]

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
        return Effects(outputs=outputs, commands=commands, counts=self._counts(), events_out=len(outputs))

    def _step(self, entry: Entry) -> list[Output]:
        """One changes entry: close the open bucket if this one is in another, then apply it."""
        outputs: list[Output] = []
        cb: ChangeBatch = entry.value
        ts_max = max((ch.ts_ns for ch in cb.changes), default=0)
        bucket = ts_max // self.bucket_ns
        # Any other bucket closes the open one: a late or early timestamp must never hold output back.
        if bucket != self.open_bucket and (self.dirty or self.header is not None or self._theo_due()):
            outputs.extend(self._emit(reset=False))
        self.open_bucket = bucket
        reset_now = False
        for ch in cb.changes:
            if isinstance(ch, QuoteChange):
                if self.grid is not None:
                    p = self.grid.apply(ch)
                    if p is not None:
                        self.dirty.add(p)
            elif isinstance(ch, GreeksChange):
                if self.grid is not None and self.grid.apply_iv(ch):
                    self.iv_changed = True
            elif isinstance(ch, SpotChange):
                self.spot = ch  # hydrate admits only newer values, in its order (provider time first)
                self._set_header()
            elif isinstance(ch, VolChange):
                self.vix = ch
                self._set_header()
            elif isinstance(ch, EpochChange) and self.grid is not None and ch.epoch == self.grid.epoch:
                if ch.delayed != self.chain_delayed:  # the same contracts, now (or no longer) delayed
                    self.chain_delayed = ch.delayed
                    self._set_header()
            elif isinstance(ch, EpochChange):
                if self.dirty or self.header is not None:
                    outputs.extend(self._emit(reset=False))  # the old epoch's last values first
                spot = ch.spot if ch.spot is not None else (self.spot.value if self.spot else None)
                # Adjusted contracts (another deliverable) are priced on another basis: no structure
                # mixes them with standard ones, so they stay out of the grid, counted.
                standard = [s for s in ch.symbols if s not in ch.deliverables]
                grid = Grid(ch.epoch, standard, spot, self.window)
                if self.grid is not None:
                    grid.carry_from(self.grid)
                self._set_grid(grid)
                self.dirty = set()
                self.chain_delayed, self.nonstandard = ch.delayed, len(ch.deliverables)
                self._set_header()
                reset_now = True
        self.last = {"src": entry.id, "rx_ns": cb.rx_ns, "ts_ns": max(self.last["ts_ns"], ts_max)}
        if reset_now:
            outputs.extend(self._emit(reset=True))
        return outputs

    def _set_header(self) -> None:
        self.header = self._header_bytes()

    def _header_bytes(self) -> bytes:
        """The model-level fields: spot, whether the data is DELAYED, adjusted contracts left out, the
        volatility index and its regime, and the spot and event time the theo column was priced at."""
        h: dict[str, Any] = {
            "delayed": self.chain_delayed or (self.spot is not None and self.spot.delayed),
            "nonstandard": self.nonstandard,
            **vol_fields(self.vix),
        }
        if self.spot is not None:
            h.update(spot=self.spot.value, spot_ts_ns=self.spot.ts_ns)
        if self.theo is not None and self.theo.spot is not None:
            h.update(theo_spot=self.theo.spot, theo_asof_ns=self.theo.ts_ns)
        return orjson.dumps(h)

    def holding(self) -> bool:
        """Changes applied but not yet emitted (the open bucket)."""
        return self.grid is not None and bool(self.dirty or self.header is not None or self._theo_due())

    def _theo_due(self) -> bool:
        spot = self.spot.value if self.spot is not None else None
        ts = int(self.last["ts_ns"])
        return self.theo is not None and self.theo.due(
            spot, ts, self.theo_step_bp, self.theo_refresh_s, self.iv_changed
        )

    def flush(self) -> Effects | None:
        """Emit the open bucket now (input went quiet, it was held ``max_hold_s``, or a replay ended).
        A flush is not an entry a restore could re-apply, so the entry it came after is recorded:
        a restore flushes again at that point, keeping the state equal to the committed one."""
        if not self.holding():
            return None
        outputs = self._emit(reset=False)
        after = str(self.last["src"]) or "0-0"
        return Effects(
            outputs=outputs,
            commands=[("RPUSH", self.flushes, after)],
            counts=self._counts(),
            events_out=len(outputs),
        )

    def _counts(self) -> list[Count]:
        """Metrics of the work since the last commit, counted once it is committed."""
        recomputed, self.recomputed = self.recomputed, 0
        counts = [Count("tiles_recomputed", (self.agent, self.u), recomputed)] if recomputed else []
        if self.tiles is not None and len(self.tiles):
            coverage = float(np.isfinite(self.values[:, 0]).sum()) / len(self.tiles)
            counts.append(Count("tile_coverage", (self.u, self.strategy), coverage, "set"))
        return counts

    def _emit(self, *, reset: bool) -> list[Output]:
        """The staged update of everything changed since the last one (all valid tiles on a reset)."""
        header, self.header = self.header, None
        if self.grid is None or self.tiles is None:
            return []
        positions = sorted(self.dirty)
        self.dirty = set()
        refresh = self._theo_due()
        if refresh:
            assert self.theo is not None and self.spot is not None
            self.theo.refresh(self.spot.value, int(self.last["ts_ns"]), self.grid.iv)
            self.iv_changed = False
            header = self._header_bytes()
        pos, vals, n, which = self._recompute(positions, reset, refresh)
        self.recomputed += n
        if not (reset or len(pos) or header is not None):
            return []
        grid = self.grid
        # Quote times go per contract: every one that moved since the last update, once.
        cpos = np.flatnonzero(grid.ts != self.sent_ts)
        self.sent_ts[cpos] = grid.ts[cpos]
        staged = Staged(
            strategy=self.strategy,
            underlying=self.u,
            epoch=grid.epoch,
            src=str(self.last["src"]),
            rx_ns=int(self.last["rx_ns"]),
            ts_ns=int(self.last["ts_ns"]),
            slots=len(self.tiles),
            pending=self.pending(),
            reset=reset,
            geometry=self.geometry if reset else None,
            cols=columns(pos, vals, cpos, grid.ts[cpos], which=which, k=self.k),
            header=header,
        )
        return [Output(self.out_spec, self.out_key, codec.encode_staged(staged))]

    def _recompute(
        self, positions: list[int], reset: bool, refresh: bool
    ) -> tuple[np.ndarray, np.ndarray, int, tuple[int, ...] | None]:
        """(tiles whose numbers changed, appeared or vanished, their columns (NaN value = vanished),
        tiles recomputed, the columns carried: None for all). On a reset: every valid tile. On a theo
        refresh every tile is re-priced (theo, and the probability of profit at its natural debit then)
        and the changed ones sent; between refreshes only mid and natural debit follow the quotes, so
        an update carries those two columns alone, unless a tile sent has theo and probability that
        readers do not have yet (agents/calc/theo.py): one that comes back, or a refresh. An absent
        tile is NaN in every column (a reader makes it so from its first, schemas/models.py)."""
        assert self.grid is not None and self.tiles is not None and self.theo is not None
        none = np.zeros(0, dtype=np.int64), np.zeros((0, self.k)), 0, None
        full = reset or refresh
        if full:
            sel = np.arange(len(self.tiles))
        elif positions:
            sel = self.tiles.touching(positions)
        else:
            return none
        if not len(sel):
            return none
        values, natural, valid = tile_columns(self.tiles, self.grid, sel)
        assert natural is not None
        theo, old = self.theo, self.values
        if full:
            theo.tile_pop = theo.pop(sel, natural)
            new = np.column_stack([values, natural, theo.tile_theo, theo.tile_pop])
            new[~valid] = np.nan
            changed = valid if reset else (new.view(np.int64) != old.view(np.int64)).any(axis=1)
            old[:] = new
            return sel[changed], new[changed], len(sel), None
        # Mid and natural debit, compared bit for bit with what was sent (NaN: the tile is absent, and
        # so is every column of it).
        mid, nat = np.where(valid, values, np.nan), np.where(valid, natural, np.nan)
        changed = (mid.view(np.int64) != old[sel, 0].view(np.int64)) | (
            nat.view(np.int64) != old[sel, 1].view(np.int64)
        )
        pos, shown = sel[changed], valid[changed]
        out = np.empty((len(pos), self.k))
        out[:, 0], out[:, 1] = mid[changed], nat[changed]
        out[:, 2], out[:, 3] = theo.tile_theo[pos], theo.tile_pop[pos]
        out[~shown, 2:] = np.nan
        wide = bool((out[shown, 2:].view(np.int64) != old[pos[shown], 2:].view(np.int64)).any())
        old[pos] = out
        return pos, out if wide else out[:, :2], len(sel), None if wide else (0, 1)


def _tile_calc(strategy: str) -> ProcessorFactory:
    return lambda settings, u: TileCalc(settings.model_settings, u, strategy)


CALC_AGENTS = tuple(
    AgentSpec(
        name=f"calc.{s}",
        reads=streams.CHANGES,
        writes=(streams.STAGED[s],),
        make=_tile_calc(s),
        stateful=True,
        doc=f"{s} tiles of the heatmap grid, recomputed where contracts changed.",
        max_batch=100,
    )
    for s in streams.HEATMAP_STRATEGIES
)
