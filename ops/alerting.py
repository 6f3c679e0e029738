"""`marketswarm alerts`: back-test a rules file on a recorded day, and deliver a running system's alerts."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from typing import Annotated, Any

import orjson
import redis.asyncio as aioredis
import typer
from rich.console import Console
from rich.table import Table

from marketswarm.ops.config import load_settings, redis_url_of
from marketswarm.ops.mistakes import FAILED, Mistake
from marketswarm.schemas import alerts, codec
from marketswarm.schemas.markettime import ET
from marketswarm.topology import streams
from marketswarm.topology.settings import Settings

log = logging.getLogger(__name__)
alerts_app = typer.Typer(help="Alerts: back-test a rules file on a capture, deliver a running system's alerts.")
console = Console()


def rules_of(settings: Settings, path: Path | None = None) -> alerts.Rules:
    """The rules file named (or MARKETSWARM_RULES, or the shipped one); a Mistake in one line if bad."""
    try:
        return alerts.load_rules(path or settings.rules or alerts.DEFAULT_RULES)
    except alerts.RulesError as exc:
        raise Mistake(str(exc)) from exc


async def read_alerts(redis: aioredis.Redis, underlyings: list[str]) -> list[tuple[str, alerts.Alert]]:
    """Every alert held for ``underlyings`` (every alerts stream), by event time: (entry id, alert)."""
    out = []
    for u in underlyings:
        for spec in streams.ALERTS.values():
            for entry_id, fields in await redis.xrange(spec.key(u)):
                out.append((entry_id.decode(), codec.decode(streams.Payload.ALERT, fields)))
    return sorted(out, key=lambda ia: (ia[1].t_ns, ia[1].underlying, ia[1].rule, ia[0]))


def _time(t_ns: int) -> str:
    return dt.datetime.fromtimestamp(t_ns / 1e9, ET).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items() if k != "direction")


@alerts_app.command("check")
def check(
    capture: Annotated[list[Path], typer.Argument(help="Captures (.jsonl) and/or Cboe chain CSVs, or folders.")],
    rules: Annotated[Path | None, typer.Option("--rules", help="The rules file (default: MARKETSWARM_RULES).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per alert, one per line.")] = False,
) -> None:
    """Replay recorded input through the whole topology with a rules file and print every alert it
    fires (event time, rule, values). The operational rules (no events, feed reconnecting) watch the
    wall clock, so they fire live only and are not part of a back-test."""
    from marketswarm.agents.sources.files import InputFileError
    from marketswarm.ops.replay import NoModelError
    from marketswarm.ops.replay import replay as do_replay

    settings = load_settings()
    chosen = rules or settings.rules or alerts.DEFAULT_RULES
    rules_of(settings, chosen)  # a bad file stops here, before a replay
    found: list[tuple[str, alerts.Alert]] = []

    async def collect(redis: aioredis.Redis, underlyings: list[str]) -> None:
        found.extend(await read_alerts(redis, underlyings))

    quiet = Console(stderr=True, quiet=as_json)
    try:
        summary = do_replay(settings.model_copy(update={"rules": chosen}), capture, None, None, False, quiet, collect)
    except InputFileError as exc:
        raise Mistake(str(exc)) from exc
    except NoModelError as exc:
        raise Mistake(str(exc), FAILED) from exc
    if as_json:
        for entry_id, a in found:
            typer.echo(orjson.dumps({"id": entry_id, **alerts.plain_json(a)}).decode())
        return
    table = Table(title=f"{len(found)} alert{'' if len(found) == 1 else 's'} ({chosen})", title_justify="left")
    for col in ("time (New York)", "underlying", "rule", "severity", "message", "values"):
        table.add_column(col, overflow="fold")
    for _entry_id, a in found:
        table.add_row(_time(a.t_ns), a.underlying, a.rule, a.severity, a.message, _values(a.values))
    console.print(table)
    console.print(f"replayed {summary.line()}", soft_wrap=True)


@alerts_app.command("deliver")
def deliver() -> None:
    """Deliver the alerts of every configured underlying to the rules file's webhook receivers
    (`marketswarm run` starts it; in Kubernetes its own Deployment)."""
    from prometheus_client import REGISTRY, start_http_server

    from marketswarm.agents.vigil.courier import Courier
    from marketswarm.ops.cli import run_until_signal
    from marketswarm.topology.connections import create_redis
    from marketswarm.topology.metrics import Metrics

    settings = load_settings()
    receivers = rules_of(settings).receivers
    url = redis_url_of(settings)

    async def main(stop: asyncio.Event) -> None:
        metrics = Metrics(REGISTRY)
        if settings.metrics_port:
            start_http_server(settings.metrics_port, registry=REGISTRY)
        redis = create_redis(url)
        try:
            await Courier(redis, receivers, settings.underlyings, metrics, stop).run()
        finally:
            await redis.aclose()

    run_until_signal(main)
