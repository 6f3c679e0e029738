"""The publisher, list in, list out: staged updates in, versions (diffs) out; and restored from them."""

from __future__ import annotations

from typing import Any

import numpy as np

from marketswarm.agents.publish.publisher import Publisher
from marketswarm.schemas import codec
from marketswarm.schemas.models import Diff, Staged, columns
from marketswarm.topology import streams
from marketswarm.topology.agent import Entry, Output
from marketswarm.topology.published import Published, from_checkpoint
from marketswarm.topology.settings import Settings
from marketswarm.topology.streams import STATE_FIELD
from tests.rig.wire import as_redis
from tests.unit.schemas.test_columns import fly

T0 = 1_763_996_400_000_000_000
MS = 1_000_000


def publisher(**knobs: Any) -> Publisher:
    st = Settings(underlyings=["SPX"], publish_min_tiles=1000, publish_min_changed_pct=50, publish_interval_ms=100)
    return Publisher(st.with_model_settings(knobs).model_settings, "SPX", strategy="butterfly")


def update(i: int, pos: list[int], vals: list[float], *, ts_ms: int, reset: bool = False, pending: int = 0) -> Entry:
    _, g = fly()
    staged = Staged(
        strategy="butterfly", underlying="SPX", epoch="e1", src=f"{i}-0", rx_ns=T0, ts_ns=T0 + ts_ms * MS,
        slots=g.size, pending=pending, reset=reset, geometry=g if reset else None,
        cols=columns(np.array(pos), np.array(vals)),
    )  # fmt: skip
    return Entry(f"{i}-0", staged)


def diffs(outputs: list[Output]) -> list[Diff]:
    return [
        codec.decode(streams.Payload.DIFF, as_redis(o.fields))
        for o in outputs
        if o.spec.payload is streams.Payload.DIFF
    ]


def test_an_epoch_is_published_when_structurally_complete_then_by_value_or_time() -> None:
    p = publisher()
    # Incomplete (legs never quoted): held until complete or NEW_EPOCH_PATIENCE_S of event time.
    assert diffs(p.process([update(1, [0, 1, 2], [1.0, 2.0, 3.0], ts_ms=0, reset=True, pending=4)]).outputs) == []
    [first] = diffs(p.process([update(2, [3, 4, 5], [4.0, 5.0, 6.0], ts_ms=10)]).outputs)
    assert (first.version, first.reason, first.reset) == (1, "structural", True)
    assert first.cols.positions().tolist() == [0, 1, 2, 3, 4, 5] and first.geometry is not None
    # One tile of six changed (17% < 50%) and 40 ms < 100 ms: held ...
    assert diffs(p.process([update(3, [1], [2.5], ts_ms=50)]).outputs) == []
    # ... until the interval of event time has passed: one version with both changes.
    [second] = diffs(p.process([update(4, [0], [np.nan], ts_ms=120)]).outputs)
    assert (second.version, second.prev_version, second.reason) == (2, 1, "time")
    assert second.cols.positions().tolist() == [0, 1]
    assert np.isnan(second.cols.values()[0, 0]) and second.cols.values()[1, 0] == 2.5
    # Three of five present tiles change (60%): value completeness publishes at once.
    [third] = diffs(p.process([update(5, [2, 3, 4], [2.0, 2.0, 2.0], ts_ms=130)]).outputs)
    assert (third.version, third.reason) == (3, "value")
    # The same numbers again: nothing a reader could see changed, no version.
    assert diffs(p.process([update(6, [2, 3, 4], [2.0, 2.0, 2.0], ts_ms=400)]).outputs) == []


def test_model_settings_change_the_versions() -> None:
    steps = [update(1, [0, 1, 2], [1.0, 2.0, 3.0], ts_ms=0, reset=True), update(2, [1], [2.5], ts_ms=50)]
    slow, fast = publisher(), publisher(publish_interval_ms=10)
    assert [d.version for s in steps for d in diffs(slow.process([s]).outputs)] == [1]
    assert [d.version for s in steps for d in diffs(fast.process([s]).outputs)] == [1, 2]


def test_a_restore_from_its_own_outputs_is_the_same_publisher() -> None:
    p = publisher()
    steps = [update(1, [0, 1, 2], [1.0, 2.0, 3.0], ts_ms=0, reset=True), update(2, [1], [2.5], ts_ms=150)]
    outputs, commands = [], []
    for s in steps:
        effects = p.process([s])
        outputs += effects.outputs
        commands += effects.commands
    model = next(c for c in commands if c[0] == "HSET" and c[1] == streams.model_key("SPX", "butterfly"))
    state = [c for c in commands if c[0] == "HSET" and c[2] == STATE_FIELD][-1][3]
    fields = dict(zip(model[2::2], model[3::2], strict=True))
    checkpoint = [fields.get(f) for f in p.state_reads()[0][2:]]
    held = update(3, [2], [3.5], ts_ms=160)  # staged, acked, not yet published
    p.process([held])

    again = publisher()
    [resume] = again.load([checkpoint, state])
    assert (
        resume.stream is streams.DIFFS["butterfly"]
        and resume.after == f"{from_checkpoint('butterfly', checkpoint).version}-0"
    )
    entries = [Entry(f"{d.version}-0", d) for d in diffs(outputs) if d.version > int(resume.after.split("-")[0])]
    [staged] = again.reapply(resume.stream, entries)
    assert staged.stream is streams.STAGED["butterfly"] and staged.after == "2-0"
    assert again.reapply(staged.stream, [held]) == ()
    assert (again.version, again.last_entry) == (p.version, p.last_entry)
    assert again.tiles.pending_changes() == p.tiles.pending_changes()
    assert np.array_equal(again.tiles.cur, p.tiles.cur, equal_nan=True)


def test_published_applies_diffs_in_order() -> None:
    p = publisher()
    out = diffs(p.process([update(1, [0, 1, 2], [1.0, 2.0, 3.0], ts_ms=0, reset=True)]).outputs)
    model = Published("butterfly")
    for d in out:
        model.apply(d)
    assert model.version == 1 and model.present == 3
