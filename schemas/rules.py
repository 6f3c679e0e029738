"""The rules of the alerts, per model watched: what each observes of a version, and when it fires.

Every rule set follows one model's versions in event time (agents/vigil/ runs it), so a replay of the
same input fires the same alerts at the same times; each is configured in the rules file
(schemas/alerts.py says how, ``RuleSet``). A rule's first observation only sets its state, but for
``net_premium``: a strike that enters the 5-minute window past its threshold is new flow, and fires.

The GEX model's rules (``GexRules``), on an ``Observation`` of each version (spot, flip, walls, and
the market mode and dealer gravity of schemas/levels.py):

* ``flip_cross``: spot crosses the flip. The side of the flip is "above" when spot is more than
  ``hysteresis_pct`` above it, "below" when more than that below; in between the side held stays, so a
  wobble around the flip fires nothing. A change of side fires (up or down).
* ``wall_near``: spot comes within ``within_pct`` of the call wall at or above it, or of the put wall at
  or below it. Re-armed once the distance is beyond ``within_pct + hysteresis_pct`` again.
* ``wall_break``: spot breaks through the call wall (up) or the put wall (down), the walls of largest
  call and put GEX over all strikes, with the same hysteresis as the flip; a wall that moved is a new
  wall (its side is taken without firing).
* ``mode_change``: the market mode changes (compression, transition, expansion). Leaving transition
  needs spot ``hysteresis_pct`` beyond the transition band.
* ``gravity_move``: the gravity level moves by ``strikes`` strikes or more from where it last fired (or
  was first seen).

The liquidity intent model's rule (``FlowRules``, on each version's 5-minute trade flow):

* ``net_premium``: the net premium (bought minus sold) of the last 5 minutes reaches ``total_usd`` in
  total, or ``strike_usd`` at one strike and side, either way; re-armed once back under the threshold
  by ``hysteresis_pct`` of it.

The best butterflies model's rule (``FliesRules``):

* ``best_fly``: a butterfly with reward/risk at least ``min_reward_risk`` (and, with ``within_em``,
  centred inside the expected move) enters the list.

Each rule also has a cooldown per rule, underlying and subject (the flip, a wall, a strike, a fly),
in event time: a firing within ``cooldown_s`` of the last one is suppressed (the rule's state moves).
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from marketswarm.schemas import levels
from marketswarm.schemas.alerts import Alert, Firing

# --- the GEX model -------------------------------------------------------------------------------


class Observation(msgspec.Struct, frozen=True):
    """One GEX version as the rules read it."""

    version: int
    t_ns: int  # its as-of (event) time
    spot: float
    flip: float | None
    call_wall: float | None  # largest call GEX over all strikes
    put_wall: float | None
    call_above: float | None  # the walls the dashboard shows: at or above spot, at or below it
    put_below: float | None
    mode: str
    distance_pct: float | None  # spot's distance from the flip, % of spot
    score: float
    gravity: float | None
    em: float | None
    step: float | None  # the strike spacing around spot


def observe(version: int, header: dict[str, Any], strikes: np.ndarray, vals: np.ndarray) -> Observation | None:
    """What the rules read of a GEX version; None before it has a spot."""
    if header.get("spot") is None:
        return None
    g = levels.GexRows.of(header, strikes, vals)
    mode = levels.market_mode(g)
    grav = levels.gravity(g) if len(g.strike) else {"level": None, "em": None}
    step = None
    if len(g.strike) > 1:
        near = np.sort(g.strike[np.argsort(np.abs(g.strike - g.spot))[:5]])
        gaps = np.diff(near)
        step = float(np.min(gaps[gaps > 0])) if (gaps > 0).any() else None
    return Observation(
        version=version,
        t_ns=int(header["asof_ns"]),
        spot=g.spot,
        flip=g.flip,
        call_wall=header.get("call_wall"),
        put_wall=header.get("put_wall"),
        call_above=header.get("call_wall_above"),
        put_below=header.get("put_wall_below"),
        mode=str(mode["mode"]),
        distance_pct=mode["distance_pct"],
        score=float(mode["score"]),
        gravity=grav["level"],
        em=grav["em"],
        step=step,
    )


def _side(spot: float, level: float | None, h_pct: float) -> str | None:
    if level is None:
        return None
    d = 100.0 * (spot - level) / spot
    return "above" if d > h_pct else "below" if d < -h_pct else None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.2f}"


class GexRules(Firing):
    """The GEX model's rules for one underlying."""

    def initial(self) -> dict[str, Any]:
        return {"sides": {}, "armed": {}, "mode": None, "gravity": None, "fired": {}}

    def step(self, o: Observation) -> list[Alert]:
        """The alerts this version fires, in a fixed order (the order of ``WATCHED["gex"]``)."""
        self.suppressed = 0
        out: list[Alert] = []
        r = self.rules
        if r.flip_cross.enabled:
            self._flip(o, out)
        if r.wall_near.enabled:
            self._near(o, "call_wall", o.call_above, out)
            self._near(o, "put_wall", o.put_below, out)
        if r.wall_break.enabled:
            self._break(o, "call_wall", o.call_wall, "above", out)
            self._break(o, "put_wall", o.put_wall, "below", out)
        if r.mode_change.enabled:
            self._mode(o, out)
        if r.gravity_move.enabled:
            self._gravity(o, out)
        return out

    def _fire(
        self, out: list[Alert], o: Observation, rule: str, subject: str, direction: str, level: Any, message: str,
        **values: Any,
    ) -> None:  # fmt: skip
        self.fire(out, o.t_ns, o.version, rule, subject, direction, level, message, spot=o.spot, **values)

    def _flip(self, o: Observation, out: list[Alert]) -> None:
        sides = self.state["sides"]
        cur = _side(o.spot, o.flip, self.rules.flip_cross.hysteresis_pct)
        prev = sides.get("flip")
        if cur is None:
            return
        sides["flip"] = cur
        if prev is not None and cur != prev:
            word = "up" if cur == "above" else "down"
            said = f"spot {_fmt(o.spot)} crossed {word} through the flip {_fmt(o.flip)}"
            self._fire(out, o, "flip_cross", "flip", word, o.flip, said, flip=o.flip, distance_pct=o.distance_pct)

    def _near(self, o: Observation, subject: str, wall: float | None, out: list[Alert]) -> None:
        if wall is None:
            return
        cfg = self.rules.wall_near
        d = 100.0 * abs(wall - o.spot) / o.spot
        armed = self.state["armed"].get(subject)
        if d > cfg.within_pct + cfg.hysteresis_pct:
            self.state["armed"][subject] = True
        elif d <= cfg.within_pct:
            self.state["armed"][subject] = False
            if armed:
                name = subject.replace("_", " ")
                said = f"spot {_fmt(o.spot)} is within {d:.2f}% of the {name} {_fmt(wall)}"
                self._fire(out, o, "wall_near", subject, "near", wall, said, wall=wall, distance_pct=round(d, 4))
        elif armed is None:
            self.state["armed"][subject] = False  # first seen inside the hysteresis: not armed

    def _break(self, o: Observation, subject: str, wall: float | None, through: str, out: list[Alert]) -> None:
        sides = self.state["sides"]
        cur = _side(o.spot, wall, self.rules.wall_break.hysteresis_pct)
        prev, at = sides.get(subject), sides.get(subject + "@")
        if cur is None:
            return
        sides[subject], sides[subject + "@"] = cur, wall
        if prev is not None and at == wall and cur != prev and cur == through:
            word = "up" if through == "above" else "down"
            name = subject.replace("_", " ")
            said = f"spot {_fmt(o.spot)} broke {word} through the {name} {_fmt(wall)}"
            self._fire(out, o, "wall_break", subject, word, wall, said, wall=wall)

    def _mode(self, o: Observation, out: list[Alert]) -> None:
        prev = self.state["mode"]
        cur = o.mode
        band = levels.TRANSITION_PCT + self.rules.mode_change.hysteresis_pct
        if prev == "transition" and cur != "transition" and o.distance_pct is not None and abs(o.distance_pct) <= band:
            return  # not yet out of the transition band by the margin
        self.state["mode"] = cur
        if prev is not None and cur != prev:
            said = f"market mode changed from {prev} to {cur} (score {o.score:.0f})"
            values = {"from": prev, "to": cur, "score": o.score, "flip": o.flip, "distance_pct": o.distance_pct}
            self._fire(out, o, "mode_change", "mode", cur, cur, said, **values)

    def _gravity(self, o: Observation, out: list[Alert]) -> None:
        ref = self.state["gravity"]
        if o.gravity is None:
            return
        if ref is None or o.step is None:
            self.state["gravity"] = o.gravity
            return
        moved = o.gravity - ref
        if abs(moved) >= self.rules.gravity_move.strikes * o.step - 1e-9:
            self.state["gravity"] = o.gravity
            word = "up" if moved > 0 else "down"
            n = abs(moved) / o.step
            said = f"gravity level moved {word} from {_fmt(ref)} to {_fmt(o.gravity)} ({n:.0f} strikes)"
            values = {"from": ref, "to": o.gravity, "strikes": round(n, 2), "em": o.em}
            self._fire(out, o, "gravity_move", "gravity", word, o.gravity, said, **values)


# --- the liquidity intent model ------------------------------------------------------------------


def _usd(x: float) -> str:
    a = abs(x)
    return ("-" if x < 0 else "") + (f"${a / 1e6:,.2f}M" if a >= 1e6 else f"${a:,.0f}")


class FlowRules(Firing):
    """The intent model's rule (``net_premium``) for one underlying, on each version's 5-minute flow."""

    def initial(self) -> dict[str, Any]:
        return {"armed": {}, "fired": {}}

    def step(self, version: int, t_ns: int, doc: dict[str, Any]) -> list[Alert]:
        self.suppressed = 0
        out: list[Alert] = []
        cfg = self.rules.net_premium
        window = ((doc.get("flow") or {}).get("5m")) or {}
        if not cfg.enabled or not window:
            return out
        seen: dict[str, tuple[float, float]] = {}  # subject -> (net premium, threshold)
        if cfg.total_usd > 0:
            seen["total"] = (float((window.get("totals") or {}).get("net_premium") or 0.0), cfg.total_usd)
        if cfg.strike_usd > 0:
            for row in window.get("rows") or ():
                seen[f"{row['strike']:g}{row['side'][0].upper()}"] = (float(row["net_premium"]), cfg.strike_usd)
        armed = self.state["armed"]
        for subject in [s for s in armed if s not in seen]:
            del armed[subject]  # out of the window: nothing traded there for 5 minutes, re-armed when back
        for subject, (net, threshold) in seen.items():
            if abs(net) < threshold * (1 - cfg.hysteresis_pct / 100):
                armed[subject] = True
            elif abs(net) >= threshold and armed.get(subject, True):
                armed[subject] = False
                word = "bought" if net > 0 else "sold"
                where = "in total" if subject == "total" else f"at {subject}"
                said = f"net premium {word} {where} in 5 minutes: {_usd(net)} (threshold {_usd(threshold)})"
                self.fire(out, t_ns, version, "net_premium", subject, word, threshold, said,
                          net_premium=net, spot=doc.get("spot"))  # fmt: skip
            elif subject not in armed:
                armed[subject] = False  # first seen between the re-arming level and the threshold
        self.forget(t_ns)
        return out


# --- the best butterflies model ------------------------------------------------------------------


class FliesRules(Firing):
    """The best butterflies model's rule (``best_fly``) for one underlying."""

    def initial(self) -> dict[str, Any]:
        return {"listed": None, "fired": {}}

    def step(self, version: int, t_ns: int, doc: dict[str, Any]) -> list[Alert]:
        self.suppressed = 0
        out: list[Alert] = []
        cfg = self.rules.best_fly
        if not cfg.enabled:
            return out
        good = {
            f["k"]: f
            for f in doc.get("flies") or ()
            if f["reward_risk"] >= cfg.min_reward_risk and (not cfg.within_em or f["parts"]["within_em"])
        }
        before = self.state["listed"]
        self.state["listed"] = sorted(good)
        if before is not None:
            for k in sorted(set(good) - set(before)):
                f = good[k]
                name = f"{f['expiry']} {f['strike']:g} {f['side']} fly {f['width']:g} wide"
                said = f"best fly: {name} at {f['debit']:.2f}, reward/risk {f['reward_risk']:.1f}"
                self.fire(out, t_ns, version, "best_fly", k, "listed", f["strike"], said,
                          expiry=f["expiry"], side=f["side"], width=f["width"], debit=f["debit"],
                          reward_risk=f["reward_risk"], composite=f["composite"], spot=doc.get("spot"))  # fmt: skip
        self.forget(t_ns)
        return out
