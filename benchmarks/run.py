"""Every benchmark in one run: ``make bench``, ``radstore bench``, ``python -m benchmarks``.

Stages (each module also runs alone; see its docstring):

1. ``store_io``    store writes vs one float32 .npy per image and a memory copy (+ bytes/image)
2. ``training``    the shuffled streaming loader vs RAM and shuffled .npy reads; a head's epoch
3. ``extraction``  ``radstore extract``'s engine vs the pure forward pass (pixels, random-vit)
4. ``evaluation``  2,000-resample bootstraps of AUROC and mean Dice vs scikit-learn loops
5. ``planning``    the extraction planner over 1,000,000 committed ids; a DuckDB query
6. growth: stages 1-3 at three sizes each, the cost per image side by side
7. ``decode``      real-size (2,500-3,000 px) DICOM, JPEG 2000, JPEG-LS, 16-bit PNG: read, decode,
   intensity, each encoder's preprocessing, per core; the fast path vs today when present
8. ``decode_once`` five encoders from one decode (``extract_many``) vs five separate extractions,
   each against one decode + the sum of the five forwards (real-size random ViTs, CPU)
9. ``health``      ``check_health`` of a 100,000-image feature set (synthetic globals, grids of a
   2,000-image sample) vs its pure I/O and a naive read + SVD; target under a minute

Every figure is the median of ``--reps`` (>= 3) interleaved rounds with its min-max spread,
and a ratio against a baseline measured in the same run (this machine is shared and noisy).
Prints one table and writes ``benchmarks/results/<YYYY-MM-DD>-<host>.json``. The default sizes
finish in about 20 minutes on 2 cores (the real-size decode and decode-once stages take 3-4
minutes each, the health stage about 5 and 9 GB of scratch disk); ``--quick`` is a smoke test
(seconds, not for numbers).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import Row, format_table, machine, write_results

STAGES = ("store", "training", "extraction", "evaluation", "planning", "decode", "decode_once", "health")

FULL: dict[str, dict[str, Any]] = {
    "store": {"sizes": (64, 256, 1024)},
    "training": {"sizes": (64, 256, 1024), "epoch_size": 256},
    "extraction": {"pixels_sizes": (16, 48, 144), "vit_n": 4, "vit_batch": 2},
    "evaluation": {"n": 10_000, "resamples": 2000},
    "planning": {"committed": 1_000_000, "query_rows": 100_000},
    "decode": {"n": 4, "min_side": 2500, "max_side": 3000},
    "decode_once": {"n": 1, "min_side": 2500, "max_side": 3000, "weights": "random", "batch_size": 1},
    "health": {"n": 100_000, "sample": 2000, "backfill": 5000},
}
QUICK: dict[str, dict[str, Any]] = {
    "store": {"sizes": (16, 64)},
    "training": {"sizes": (16, 64), "epoch_size": 64},
    "extraction": {"pixels_sizes": (8, 24), "vit_n": 0},
    "evaluation": {"n": 2000, "resamples": 200},
    "planning": {"committed": 20_000, "query_rows": 5_000},
    "decode": {"n": 2, "min_side": 256, "max_side": 320},
    "decode_once": {"n": 4, "min_side": 384, "max_side": 512, "weights": "random:tiny", "batch_size": 2},
    "health": {"n": 3000, "sample": 64, "backfill": 300, "dim": 128, "grid": (64, 16, 16), "rank_images": 16},
}


def _runner(stage: str) -> Callable[..., dict]:
    if stage == "store":
        from benchmarks.store_io import run
    elif stage == "training":
        from benchmarks.training import run
    elif stage == "extraction":
        from benchmarks.extraction import run
    elif stage == "evaluation":
        from benchmarks.evaluation import run
    elif stage == "decode":
        from benchmarks.decode import run
    elif stage == "decode_once":
        from benchmarks.decode_once import run
    elif stage == "health":
        from benchmarks.health import run
    else:
        from benchmarks.planning import run
    return run


def growth_rows(rows: list[Row]) -> list[Row]:
    """Item 6: per measurement measured at several sizes, seconds per image at the largest size
    over seconds per image at the smallest (1.0 = flat)."""
    by: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if r.unit == "img/s" and isinstance(r.n, int) and r.stage[0] in "123":
            by.setdefault((r.stage, r.what), []).append(r)
    out = []
    for (stage, what), rs in by.items():
        if len(rs) < 3 or "vs" in what:
            continue
        rs = sorted(rs, key=lambda r: r.n)
        small, large = rs[0], rs[-1]
        growth = small.value / large.value  # (1/large) / (1/small): cost per image, large over small
        per = ", ".join(f"{1e3 / r.value:.2f}" for r in rs)
        out.append(
            Row(
                "6 growth",
                f"{stage[2:]}: {what} [ms/img at n = {'/'.join(str(r.n) for r in rs)}: {per}]",
                f"{small.n}->{large.n}",
                growth,
                "x",
                growth,
                growth,
                "cost/img at smallest n",
                growth,
                growth,
                growth,
                "flat (~1x)",
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """``radstore bench``: run the chosen stages, print each table and the combined one, and write
    the results file unless ``--no-write``; exits 0 whether or not every target was met."""
    ap = argparse.ArgumentParser(prog="radstore bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="which stages to run (default: all)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds per measurement (>= 3 for published numbers)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the harness, not numbers to publish")
    ap.add_argument("--out", default=None, help="results folder (default: benchmarks/results)")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    a = ap.parse_args(argv)
    sizes = QUICK if a.quick else FULL
    info = machine()
    print(
        f"radstore benchmarks on {info['host']}: {info['cpus']} CPUs ({info.get('cpu', '?')}), torch {info['torch']} "
        f"with {info['torch_threads']} threads, load average {' '.join(f'{x:.2f}' for x in info['load_average'])}"
    )
    print(f"GPU: {info['gpu']}", flush=True)
    t0 = time.perf_counter()
    rows: list[Row] = []
    results: dict[str, Any] = {}
    stage_seconds: dict[str, float] = {}
    for stage in a.stages:
        t = time.perf_counter()
        print(f"\n== {stage} ({sizes[stage]}, {a.reps} rounds)", flush=True)
        res = _runner(stage)(reps=a.reps, **sizes[stage])
        stage_seconds[stage] = round(time.perf_counter() - t, 1)
        rows += res["rows"]
        results[stage] = {k: v for k, v in res.items() if k != "rows"}
        print(format_table(res["rows"]))
        print(f"({stage_seconds[stage]:.0f} s)", flush=True)
    rows += growth_rows(rows)
    total = time.perf_counter() - t0
    print("\n== all stages: median of", a.reps, "interleaved rounds; ratio = candidate vs the same-run baseline, per round")
    print(format_table(rows))
    targets = [r for r in rows if r.met is not None]
    print(
        f"\ntargets met: {sum(r.met for r in targets)} of {len(targets)}"
        + "".join(f"\n  NOT MET: {r.stage} / {r.what} (n={r.n}): {r.ratio:.4g} vs {r.target}" for r in targets if not r.met)
    )
    print(f"GPU: {info['gpu']}")
    print(f"total {total:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in stage_seconds.items())})")
    if not a.no_write:
        info["load_average_end"] = __import__("os").getloadavg()
        payload = {
            "machine": info,
            "quick": a.quick,
            "reps": a.reps,
            "seconds": round(total, 1),
            "stage_seconds": stage_seconds,
            "sizes": {s: sizes[s] for s in a.stages},
            "rows": rows,
            "details": results,
        }
        print(f"wrote {write_results(None if not a.quick else 'quick', payload, a.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
