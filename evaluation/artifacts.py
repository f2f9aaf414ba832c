"""Versioned metric artifacts: ``STORE/metrics/<eval_id>/``, immutable once written.

One evaluation version holds the tables of :data:`featurestore.layout.EVAL_TABLES` (metrics,
comparisons, per-image scores of mask kinds, summaries across folds) and its record,
``eval.json`` (:class:`featurestore.layout.records.EvaluationRecord`: every input version),
written last. :mod:`evaluation.compute` computes them, this module gathers the inputs and
versions the result, and the layout module writes and reads the files.

``eval_id`` is a hash of the inputs (run ids + their prediction files' sha256), the
configuration (resamples, seed, CI method, empty-mask convention) and the metric code's
version. Evaluating identical inputs again finds the same id and returns the existing
version untouched (and the numbers would be identical: the resamples come from the recorded
seed); any changed input gives a new id, so an old version is never rewritten. As for runs,
an evaluation exists when its ``eval.json`` exists; a crash before that leaves a directory
no reader lists.

What is computed, and how comparisons are paired and corrected: :mod:`evaluation.compute`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from evaluation import metrics as M
from evaluation.compute import RunData, compute, whole_split
from evaluation.config import EvalConfig
from evaluation.controls import check_controls
from evaluation.decisions import status_text
from featurestore import __version__
from featurestore.encoders.registry import display_name
from featurestore.errors import RadstoreError
from featurestore.layout import EVAL_TABLES, now_ms
from featurestore.layout.records import (
    EvaluationRecord,
    code_version,
    evaluation_exists,
    evaluation_path,
    list_evaluations,
    list_runs,
    open_masks,
    read_evaluation_record,
    read_evaluation_tables,
    read_hashed_predictions,
    read_run,
    write_evaluation,
)
from featurestore.store import Store
from featurestore.subsets import TrainSubset
from featurestore.tasks import get_kind

EVAL_VERSION = 3  # bump when a metric's definition changes: old and new numbers never share an id
TABLES = EVAL_TABLES


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` hands back: the version's id, its directory and its record, and whether
    this call wrote it or found it already there."""

    eval_id: str
    path: str
    created: bool  # False: identical inputs were evaluated before; the existing version was returned
    meta: dict[str, Any]


# -- inputs ------------------------------------------------------------------------------------


def load_run(store: Store, run_id: str, cfg: EvalConfig) -> RunData:
    """Read a run's predictions; for a mask kind, threshold its masks and score each image."""
    meta = read_run(store, run_id)
    every, sha = read_hashed_predictions(store, run_id)  # one read: parsed and hashed
    pred = every.filter(pc.equal(every.column("split"), "test"))
    ids = np.asarray(pred.column("image_id").to_pylist(), dtype=object)
    if len(ids) == 0:
        raise RadstoreError(f"run {run_id} has no test predictions; retrain it with a test split")
    kind = get_kind(meta.task_kind)
    threshold = None
    if kind.dense:
        rows = pred.column("mask_row").to_numpy()
        p, t = (a[:] for a in open_masks(store, run_id))
        prob = p[rows].astype(np.float32)
        if np.isnan(prob).any():
            bad = ids[np.isnan(prob).reshape(len(ids), -1).any(1)]
            raise RadstoreError(f"run {run_id}: predicted masks of {', '.join(bad[:5])} contain NaN (incomplete run?)")
        threshold = cfg.threshold if cfg.threshold is not None else float(meta.operating_points.get("threshold", 0.5))
        arrays = {**M.mask_arrays(t[rows], prob, threshold, cfg.empty_both), "mask_row": rows}
    else:
        arrays = {
            "y": pred.column("label").to_numpy().astype(np.float64),
            "prediction": pred.column(kind.prediction).to_numpy().astype(np.float64),
        }
        for name, a in arrays.items():
            if not np.isfinite(a).all():
                bad = ids[~np.isfinite(a)]
                col = kind.prediction if name == "prediction" else name
                raise RadstoreError(f"run {run_id}: {col} is NaN/Inf for {', '.join(bad[:5])}; the run is unusable")
    return RunData(meta, ids, arrays, sha, threshold, _validation(every, kind, run_id))


def _validation(every: pa.Table, kind: Any, run_id: str) -> dict[str, np.ndarray] | None:
    """The validation split's ``y`` and ``prediction`` of a global run (None where the run kept none:
    runs trained before radstore stored them, and mask kinds)."""
    if kind.dense:
        return None
    v = every.filter(pc.equal(every.column("split"), "val"))
    if v.num_rows == 0:
        return None
    out = {"y": v.column("label").to_numpy().astype(np.float64), "prediction": v.column(kind.prediction).to_numpy().astype(np.float64)}
    if not all(np.isfinite(a).all() for a in out.values()):
        raise RadstoreError(f"run {run_id}: validation predictions contain NaN/Inf; the run is unusable")
    return out


# -- selection ---------------------------------------------------------------------------------


def select_runs(store: Store, run_ids: Iterable[str] | None = None) -> list[str]:
    """The runs to evaluate: those given, or (None) the latest run of every
    (task, head, fold, feature set, training subset) in the store."""
    if run_ids is not None:
        ids = list(dict.fromkeys(run_ids))
        for rid in ids:
            read_run(store, rid)  # a clear error for a wrong id
        if not ids:
            raise RadstoreError("no runs given (use --runs RUN... or --all)")
        return ids
    latest: dict[tuple, Any] = {}
    for r in list_runs(store):
        k = (r.task, r.head, r.fold, r.feature_set_id, TrainSubset.of(r.config))  # each label-efficiency point too
        if k not in latest or r.created_at > latest[k].created_at:
            latest[k] = r
    if not latest:
        raise RadstoreError(f"no training runs in {store.url} (radstore train ...)")
    return sorted(r.run_id for r in latest.values())


def eval_id_for(runs: list[RunData], cfg: EvalConfig) -> str:
    """The id of evaluating these runs under ``cfg``: a hash of the metric code's version, the
    configuration and each run's id with its predictions' sha256, so equal inputs give equal ids."""
    ident = {"eval_version": EVAL_VERSION, "config": asdict(cfg), "runs": sorted([r.meta["run_id"], r.sha256] for r in runs)}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return f"eval-{digest}"


# -- evaluation --------------------------------------------------------------------------------


def evaluate(
    store: Store, run_ids: Iterable[str] | None = None, cfg: EvalConfig | None = None, progress: Callable[[str], None] | None = None
) -> Evaluation:
    """Evaluate runs (default: the latest of each kind) into a new immutable version, or
    return the existing version when these exact inputs were evaluated before."""
    cfg = cfg or EvalConfig()
    ids = select_runs(store, run_ids)
    runs = []
    for rid in ids:
        if progress:
            progress(f"reading {rid}")
        runs.append(load_run(store, rid, cfg))
    eval_id = eval_id_for(runs, cfg)
    if evaluation_exists(store, eval_id):
        return Evaluation(eval_id, evaluation_path(store, eval_id), False, read_evaluation_record(store, eval_id))
    created = now_ms()
    rows = compute(runs, cfg, eval_id, created, store.images())
    controls = check_controls(store, [r for r in runs if whole_split(r)], rows["metrics"], cfg)
    tables = {name: pa.Table.from_pylist(rows[name], schema=schema) for name, schema in TABLES.items()}
    fs_meta = {}
    known = set(store.feature_set_ids())
    for r in runs:
        f = r.meta["feature_set_id"]
        if f not in fs_meta:
            spec = store.feature_set(f).spec if f in known else None
            fs_meta[f] = (
                {"encoder": spec.encoder, "weights_fingerprint": spec.weights_fingerprint, "labels": dict(spec.labels)}
                if spec
                else {"missing": True}
            )
    rec = EvaluationRecord(
        eval_id=eval_id,
        created_at=created.isoformat(),
        eval_version=EVAL_VERSION,
        code_version=code_version(),
        radstore_version=__version__,
        store_format_version=store.meta.get("format_version"),
        config=asdict(cfg),
        runs=[
            {
                "run_id": r.meta["run_id"],
                "task": r.meta["task"],
                "task_kind": r.meta["task_kind"],
                "head": r.meta["head"],
                "encoder": r.meta["encoder"],
                "feature_set_id": r.meta["feature_set_id"],
                "fold": r.meta.get("fold"),
                "predictions_sha256": r.sha256,
                "run_code_version": r.meta.get("code_version"),
            }
            for r in runs
        ],
        feature_sets=fs_meta,
        counts={name: len(v) for name, v in rows.items()},
        controls=[c.to_json() for c in controls],
    )
    return Evaluation(eval_id, write_evaluation(store, rec, tables), True, rec)


# -- reading -----------------------------------------------------------------------------------


def latest_eval_id(store: Store) -> str:
    """The id of the most recently created evaluation; raises RadstoreError when the store has none."""
    evals = list_evaluations(store)
    if not evals:
        raise RadstoreError(f"no evaluation in {store.url} yet (radstore evaluate --store {store.url} --all)")
    return evals[-1].eval_id


def read_evaluation(store: Store, eval_id: str | None = None) -> tuple[EvaluationRecord, dict[str, pa.Table]]:
    """(eval.json record, {table name: table}) of one version (default: the latest)."""
    eval_id = eval_id or latest_eval_id(store)
    return read_evaluation_record(store, eval_id), read_evaluation_tables(store, eval_id)


def insufficient_text(m: dict) -> str:
    """Why a metric row has no number: too few of a class, with the counts that say how few."""
    return f"insufficient ({m['n_pos']} pos / {m['n_neg']} neg)"


def format_value(m: dict) -> str:
    """A metric row as people read it: value [CI], or why there is no number."""
    if m.get("status") == "insufficient":
        return insufficient_text(m)
    if m["value"] is None or np.isnan(m["value"]):
        return "n/a"
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def results_table(metrics: pa.Table, primary_only: bool = True) -> list[dict]:
    """Rows "encoder x head x task: value [low, high]" for printing (the study's table)."""
    rows = []
    for m in metrics.to_pylist():
        if primary_only and not m["primary"]:
            continue
        rows.append(
            {
                "task": m["task"],
                "head": m["head"],
                "encoder": display_name(m["encoder"]),
                "fold": "" if m["fold"] is None else m["fold"],
                "metric": m["metric"],
                "value [95% CI]": format_value(m),
                "n": m["n"],
                "pos/neg": "" if m.get("n_pos") is None else f"{m['n_pos']}/{m['n_neg']}",
            }
        )
    return sorted(rows, key=lambda r: (r["task"], r["head"], str(r["fold"]), r["encoder"]))


def decisions_table(tables: dict[str, pa.Table]) -> list[dict]:
    """One row per classification run: ECE raw and after Platt scaling, and the test sensitivity /
    specificity at the Youden threshold chosen on validation (or why there is none). Platt, not
    temperature: the heads train class-weighted, so an uninformative head scores 0.5 whatever
    the prevalence, a shift of the intercept that only Platt's refitted intercept removes."""
    cal: dict[tuple, dict[str, dict]] = {}
    for r in tables["calibration"].to_pylist():
        if r["metric"] == "ece":
            cal.setdefault((r["task"], r["head"], r["fold"], r["encoder"]), {})[r["scaling"]] = r
    ops: dict[tuple, dict[str, dict]] = {}
    for r in tables["operating_points"].to_pylist():
        if r["rule"] == "youden":
            ops.setdefault((r["task"], r["head"], r["fold"], r["encoder"]), {})[r["metric"]] = r

    def cell(r: dict | None) -> str:
        if r is None:
            return "-"
        return format_value(r) if r["status"] == "ok" else status_text(r["status"])

    rows = []
    for key in sorted(cal, key=lambda k: tuple(str(x) for x in k)):
        task, head, fold, enc = key
        o = ops.get(key, {})
        t = o.get("sensitivity", {}).get("threshold")
        rows.append({"task": task, "head": head, "encoder": display_name(enc), "fold": "" if fold is None else fold,
                     "ECE": cell(cal[key].get("none")), "ECE after Platt": cell(cal[key].get("platt")),
                     "Youden threshold": "-" if t is None or not np.isfinite(t) else f"{t:.3f}",
                     "sensitivity": cell(o.get("sensitivity")), "specificity": cell(o.get("specificity"))})  # fmt: skip
    return rows
