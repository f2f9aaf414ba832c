"""Shared helpers: interleaved timing, per-round ratios, result rows, the table and the JSON file.

Every figure is the median of ``reps`` rounds with its min-max spread. A round runs every case
once (A B C, A B C, ...), so a slow spell of this shared machine hits the candidate and its
baseline alike; ratios are taken round by round and then summarised the same way.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def compare(
    cases: dict[str, Callable[[], Any]],
    reps: int,
    setup: dict[str, Callable[[], Any]] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each case in each of ``reps`` interleaved rounds (``setup[name]`` runs untimed first)."""
    setup = setup or {}
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            if name in setup:
                setup[name]()
            gc.collect()
            t = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t)
    return out


def summary(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of a measurement's rounds: every figure of the table is reported this way."""
    return statistics.median(values), min(values), max(values)


def speedups(baseline: list[float], candidate: list[float]) -> tuple[float, float, float]:
    """Per-round baseline_seconds / candidate_seconds (> 1: the candidate is faster), summarised."""
    return summary([b / c for b, c in zip(baseline, candidate)])


@dataclass
class Row:
    """One line of the table: a measurement, its spread, and its ratio to a same-run baseline."""

    stage: str
    what: str
    n: int | str
    value: float  # median
    unit: str  # "img/s", "s", "B/img", "x"
    lo: float
    hi: float
    baseline: str = ""  # what the ratio is against
    ratio: float | None = None  # median per-round ratio (candidate vs baseline; > 1 better unless noted)
    ratio_lo: float | None = None
    ratio_hi: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def rate_row(stage: str, what: str, n: int, seconds: list[float], **kw: Any) -> Row:
    """A throughput row in images per second from per-round seconds over ``n`` images; the slowest
    round gives the low end of the spread."""
    med, lo, hi = summary(seconds)
    return Row(stage, what, n, n / med, "img/s", n / hi, n / lo, **kw)


def time_row(stage: str, what: str, n: int | str, seconds: list[float], **kw: Any) -> Row:
    """A row of per-round seconds as they are (median and min-max), for stages whose cost is not
    per image."""
    med, lo, hi = summary(seconds)
    return Row(stage, what, n, med, "s", lo, hi, **kw)


def with_ratio(row: Row, ratio: tuple[float, float, float], baseline: str, target: str = "", met: bool | None = None) -> Row:
    """Attach a per-round ratio (from :func:`speedups`), what it is against, and an optional target
    with whether it was met; modifies ``row`` in place and returns it."""
    row.ratio, row.ratio_lo, row.ratio_hi = ratio
    row.baseline, row.target, row.met = baseline, target, met
    return row


def _num(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if unit == "B/img":
        return f"{v:,.0f} B"
    if unit == "x":
        return f"{v:.2f}"
    return f"{v:,.0f}" if v >= 100 else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def format_table(rows: list[Row]) -> str:
    """A Markdown table (readable as plain text too): value, spread, ratio, target, met."""
    head = ["stage", "measurement", "n", "median", "min-max", "vs (same run)", "ratio (min-max)", "target", "met"]
    lines = [head]
    for r in rows:
        unit = {"img/s": " img/s", "s": " s", "B/img": "/img", "x": "x"}.get(r.unit, f" {r.unit}")
        if r.ratio is None:
            ratio = ""
        elif r.ratio_lo == r.ratio_hi:
            ratio = f"{r.ratio:.4f}x" if r.unit == "B/img" else f"{r.ratio:.2f}x"
        else:
            ratio = f"{r.ratio:.2f}x ({r.ratio_lo:.2f}-{r.ratio_hi:.2f})"
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            [
                r.stage,
                r.what + (f" [{r.note}]" if r.note else ""),
                str(r.n),
                _num(r.value, r.unit) + unit,
                "" if r.lo == r.hi else f"{_num(r.lo, r.unit)}-{_num(r.hi, r.unit)}",
                r.baseline,
                ratio,
                r.target,
                met,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    fmt = lambda line: "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"  # noqa: E731
    out = [fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt(line) for line in lines[1:]]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    """The host, CPU, memory, library versions and load average, recorded with the results: numbers
    from a shared machine mean little without them."""
    import numpy as np
    import torch

    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available this session (CPU only)",
        "load_average": os.getloadavg(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gib"] = round(int(mem[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import zarr

        info["zarr"] = zarr.__version__
    except ImportError:
        pass
    return info


def results_path(out_dir: str | Path | None = None, name: str | None = None) -> Path:
    """``benchmarks/results/<YYYY-MM-DD>-<host>[-name].json`` (UTC date)."""
    d = Path(out_dir) if out_dir else RESULTS_DIR
    stem = f"{datetime.now(UTC):%Y-%m-%d}-{socket.gethostname()}" + (f"-{name}" if name else "")
    return d / f"{stem}.json"


def jsonable(x: Any) -> Any:
    """``x`` with rows, numpy scalars and tuples turned into plain json types (dict keys become strings)."""
    if isinstance(x, Row):
        return jsonable(asdict(x))
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return x.item()
    return x


def finish(name: str, res: dict, out_dir: str | Path | None = None) -> int:
    """A stage module's ending when run alone: its table, then its results file."""
    print(format_table(res["rows"]))
    print(f"wrote {write_results(name, res, out_dir)}")
    return 0


def write_results(name: str | None, results: dict, out_dir: str | Path | None = None) -> Path:
    """Write the results as json to :func:`results_path`, stamped with the UTC time of writing; an
    earlier file of the same day, host and name is replaced."""
    path = results_path(out_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"measured_at": datetime.now(UTC).isoformat(), **jsonable(results)}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def scratch_dir(prefix: str) -> Path:
    """A fresh directory under $TMPDIR (the benchmark's files never land in the repository)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"radstore-bench-{prefix}-"))


def du(path: Path) -> int:
    """Bytes of every file under ``path`` (apparent sizes, not disk blocks): the bytes-per-image figures."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
