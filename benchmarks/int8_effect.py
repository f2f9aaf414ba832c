"""The effect of storing patch grids as int8 on every demo metric, against float16.

One synthetic cohort (``radstore synth``, the demo's split), extracted with the demo's control
encoders (``pixels``, ``random-vit`` at ``random:tiny``, the planted positive control) once as
float16 and once as int8 (the same forward passes: the int8 set quantises the float16 grids);
the demo's tasks and heads trained with the demo's training settings on each; one evaluation
of every run. For each (encoder, task, head, metric) it prints the float16 value with its 95%
CI, the int8 value, the delta, and whether the int8 value lies within the float16 run's CI
(the bar for recommending int8); then the positive control's checks of the int8 runs and the
bytes per image of each set. Global-embedding tasks read no grids (their heads use ``cls``),
so their deltas are zero by construction: the grid-reading rows are the segmentation ones.

Run: ``.venv/bin/python -m benchmarks.int8_effect [--n 200] [--keep DIR]``; with ``--keep`` a
stopped run resumes (committed images and finished runs are reused).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import scratch_dir

ENCODERS = {"pixels": None, "random-vit": "random:tiny", "planted": None}
TASKS = ["pneumothorax-cls", "cardiomegaly-cls", "ctr-reg", "pneumothorax-seg", "heart-seg"]
HEADS = ["linear", "cross-attention"]
# configs/demo.yaml's train block
TRAIN = dict(solver="lbfgs", lr=1e-3, max_epochs=40, patience=8, target_size=64, refiner_channels=(32, 16), attn_size=32, progress=False)
DTYPES = ("float16", "int8")


def run(n: int = 200, seed: int = 0, keep: Path | None = None) -> dict:
    """Synthesize, extract both dtypes, train, evaluate; returns the paired metric rows."""
    from evaluation.artifacts import evaluate, read_evaluation
    from evaluation.config import EvalConfig
    from featurestore import layout
    from featurestore.config import ExtractConfig
    from featurestore.extract import extract_many
    from featurestore.ingest import ingest
    from featurestore.store import Store
    from featurestore.synth.cohort import SynthConfig, synthesize
    from flows.train import grid_configs
    from heads.runs import plan_runs
    from heads.train import train

    root = keep or scratch_dir("int8")
    t0 = time.perf_counter()
    try:
        manifest = str(synthesize(root / "cohort", SynthConfig(n=n, seed=seed, min_side=256, max_side=384, split=(0.45, 0.2, 0.35)), False))
        store = Store.open(str(root / "store"), create=True)
        ingest(manifest, store, progress=False, log=lambda m: None)
        cfgs = [ExtractConfig(e, weights=w, dtype=d, progress=False, num_workers=0) for e, w in ENCODERS.items() for d in DTYPES]
        results = extract_many(manifest, store, cfgs)
        dtype_of = {r.feature_set_id: c.dtype for c, r in zip(cfgs, results)}
        encoder_of = {r.feature_set_id: c.encoder for c, r in zip(cfgs, results)}
        t_extract = time.perf_counter() - t0
        run_dtype = {}
        for fsid, dtype in dtype_of.items():
            # Runs a stopped run of this benchmark left in --keep are reused, as the study does.
            done, todo = plan_runs(store, fsid, grid_configs(TASKS, HEADS, None, TRAIN), manifest=manifest)
            run_dtype.update({rid: dtype for _, rid in done})
            for cfg in todo:
                run_dtype[train(store, fsid, cfg, manifest).run_id] = dtype
                print(f"trained {store.feature_set(fsid).spec.encoder} {dtype} {cfg.task} {cfg.head}", file=sys.stderr, flush=True)
        t_train = time.perf_counter() - t0 - t_extract
        ev = evaluate(store, list(run_dtype), EvalConfig(resamples=2000, seed=0))
        record, tables = read_evaluation(store, ev.eval_id)
        metrics = tables["metrics"].to_pylist()
        sizes = {}
        for fsid, dtype in dtype_of.items():
            fs = store.feature_set(fsid)
            sizes[(fs.spec.encoder, dtype)] = {
                "grids": fs.loc.du(layout.PATCHES_GROUP) / n,
                "cls": fs.loc.du(layout.CLS_DIR) / n,
                "grid": fs.spec.grid,
            }
        return {
            "rows": pair(metrics, encoder_of, dtype_of),
            "controls": [{**c, "dtype": run_dtype[c["run_id"]]} for c in record.controls],
            "sizes": sizes,
            "seconds": {"extract": t_extract, "train": t_train, "total": time.perf_counter() - t0},
            "n": n,
        }
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def pair(metrics: list[dict], encoder_of: dict[str, str], dtype_of: dict[str, str]) -> list[dict]:
    """One row per (encoder, task, head, metric): float16 value and CI beside the int8 value
    (the metrics name each feature set apart; ``encoder_of`` pairs them by encoder)."""
    by = {}
    for m in metrics:
        f = m["feature_set_id"]
        by[(encoder_of[f], m["task"], m["head"], m["metric"], dtype_of[f])] = m
    rows = []
    for (enc, task, head, metric, dtype), a in sorted(by.items()):
        if dtype != "float16" or (enc, task, head, metric, "int8") not in by:
            continue
        b = by[(enc, task, head, metric, "int8")]
        ok = a["status"] != "insufficient" and np.isfinite([a["value"], b["value"]]).all()
        delta = b["value"] - a["value"] if ok else float("nan")
        within = bool(ok and a["ci_low"] <= b["value"] <= a["ci_high"]) if np.isfinite([a["ci_low"], a["ci_high"]]).all() else None
        rows.append(
            {"encoder": enc, "task": task, "head": head, "metric": metric, "primary": a["primary"], "f16": a["value"],
             "lo": a["ci_low"], "hi": a["ci_high"], "int8": b["value"], "delta": delta, "within": within if ok else None}
        )  # fmt: skip
    return rows


def table(out: dict) -> str:
    """The markdown tables for the README: metrics, the positive control, bytes per image."""
    lines = [
        f"int8 vs float16 patch grids, {out['n']} synthetic images (split 0.45/0.2/0.35), demo tasks, heads and training",
        "",
        "| encoder | task | head | metric | float16 (95% CI) | int8 | delta | int8 within float16 CI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        f16 = f"{r['f16']:.3f} ({r['lo']:.3f}-{r['hi']:.3f})" if np.isfinite(r["f16"]) else "insufficient"
        i8 = f"{r['int8']:.3f}" if np.isfinite(r["int8"]) else "-"
        d = f"{r['delta']:+.4f}" if np.isfinite(r["delta"]) else "-"
        w = {True: "yes", False: "**no**", None: "-"}[r["within"]]
        name = f"**{r['metric']}**" if r["primary"] else r["metric"]
        lines.append(f"| {r['encoder']} | {r['task']} | {r['head']} | {name} | {f16} | {i8} | {d} | {w} |")
    judged = [r for r in out["rows"] if r["within"] is not None]
    lines += ["", f"within the float16 CI: {sum(r['within'] for r in judged)} of {len(judged)} metrics", ""]
    lines += ["positive control (planted):", "", "| task | head | metric | expected | float16 | int8 |", "|---|---|---|---|---|---|"]
    checks = {(c["task"], c["head"], c["metric"], c["dtype"]): c for c in out["controls"]}
    for (task, head, metric, dtype), c in sorted(checks.items()):
        if dtype == "float16" and (task, head, metric, "int8") in checks:
            b = checks[(task, head, metric, "int8")]
            got = [f"{x['value']:.3f} ({x['status']})" for x in (c, b)]
            lines.append(f"| {task} | {head} | {metric} | {c['expected']:.3f} | {got[0]} | {got[1]} |")
    lines += [
        "",
        "bytes per image as stored (grids: the patch array's objects; cls: the cls parts, with the int8 scales)",
        "",
        "| encoder | grid | dtype | grid bytes | cls bytes | grids + scales vs float32 grids |",
        "|---|---|---|---|---|---|",
    ]
    for (enc, dtype), s in sorted(out["sizes"].items()):
        c, h, w = s["grid"]
        extra = s["cls"] - out["sizes"][(enc, "float16")]["cls"]  # what the scales add to the cls part
        ratio = (s["grids"] + extra) / (c * h * w * 4)
        lines.append(f"| {enc} | {c}x{h}x{w} | {dtype} | {s['grids']:,.0f} | {s['cls']:,.0f} | {ratio:.3f} |")
    sec = out["seconds"]
    lines += ["", f"extract {sec['extract']:.0f} s, train {sec['train']:.0f} s, total {sec['total']:.0f} s"]
    return "\n".join(lines)


def main() -> None:
    """The command line: one run, its tables on stdout (for the README)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="synthetic images (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it (default: a temporary one)")
    a = p.parse_args()
    print(table(run(a.n, a.seed, a.keep)))


if __name__ == "__main__":
    main()
