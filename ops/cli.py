"""The `marketswarm` command line: run the topology, one agent, a source, the gateway, and tools."""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import signal
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table

from marketswarm.agents import catalog
from marketswarm.ops import alerting, commands
from marketswarm.ops.config import load_settings, redis_url_of
from marketswarm.ops.mistakes import DEBUG_FLAG, FAILED, USAGE, Cli, Mistake, agent_spec, set_redis_url
from marketswarm.topology.agent import AgentSpec
from marketswarm.topology.settings import Settings, env_help, mask_url


def env_table(width: int | None = None) -> str:
    """The environment variables as a table (variable, default, meaning), wrapped to ``width``; the
    leading ``\\b`` keeps click from reflowing it into one paragraph."""
    # Click indents the epilog by 2 columns: the table fits the terminal with them.
    width = width or min(max(shutil.get_terminal_size((100, 24)).columns, 80), 140) - 2
    rows = [(var, default or "-", desc) for var, default, desc in env_help()]
    w_var = max(len(r[0]) for r in rows)
    w_def = min(max(len(r[1]) for r in rows), 24)
    indent = 2 + w_var + 2 + w_def + 2
    lines = ["\b", "Environment:", f"  {'VARIABLE':<{w_var}}  {'DEFAULT':<{w_def}}  MEANING"]
    for var, default, desc in rows:
        wrapped = textwrap.wrap(desc, max(width - indent, 30)) or [""]
        lines.append(f"  {var:<{w_var}}  {default:<{w_def}}  {wrapped[0]}")
        lines += [" " * indent + more for more in wrapped[1:]]
    return "\n".join(lines)


app = typer.Typer(
    cls=Cli,
    help="MarketSwarm: real-time options analytics on Redis Streams.",
    epilog=env_table(),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
console = Console(stderr=True)
log = logging.getLogger("marketswarm")


@app.callback()
def _root(
    debug: Annotated[
        bool,
        typer.Option(DEBUG_FLAG, help="Show the traceback of an unexpected error (also MARKETSWARM_LOG_LEVEL=DEBUG)."),
    ] = False,
) -> None:
    """MarketSwarm: real-time options analytics on Redis Streams."""


NO_AUTH_HELP = "Serve beyond loopback without a token (only behind an authenticating proxy)."


def exposed(settings: Settings) -> None:
    """The one line for a gateway that would listen beyond loopback without a token."""
    from marketswarm.agents.gateway.access import ExposedWithoutTokenError, check_exposure

    try:
        check_exposure(settings)
    except ExposedWithoutTokenError as exc:
        raise Mistake(str(exc), USAGE) from exc


def port_busy(settings: Settings) -> str:
    return (
        f"port {settings.gateway_port} on {settings.gateway_host} is already in use (another program, or another "
        "MarketSwarm): stop it, or set MARKETSWARM_GATEWAY_PORT to a free port"
    )


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[Any]]) -> Any:
    """Run ``main(stop)`` with SIGINT/SIGTERM setting ``stop``; the loop and clients live inside."""

    async def runner() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return asyncio.run(runner())


async def _record_model_settings(url: str, settings: Settings) -> None:
    from marketswarm.topology.connections import create_redis
    from marketswarm.topology.model_settings import record_model_settings

    client = create_redis(url)
    try:
        await record_model_settings(client, settings)
    finally:
        await client.aclose()


@app.command()
def run(
    source: Annotated[str | None, typer.Option(help="sim | massive | none (default: MARKETSWARM_SOURCE)")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help=NO_AUTH_HELP)] = False,
) -> None:
    """Start everything: the embedded server (unless MARKETSWARM_REDIS_URL is set), every agent, the
    market source and the gateway. Ctrl-C stops it; the next run resumes from the same data."""
    from marketswarm.ops.embedded import DataDirBusyError, DataDirLock, EmbeddedServer, port_free
    from marketswarm.ops.supervisor import Supervisor, child_env, group_agents

    settings = load_settings(source=source, gateway_no_auth=no_auth or None)
    exposed(settings)
    receivers = alerting.rules_of(settings).receivers  # a bad rules file stops here, in one line
    lock = DataDirLock(settings.data_dir)
    try:
        lock.acquire()  # held until this process ends
    except DataDirBusyError as exc:
        raise Mistake(str(exc), FAILED) from exc
    if not port_free(settings.gateway_host, settings.gateway_port):
        raise Mistake(port_busy(settings), FAILED)
    log.info("settings: %s", settings.masked())
    server = None
    if settings.redis_url:
        url = settings.redis_url
    else:
        server = EmbeddedServer(settings.data_dir)
        url = server.start()
    set_redis_url(url)
    # Before any agent starts, so none adopts the model settings a previous run recorded.
    try:
        asyncio.run(_record_model_settings(url, settings))
    except (RedisError, OSError) as exc:
        if server is not None:
            server.stop()
        raise Mistake(f"Redis at {mask_url(url)} does not answer: {exc}", FAILED) from exc
    metrics_dir = settings.data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env = child_env(url, metrics_dir)
    if settings.gateway_no_auth:
        env["MARKETSWARM_GATEWAY_NO_AUTH"] = "1"
    sup = Supervisor(env, grace_s=settings.shutdown_grace_s, server=server)
    for group in group_agents([spec.name for spec in catalog.agents()], settings.processes):
        sup.add("+".join(group), "agent", *group)
    if settings.source != "none":
        sup.add(f"source.{settings.source}", "source", settings.source)
    if receivers:
        sup.add("alerts.deliver", "alerts", "deliver")
    sup.add("gateway", "gateway")
    host = "localhost" if settings.gateway_host in ("127.0.0.1", "0.0.0.0") else settings.gateway_host
    banner = Table.grid(padding=(0, 2))
    banner.add_row("Dashboard", f"http://{host}:{settings.gateway_port}/")
    banner.add_row("API", f"http://{host}:{settings.gateway_port}/api/models/SPX/butterfly")
    banner.add_row("Metrics", f"http://{host}:{settings.gateway_port}/metrics")
    banner.add_row("Redis", mask_url(url) + ("  (embedded, data in " + str(settings.data_dir) + ")" if server else ""))
    banner.add_row("Source", settings.source + "  underlyings " + ",".join(settings.underlyings))
    banner.add_row("Inspect", "marketswarm inspect   (Ctrl-C here stops everything)")
    Console().print(banner)
    try:
        sup.run()
    finally:
        sup.stop()
        if server is not None:
            server.stop()
        lock.release()
    log.info("stopped")


@app.command()
def agent(
    names: Annotated[list[str], typer.Argument(help="Agent kind(s), e.g. normalize hydrate calc.butterfly")],
    max_entries: Annotated[int | None, typer.Option(help="Stop after this many entries (per agent).")] = None,
    idle_timeout_s: Annotated[float | None, typer.Option(help="Stop after this long with no input.")] = None,
) -> None:
    """Run agent kinds for every configured underlying: one kind per process is the unit Kubernetes
    scales; several kinds share one process (and its event loop) when cores are few."""
    from marketswarm.topology.connections import create_redis
    from marketswarm.topology.metrics import Metrics
    from marketswarm.topology.runtime import Runtime

    settings = load_settings()
    specs = [agent_spec(n) for n in names]
    if any(s.name == "vigil" for s in specs):
        alerting.rules_of(settings)  # a bad rules file stops here, in one line
    url = redis_url_of(settings)
    agents_named = ",".join(names)
    log.info(
        "agents %s starting on %s as %s; settings: %s",
        agents_named,
        mask_url(url),
        settings.consumer,
        settings.masked(),
    )

    async def main(stop: asyncio.Event) -> None:
        from prometheus_client import REGISTRY, start_http_server

        metrics = Metrics(REGISTRY)
        if settings.metrics_port:
            start_http_server(settings.metrics_port, registry=REGISTRY)
        clients = [create_redis(url, settings.block_ms) for _ in specs]
        try:
            runs = [
                Runtime(spec, settings, c, metrics, stop=stop).run(
                    max_entries=max_entries, idle_timeout_s=idle_timeout_s
                )
                for spec, c in zip(specs, clients, strict=True)
            ]
            await asyncio.gather(*runs)
        finally:
            for c in clients:
                await c.aclose()

    run_until_signal(main)


@app.command()
def source(
    kind: Annotated[str, typer.Argument(help="sim | massive")],
) -> None:
    """Run a market source, writing provider frames into the raw streams."""
    from prometheus_client import REGISTRY, start_http_server

    from marketswarm.topology.connections import create_redis
    from marketswarm.topology.metrics import Metrics
    from marketswarm.topology.model_settings import record_model_settings

    settings = load_settings()
    url = redis_url_of(settings)
    if kind not in ("sim", "massive"):
        raise Mistake(f"unknown source {kind!r}: sim or massive")
    if kind == "massive" and settings.massive_api_key is None:
        raise Mistake("MASSIVE_API_KEY is required for the live source")
    log.info("source %s starting on %s; settings: %s", kind, mask_url(url), settings.masked())

    async def main(stop: asyncio.Event) -> None:
        metrics = Metrics(REGISTRY)
        if settings.metrics_port:
            start_http_server(settings.metrics_port, registry=REGISTRY)
        redis = create_redis(url)
        try:
            await record_model_settings(redis, settings)  # input enters here: so do its model settings
            if kind == "sim":
                from marketswarm.agents.sources.simulated import run_simulated

                await run_simulated(settings, redis, metrics, stop, catalog.agents())
            else:
                from marketswarm.agents.sources.live import run_live

                await run_live(settings, redis, metrics, stop, catalog.agents())
        finally:
            await redis.aclose()

    run_until_signal(main)


@app.command()
def gateway(no_auth: Annotated[bool, typer.Option("--no-auth", help=NO_AUTH_HELP)] = False) -> None:
    """Serve REST, SSE and the dashboard (MARKETSWARM_GATEWAY_HOST/PORT)."""
    from marketswarm.agents.gateway.app import serve
    from marketswarm.ops.embedded import port_free

    settings = load_settings(gateway_no_auth=no_auth or None)
    exposed(settings)
    url = redis_url_of(settings)
    if not port_free(settings.gateway_host, settings.gateway_port):
        raise Mistake(port_busy(settings), FAILED)
    log.info("gateway on http://%s:%s over %s", settings.gateway_host, settings.gateway_port, mask_url(url))
    run_until_signal(lambda stop: serve(settings, url, catalog.agents(), stop))


@app.command()
def replay(
    paths: Annotated[list[Path], typer.Argument(help="Cboe CSV chains and/or .jsonl captures (or folders).")],
    export: Annotated[Path | None, typer.Option("--export", help="Write the final models here.")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Replay into this server instead of a temporary one.")] = None,
    paced: Annotated[bool, typer.Option(help="Replay at the recorded pace instead of as fast as possible.")] = False,
) -> None:
    """Run the whole topology over recorded input, in event-time order, until every agent is idle."""
    from marketswarm.agents.sources.files import InputFileError
    from marketswarm.ops.replay import NoModelError, ServerInUseError
    from marketswarm.ops.replay import replay as do_replay

    settings = load_settings()
    if redis_url:
        set_redis_url(redis_url, "--redis-url")
    try:
        summary = do_replay(settings, paths, export, redis_url, paced, console)
    except InputFileError as exc:
        raise Mistake(str(exc)) from exc
    except (ServerInUseError, NoModelError) as exc:
        raise Mistake(str(exc), FAILED) from exc
    console.print(f"replayed {summary.line()}", soft_wrap=True)


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Argument(help="Directory for {underlying}/{strategy}.json")],
    at: Annotated[
        str | None,
        typer.Option(help="A past time (ISO 8601, no offset: New York; or epoch ms): the models as they stood then."),
    ] = None,
) -> None:
    """Write the published models of a running system: the current ones, or with --at as they stood then
    (the same bytes as REST's ?at=)."""
    from marketswarm.ops.replay import export_models
    from marketswarm.schemas.history import TimeError, parse_time
    from marketswarm.topology.connections import create_redis

    settings = load_settings()
    url = redis_url_of(settings)
    try:
        at_ms = parse_time(at) if at is not None else None
    except TimeError as exc:
        raise Mistake(f"--at: {exc}", USAGE) from exc

    async def main() -> list[Path]:
        redis = create_redis(url)
        try:
            return await export_models(redis, out, settings.underlyings, at_ms)
        finally:
            await redis.aclose()

    for p in asyncio.run(main()):
        typer.echo(str(p))


@app.command()
def record(
    out: Annotated[Path, typer.Argument(help="Capture file (JSON lines) to write.")],
    from_start: Annotated[
        bool,
        typer.Option(
            "--from-start/--new-only",
            help="From the start of the retained raw history (default), or only new frames after each "
            "underlying's newest retained chain.",
        ),
    ] = True,
    max_frames: Annotated[int | None, typer.Option(help="Stop after this many frames.")] = None,
) -> None:
    """Capture the raw frames of every configured underlying to a replayable JSON-lines file."""
    from marketswarm.ops.replay import record as do_record

    settings = load_settings()
    url = redis_url_of(settings)
    n = run_until_signal(lambda stop: do_record(url, settings.underlyings, out, from_start, max_frames, stop))
    console.print(f"recorded {n} frames to {out}")


LAYERS = (  # top to bottom: each imports only from the layers below it (import-linter checks it)
    ("shell", "marketswarm.ops"),
    ("agents", "marketswarm.agents"),
    ("kernel", "marketswarm.topology"),
    ("schemas", "marketswarm.schemas"),
)


def layers_mermaid() -> str:
    """The code's layers as a Mermaid flowchart, each with its modules; imports point down."""
    import importlib
    import pkgutil

    lines = ["flowchart TB"]
    for name, root in LAYERS:
        package = importlib.import_module(root)
        modules = [
            m.name.removeprefix(root + ".")
            for m in pkgutil.walk_packages(package.__path__, root + ".")
            if not m.ispkg and not m.name.endswith("__main__")
        ]
        lines.append(f'  {name}["{name}: {root}<br/>{", ".join(sorted(modules))}"]')
    lines += [f"  {a} --> {b}" for (a, _), (b, _) in itertools.pairwise(LAYERS)]
    return "\n".join(lines) + "\n"


@app.command()
def topology(
    mermaid: Annotated[bool, typer.Option("--mermaid", help="Print a Mermaid diagram.")] = False,
    layers: Annotated[bool, typer.Option("--layers", help="Print the code's layers (Mermaid).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print the agent graph: who reads and writes which stream (--layers: the code's layers)."""
    from marketswarm.topology import graph

    if layers:
        typer.echo(layers_mermaid(), nl=False)
        return
    specs = catalog.agents()
    graph.validate(specs)
    if mermaid:
        typer.echo(graph.mermaid(specs), nl=False)
        return
    if as_json:
        agents = [
            {
                "agent": s.name,
                "reads": s.reads.template.format(u="U"),
                "writes": [w.template.format(u="U") for w in s.writes],
                "looks_up": [w.template.format(u="U") for w in s.looks_up],
                "owner": "lease" if s.stateful else "group",
                "doc": s.doc,
            }
            for s in specs
        ]
        typer.echo(orjson.dumps({"agents": agents}, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title="MarketSwarm topology ({U} = underlying hash tag)")
    table.add_column("agent (group)")
    table.add_column("reads")
    table.add_column("writes")
    table.add_column("owner")
    for s in specs:
        table.add_row(
            s.name,
            s.reads.template.format(u="U"),
            "\n".join(w.template.format(u="U") for w in s.writes),
            "lease per underlying" if s.stateful else "group (replicas share)",
        )
    Console().print(table)


async def _missing_groups(url: str, underlyings: list[str], spec: AgentSpec) -> list[str]:
    from marketswarm.topology.connections import create_redis
    from marketswarm.topology.observe import missing_groups

    client = create_redis(url)
    try:
        return await missing_groups(client, underlyings, [spec])
    finally:
        await client.aclose()


@app.command()
def check(
    name: Annotated[str, typer.Argument(help="Agent kind")],
    ready: Annotated[bool, typer.Option("--ready", help="Readiness: Redis answers and the group exists.")] = False,
) -> None:
    """Liveness: exit 0 if this consumer's heartbeat for AGENT is fresh, else 1 (--ready: readiness)."""
    from marketswarm.topology import streams
    from marketswarm.topology.connections import create_blocking_redis

    settings = load_settings()
    spec = agent_spec(name)
    url = redis_url_of(settings)
    if ready:
        missing = asyncio.run(_missing_groups(url, settings.underlyings, spec))
        if missing:
            raise Mistake(f"{name} not ready: no group {', '.join(missing)}", FAILED)
        typer.echo(f"{name} ready")
        return
    client = create_blocking_redis(url, socket_timeout=5)
    try:
        alive = client.exists(streams.heartbeat_key(name, settings.consumer))
    finally:
        client.close()
    if not alive:
        raise Mistake(f"no heartbeat from {name} as {settings.consumer}", FAILED)
    typer.echo(f"{name} alive as {settings.consumer}")


app.add_typer(commands.inspect_app, name="inspect")
app.add_typer(commands.offsets_app, name="offsets")
app.add_typer(alerting.alerts_app, name="alerts")
app.command("top")(commands.top)
app.command("rebuild")(commands.rebuild)


def main() -> None:
    app()
