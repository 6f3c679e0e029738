"""Alerts ("Vigil events"): the rules file, the alert a rule fires, and how it is delivered.

Pure. agents/vigil/ runs the rules (schemas/rules.py says what each watches and when it fires) per
version of the model they watch, in event time, and appends each alert to its alerts stream;
delivery (the courier, the gateway) reads those streams. The rules file (TOML, ``load_rules``) has a
``[rules.<rule>]`` table per rule, each with ``enabled``, ``severity`` and ``cooldown_s`` and its own
thresholds, and ``[[receivers]]`` for webhooks; a bad file is one line naming the key and why.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Severity = Literal["info", "warning", "critical"]
# The rules by the model they watch: each model's rules run in the agent that follows it.
WATCHED: dict[str, tuple[str, ...]] = {
    "gex": ("flip_cross", "wall_near", "wall_break", "mode_change", "gravity_move"),
    "intent": ("net_premium",),
    "best_flies": ("best_fly",),
}
MARKET_RULES = tuple(r for rules in WATCHED.values() for r in rules)


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


class NetPremium(_Rule):
    total_usd: float = Field(default=5_000_000.0, ge=0, description="|5-minute net premium|, all strikes; 0: off")
    strike_usd: float = Field(default=1_000_000.0, ge=0, description="|5-minute net premium| at a strike and side")
    hysteresis_pct: float = Field(default=20.0, ge=0, lt=100)


class BestFly(_Rule):
    severity: Severity = "info"
    min_reward_risk: float = Field(default=5.0, gt=0)
    within_em: bool = True


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
    net_premium: NetPremium = NetPremium()
    best_fly: BestFly = BestFly()


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


class Firing:
    """What every rule set shares: its state (JSON-able, kept in the agent's commits) and how a rule
    fires, with its cooldown per rule, underlying and subject in event time."""

    def __init__(self, u: str, rules: RuleSet, state: dict[str, Any] | None = None) -> None:
        self.u, self.rules = u, rules
        self.state: dict[str, Any] = state or self.initial()
        self.suppressed = 0  # firings inside a cooldown, since the last ``step``

    def initial(self) -> dict[str, Any]:
        return {"fired": {}}

    def fire(
        self, out: list[Alert], t_ns: int, version: int, rule: str, subject: str, direction: str, level: Any,
        message: str, **values: Any,
    ) -> None:  # fmt: skip
        cfg: _Rule = getattr(self.rules, rule)
        key = f"{rule}:{subject}"
        last = self.state["fired"].get(key)
        if last is not None and t_ns - last < cfg.cooldown_s * 1e9:
            self.suppressed += 1
            return
        self.state["fired"][key] = t_ns
        out.append(
            Alert(
                fingerprint=fingerprint(rule, self.u, subject, direction, level, t_ns),
                rule=rule, severity=cfg.severity, underlying=self.u, t_ns=t_ns, version=version,
                subject=subject, message=f"{self.u} {message}",
                values={"direction": direction, "level": level, **values},
            )
        )  # fmt: skip

    def forget(self, t_ns: int) -> None:
        """Drop the firings whose cooldown is over (subjects come and go: strikes, flies)."""
        fired = self.state["fired"]
        for key in [k for k, t in fired.items() if t_ns - t >= getattr(self.rules, k.split(":")[0]).cooldown_s * 1e9]:
            del fired[key]


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
