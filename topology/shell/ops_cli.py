"""The operator's commands: `inspect`, `top`, `offsets show|reset` and `rebuild`.

The first line of every view names the server it looks at (URL, name, version, role): looking at
the wrong Redis is the mistake this tool exists to prevent. ``--json`` prints the same data.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from marketswarm.agents import catalog
from marketswarm.topology import observe
from marketswarm.topology.connections import create_redis
from marketswarm.topology.shell import inspection as insp
from marketswarm.topology.shell import operate

inspect_app = typer.Typer(help="Look inside a running system (every view takes --json).", no_args_is_help=False)
offsets_app = typer.Typer(help="Consumer-group offsets: show them, or move one group (replay).", no_args_is_help=True)
console = Console()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _run(fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from marketswarm.topology.shell.cli import load_settings, redis_url_of

    settings = load_settings()
    url = redis_url_of(settings)

    async def main() -> Any:
        redis = create_redis(url)
        try:
            server = await insp.server_info(redis, url)
            return server, settings, await fn((redis, settings))
        finally:
            await redis.aclose()

    return asyncio.run(main())


def _server_line(server: dict[str, Any]) -> str:
    return f"server {server['url']}  {server['server']} {server['version']}  role {server['role']}"


def _emit(server: dict[str, Any], data: Any, as_json: bool, render: Callable[[Any], list[Any]]) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps({"server": server, **data}, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    parts = [f"[bold]{_server_line(server)}[/bold]", *render(data)]
    if console.is_terminal and sum(getattr(p, "row_count", 1) for p in parts) > console.height:
        with console.pager(styles=True):
            for p in parts:
                console.print(p)
    else:
        for p in parts:
            console.print(p)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(title: str, rows: list[dict[str, Any]], cols: list[str]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*("-" if r.get(c) is None else str(r.get(c)) for c in cols))
    return t


@inspect_app.callback(invoke_without_command=True)
def overview(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Streams (length, first/last entry time), groups (consumers, lag, pending, oldest pending),
    dead letters and rejects."""
    if ctx.invoked_subcommand is not None:
        return

    async def fetch(args: Any) -> dict[str, Any]:
        redis, settings = args
        us = await observe.known_underlyings(redis, settings.underlyings)
        return {
            "streams": await observe.stream_rows(redis, us),
            "groups": await observe.group_rows(redis, us, catalog.agents()),
            "placement": insp.placement(redis, us),
        }

    server, _, data = _run(fetch)

    def render(d: dict[str, Any]) -> list[Any]:
        rows = [{**r, "first": _when(observe.id_ms(r["first_id"])), "last": _when(r["last_ms"])} for r in d["streams"]]
        bad = [r for r in rows if r["kind"].endswith(".dlq") or r["kind"] == "rejects"]
        return [
            _table("streams", [r for r in rows if r not in bad], ["stream", "length", "first", "last", "retention"]),
            _table("groups", d["groups"], ["agent", "stream", "consumers", "lag", "pending", "oldest_pending_idle_ms"]),
            _table("dead letters and rejects", bad, ["stream", "length", "last"]),
            _table("underlyings", d["placement"], ["underlying", "node", "slot"]),
        ]

    _emit(server, data, as_json, render)


@inspect_app.command("underlying")
def inspect_underlying(u: Annotated[str, typer.Argument(help="e.g. SPX")], as_json: JsonOpt = False) -> None:
    """Epochs (active, warming, retired) with their geometry; per strategy staged vs published."""

    async def fetch(args: Any) -> dict[str, Any]:
        redis, _ = args
        return {
            "underlying": u.upper(),
            "epochs": await insp.epochs(redis, u.upper()),
            "models": await insp.model_rows(redis, u.upper()),
        }

    server, _, data = _run(fetch)

    def render(d: dict[str, Any]) -> list[Any]:
        epochs = [{**e, "expiries": len((e["geometry"] or {}).get("expiries", {}))} for e in d["epochs"]]
        return [
            _table(
                f"{d['underlying']} epochs", epochs, ["epoch", "status", "active", "contracts", "expiries", "ttl_s"]
            ),
            _table(
                f"{d['underlying']} models",
                d["models"],
                [
                    "strategy",
                    "version",
                    "version_age_s",
                    "staged_tiles",
                    "published_tiles",
                    "pending_slots",
                    "changed_since_version",
                    "epoch",
                ],
            ),
        ]

    _emit(server, data, as_json, render)


@inspect_app.command("contract")
def inspect_contract(
    symbol: Annotated[str, typer.Argument(help="OCC symbol, e.g. SPXW251124C05900000")],
    history: Annotated[int, typer.Option(help="Admitted changes to show.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """One contract's state and its history of admitted changes."""
    server, _, data = _run(lambda args: operate.contract(args[0], symbol, history))

    def render(d: dict[str, Any]) -> list[Any]:
        where = "in" if d["in_epoch"] else "NOT in"
        head = f"{d['symbol']} ({d['underlying']}) {where} epoch {d['epoch']}, volume {d.get('volume', 0)}"
        slots = [{"slot": k, **v} for k, v in d["slots"].items()]
        state_cols = ["slot", "ts_ns", "seq", "bid", "ask", "px", "size", "iv", "gamma", "oi"]
        history_cols = ["entry", "c", "ts_ns", "seq", "bid", "ask", "px", "size"]
        return [
            head,
            _table("state", slots, state_cols),
            _table("admitted changes (newest first)", d["history"], history_cols),
        ]

    _emit(server, data, as_json, render)


@inspect_app.command("tile")
def inspect_tile(
    u: Annotated[str, typer.Argument(help="e.g. SPX")],
    strategy: Annotated[str, typer.Argument(help="single | vertical | butterfly")],
    key: Annotated[str, typer.Argument(help="tile key, e.g. 2025-11-24|c|5900000|5000")],
    as_json: JsonOpt = False,
) -> None:
    """One published tile and its legs' state."""
    server, _, data = _run(lambda args: operate.tile(args[0], u.upper(), strategy, key))

    def render(d: dict[str, Any]) -> list[Any]:
        if d["tile"] is None:
            return [f"no tile {d['key']} in {d['underlying']} {d['strategy']} v{d['version']}"]
        legs = [{"symbol": leg["symbol"], **leg["slots"].get("quote", {})} for leg in d["legs"]]
        return [orjson.dumps(d["tile"]).decode(), _table("legs", legs, ["symbol", "ts_ns", "seq", "bid", "ask"])]

    _emit(server, data, as_json, render)


def top(interval_s: Annotated[float, typer.Option(help="Refresh period, seconds.")] = 1.0) -> None:
    """A live view of per-group rates and lag (Ctrl-C to leave)."""
    from marketswarm.topology.shell.cli import load_settings, redis_url_of

    settings = load_settings()
    url = redis_url_of(settings)

    async def main() -> None:
        redis = create_redis(url)
        server = await insp.server_info(redis, url)
        try:
            with Live(console=console, refresh_per_second=4) as live:
                while True:
                    rows = await operate.rates(redis, settings.underlyings, interval_s)
                    for r in rows:
                        r["entries/s"] = None if r.get("entries_per_s") is None else f"{r['entries_per_s']:.1f}"
                    table = _table("groups", rows, ["agent", "stream", "entries/s", "lag", "pending", "consumers"])
                    live.update(Group(_server_line(server), table))
        finally:
            await redis.aclose()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


@offsets_app.command("show")
def offsets_show(as_json: JsonOpt = False) -> None:
    """Every group's position: last delivered id, entries read, lag, pending."""
    server, _, rows = _run(lambda args: operate.offsets(args[0], args[1].underlyings))
    _emit(
        server,
        {"groups": rows},
        as_json,
        lambda d: [
            _table(
                "offsets",
                d["groups"],
                ["agent", "stream", "last_delivered", "entries_read", "lag", "pending", "consumers"],
            )
        ],
    )


@offsets_app.command("reset")
def offsets_reset(
    group: Annotated[str, typer.Argument(help="Agent (group) name, e.g. calc.butterfly")],
    to: Annotated[str, typer.Option("--to", help="start | <entry id> | <ISO time>")] = "start",
    force: Annotated[bool, typer.Option(help="Even while the group's consumers are alive.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Move a group's position so it re-reads from there (replay by offset reset)."""
    try:
        server, _, done = _run(lambda args: operate.reset_offsets(args[0], group, to, args[1].underlyings, force=force))
    except operate.LiveConsumersError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    _emit(server, {"reset": done}, as_json, lambda d: [_table("reset", d["reset"], ["group", "stream", "position"])])


def rebuild(
    force: Annotated[bool, typer.Option(help="Even while agents are alive.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Clear derived state and rewind to the raw streams: the agents rebuild every model."""
    try:
        server, _, done = _run(lambda args: operate.rebuild(args[0], args[1].underlyings, force=force))
    except operate.LiveConsumersError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    _emit(
        server,
        done,
        as_json,
        lambda d: [
            f"rebuilding {', '.join(d['underlyings'])} from {d['raw_entries']} raw entries; "
            f"{d['keys_deleted']} derived keys cleared"
        ],
    )
