"""A publisher's tiles: staged and published, with their numbers in numpy columns.

Heatmap tiles change by their numbers (value, score, legs' quote times) far more often than by
anything else, so those live in columns indexed by tile, updated and compared vectorized; a tile's
whole JSON is kept as last received and rebuilt with its current numbers only when it must go out
whole (a new tile, a new epoch, a checkpoint). GEX rows have no such numbers: they are whole only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import orjson

from marketswarm.agents.publish.assemble import with_values
from marketswarm.schemas.models import TileColumns

MAX_LEGS = 3


class TileTable:
    def __init__(self, numeric: bool) -> None:
        self.numeric = numeric
        self.staged: dict[str, bytes] = {}  # whole JSON as last received (numbers may be newer below)
        self.published: dict[str, bytes] = {}  # whole JSON as last published whole
        # Keys whose presence or whole JSON changed since the last version, in input order.
        self.changed: dict[str, None] = {}
        self.index: dict[str, int] = {}
        self.keys: list[str] = []
        self.n_legs = MAX_LEGS
        self.cur_v = np.zeros(0)
        self.cur_s = np.zeros(0)
        self.cur_t = np.zeros((0, MAX_LEGS), dtype=np.int64)
        self.pub_v = np.zeros(0)
        self.pub_s = np.zeros(0)
        self.pub_t = np.zeros((0, MAX_LEGS), dtype=np.int64)
        self.dirty = np.zeros(0, dtype=bool)  # numbers changed since the last version

    # --- columns -------------------------------------------------------------------------

    def _grow(self, n: int) -> None:
        cap = len(self.dirty)
        if n <= cap:
            return
        new = max(n, 2 * cap, 1024)
        for name in ("cur_v", "cur_s", "pub_v", "pub_s"):
            arr = getattr(self, name)
            setattr(self, name, np.concatenate([arr, np.full(new - cap, np.nan)]))
        for name in ("cur_t", "pub_t"):
            arr = getattr(self, name)
            setattr(self, name, np.concatenate([arr, np.zeros((new - cap, MAX_LEGS), dtype=np.int64)]))
        self.dirty = np.concatenate([self.dirty, np.zeros(new - cap, dtype=bool)])

    def _slot(self, key: str) -> int:
        i = self.index.get(key)
        if i is None:
            i = self.index[key] = len(self.keys)
            self.keys.append(key)
            self._grow(len(self.keys))
        return i

    def _numbers(self, i: int, published: bool) -> bytes:
        v, s, t = (self.pub_v, self.pub_s, self.pub_t) if published else (self.cur_v, self.cur_s, self.cur_t)
        return orjson.dumps([float(v[i]), float(s[i]), t[i, : self.n_legs].tolist()])  # NaN -> null

    def _take_numbers(self, key: str, whole: bytes, published: bool) -> None:
        d = orjson.loads(whole)
        legs = d["legs_ts_ns"]
        self.n_legs = len(legs)
        i = self._slot(key)
        for v, s, t in ((self.cur_v, self.cur_s, self.cur_t), (self.pub_v, self.pub_s, self.pub_t))[
            : 2 if published else 1
        ]:
            v[i] = d["value"]
            s[i] = np.nan if d["score"] is None else d["score"]
            t[i, : len(legs)] = legs

    # --- staging ---------------------------------------------------------------------------

    def reset(self) -> None:
        """A new epoch: everything staged so far goes."""
        self.changed.update(dict.fromkeys(self.staged))
        self.staged = {}

    def upsert(self, key: str, whole: bytes) -> None:
        self.staged[key] = whole
        self.changed[key] = None
        if self.numeric:
            self._take_numbers(key, whole, published=False)
            self.dirty[self.index[key]] = True

    def numbers(self, cols: TileColumns) -> None:
        """New numbers for tiles already staged."""
        if not cols.keys:
            return
        idx = np.fromiter((self._slot(k) for k in cols.keys), dtype=np.int64, count=len(cols.keys))
        self.n_legs = cols.n_legs
        self.cur_v[idx] = np.frombuffer(cols.value, dtype=np.float64)
        self.cur_s[idx] = np.frombuffer(cols.score, dtype=np.float64)
        self.cur_t[idx, : cols.n_legs] = np.frombuffer(cols.legs_ts, dtype=np.int64).reshape(-1, cols.n_legs)
        self.dirty[idx] = True

    def remove(self, key: str) -> None:
        if self.staged.pop(key, None) is not None:
            self.changed[key] = None

    def pending_changes(self) -> int:
        return len(self.changed) + int(self.dirty.sum())

    def whole(self, key: str, published: bool = False) -> bytes:
        base = (self.published if published else self.staged)[key]
        if not self.numeric:
            return base
        return with_values(base, self._numbers(self.index[key], published))

    # --- publishing ------------------------------------------------------------------------

    def publish(self, reset: bool) -> tuple[dict[str, bytes], bytes, int, tuple[str, ...]]:
        """What changed since the last version: (whole tiles, ``{key: [value, score, legs_ts_ns]}``
        for tiles the reader has, how many those are, removed keys); then it is the published state."""
        upserts: dict[str, bytes] = {}
        values, n_values = b"{}", 0
        removes: tuple[str, ...] = ()
        if reset:
            upserts = {k: self.whole(k) for k in self.staged}
        else:
            for k in self.changed:
                if k in self.staged and self.published.get(k) != self.staged[k]:
                    upserts[k] = self.whole(k)
            removes = tuple(sorted(k for k in self.changed if k not in self.staged and k in self.published))
            if self.numeric:
                idx = np.flatnonzero(self.dirty)
                cv, pv, cs, ps = self.cur_v[idx], self.pub_v[idx], self.cur_s[idx], self.pub_s[idx]
                moved = (cv != pv) | ~((cs == ps) | (np.isnan(cs) & np.isnan(ps)))
                moved |= (self.cur_t[idx] != self.pub_t[idx]).any(axis=1)
                idx = idx[moved]
                keys = [self.keys[i] for i in idx.tolist()]
                keep = np.fromiter(
                    (k in self.published and k in self.staged and k not in upserts for k in keys),
                    dtype=bool,
                    count=len(keys),
                )
                idx = idx[keep]
                if len(idx):
                    # In key order: the slots' order depends on what a process saw first, the
                    # diff's bytes must not (a restarted publisher writes the same diffs).
                    kept = [k for k, ok in zip(keys, keep.tolist(), strict=True) if ok]
                    order = sorted(range(len(kept)), key=kept.__getitem__)
                    kept = [kept[j] for j in order]
                    idx = idx[order]
                    rows = zip(
                        self.cur_v[idx].tolist(),
                        self.cur_s[idx].tolist(),
                        self.cur_t[idx, : self.n_legs].tolist(),
                        strict=True,
                    )
                    values, n_values = orjson.dumps(dict(zip(kept, rows, strict=True))), len(kept)
        # Now published.
        if reset:
            self.published = dict(self.staged)
        else:
            for k in upserts:
                self.published[k] = self.staged[k]
            for k in removes:
                self.published.pop(k, None)
        if self.numeric:
            dirty = np.flatnonzero(self.dirty)
            self.pub_v[dirty], self.pub_s[dirty], self.pub_t[dirty] = (
                self.cur_v[dirty],
                self.cur_s[dirty],
                self.cur_t[dirty],
            )
            self.dirty[:] = False
        self.changed.clear()
        return upserts, values, n_values, removes

    def unchanged(self) -> bool:
        return not self.changed and not self.dirty.any()

    # --- persistence -----------------------------------------------------------------------

    def checkpoint(self) -> dict[str, bytes]:
        """Every published tile, whole, with its published numbers."""
        return {k: self.whole(k, published=True) for k in self.published}

    def load(self, tiles: Mapping[str, bytes]) -> None:
        """Start from a published model (checkpoint + diffs): staged = published."""
        self.published = dict(tiles)
        self.staged = dict(tiles)
        if self.numeric:
            for k, whole in tiles.items():
                self._take_numbers(k, whole, published=True)

    def __len__(self) -> int:
        return len(self.staged)
