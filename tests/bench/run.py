"""`make bench` runs this file with pytest: the suites named in ``BENCH_SUITES`` (comma-separated;
all when unset), the table printed, the report written to ``BENCH_OUT`` (``.bench/results.json``).

The benchmark is test rig, not part of the package; pytest runs it because it gives the rig the same
imports the tests have. It is not a test of speed: it prints figures beside same-run ceilings.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.bench.bench import main


def test_bench() -> None:
    only = [s.strip() for s in os.environ.get("BENCH_SUITES", "").split(",") if s.strip()] or None
    main(Path(os.environ.get("BENCH_OUT", ".bench/results.json")), only)
