"""Shared helpers: timing medians and result files (benchmarks/results/<date>-<host>-<name>.json)."""

from __future__ import annotations

import json
import os
import socket
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable


def median_time(fn: Callable[[], object], reps: int) -> tuple[float, float, float]:
    """(median, min, max) seconds of ``reps`` calls."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), max(times)


def write_results(name: str, results: dict, out_dir: str = "benchmarks/results") -> Path:
    os.makedirs(out_dir, exist_ok=True)
    path = Path(out_dir) / f"{datetime.now(timezone.utc):%Y-%m-%d}-{socket.gethostname()}-{name}.json"
    path.write_text(json.dumps({"measured_at": datetime.now(timezone.utc).isoformat(), **results}, indent=2))
    return path
