"""The alert rules on hand-made GEX observations: which fire, when, and what hysteresis and cooldown hold back."""

from __future__ import annotations

from typing import Any

import pytest

from marketswarm.schemas import alerts
from marketswarm.schemas.alerts import RulesError, RuleSet, parse_rules
from marketswarm.schemas.rules import FliesRules, FlowRules, Observation
from marketswarm.schemas.rules import GexRules as Engine

S = 1_000_000_000


def obs(t_s: float, spot: float, **kw: Any) -> Observation:
    base: dict[str, Any] = dict(
        version=int(t_s), t_ns=round(t_s * S), spot=spot, flip=None, call_wall=None, put_wall=None, call_above=None,
        put_below=None, mode="compression", distance_pct=None, score=80.0, gravity=None, em=None, step=5.0,
    )  # fmt: skip
    return Observation(**(base | kw))


def only(rule: str, **cfg: Any) -> RuleSet:
    """A rule set with ``rule`` alone enabled, tuned by ``cfg``."""
    raw = {r: {"enabled": r == rule} for r in alerts.MARKET_RULES}
    raw[rule] |= cfg
    return parse_rules("", "t").rules.model_validate(raw)


def run(rules: RuleSet, path: list[Observation]) -> list[tuple[float, str, str]]:
    e = Engine("SPX", rules)
    return [(a.t_ns / S, a.subject, a.values["direction"]) for o in path for a in e.step(o)]


def test_flip_cross_fires_on_each_side_change_outside_the_hysteresis_and_respects_the_cooldown() -> None:
    rules = only("flip_cross", hysteresis_pct=0.1, cooldown_s=60)
    flip = 5000.0  # 0.1 % of ~5000 is 5 points
    spots = [
        (0, 4990),  # below: the first observation sets the side, fires nothing
        (10, 4998),  # inside the band (-0.04 %): the side held
        (20, 5003),  # inside the band: a wobble, nothing
        (30, 4996),  # back, nothing
        (40, 5010),  # above, beyond the band: fires up at 40
        (50, 4990),  # down at 50: inside the 60 s cooldown of 40, suppressed (the side moves)
        (70, 5010),  # up at 70: 30 s after 40? no: 70 - 40 = 30 < 60, suppressed
        (105, 4990),  # down at 105: 65 s after 40, fires
        (110, 5004),  # inside the band: nothing
    ]
    fired = run(rules, [obs(t, s, flip=flip) for t, s in spots])
    assert fired == [(40, "flip", "up"), (105, "flip", "down")]


def test_flip_cross_without_a_flip_holds_its_side() -> None:
    fired = run(only("flip_cross", cooldown_s=0), [obs(0, 4990, flip=5000.0), obs(1, 5100), obs(2, 5010, flip=5000.0)])
    assert fired == [(2, "flip", "up")]


def test_wall_near_fires_once_until_re_armed_beyond_the_margin() -> None:
    rules = only("wall_near", within_pct=0.2, hysteresis_pct=0.1, cooldown_s=0)
    wall = 5000.0  # within 0.2 %: spot >= 4990.02; re-armed below ~4985.04 (0.3 %)
    spots = [(0, 4950), (1, 4989), (2, 4991), (3, 4995), (4, 4988), (5, 4992), (6, 4980), (7, 4991)]
    fired = run(rules, [obs(t, s, call_above=wall) for t, s in spots])
    # 2: first inside; 4 and 5 stay inside the margin (not re-armed); 6 re-arms; 7 fires again
    assert fired == [(2, "call_wall", "near"), (7, "call_wall", "near")]


def test_wall_near_first_seen_near_the_wall_does_not_fire() -> None:
    fired = run(only("wall_near", cooldown_s=0), [obs(0, 4999, put_below=4995.0), obs(1, 4998, put_below=4995.0)])
    assert fired == []


def test_wall_break_fires_through_the_wall_not_back_and_not_when_the_wall_moves() -> None:
    rules = only("wall_break", hysteresis_pct=0.05, cooldown_s=0)
    path = [
        obs(0, 4990, call_wall=5000.0, put_wall=4900.0),
        obs(1, 5001, call_wall=5000.0, put_wall=4900.0),  # +0.02 %: inside the band
        obs(2, 5010, call_wall=5000.0, put_wall=4900.0),  # through the call wall: up
        obs(3, 4990, call_wall=5000.0, put_wall=4900.0),  # back below: no alert, re-armed
        obs(4, 4990, call_wall=4980.0, put_wall=4900.0),  # the wall moved below spot: a new wall, nothing
        obs(5, 4890, call_wall=4980.0, put_wall=4900.0),  # through the put wall: down
    ]
    assert run(rules, path) == [(2, "call_wall", "up"), (5, "put_wall", "down")]


def test_mode_change_leaves_transition_only_beyond_the_margin() -> None:
    rules = only("mode_change", hysteresis_pct=0.1, cooldown_s=0)
    path = [
        obs(0, 5000, mode="compression", distance_pct=1.0),
        obs(1, 5000, mode="transition", distance_pct=0.4),  # fires: compression -> transition
        obs(2, 5000, mode="compression", distance_pct=0.55),  # within 0.5 + 0.1: held in transition
        obs(3, 5000, mode="compression", distance_pct=0.65),  # fires: transition -> compression
        obs(4, 5000, mode="expansion", distance_pct=-2.0),  # fires: total changed sign
    ]
    e = Engine("SPX", rules)
    got = [(a.t_ns / S, a.values["from"], a.values["to"]) for o in path for a in e.step(o)]
    assert got == [(1, "compression", "transition"), (3, "transition", "compression"), (4, "compression", "expansion")]


def test_gravity_move_counts_strikes_from_where_it_last_fired() -> None:
    rules = only("gravity_move", strikes=2, cooldown_s=0)
    levels = [(0, 5000.0), (1, 5005.0), (2, 5010.0), (3, 5015.0), (4, 5005.0), (5, 5000.0)]
    fired = run(rules, [obs(t, 5000, gravity=g, step=5.0) for t, g in levels])
    assert fired == [(2, "gravity", "up"), (5, "gravity", "down")]  # 5000 -> 5010, then 5010 -> 5000


def test_alerts_carry_values_message_and_a_stable_fingerprint() -> None:
    path = [obs(0, 4990, flip=5000.0), obs(40, 5010, flip=5000.0, distance_pct=0.2)]
    e1, e2 = Engine("SPX", only("flip_cross")), Engine("SPX", only("flip_cross"))
    a1 = [a for o in path for a in e1.step(o)]
    a2 = [a for o in path for a in e2.step(o)]
    assert a1 == a2 == [a2[0]]
    a = a2[0]
    assert a.rule == "flip_cross" and a.severity == "warning" and a.underlying == "SPX" and a.t_ns == 40 * S
    assert a.values == {"direction": "up", "level": 5000.0, "spot": 5010, "flip": 5000.0, "distance_pct": 0.2}
    assert a.message == "SPX spot 5,010.00 crossed up through the flip 5,000.00"
    assert len(a.fingerprint) == 16 and a.fingerprint != alerts.fingerprint(
        "flip_cross", "NDX", "flip", "up", 5000.0, a.t_ns
    )


def test_the_engine_state_round_trips_through_json() -> None:
    import orjson

    e = Engine("SPX", only("flip_cross", cooldown_s=60))
    e.step(obs(0, 4990, flip=5000.0))
    e.step(obs(40, 5010, flip=5000.0))
    restored = Engine("SPX", only("flip_cross", cooldown_s=60), orjson.loads(orjson.dumps(e.state)))
    assert restored.step(obs(50, 4990, flip=5000.0)) == []  # the cooldown survived the restore
    assert restored.suppressed == 1


def test_alertmanager_v4_payload() -> None:
    e = Engine("SPX", only("flip_cross"))
    e.step(obs(0, 4990, flip=5000.0))
    (a,) = e.step(obs(1_700_000_000, 5010, flip=5000.0, t_ns=1_700_000_000_250_000_000))
    body = alerts.alertmanager_json(a, "desk")
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "desk"
    (am,) = body["alerts"]
    assert am["fingerprint"] == a.fingerprint and am["status"] == "firing"
    assert am["labels"] == {"alertname": "flip_cross", "underlying": "SPX", "severity": "warning", "subject": "flip"}
    assert am["startsAt"] == "2023-11-14T22:13:20.250Z" and am["endsAt"] == "0001-01-01T00:00:00Z"
    assert am["annotations"]["summary"] == a.message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[rules.flip_cross]\ncooldown_s = -1\n", "t.toml: rules.flip_cross.cooldown_s: Input should be greater"),
        ("[rules.flip_crss]\n", "t.toml: rules.flip_crss: Extra inputs are not permitted"),
        ('[rules.wall_near]\nseverity = "loud"\n', "t.toml: rules.wall_near.severity: Input should be 'info'"),
        ('[[receivers]]\nname = "a"\nurl = "ftp://x"\n', "t.toml: receivers.0.url: Value error, must be an http"),
        ('[[receivers]]\nname = "a"\nurl = "http://x"\nrules = ["nope"]\n', "t.toml: receivers.0.rules: Value error"),
        ("[rules\n", "t.toml: not valid TOML: "),
    ],
)
def test_a_bad_rules_file_is_one_line_naming_the_key(text: str, line: str) -> None:
    with pytest.raises(RulesError) as e:
        parse_rules(text, "t.toml")
    assert str(e.value).startswith(line) and "\n" not in str(e.value)


def test_the_shipped_rules_file_is_valid_and_enables_every_market_rule() -> None:
    r = alerts.load_rules(alerts.DEFAULT_RULES)
    assert all(getattr(r.rules, name).enabled for name in alerts.MARKET_RULES) and r.receivers == []
    assert set(alerts.MARKET_RULES) == set(RuleSet.model_fields)


def flow(
    t_s: float, total: float, rows: dict[tuple[float, str], float] | None = None
) -> tuple[int, int, dict[str, Any]]:
    """An intent version at ``t_s``: its 5-minute net premium in total and by (strike, side)."""
    window = {
        "totals": {"net_premium": total},
        "rows": [{"strike": k, "side": side, "net_premium": v} for (k, side), v in (rows or {}).items()],
    }
    return int(t_s), round(t_s * S), {"spot": 5000.0, "flow": {"5m": window, "day": window}}


def test_net_premium_fires_past_the_threshold_either_way_and_re_arms_under_the_margin() -> None:
    rules = only("net_premium", total_usd=5e6, strike_usd=0, hysteresis_pct=20, cooldown_s=30)
    e = FlowRules("SPX", rules)
    path = [
        flow(0, 1e6),  # under: armed
        flow(10, 5.2e6),  # past 5M bought: fires at 10
        flow(20, 4.5e6),  # under the threshold but above 4M (20 % under): not re-armed
        flow(30, 6e6),  # past again, not re-armed: nothing
        flow(40, 3.9e6),  # under 4M: re-armed
        flow(45, 5.5e6),  # past, 35 s after 10: inside the 30 s cooldown? no: 45 - 10 = 35 >= 30: fires
        flow(50, -1e6),  # re-armed
        flow(60, -5e6),  # sold 5M: fires (either way), 15 s after 45: inside the cooldown, suppressed
    ]
    got = [(a.t_ns / S, a.subject, a.values["direction"]) for v, t, doc in path for a in e.step(v, t, doc)]
    assert got == [(10, "total", "bought"), (45, "total", "bought")]
    assert e.suppressed == 1


def test_net_premium_at_one_strike_and_a_strike_new_to_the_window() -> None:
    rules = only("net_premium", total_usd=0, strike_usd=1e6, hysteresis_pct=20, cooldown_s=0)
    e = FlowRules("SPX", rules)
    path = [
        flow(0, 0, {(5000.0, "call"): 2e5}),
        flow(1, 0, {(5000.0, "call"): 1.1e6, (4950.0, "put"): -3e6}),  # both past: 5000C bought, 4950P sold (new)
        flow(2, 0, {(5000.0, "call"): 1.2e6}),  # 4950P left the window: forgotten
        flow(3, 0, {(5000.0, "call"): 1.3e6, (4950.0, "put"): -1.5e6}),  # back, past: fires again
    ]
    got = [(a.t_ns / S, a.subject, a.values["direction"]) for v, t, doc in path for a in e.step(v, t, doc)]
    assert got == [(1, "5000C", "bought"), (1, "4950P", "sold"), (3, "4950P", "sold")]
    assert (
        "net premium sold at 4950P in 5 minutes: -$3.00M (threshold $1.00M)"
        in FlowRules("SPX", rules).step(*flow(1, 0, {(4950.0, "put"): -3e6}))[0].message
    )


def fly(k: str, rr: float, within: bool = True) -> dict[str, Any]:
    return {"k": k, "expiry": "2026-12-07", "side": "call", "strike": 5000.0, "width": 10.0, "debit": 1.0,
            "reward_risk": rr, "composite": 0.5, "parts": {"within_em": within}}  # fmt: skip


def test_best_fly_fires_when_a_fly_worth_buying_enters_the_list() -> None:
    rules = only("best_fly", min_reward_risk=5, within_em=True, cooldown_s=60)
    e = FliesRules("SPX", rules)
    path = [
        (0, [fly("a", 8)]),  # the first list: sets the state
        (1, [fly("a", 8), fly("b", 9), fly("c", 3), fly("d", 9, within=False)]),  # b enters (c too poor, d outside)
        (2, [fly("a", 8)]),  # b leaves
        (30, [fly("a", 8), fly("b", 9)]),  # b enters again inside its cooldown: suppressed
        (40, [fly("a", 8)]),
        (90, [fly("a", 8), fly("b", 9)]),  # after the cooldown: fires
    ]
    got = [(a.t_ns / S, a.subject) for t, flies in path for a in e.step(t, t * S, {"flies": flies, "spot": 5000.0})]
    assert got == [(1, "b"), (90, "b")]
    assert e.state["fired"] == {"best_fly:b": 90 * S}
