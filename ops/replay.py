"""Replay, export and record: recorded input through the whole topology, and models out to files.

A replay runs on its own temporary embedded server by default, so it never mixes with a running
system. Everything downstream of the raw streams is a function of their order, and the inputs are
written in event-time order, so replaying the same input twice gives byte-identical exports with the
same version numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from marketswarm.agents.sources.files import (
    Recorded,
    capture_line,
    capture_model_settings,
    model_line,
    read_inputs,
    write_recorded,
)
from marketswarm.ops.embedded import EmbeddedServer
from marketswarm.ops.inprocess import run_until_idle
from marketswarm.schemas import codec
from marketswarm.schemas.codec import RawFormat, RawFrame
from marketswarm.topology import streams
from marketswarm.topology.connections import create_redis, ensure_group
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.model_settings import record_model_settings, recorded_model_settings
from marketswarm.topology.observe import known_underlyings
from marketswarm.topology.reading import read_model, top_version
from marketswarm.topology.settings import Settings, mask_url
from marketswarm.topology.travel import HistoryError, model_at

log = logging.getLogger(__name__)
CHAIN_FORMATS = (RawFormat.CBOE_CSV, RawFormat.REST_CHAIN)  # frames that can start an epoch: without one, no model


Collect = Callable[[aioredis.Redis, list[str]], Awaitable[None]]


class ServerInUseError(RuntimeError):
    """Raised when a replay is pointed at a server that a system runs on or that holds its data."""


class NoModelError(RuntimeError):
    """Raised when a replay's input published no model; the message says why."""


@dataclass(frozen=True)
class Summary:
    """What a replay read and made: the line it ends with."""

    frames: int
    chains: int  # chain frames (Cboe CSV, REST snapshot pages)
    events: int  # typed events normalize wrote
    rejects: int  # frames and elements normalize rejected
    versions: int  # model versions published, over every model and underlying
    elapsed_s: float

    def line(self) -> str:
        return (
            f"{self.frames} frames ({self.chains} chain), {self.events} events, {self.rejects} rejects, "
            f"{self.versions} versions in {self.elapsed_s:.1f} s"
        )


async def export_models(
    redis: aioredis.Redis, out: Path, underlyings: Sequence[str], at_ms: int | None = None
) -> list[Path]:
    """``out/{U}/{model}.json`` for every published model (heatmaps, ``gex`` and the derived ones),
    the same bytes as the REST endpoints; with ``at_ms``, as they stood then (REST's ``?at=``;
    a model with nothing kept from then is left out)."""
    written = []
    for u in await known_underlyings(redis, underlyings):
        for s in streams.MODELS:
            if at_ms is None:
                body = await read_model(redis, u, s)
            else:
                try:
                    body = (await model_at(redis, u, s, at_ms)).published.body()
                except HistoryError as exc:
                    log.warning("%s", exc)
                    continue
            if body is None:
                continue
            path = out / u / f"{s}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            written.append(path)
    return written


def _counted(counter: Counter, agent: str) -> int:
    """A counter's total over every label set of ``agent``."""
    return int(
        sum(
            s.value
            for m in counter.collect()
            for s in m.samples
            if s.name.endswith("_total") and s.labels.get("agent") == agent
        )
    )


async def refuse_a_used_server(redis: aioredis.Redis, url: str) -> None:
    """A replay starts from an empty server: refuse one a system runs on, or one holding its data."""
    from marketswarm.agents import catalog
    from marketswarm.ops.operate import live_consumers

    instead = "replay without --redis-url (on a temporary server), or into an empty one"
    alive = [s.name for s in catalog.agents() if await live_consumers(redis, s.name)]
    if alive:
        raise ServerInUseError(
            f"{mask_url(url)} runs a MarketSwarm system (live agents: {', '.join(alive)}): {instead}"
        )
    held = [
        f"{u}: {n} raw entries" for u in await known_underlyings(redis) if (n := await redis.xlen(streams.RAW.key(u)))
    ]
    if held:
        raise ServerInUseError(f"{mask_url(url)} already holds MarketSwarm data ({', '.join(held)}): {instead}")


async def _replay(
    url: str,
    settings: Settings,
    frames: Sequence[Recorded],
    recorded: dict[str, Any] | None,
    export: Path | None,
    paced: bool,
    console: Console,
    *,
    shared: bool,
    collect: Collect | None = None,
) -> Summary:
    from marketswarm.agents import catalog

    started = time.monotonic()
    metrics = Metrics()
    underlyings = sorted({f.underlying for f in frames})
    # No idle flushes mid-replay: their timing would leak into the versions. One flush at the end.
    st = settings.model_copy(update={"underlyings": underlyings, "idle_flush": False})
    if recorded is not None:
        # The recorded system's model settings, not this environment's: the same versions as live.
        st = st.with_model_settings(recorded)
    redis = create_redis(url)
    try:
        if shared:
            await refuse_a_used_server(redis, url)
        await record_model_settings(redis, st)  # what every agent of the replay adopts
        # Groups first, so that every agent sees the input from its first frame.
        for spec in catalog.agents():
            for u in underlyings:
                await ensure_group(redis, spec.reads.key(u), spec.name)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal,
        ) as progress:  # fmt: skip
            load = progress.add_task("input frames", total=len(frames))
            drain = progress.add_task("topology backlog", total=None)
            writer = asyncio.create_task(
                write_recorded(redis, frames, paced=paced, progress=lambda n: progress.advance(load, n), settings=st)
            )
            backlog_max = [1]

            def on_backlog(b: int) -> None:
                backlog_max[0] = max(backlog_max[0], b)
                progress.update(drain, total=backlog_max[0], completed=backlog_max[0] - b)

            await writer
            await run_until_idle(url, st, underlyings, metrics=metrics, progress=on_backlog)
        summary = Summary(
            frames=len(frames),
            chains=sum(f.src in CHAIN_FORMATS for f in frames),
            events=_counted(metrics.events_out, "normalize"),
            rejects=_counted(metrics.rejects, "normalize"),
            versions=sum([await top_version(redis, u, m) or 0 for u in underlyings for m in streams.MODELS]),
            elapsed_s=time.monotonic() - started,
        )
        # The heatmaps and GEX are the models; the derived ones follow them (intent alone can publish
        # an empty flow from prints without a chain).
        if not any([await top_version(redis, u, s) for u in underlyings for s in streams.STRATEGIES]):
            raise NoModelError(why_no_model(summary))
        if export is not None:
            for p in await export_models(redis, export, underlyings):
                console.print(f"wrote {p}", soft_wrap=True)
        if collect is not None:
            await collect(redis, underlyings)
        return summary
    finally:
        await redis.aclose()


def why_no_model(s: Summary) -> str:
    said = f"the input yielded no heatmap or GEX model ({s.line()})"
    if s.chains == 0:
        return (
            f"{said}: a model needs an option chain and the input has none; add a Cboe chain CSV, or a capture "
            "that holds the chain (`marketswarm record` takes the retained history by default)"
        )
    if s.events == 0:
        return f"{said}: normalize admitted none of it (replay with --redis-url and `marketswarm inspect` the rejects)"
    return f"{said}: no chain led to an epoch (see the warnings above)"


def replay(
    settings: Settings,
    paths: Sequence[Path],
    export: Path | None,
    redis_url: str | None,
    paced: bool,
    console: Console,
    collect: Collect | None = None,
) -> Summary:
    """Replay ``paths`` on a temporary server (or ``redis_url``, which must be empty). InputFileError
    for bad input, ServerInUseError for a server in use, NoModelError when no model came of it.
    ``collect`` reads what it wants of the result before the server goes away."""
    frames = read_inputs(paths)
    recorded = capture_model_settings(paths)
    with quiet_logs(console, settings.log_level):
        if redis_url:
            return asyncio.run(
                _replay(redis_url, settings, frames, recorded, export, paced, console, shared=True, collect=collect)
            )
        tmp = Path(tempfile.mkdtemp(prefix="ms-replay-"))
        try:
            with EmbeddedServer(tmp, appendonly=False, record=False) as server:
                return asyncio.run(
                    _replay(
                        server.url, settings, frames, recorded, export, paced, console, shared=False, collect=collect
                    )
                )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def quiet_logs(console: Console, level: str) -> Iterator[None]:
    """While a replay runs, its logs go through the console of its progress display (printed above
    it, never through it), and only warnings and worse unless the log level is DEBUG."""
    root = logging.getLogger()
    handlers, was = root.handlers[:], root.level
    root.handlers = [RichHandler(console=console, show_path=False, show_time=False, markup=False)]
    root.setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)
    try:
        yield
    finally:
        root.handlers = handlers
        root.setLevel(was)


async def newest_chain(redis: aioredis.Redis, key: str, page: int = 200, limit: int = 100_000) -> RawFrame | None:
    """The newest chain frame retained in a raw stream (a Cboe CSV or a REST chain poll), if any."""
    last, seen = "+", 0
    while seen < limit:
        entries = await redis.xrevrange(key, max=last, count=page)
        for _, fields in entries:
            if fields.get(b"src", b"").decode() in CHAIN_FORMATS:
                with contextlib.suppress(codec.DecodeError):
                    frame: RawFrame = codec.decode(streams.Payload.RAW, fields)
                    return frame
        if len(entries) < page:
            return None
        seen += len(entries)
        last = "(" + entries[-1][0].decode()
    return None


async def record(
    url: str, underlyings: Sequence[str], out: Path, from_start: bool, max_frames: int | None, stop: asyncio.Event
) -> int:
    """Append raw frames to a capture file until stopped (plain XREAD: recording takes no group).

    From the start of the retained raw history by default; with ``from_start`` off, from now on,
    after each underlying's newest retained chain frame, so that the capture still replays to models."""
    redis = create_redis(url, block_ms=1000)
    model = await recorded_model_settings(redis)
    if model is None:
        log.warning("%s: the system recorded no model settings; a replay will use its own", out)
    cursors: dict[str, bytes | str] = {streams.RAW.key(u): ("0" if from_start else "$") for u in underlyings}
    under = {streams.RAW.key(u): u for u in underlyings}
    n = 0
    try:
        with out.open("ab") as f:
            if model is not None and f.tell() == 0:  # a new capture opens with them
                f.write(model_line(model) + b"\n")
            if not from_start:
                for key, u in under.items():
                    chain = await newest_chain(redis, key)
                    if chain is not None:
                        f.write(capture_line(u, chain) + b"\n")
            while not stop.is_set() and (max_frames is None or n < max_frames):
                # One XREAD per stream: on a cluster, underlyings live in different slots.
                replies = await asyncio.gather(*(redis.xread({k: c}, count=500, block=200) for k, c in cursors.items()))
                for key, entries in (kv for resp in replies for kv in (resp or ())):
                    k = key.decode()
                    for entry_id, fields in entries:
                        if max_frames is not None and n >= max_frames:
                            break
                        cursors[k] = entry_id
                        with contextlib.suppress(codec.DecodeError):
                            frame = codec.decode(streams.Payload.RAW, fields)
                            f.write(capture_line(under[k], frame) + b"\n")
                            n += 1
                f.flush()
    finally:
        await redis.aclose()
    return n
