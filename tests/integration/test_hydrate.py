"""Hydrate against a real server: admission A/B/C, fills counted once, epochs created and promoted."""

from __future__ import annotations

import random
from collections.abc import Sequence

import msgspec
import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketswarm.agents.hydrate.hydrator import HYDRATE, SHRINK_CONFIRM_S, Hydrator
from marketswarm.schemas import codec
from marketswarm.schemas.events import (
    ChainContract,
    ChainSnapshot,
    EpochChange,
    EventBatch,
    FillChange,
    Quote,
    Spot,
    Trade,
)
from marketswarm.topology import streams
from marketswarm.topology.agent import Entry
from marketswarm.topology.commit import Committer, encode
from marketswarm.topology.restore import restore
from marketswarm.topology.settings import Settings
from tests.rig.wire import encode_changes

pytestmark = pytest.mark.integration

U = "SPX"
T0 = 1_700_000_000_000_000_000
STRIKES = (4700, 4705, 4710)


def contract(k: int, side: str = "call", expiry: str = "2023-11-15", bid: float | None = 1.0) -> ChainContract:
    sym = f"SPXW231115{'C' if side == 'call' else 'P'}{k * 1000:08d}"
    return ChainContract(
        symbol=sym, underlying=U, root="SPXW", expiry=expiry, side=side, strike_x1000=k * 1000,  # type: ignore[arg-type]
        bid=bid, ask=None if bid is None else bid + 0.2, iv=0.2, gamma=0.01, oi=100,
    )  # fmt: skip


def chain(strikes: Sequence[int] = STRIKES, ts: int = T0, spot: float = 4700.0) -> ChainSnapshot:
    cs = tuple(contract(k, side) for k in strikes for side in ("call", "put"))
    return ChainSnapshot(underlying=U, ts_ns=ts, spot=spot, source="test", contracts=cs)


async def apply(r: aioredis.Redis, batches: Sequence[Sequence[object]], start: int = 0) -> list[int]:
    """Commit hydrate's step for each batch of events (one entry per batch), as the runtime would."""
    h = Hydrator(Settings(underlyings=[U]), U)
    await restore(r, h, HYDRATE.name, U)
    commit = Committer(r)
    totals = [0] * 8
    for i, events in enumerate(batches):
        entry = Entry(f"{start + i + 1}-0", EventBatch(src=f"{start + i + 1}-0", rx_ns=T0, events=tuple(events)))  # type: ignore[arg-type]
        effects = h.process([entry])
        results = await commit(encode(streams.EVENTS.key(U), "hydrate", effects, []))
        assert effects.on_commit is not None
        effects.on_commit({"hydrate": results[0]})
        totals = [a + int(b) for a, b in zip(totals, results[0][:8], strict=True)]
    return totals


async def state(r: aioredis.Redis) -> dict[bytes, bytes]:
    epoch = await r.get(streams.epoch_pointer_key(U))
    assert epoch is not None
    return dict(await r.hgetall(streams.state_key(U, epoch.decode())))


async def test_admission_rules_and_outside_epoch(aredis: aioredis.Redis) -> None:
    sym = "SPXW231115C04700000"
    q = lambda ts, seq, bid: Quote(symbol=sym, underlying=U, bid=bid, ask=bid + 0.1, ts_ns=ts, seq=seq)  # noqa: E731
    counts = await apply(aredis, [[chain()]])
    assert counts[0] > 0 and counts[4] == 1  # new slots admitted (A), one promotion
    counts = await apply(aredis, [[q(T0 + 10, 1, 2.0)]], start=1)
    assert counts[:4] == [0, 1, 0, 0]  # B: newer
    counts = await apply(aredis, [[q(T0 + 10, 1, 3.0), q(T0 + 5, 9, 3.0)]], start=2)
    assert counts[:4] == [0, 0, 2, 0]  # C: equal and older
    counts = await apply(aredis, [[q(T0 + 10, 2, 4.0)]], start=3)
    assert counts[:4] == [0, 1, 0, 0]  # same time, higher sequence: newer
    other = Quote(symbol="SPXW231115C09000000", underlying=U, bid=1, ask=2, ts_ns=T0 + 20)
    counts = await apply(aredis, [[other]], start=4)
    assert counts[:4] == [0, 0, 0, 1]  # X: never creates structure
    st_ = await state(aredis)
    assert codec.decode  # noqa: B018
    assert st_[f"{sym}|q".encode()].endswith(b'"bid":4.0,"ask":4.1}')
    assert b"SPXW231115C09000000" not in st_


async def test_fills_count_once_including_same_timestamp_bursts(aredis: aioredis.Redis) -> None:
    sym = "SPXW231115P04705000"
    await apply(aredis, [[chain()]])
    burst = [Trade(symbol=sym, underlying=U, px=1.5, size=3, ts_ns=T0 + 100, seq=s) for s in (1, 2, 3)]
    counts = await apply(aredis, [burst, burst, burst[::-1]], start=1)
    assert counts[5] == 3 and counts[6] == 6  # three distinct fills, six redeliveries
    st_ = await state(aredis)
    assert st_[f"{sym}|v".encode()] == b"9"
    assert b'"seq":3' in st_[f"{sym}|t".encode()]


async def test_new_geometry_makes_and_promotes_a_new_epoch(aredis: aioredis.Redis) -> None:
    await apply(aredis, [[chain()]])
    first = await aredis.get(streams.epoch_pointer_key(U))
    newer_quote = Quote(symbol="SPXW231115C04705000", underlying=U, bid=7.0, ask=7.2, ts_ns=T0 + 50)
    await apply(aredis, [[newer_quote]], start=1)
    await apply(aredis, [[chain(ts=T0 + 10)]], start=2)  # same grid: same epoch
    assert await aredis.get(streams.epoch_pointer_key(U)) == first
    await apply(aredis, [[chain((*STRIKES, 4715), ts=T0 + 20)]], start=3)  # a strike added
    second = await aredis.get(streams.epoch_pointer_key(U))
    assert second != first
    assert first is not None and second is not None
    meta_old = await aredis.hgetall(streams.epoch_meta_key(U, first.decode()))
    meta_new = await aredis.hgetall(streams.epoch_meta_key(U, second.decode()))
    assert meta_old[b"status"] == b"retired" and meta_new[b"status"] == b"active"
    assert 0 < await aredis.ttl(streams.state_key(U, first.decode())) <= 300
    st_ = await state(aredis)
    # The quote newer than the snapshot was carried over, not overwritten by the older chain value.
    assert b'"bid":7.0' in st_[b"SPXW231115C04705000|q"]
    assert b"SPXW231115C04715000" in st_
    # The changes stream announced the epoch before its values.
    last = (await aredis.xrevrange(streams.CHANGES.key(U), count=1))[0][1]
    batch = codec.decode(streams.Payload.CHANGES, last)
    assert batch.epoch == second.decode() and batch.changes[0].epoch == second.decode()
    # The script writes the codec's wire format, byte for byte.
    again = {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in encode_changes(batch).items()}
    assert again == last


def _events(draw_seed: int) -> list[object]:
    rng = random.Random(draw_seed)
    syms = [f"SPXW231115{s}{k * 1000:08d}" for k in STRIKES for s in "CP"]
    out: list[object] = []
    for i in range(40):
        sym = rng.choice(syms)
        ts = T0 + rng.randrange(1, 30) * 1000
        kind = rng.random()
        if kind < 0.5:
            bid = rng.randrange(1, 50) / 10
            out.append(Quote(symbol=sym, underlying=U, bid=bid, ask=bid + 0.1, ts_ns=ts, seq=rng.randrange(5)))
        elif kind < 0.9:
            out.append(
                Trade(symbol=sym, underlying=U, px=rng.randrange(1, 50) / 10, size=rng.randrange(1, 9), ts_ns=ts, seq=i)
            )
        else:
            out.append(Spot(underlying=U, value=4700 + rng.randrange(100), ts_ns=ts + i))
    return out


def _key(e: object) -> tuple[int, int, str]:
    return (e.ts_ns, getattr(e, "seq", 0), repr(e))  # type: ignore[attr-defined]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), shuffle_seed=st.integers(0, 10**6), dup=st.floats(0, 1))
async def test_shuffled_and_duplicated_equals_in_order_once(
    redis_url: str, seed: int, shuffle_seed: int, dup: float
) -> None:
    events = _events(seed)
    # Distinct (time, sequence) per slot so "in event-time order" has one meaning.
    seen: set[tuple[str, str, int, int]] = set()
    unique = []
    for e in events:
        slot = (getattr(e, "symbol", "spot"), type(e).__name__, e.ts_ns, getattr(e, "seq", 0))  # type: ignore[attr-defined]
        if slot not in seen:
            seen.add(slot)
            unique.append(e)
    r = aioredis.Redis.from_url(redis_url)
    try:
        await r.flushall()
        await apply(r, [[chain()]])
        await apply(r, [[e] for e in sorted(unique, key=_key)], start=1)
        expected = (await state(r), await r.get(streams.spot_key(U)))
        await r.flushall()
        rng = random.Random(shuffle_seed)
        stream = unique + [e for e in unique if rng.random() < dup]
        rng.shuffle(stream)
        cuts = sorted(rng.sample(range(1, len(stream)), k=min(5, len(stream) - 1)))
        batches = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        await apply(r, [[chain()]])
        await apply(r, batches, start=1)
        assert (await state(r), await r.get(streams.spot_key(U))) == expected
    finally:
        await r.aclose()


def _value(raw: bytes | None) -> dict[str, object]:
    """A stored slot or spot: the 32-character newness, then the change's JSON."""
    assert raw is not None
    return orjson.loads(raw[32:])  # type: ignore[no-any-return]


async def test_provider_time_decides_and_a_receive_time_never_beats_it(aredis: aioredis.Redis) -> None:
    sym = "SPXW231115C04700000"
    second = 1_000_000_000
    await apply(aredis, [[chain()]])  # quotes without a provider time; spot received at T0
    streamed = Spot(underlying=U, value=4710.0, ts_ns=T0 + 5 * second)
    ws = Quote(symbol=sym, underlying=U, bid=2.0, ask=2.1, ts_ns=T0 + 5 * second, seq=1)
    await apply(aredis, [[streamed, ws]], start=1)
    # A later poll: its underlying value the provider timed before the streamed one (the documented
    # example is months old), its quotes without a time at all. Neither may regress the state.
    cs = tuple(ChainContract(**{**msgspec.structs.asdict(c), "bid": 9.0, "ask": 9.5}) for c in chain().contracts)
    later = ChainSnapshot(
        underlying=U, ts_ns=T0 + 60 * second, spot=4600.0, spot_ts_ns=T0 + second, source="test", contracts=cs
    )
    counts = await apply(aredis, [[later]], start=2)
    assert _value(await aredis.get(streams.spot_key(U)))["value"] == 4710.0
    assert _value((await state(aredis))[f"{sym}|q".encode()])["bid"] == 2.0
    assert counts[2] >= 2  # both discarded (C)
    # A poll whose spot the provider timed after the streamed value wins, and says it was delayed.
    newer = msgspec.structs.replace(later, spot=4720.0, spot_ts_ns=T0 + 10 * second, spot_delayed=True)
    await apply(aredis, [[newer]], start=3)
    assert _value(await aredis.get(streams.spot_key(U))) == {
        "c": "s",
        "ts_ns": T0 + 10 * second,
        "value": 4720.0,
        "delayed": True,
    }


async def test_trade_conditions_decide_volume_and_last(aredis: aioredis.Redis) -> None:
    sym = "SPXW231115C04700000"
    await apply(aredis, [[chain()]])

    def t(seq: int, px: float, conditions: tuple[int, ...]) -> Trade:
        return Trade(symbol=sym, underlying=U, px=px, size=3, ts_ns=T0 + seq, seq=seq, conditions=conditions)

    regular, cancel, out_of_sequence, compression = (
        t(1, 1.5, (209,)),
        t(2, 9.9, (201,)),
        t(3, 1.0, (202,)),
        t(4, 5, (247,)),
    )
    await apply(aredis, [[regular, cancel, out_of_sequence, compression]], start=1)
    st_ = await state(aredis)
    assert int(st_[f"{sym}|v".encode()]) == 6  # the regular and the out-of-sequence print
    assert _value(st_[f"{sym}|t".encode()])["px"] == 1.5  # an out-of-sequence print is not the last
    # The prints that count toward volume, and only those, go on the changes stream for the trade flow.
    ((last, fields),) = await aredis.xrevrange(streams.CHANGES.key(U), count=1)
    batch = codec.decode(streams.Payload.CHANGES, fields)
    fills = [(c.seq, c.px, c.size) for c in batch.changes if isinstance(c, FillChange)]
    assert fills == [(1, 1.5, 3), (3, 1.0, 3)]
    await apply(aredis, [[regular, out_of_sequence]], start=2)  # delivered again: counted once
    later = await aredis.xrange(streams.CHANGES.key(U), min=b"(" + last)
    assert not [
        c for _, f in later for c in codec.decode(streams.Payload.CHANGES, f).changes if isinstance(c, FillChange)
    ]


async def test_a_far_smaller_snapshot_waits_for_confirmation_to_replace_the_grid(aredis: aioredis.Redis) -> None:
    wide = tuple(range(4600, 4800, 5))  # 40 strikes, 80 contracts
    await apply(aredis, [[chain(wide)]])
    first = (await aredis.get(streams.epoch_pointer_key(U))).decode()  # type: ignore[union-attr]
    one = ChainSnapshot(underlying=U, ts_ns=T0 + 1, spot=None, source="test", contracts=(contract(4700, bid=2.0),))
    counts = await apply(aredis, [[one]], start=1)
    assert (await aredis.get(streams.epoch_pointer_key(U))).decode() == first  # held, not promoted
    assert counts[4] == 0
    # Its values went to the active epoch (the contract is there), and nothing announced a new grid.
    assert (await state(aredis))[b"SPXW231115C04700000|q"].endswith(b"}")
    changes = await aredis.xrange(streams.CHANGES.key(U))
    decoded = [codec.decode(streams.Payload.CHANGES, f) for _, f in changes]
    assert sum(isinstance(c, EpochChange) for cb in decoded for c in cb.changes) == 1

    # Copies in a burst confirm nothing; the active geometry again starts the count afresh; a real
    # shrink, in every snapshot for SHRINK_CONFIRM_S, is promoted.
    def later(s: int) -> ChainSnapshot:
        return ChainSnapshot(underlying=U, ts_ns=T0 + s * 10**9, spot=None, source="test", contracts=one.contracts)

    await apply(aredis, [[one, one], [later(SHRINK_CONFIRM_S - 1)], [chain(wide, ts=T0 + 30 * 10**9)]], start=2)
    assert (await aredis.get(streams.epoch_pointer_key(U))).decode() == first
    counts = await apply(aredis, [[later(31)], [later(31 + SHRINK_CONFIRM_S - 1)]], start=5)
    assert counts[4] == 0 and (await aredis.get(streams.epoch_pointer_key(U))).decode() == first
    counts = await apply(aredis, [[later(31 + SHRINK_CONFIRM_S)]], start=7)
    assert counts[4] == 1 and (await aredis.get(streams.epoch_pointer_key(U))).decode() != first
    # A modest shrink (an expiry passing: here a quarter of the strikes) is promoted at once.
    await apply(aredis, [[chain(wide, ts=T0 + 60 * 10**9)]], start=8)
    counts = await apply(aredis, [[chain(wide[:30], ts=T0 + 61 * 10**9)]], start=9)
    assert counts[4] == 1
