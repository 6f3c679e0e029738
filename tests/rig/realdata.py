"""The real data the tests and the benchmark use, carried in the repository (tests/data/real/).

The files are xz-compressed copies of real Cboe option chains, the provider's documented message shapes
and published reference values; SOURCES.md there says where each came from, and MANIFEST.json holds
each original file's size and sha256. ``real_data()`` unpacks them once into a cache directory beside
the system's temporary files and checks every byte against the manifest, so a test reads exactly the
data it was written against, and a clone of the repository alone is complete.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import tempfile
from pathlib import Path

import orjson

PACKED = Path(__file__).resolve().parents[1] / "data" / "real"
MANIFEST = PACKED / "MANIFEST.json"


class MissingDataError(RuntimeError):
    """Raised when tests/data/real/ is not there or not whole: a test or the benchmark cannot run without it."""


def real_data() -> Path:
    """The unpacked real data (``cboe/``, ``massive/``, ``reference/`` and ``SOURCES.md``), verified."""
    if not MANIFEST.exists():
        raise MissingDataError(f"{MANIFEST} is missing: the repository carries its test data under tests/data/real/")
    raw = MANIFEST.read_bytes()
    manifest: dict[str, dict[str, object]] = orjson.loads(raw)
    target = Path(tempfile.gettempdir()) / f"marketswarm-real-data-{hashlib.sha256(raw).hexdigest()[:16]}"
    if (target / ".complete").exists():
        return target
    staging = Path(tempfile.mkdtemp(prefix="marketswarm-real-data-"))
    for name, want in manifest.items():
        packed = PACKED / name if (PACKED / name).exists() else PACKED / f"{name}.xz"
        if not packed.exists():
            raise MissingDataError(f"{PACKED / name}(.xz) is missing")
        body = lzma.decompress(packed.read_bytes()) if packed.suffix == ".xz" else packed.read_bytes()
        if len(body) != want["bytes"] or hashlib.sha256(body).hexdigest() != want["sha256"]:
            raise MissingDataError(f"{packed} does not hold the original {name} (size or sha256 differs)")
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(body)
    (staging / ".complete").touch()
    try:
        os.rename(staging, target)  # atomic: a concurrent unpacker's copy is as good as ours
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target
