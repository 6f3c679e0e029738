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
from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from marketswarm.agents.publish.reading import read_model
from marketswarm.agents.sources.files import (
    capture_line,
    capture_model_settings,
    model_line,
    read_inputs,
    write_recorded,
)
from marketswarm.schemas import codec
from marketswarm.topology import streams
from marketswarm.topology.connections import create_redis, ensure_group
from marketswarm.topology.model_settings import record_model_settings, recorded_model_settings
from marketswarm.topology.observe import known_underlyings
from marketswarm.topology.settings import Settings
from marketswarm.topology.shell.embedded import EmbeddedServer
from marketswarm.topology.shell.inprocess import run_until_idle

log = logging.getLogger(__name__)


async def export_models(redis: aioredis.Redis, out: Path, underlyings: Sequence[str]) -> list[Path]:
    """``out/{U}/{model}.json`` for every published model (heatmaps, ``gex`` and the derived ones),
    the same bytes as the REST endpoints."""
    written = []
    for u in await known_underlyings(redis, underlyings):
        for s in streams.MODELS:
            body = await read_model(redis, u, s)
            if body is None:
                continue
            path = out / u / f"{s}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            written.append(path)
    return written


async def _replay(
    url: str, settings: Settings, paths: Sequence[Path], export: Path | None, paced: bool, console: Console
) -> None:
    from marketswarm.agents import catalog

    frames = read_inputs(paths)
    underlyings = sorted({f.underlying for f in frames})
    # No idle flushes mid-replay: their timing would leak into the versions. One flush at the end.
    st = settings.model_copy(update={"underlyings": underlyings, "idle_flush": False})
    recorded = capture_model_settings(paths)
    if recorded is not None:
        # The recorded system's model settings, not this environment's: the same versions as live.
        st = st.with_model_settings(recorded)
    redis = create_redis(url)
    try:
        await record_model_settings(redis, st)  # what every agent of the replay adopts
        # Groups first, so that every agent sees the input from its first frame.
        for spec in catalog.agents():
            for u in underlyings:
                await ensure_group(redis, spec.reads.key(u), spec.name)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), console=console, transient=False, disable=not console.is_terminal,
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
            await run_until_idle(url, st, underlyings, progress=on_backlog)
        if export is not None:
            for p in await export_models(redis, export, underlyings):
                console.print(f"wrote {p}")
    finally:
        await redis.aclose()


def replay(
    settings: Settings, paths: Sequence[Path], export: Path | None, redis_url: str | None, paced: bool, console: Console
) -> None:
    if redis_url:
        asyncio.run(_replay(redis_url, settings, paths, export, paced, console))
        return
    tmp = Path(tempfile.mkdtemp(prefix="ms-replay-"))
    try:
        with EmbeddedServer(tmp, appendonly=False, record=False) as server:
            asyncio.run(_replay(server.url, settings, paths, export, paced, console))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def record(
    url: str, underlyings: Sequence[str], out: Path, from_start: bool, max_frames: int | None, stop: asyncio.Event
) -> int:
    """Append raw frames to a capture file until stopped (plain XREAD: recording takes no group)."""
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
            while not stop.is_set() and (max_frames is None or n < max_frames):
                # One XREAD per stream: on a cluster, underlyings live in different slots.
                replies = await asyncio.gather(*(redis.xread({k: c}, count=500, block=200) for k, c in cursors.items()))
                for key, entries in (kv for resp in replies for kv in (resp or ())):
                    k = key.decode()
                    for entry_id, fields in entries:
                        cursors[k] = entry_id
                        with contextlib.suppress(codec.DecodeError):
                            frame = codec.decode(streams.Payload.RAW, fields)
                            f.write(capture_line(under[k], frame) + b"\n")
                            n += 1
                f.flush()
    finally:
        await redis.aclose()
    return n
