"""A publisher's model of one (underlying, strategy): staged and published columns over the epoch's geometry.

Positions are tiles (heatmaps) or strikes (GEX); each carries ``k`` numbers, NaN in the first meaning
absent. Quote times are kept per contract. Everything here is numpy over positions: applying an
update is a scatter, counting what changed is a sum, a version's diff is the positions whose presence
or numbers differ from the published ones (for heatmaps also those whose legs were quoted again).
Work per update and per version is proportional to the positions touched, not to the grid.
"""

from __future__ import annotations

import numpy as np

from marketswarm.schemas.models import Columns, Geometry, columns, dense_columns, value_columns


class ColumnTable:
    def __init__(self, strategy: str) -> None:
        self.k = len(value_columns(strategy))
        # GEX rows compare bit for bit (their JSON differs for -0.0 and 0.0); tiles by value.
        self.bitwise = strategy == "gex"
        self.geometry: Geometry | None = None  # staged
        self._set(None)
        self.pub = self.cur.copy()
        self.pub_cts = self.cts.copy()

    def _set(self, geometry: Geometry | None) -> None:
        self.geometry = geometry
        size = geometry.size if geometry is not None else 0
        self.cur = np.full((size, self.k), np.nan)
        self.cts = np.zeros(len(geometry.contracts) if geometry is not None else 0, dtype=np.int64)
        self.legs = geometry.leg_positions() if geometry is not None else np.zeros((0, 0), np.int32)
        # Since the last version: positions whose presence changed, and positions given numbers (a new
        # tile counts under both, as a change of presence and of numbers); tiles a reset dropped.
        self.changed = np.zeros(size, dtype=bool)
        self.dirty = np.zeros(size, dtype=bool)
        self.n_changed = self.n_dirty = 0  # how many of each are set
        self.dropped = 0
        self.present = 0

    # --- staging ---------------------------------------------------------------------------

    def reset(self, geometry: Geometry) -> None:
        """A new epoch: everything staged so far goes; the new geometry starts empty."""
        dropped = self.present + self.dropped
        self._set(geometry)
        self.dropped = dropped

    def apply(self, cols: Columns) -> None:
        """A staged update: new numbers (NaN = gone) at positions, new quote times of contracts. Without
        a geometry (its epoch's reset was never seen) there is nothing to place them in."""
        if self.geometry is None:
            return
        pos = cols.positions()
        if len(pos):
            before = ~np.isnan(self.cur[pos, 0])
            after = ~np.isnan(cols.values()[:, 0])  # the first column is always carried
            flip = before != after
            self.n_changed += int((flip & ~self.changed[pos]).sum())
            self.n_dirty += int((after & ~self.dirty[pos]).sum())
            self.changed[pos] |= flip
            self.dirty[pos] |= after
            cols.scatter(self.cur)
            self.present += int(after.sum()) - int(before.sum())
        cpos = cols.contract_positions()
        if len(cpos):
            self.cts[cpos] = cols.contract_times()

    def pending_changes(self) -> int:
        """Changes since the last version, for value completeness."""
        return self.n_changed + self.n_dirty + self.dropped

    def unchanged(self) -> bool:
        return not (self.dropped or self.n_changed or self.n_dirty)

    def __len__(self) -> int:
        return self.present

    # --- publishing ------------------------------------------------------------------------

    def publish(self, reset: bool, header_changed: bool) -> tuple[Columns, int] | None:
        """The diff since the last version and how many positions it changes; then it is published.
        None when nothing a reader could see changed (quote times alone wait for the next version)."""
        which: tuple[int, ...] | None = None
        if reset:
            pos = np.flatnonzero(~np.isnan(self.cur[:, 0]))
            cpos = np.flatnonzero(self.cts != 0)
            self.pub = self.cur.copy()
            self.pub_cts = np.zeros_like(self.cts)
            touched = np.arange(len(self.cur))
        else:
            # Only positions touched since the last version can differ from the published ones.
            touched = np.flatnonzero(self.changed | self.dirty)
            cur, pub = self.cur[touched], self.pub[touched]
            cur_p, pub_p = ~np.isnan(cur[:, 0]), ~np.isnan(pub[:, 0])
            cts_moved = self.cts != self.pub_cts
            if self.bitwise:
                moved = (cur.view(np.int64) != pub.view(np.int64)).any(axis=1)
            else:
                moved = cur[:, 0] != pub[:, 0] if self.k == 1 else (cur != pub).any(axis=1)
                if self.legs.shape[1] and len(touched) and cts_moved.any():
                    moved |= cts_moved[self.legs[touched]].any(axis=1)
            sent = (cur_p != pub_p) | (cur_p & pub_p & self.dirty[touched] & moved)
            pos = touched[sent]
            cpos = np.flatnonzero(cts_moved)
            # The value columns that differ in any position sent and present (the first always): the
            # others stay. A position that goes absent needs only its first column (NaN) to say so.
            shown = sent & cur_p
            differ = (cur[shown].view(np.int64) != pub[shown].view(np.int64)).any(axis=0)
            differ[0] = True
            which = None if differ.all() else tuple(np.flatnonzero(differ).tolist())
            self.pub[touched] = cur
        self.changed[touched] = False
        self.dirty[touched] = False
        self.n_changed = self.n_dirty = self.dropped = 0
        if not reset and not len(pos) and not header_changed:
            return None
        self.pub_cts[cpos] = self.cts[cpos]
        if reset or which is None:
            return columns(pos, self.cur[pos], cpos, self.cts[cpos]), len(pos)
        return columns(pos, self.cur[pos][:, which], cpos, self.cts[cpos], which=which, k=self.k), len(pos)

    # --- persistence -----------------------------------------------------------------------

    def checkpoint(self) -> Columns:
        """Every published position and contract, dense."""
        return dense_columns(self.pub, self.pub_cts)

    def load(self, geometry: Geometry | None, vals: np.ndarray, cts: np.ndarray) -> None:
        """Start from a published model (checkpoint + diffs): staged = published."""
        self._set(geometry)
        if geometry is not None:
            self.cur[:] = vals
            self.cts[:] = cts
        self.present = int((~np.isnan(self.cur[:, 0])).sum())
        self.pub = self.cur.copy()
        self.pub_cts = self.cts.copy()
