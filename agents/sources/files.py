"""Recorded input: Cboe CSV chains and capture files, replayed into the raw streams in event-time order.

A capture is JSON lines, one raw frame each: ``{"u": "SPX", "src": "massive.ws", "rx_ns": ..., "data": "..."}``
(``data`` is the provider's text exactly as received). ``marketswarm record OUT`` writes them from
the raw streams of a running system; replay writes them back, so they take the same normalize path
as live data. A Cboe CSV file becomes one ``cboe.csv`` frame received at its download time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from marketswarm.agents.cboe_csv import CboeFormatError, date_cell, parse_download_time, underlying_of_file
from marketswarm.agents.normalize import CBOE_CSV
from marketswarm.agents.sources.writer import RawWriter
from marketswarm.schemas.codec import RawFrame
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings

WRITE_BATCH = 200


class InputFileError(ValueError):
    """Raised when a replay input is neither a Cboe chain CSV nor a capture (JSON lines)."""


@dataclass(frozen=True)
class Recorded:
    underlying: str
    src: str
    rx_ns: int
    data: bytes


def read_cboe(path: Path) -> Recorded:
    data = path.read_bytes()
    u = underlying_of_file(data)
    lines = data.decode("utf-8-sig", "replace").splitlines()
    if u is None or len(lines) < 3:
        raise InputFileError(f"{path}: not a Cboe chain (no option symbols)")
    try:
        ts = parse_download_time(date_cell(lines[2]))
    except CboeFormatError as exc:
        raise InputFileError(f"{path}: {exc}") from exc
    return Recorded(u, CBOE_CSV, ts, data)


def read_capture(path: Path) -> Iterator[Recorded]:
    with path.open("rb") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
                data = rec["data"]
                yield Recorded(
                    str(rec["u"]),
                    str(rec["src"]),
                    int(rec["rx_ns"]),
                    data.encode() if isinstance(data, str) else bytes(data),
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise InputFileError(f"{path}:{n}: not a capture line: {exc}") from exc


def read_inputs(paths: Sequence[Path]) -> list[Recorded]:
    """Every frame of every path, in event-time (receive-time) order; ties keep file order."""
    frames: list[Recorded] = []
    for p in paths:
        if p.is_dir():
            frames.extend(read_inputs(sorted(q for q in p.iterdir() if q.suffix in (".csv", ".jsonl"))))
        elif p.suffix.lower() == ".csv":
            frames.append(read_cboe(p))
        elif p.suffix.lower() in (".jsonl", ".ndjson"):
            frames.extend(read_capture(p))
        else:
            raise InputFileError(f"{p}: expected a .csv chain or a .jsonl capture")
    return sorted(frames, key=lambda r: r.rx_ns)


async def write_recorded(
    redis: aioredis.Redis,
    frames: Sequence[Recorded],
    *,
    paced: bool = False,
    progress: Callable[[int], None] | None = None,
    settings: Settings | None = None,
) -> None:
    """Write frames to the raw streams, as fast as possible or at their recorded pace."""
    writer = RawWriter.of(settings or Settings(), redis, Metrics(), "replay")
    start_wall = time.monotonic()
    start_rx = frames[0].rx_ns if frames else 0
    i = 0
    while i < len(frames):
        group = [frames[i]]
        while (
            i + len(group) < len(frames) and len(group) < WRITE_BATCH and frames[i + len(group)].rx_ns == group[0].rx_ns
        ):
            group.append(frames[i + len(group)])
        if paced:
            due = (group[0].rx_ns - start_rx) / 1e9 - (time.monotonic() - start_wall)
            if due > 0:
                await asyncio.sleep(due)
        for u in sorted({r.underlying for r in group}):
            await writer.write(u, [(r.src, r.data) for r in group if r.underlying == u], group[0].rx_ns)
        i += len(group)
        if progress is not None:
            progress(len(group))


async def load_paths(redis: aioredis.Redis, paths: Sequence[Path]) -> list[str]:
    """Replay files into the raw streams (fast); returns the underlyings they carry."""
    frames = read_inputs(paths)
    await write_recorded(redis, frames)
    return sorted({r.underlying for r in frames})


def capture_line(u: str, frame: RawFrame) -> bytes:
    return orjson.dumps({"u": u, "src": frame.src, "rx_ns": frame.rx_ns, "data": frame.data.decode("utf-8", "replace")})
