"""The operator's commands: `inspect`, `top`, `offsets show|reset` and `rebuild`.

The first line of every view names the server it looks at (URL, name, version, role): looking at
the wrong Redis is the mistake this tool exists to prevent. ``--json`` prints the same data.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from marketswarm.agents import catalog
from marketswarm.ops import inspection as insp
from marketswarm.ops import operate
from marketswarm.ops.config import load_settings, redis_url_of
from marketswarm.ops.mistakes import FAILED, Mistake, agent_spec
from marketswarm.schemas.occ import parse_occ
from marketswarm.topology import observe, streams
from marketswarm.topology.connections import create_redis

inspect_app = typer.Typer(help="Look inside a running system (every view takes --json).", no_args_is_help=False)
offsets_app = typer.Typer(help="Consumer-group offsets: show them, or move one group (replay).", no_args_is_help=True)
console = Console()

PIPED_WIDTH = 200
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _run(fn: Callable[[Any], Awaitable[Any]]) -> Any:
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
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPED_WIDTH  # a file or a pipe has no width: tables whole, not cut at 80
    if console.is_terminal and sum(getattr(p, "row_count", 1) for p in parts) > console.height:
        with console.pager(styles=True):
            for p in parts:
                console.print(p)
    else:
        for p in parts:
            console.print(p)


# Times before this are not times (a zero, a sequence number): shown as "-", never as 1970.
EARLIEST_MS = 946_684_800_000  # 2000-01-01


def _when(ms: int | None) -> str:
    """A time for people: local ISO with milliseconds and the UTC offset; "-" for none."""
    if ms is None or ms < EARLIEST_MS:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="milliseconds")


def _when_ns(ns: Any) -> str:
    return _when(int(ns) // 1_000_000) if isinstance(ns, int) else "-"


def _tile_value(field: str, value: Any) -> str:
    if field == "legs_ts_ns":
        return "\n".join(_when_ns(t) for t in value)
    if isinstance(value, list):
        return "\n".join(map(str, value))
    return "-" if value is None else str(value)


def _timed(row: dict[str, Any]) -> dict[str, Any]:
    """A state or change row with its event time as ``time`` (local ISO) instead of ``ts_ns``."""
    return {"time": _when_ns(row.get("ts_ns")), **{k: v for k, v in row.items() if k != "ts_ns"}}


async def _rates(redis: Any, underlyings: Any, interval_s: float) -> list[dict[str, Any]]:
    return await observe.add_lag_seconds(redis, await operate.rates(redis, underlyings, interval_s))


# Columns that name things are never cut (a stream name with an ellipsis is a name nobody can type);
# on a narrow terminal the others wrap instead.
NAMES = frozenset({"agent", "stream", "symbol", "underlying", "strategy", "group"})


def _table(title: str, rows: list[dict[str, Any]], cols: list[str]) -> Table:
    t = Table(title=title, title_justify="left")
    cells = [["-" if r.get(c) is None else str(r.get(c)) for c in cols] for r in rows]
    for i, c in enumerate(cols):
        widest = max([len(c), *(len(line) for row in cells for line in row[i].splitlines())])
        t.add_column(c, min_width=widest if c in NAMES else None, overflow="fold")
    for row in cells:
        t.add_row(*row)
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
            "groups": await observe.add_lag_seconds(redis, await observe.group_rows(redis, us, catalog.agents())),
            "placement": insp.placement(redis, us),
        }

    server, _, data = _run(fetch)

    def render(d: dict[str, Any]) -> list[Any]:
        rows = [{**r, "first": _when(observe.id_ms(r["first_id"])), "last": _when(r["last_ms"])} for r in d["streams"]]
        bad = [r for r in rows if r["kind"].endswith(".dlq") or r["kind"] == "rejects"]
        return [
            _table("streams", [r for r in rows if r not in bad], ["stream", "length", "first", "last", "retention"]),
            _table(
                "groups",
                d["groups"],
                ["agent", "stream", "consumers", "lag", "behind", "pending", "oldest_pending_idle_ms"],
            ),
            _table("dead letters and rejects", bad, ["stream", "length", "last"]),
            _table("underlyings", d["placement"], ["underlying", "node", "slot"]),
        ]

    _emit(server, data, as_json, render)


@inspect_app.command("underlying")
def inspect_underlying(u: Annotated[str, typer.Argument(help="e.g. SPX")], as_json: JsonOpt = False) -> None:
    """Epochs (active, warming, retired) with their geometry; per strategy staged vs published."""

    async def fetch(args: Any) -> dict[str, Any]:
        redis, settings = args
        await _known(redis, settings, u.upper())
        return {
            "underlying": u.upper(),
            "epochs": await insp.epochs(redis, u.upper()),
            "models": await insp.model_rows(redis, u.upper()),
            "examples": await insp.examples(redis, u.upper()),
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
            *_try_lines(d["underlying"], d["examples"]),
        ]

    _emit(server, data, as_json, render)


@inspect_app.command("contract")
def inspect_contract(
    symbol: Annotated[str, typer.Argument(help="OCC symbol, e.g. SPXW251124C05900000")],
    history: Annotated[int, typer.Option(help="Admitted changes to show.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """One contract's state and its history of admitted changes."""
    occ = parse_occ(symbol)  # not a symbol: said before any server is asked

    async def fetch(args: Any) -> dict[str, Any]:
        redis, settings = args
        await _known(redis, settings, occ.underlying)
        found = await operate.contract(redis, occ.occ, history)
        if not found["in_epoch"] and not found["history"]:
            raise Mistake(f"no contract {occ.occ} in {occ.underlying}'s active epoch {found['epoch']}", FAILED)
        return found

    server, _, data = _run(fetch)

    def render(d: dict[str, Any]) -> list[Any]:
        where = "in" if d["in_epoch"] else "NOT in"
        head = f"{d['symbol']} ({d['underlying']}) {where} epoch {d['epoch']}, volume {d.get('volume', 0)}"
        slots = [_timed({"slot": k, **v}) for k, v in d["slots"].items()]
        state_cols = ["slot", "time", "seq", "bid", "ask", "px", "size", "iv", "gamma", "oi"]
        history_cols = ["entry", "c", "time", "seq", "bid", "ask", "px", "size"]
        return [
            head,
            _table("state", slots, state_cols),
            _table("admitted changes (newest first)", [_timed(h) for h in d["history"]], history_cols),
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
    if strategy not in streams.HEATMAP_STRATEGIES:
        raise Mistake(f"unknown strategy {strategy!r}: one of {', '.join(streams.HEATMAP_STRATEGIES)}")

    async def fetch(args: Any) -> dict[str, Any]:
        redis, settings = args
        await _known(redis, settings, u.upper())
        found = await operate.tile(redis, u.upper(), strategy, key)
        if found["tile"] is None:
            example = f"; keys look like {found['example']}" if found.get("example") else ""
            raise Mistake(f"no tile {key!r} in {u.upper()} {strategy} v{found['version']}{example}", FAILED)
        return found

    server, _, data = _run(fetch)

    def render(d: dict[str, Any]) -> list[Any]:
        legs = [_timed({"symbol": leg["symbol"], **leg["slots"].get("quote", {})}) for leg in d["legs"]]
        fields = [
            {"field": "legs_time" if k == "legs_ts_ns" else k, "value": _tile_value(k, v)} for k, v in d["tile"].items()
        ]
        title = f"{d['underlying']} {d['strategy']} v{d['version']}"
        return [
            _table(title, fields, ["field", "value"]),
            _table("legs", legs, ["symbol", "time", "seq", "bid", "ask"]),
        ]

    _emit(server, data, as_json, render)


def _try_lines(u: str, examples: dict[str, str] | None) -> list[str]:
    """The drill-downs to try next, ready to copy: a contract and a tile at the money."""
    if not examples:
        return []
    return [
        f"try: marketswarm inspect contract {examples['contract']}",
        f"     marketswarm inspect tile {u} butterfly '{examples['tile']}'",
    ]


async def _known(redis: Any, settings: Any, u: str) -> None:
    """``u`` is an underlying the server knows of (or the configuration names), else the mistake."""
    known = await observe.known_underlyings(redis, settings.underlyings)
    if u not in known:
        raise Mistake(f"unknown underlying {u!r}: known {', '.join(known) or 'none yet'}", FAILED)


TOP_COLUMNS = ["agent", "stream", "entries/s", "lag", "behind", "pending", "consumers"]


def top(
    interval_s: Annotated[float, typer.Option(help="Refresh period, seconds.")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one sample as JSON and exit.")] = False,
) -> None:
    """A live view of per-group rates and lag (Ctrl-C to leave); --json: one sample."""
    if as_json:
        server, _, rows = _run(lambda args: _rates(args[0], args[1].underlyings, interval_s))
        _emit(server, {"interval_s": interval_s, "groups": rows}, True, lambda d: [])
        return
    settings = load_settings()
    url = redis_url_of(settings)

    async def main() -> None:
        redis = create_redis(url)
        try:
            server = await insp.server_info(redis, url)
            with Live(console=console, refresh_per_second=4) as live:
                while True:
                    rows = await _rates(redis, settings.underlyings, interval_s)
                    for r in rows:
                        r["entries/s"] = None if r.get("entries_per_s") is None else f"{r['entries_per_s']:.1f}"
                    live.update(Group(_server_line(server), _table("groups", rows, TOP_COLUMNS)))
        finally:
            await redis.aclose()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


async def _offsets(redis: Any, underlyings: Any) -> list[dict[str, Any]]:
    return await observe.add_lag_seconds(redis, await operate.offsets(redis, underlyings))


@offsets_app.command("show")
def offsets_show(as_json: JsonOpt = False) -> None:
    """Every group's position: last delivered id, entries read, lag, pending."""
    server, _, rows = _run(lambda args: _offsets(args[0], args[1].underlyings))
    _emit(
        server,
        {"groups": rows},
        as_json,
        lambda d: [
            _table(
                "offsets",
                d["groups"],
                ["agent", "stream", "last_delivered", "entries_read", "lag", "behind", "pending", "consumers"],
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
    agent_spec(group)
    try:
        server, _, done = _run(lambda args: operate.reset_offsets(args[0], group, to, args[1].underlyings, force=force))
    except operate.LiveConsumersError as exc:
        raise Mistake(str(exc), FAILED) from exc
    _emit(server, {"reset": done}, as_json, lambda d: [_table("reset", d["reset"], ["group", "stream", "position"])])


def rebuild(
    force: Annotated[bool, typer.Option(help="Even while agents are alive.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Clear derived state and rewind to the raw streams: the agents rebuild every model."""
    try:
        server, _, done = _run(lambda args: operate.rebuild(args[0], args[1].underlyings, force=force))
    except operate.LiveConsumersError as exc:
        raise Mistake(str(exc), FAILED) from exc
    _emit(
        server,
        done,
        as_json,
        lambda d: [
            f"rebuilding {', '.join(d['underlyings'])} from {d['raw_entries']} raw entries; "
            f"{d['keys_deleted']} derived keys cleared"
        ],
    )
