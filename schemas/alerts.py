"""Alerts ("Vigil events"): the rules, what each observes of a GEX version, and the alert they fire.

Pure: agents/vigil/ runs the rules per version of the GEX model, in event time, and appends each alert
to ``ms:{U}:alerts.v1``; delivery reads that stream. Every rule is evaluated on an ``Observation`` of
one GEX version (its header and rows, with the market mode and dealer gravity of schemas/levels.py),
so a replay of the same input fires the same alerts at the same times.

The rules (each enabled, tuned and given a severity in the rules file, ``load_rules``):

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

Each rule also has a cooldown per rule, underlying and subject (the flip, the call or put wall), in
event time: a firing within ``cooldown_s`` of the last one is suppressed (the rule's state still
moves). A rule's first observation only sets its state.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from marketswarm.schemas import levels

Severity = Literal["info", "warning", "critical"]
MARKET_RULES = ("flip_cross", "wall_near", "wall_break", "mode_change", "gravity_move")


class RulesError(ValueError):
    """A rules file that cannot be used; the message is one line naming the file, the key and why."""


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    severity: Severity = "warning"
    cooldown_s: float = Field(default=300.0, ge=0, description="event time before the rule fires again")


class FlipCross(_Rule):
    hysteresis_pct: float = Field(default=0.05, ge=0)


class WallNear(_Rule):
    severity: Severity = "info"
    within_pct: float = Field(default=0.25, gt=0)
    hysteresis_pct: float = Field(default=0.1, ge=0)


class WallBreak(_Rule):
    severity: Severity = "critical"
    hysteresis_pct: float = Field(default=0.05, ge=0)


class ModeChange(_Rule):
    severity: Severity = "info"
    hysteresis_pct: float = Field(default=0.1, ge=0)


class GravityMove(_Rule):
    severity: Severity = "info"
    strikes: int = Field(default=2, ge=1)


class Receiver(BaseModel):
    """A webhook: alerts POSTed as Alertmanager v4 JSON or as the plain alert."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str
    format: Literal["alertmanager", "json"] = "alertmanager"
    rules: list[str] | None = None  # the rules it receives; None: all
    timeout_s: float = Field(default=5.0, gt=0)
    backoff_s: float = Field(default=1.0, gt=0)
    max_backoff_s: float = Field(default=60.0, gt=0)
    deadline_s: float = Field(default=600.0, gt=0, description="from the first try; then dead-lettered")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("rules")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        unknown = sorted(set(v or ()) - set(MARKET_RULES))
        if unknown:
            raise ValueError(f"unknown rule(s) {unknown}; known: {', '.join(MARKET_RULES)}")
        return v

    def wants(self, rule: str) -> bool:
        return self.rules is None or rule in self.rules


class RuleSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flip_cross: FlipCross = FlipCross()
    wall_near: WallNear = WallNear()
    wall_break: WallBreak = WallBreak()
    mode_change: ModeChange = ModeChange()
    gravity_move: GravityMove = GravityMove()


class Rules(BaseModel):
    """A rules file: ``[rules.<rule>]`` tables and ``[[receivers]]``."""

    model_config = ConfigDict(extra="forbid")
    rules: RuleSet = RuleSet()
    receivers: list[Receiver] = []

    @field_validator("receivers")
    @classmethod
    def _unique(cls, v: list[Receiver]) -> list[Receiver]:
        names = [r.name for r in v]
        if len(set(names)) != len(names):
            raise ValueError(f"receiver names must be unique: {names}")
        return v


def parse_rules(text: str, origin: str = "rules") -> Rules:
    """A rules file's text as ``Rules``; RulesError in one line naming ``origin``, the key and why."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{origin}: not valid TOML: {e}") from None
    try:
        return Rules.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise RulesError(f"{origin}: {key}: {err['msg']}") from None


def load_rules(path: Path) -> Rules:
    """The rules file at ``path``; RulesError in one line when it is missing or wrong."""
    try:
        text = path.read_text()
    except OSError as e:
        raise RulesError(f"cannot read the rules file {path}: {e.strerror or e}") from None
    return parse_rules(text, str(path))


DEFAULT_RULES = Path(__file__).with_name("alerts.toml")  # the rules `make run` uses


# --- what the rules observe ----------------------------------------------------------------------


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


# --- the alert -----------------------------------------------------------------------------------


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """One alert: an entry of ``ms:{U}:alerts.v1`` (id ``<event ms>-<n>``)."""

    fingerprint: str  # rule + underlying + the crossing (subject, direction, level, event time)
    rule: str
    severity: str
    underlying: str
    t_ns: int  # event time: the as-of of the GEX version that fired it
    version: int  # that version
    subject: str  # what crossed: flip, call_wall, put_wall, mode, gravity
    message: str
    values: dict[str, Any]


def fingerprint(rule: str, u: str, subject: str, direction: str, level: Any, t_ns: int) -> str:
    raw = f"{rule}|{u}|{subject}|{direction}|{level}|{t_ns}".encode()
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def _side(spot: float, level: float | None, h_pct: float) -> str | None:
    if level is None:
        return None
    d = 100.0 * (spot - level) / spot
    return "above" if d > h_pct else "below" if d < -h_pct else None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.2f}"


class Engine:
    """The rules of one underlying, with their state (``state``, JSON-able, kept in the checkpoint)."""

    def __init__(self, u: str, rules: RuleSet, state: dict[str, Any] | None = None) -> None:
        self.u, self.rules = u, rules
        self.state: dict[str, Any] = state or {"sides": {}, "armed": {}, "mode": None, "gravity": None, "fired": {}}
        self.suppressed = 0  # firings inside a cooldown, since the last ``step``

    def step(self, o: Observation) -> list[Alert]:
        """The alerts this version fires, in a fixed order (the order of MARKET_RULES)."""
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
        cfg: _Rule = getattr(self.rules, rule)
        key = f"{rule}:{subject}"
        last = self.state["fired"].get(key)
        if last is not None and o.t_ns - last < cfg.cooldown_s * 1e9:
            self.suppressed += 1
            return
        self.state["fired"][key] = o.t_ns
        out.append(
            Alert(
                fingerprint=fingerprint(rule, self.u, subject, direction, level, o.t_ns),
                rule=rule, severity=cfg.severity, underlying=self.u, t_ns=o.t_ns, version=o.version,
                subject=subject, message=f"{self.u} {message}",
                values={"direction": direction, "level": level, "spot": o.spot, **values},
            )
        )  # fmt: skip

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


# --- delivery ------------------------------------------------------------------------------------


def iso(t_ns: int) -> str:
    """RFC 3339 UTC with milliseconds, as Alertmanager writes ``startsAt``."""
    s, ns = divmod(t_ns, 1_000_000_000)
    return dt.datetime.fromtimestamp(s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns // 1_000_000:03d}Z"


def plain_json(a: Alert) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(a)
    return out


def alertmanager_json(a: Alert, receiver: str, external_url: str = "") -> dict[str, Any]:
    """The Alertmanager webhook payload, version 4, for one alert (a group of one)."""
    labels = {"alertname": a.rule, "underlying": a.underlying, "severity": a.severity, "subject": a.subject}
    annotations = {
        "summary": a.message,
        "values": ", ".join(f"{k}={v}" for k, v in a.values.items()),
        "version": str(a.version),
    }
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{a.rule}", underlying="{a.underlying}"}}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": receiver,
        "groupLabels": {"alertname": a.rule, "underlying": a.underlying},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": annotations,
                "startsAt": iso(a.t_ns),
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": external_url,
                "fingerprint": a.fingerprint,
            }
        ],
    }
