"""Recorded input: Cboe CSV chains and capture files, replayed into the raw streams in event-time order.

A capture is JSON lines, one raw frame each: ``{"u": "SPX", "src": "massive.ws", "rx_ns": ..., "data": "..."}``
(``data`` is the provider's text exactly as received; ``data_b64`` its bytes when they are not text).
``marketswarm record OUT`` writes them from the raw streams of a running system; replay writes them
back, so they take the same normalize path as live data. A capture's first line may be
``{"model": {...}}``: the model settings the recorded system ran with (topology/model_settings.py),
which a replay adopts. A Cboe CSV file becomes one ``cboe.csv`` frame received at its download time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from marketswarm.agents.sources.writer import RawWriter
from marketswarm.schemas.cboefile import CboeFormatError, date_cell, parse_download_time, underlying_of_file
from marketswarm.schemas.codec import RawFormat, RawFrame
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings

WRITE_BATCH = 200
CAPTURE_SUFFIXES = (".jsonl", ".ndjson")
MODEL_FIELD = "model"  # the key of a capture's model-settings line


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
    return Recorded(u, RawFormat.CBOE_CSV, ts, data)


def read_capture(path: Path) -> Iterator[Recorded]:
    with path.open("rb") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
                if MODEL_FIELD in rec and "data" not in rec:
                    continue  # the recorded model settings (capture_model_settings)
                if "data_b64" in rec:
                    data = base64.b64decode(rec["data_b64"], validate=True)
                else:
                    data = rec["data"].encode() if isinstance(rec["data"], str) else bytes(rec["data"])
                yield Recorded(str(rec["u"]), str(rec["src"]), int(rec["rx_ns"]), data)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error) as exc:
                raise InputFileError(f"{path}:{n}: not a capture line: {exc}") from exc


def _input_files(paths: Sequence[Path]) -> Iterator[Path]:
    for p in paths:
        if not p.exists():
            raise InputFileError(f"{p}: no such file or directory")
        if p.is_dir():
            yield from _input_files(sorted(q for q in p.iterdir() if q.suffix in (".csv", ".jsonl")))
        elif p.suffix.lower() in (".csv", *CAPTURE_SUFFIXES):
            yield p
        else:
            raise InputFileError(f"{p}: expected a .csv chain or a .jsonl capture")


def read_inputs(paths: Sequence[Path]) -> list[Recorded]:
    """Every frame of every path, in event-time (receive-time) order; ties keep file order."""
    frames: list[Recorded] = []
    for p in _input_files(paths):
        if p.suffix.lower() == ".csv":
            frames.append(read_cboe(p))
        else:
            n = len(frames)
            frames.extend(read_capture(p))
            if len(frames) == n:
                raise InputFileError(f"{p}: an empty capture (no frames)")
    if not frames:
        raise InputFileError(f"no .csv chain or .jsonl capture in {', '.join(map(str, paths))}")
    return sorted(frames, key=lambda r: r.rx_ns)


def model_line(model_settings: Mapping[str, Any]) -> bytes:
    """A capture's first line: the model settings of the system it records."""
    return orjson.dumps({MODEL_FIELD: dict(model_settings)}, option=orjson.OPT_SORT_KEYS)


def capture_model_settings(paths: Sequence[Path]) -> dict[str, Any] | None:
    """The model settings recorded in the captures among ``paths`` (None if none has them). Captures
    recorded with different model settings cannot be replayed as one run: InputFileError."""
    found: dict[bytes, Path] = {}
    value: dict[str, Any] | None = None
    for p in _input_files(paths):
        if p.suffix.lower() not in CAPTURE_SUFFIXES:
            continue
        with p.open("rb") as f:
            first = next((line for line in f if line.strip()), b"")
        try:
            rec = orjson.loads(first) if first else None
        except orjson.JSONDecodeError:
            continue  # read_capture names the bad line
        if isinstance(rec, dict) and isinstance(rec.get(MODEL_FIELD), dict) and "data" not in rec:
            value = rec[MODEL_FIELD]
            found.setdefault(orjson.dumps(value, option=orjson.OPT_SORT_KEYS), p)
    if len(found) > 1:
        a, b = list(found.values())[:2]
        raise InputFileError(f"{a} and {b} were recorded with different model settings: replay them separately")
    return value


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


def capture_line(u: str, frame: RawFrame) -> bytes:
    """One capture line: the frame's text as ``data``, or its bytes in base64 as ``data_b64`` when
    they are not UTF-8 (a binary frame), so a replay writes back exactly what was received."""
    line: dict[str, Any] = {"u": u, "src": frame.src, "rx_ns": frame.rx_ns}
    try:
        line["data"] = frame.data.decode("utf-8")
    except UnicodeDecodeError:
        line["data_b64"] = base64.b64encode(frame.data).decode()
    return orjson.dumps(line)
