"""Versioned metric artifacts: ``STORE/metrics/<eval_id>/``, immutable once written.

One evaluation version holds the tables of :data:`featurestore.layout.EVAL_TABLES` (metrics,
comparisons, per-image scores of mask kinds, summaries across folds) and its record,
``eval.json`` (:class:`featurestore.layout.records.EvaluationRecord`: every input version),
written last. This module computes them; the layout module writes and reads them.

``eval_id`` is a hash of the inputs (run ids + their prediction files' sha256), the
configuration (resamples, seed, CI method, empty-mask convention) and the metric code's
version. Evaluating identical inputs again finds the same id and returns the existing
version untouched (and the numbers would be identical: the resamples come from the recorded
seed); any changed input gives a new id, so an old version is never rewritten. As for runs,
an evaluation exists when its ``eval.json`` exists; a crash before that leaves a directory
no reader lists.

Comparisons. Runs are grouped by (task, head, fold); within a group every pair of feature
sets is compared on the test images they share, with the SAME bootstrap indices for both
(paired bootstrap of the difference: CI and two-sided p), and DeLong's test for AUROC.
The family for Bonferroni and Holm is every comparison of one evaluation with the same test
and metric (e.g. all paired-bootstrap AUROC differences) whose p-value is defined (a metric
undefined on every resample, e.g. AUROC on a one-class test set, gives p = NaN and is left
out), reported beside the raw p-values.
Across folds (runs trained with ``--fold``), each encoder's fold values give a median and a
t-interval of the mean, and with three or more encoders Friedman's test with Nemenyi's
post-hoc p-values (``test = "nemenyi"`` rows of comparisons.parquet).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import stats

from evaluation import metrics as M
from evaluation.bootstrap import bootstrap_ci, resample_indices
from evaluation.compare import adjust, delong, friedman_nemenyi, paired_bootstrap
from evaluation.config import EvalConfig
from featurestore import __version__
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
    read_run,
    read_test_predictions,
    write_evaluation,
)
from featurestore.store import Store
from featurestore.tasks import get_kind

EVAL_VERSION = 1  # bump when a metric's definition changes: old and new numbers never share an id
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


@dataclass
class RunData:
    """One run's test-set predictions, as arrays the metrics take (image order = predictions)."""

    meta: dict[str, Any]
    image_ids: np.ndarray
    arrays: dict[str, np.ndarray]  # global kinds: y, prediction; mask kinds: dice, iou and pixel counts
    sha256: str

    @property
    def key(self) -> tuple:
        """The group a run is compared within: (task, head, fold)."""
        return (self.meta["task"], self.meta["head"], self.meta.get("fold"))


def load_run(store: Store, run_id: str, cfg: EvalConfig) -> RunData:
    """Read a run's predictions; for a mask kind, threshold its masks and score each image."""
    meta = read_run(store, run_id)
    pred, sha = read_test_predictions(store, run_id)  # one read: parsed and hashed
    ids = np.asarray(pred.column("image_id").to_pylist(), dtype=object)
    if len(ids) == 0:
        raise RadstoreError(f"run {run_id} has no test predictions; retrain it with a test split")
    kind = get_kind(meta.task_kind)
    if kind.dense:
        rows = pred.column("mask_row").to_numpy()
        p, t = (a[:] for a in open_masks(store, run_id))
        prob = p[rows].astype(np.float32)
        if np.isnan(prob).any():
            bad = ids[np.isnan(prob).reshape(len(ids), -1).any(1)]
            raise RadstoreError(f"run {run_id}: predicted masks of {', '.join(bad[:5])} contain NaN (incomplete run?)")
        pm, tm = prob > cfg.threshold, t[rows] > 0
        dice, iou = M.per_image_overlap(tm, pm, cfg.empty_both)
        arrays = {
            "dice": dice,
            "iou": iou,
            "mask_row": rows,
            "true_pixels": tm.reshape(len(ids), -1).sum(1),
            "predicted_pixels": pm.reshape(len(ids), -1).sum(1),
        }
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
    return RunData(meta, ids, arrays, sha)


def _aligned(runs: list[RunData]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The test images every run of a group shares, and each run's positions of them."""
    common = set(runs[0].image_ids)
    for r in runs[1:]:
        common &= set(r.image_ids)
    ids = np.array(sorted(common), dtype=object)
    return ids, [np.searchsorted(r.image_ids[np.argsort(r.image_ids)], ids) for r in runs]


def _take(r: RunData, pos: np.ndarray, names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    order = np.argsort(r.image_ids)
    return tuple(r.arrays[n][order][pos] for n in names)


# -- selection ---------------------------------------------------------------------------------


def select_runs(store: Store, run_ids: Iterable[str] | None = None) -> list[str]:
    """The runs to evaluate: those given, or (None) the latest run of every
    (task, head, fold, feature set) in the store."""
    if run_ids is not None:
        ids = list(dict.fromkeys(run_ids))
        for rid in ids:
            read_run(store, rid)  # a clear error for a wrong id
        if not ids:
            raise RadstoreError("no runs given (use --runs RUN... or --all)")
        return ids
    latest: dict[tuple, Any] = {}
    for r in list_runs(store):
        k = (r.task, r.head, r.fold, r.feature_set_id)
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


def _labels(group: list[RunData]) -> list[str]:
    """Encoder names, or feature set ids where one encoder has several feature sets in a group."""
    names = [r.meta["encoder"] for r in group]
    return [r.meta["feature_set_id"] if names.count(n) > 1 else n for r, n in zip(group, names)]


def compute(runs: list[RunData], cfg: EvalConfig, eval_id: str, created_at: datetime) -> dict[str, list[dict]]:
    """Every table of an evaluation, as rows (no I/O: the same inputs give the same rows)."""
    out: dict[str, list[dict]] = {name: [] for name in TABLES}
    groups: dict[tuple, list[RunData]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    for (task, head, fold), group in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        group.sort(key=lambda r: (r.meta["encoder"], r.meta["feature_set_id"]))
        kind = group[0].meta["task_kind"]
        spec = get_kind(kind)
        labels = _labels(group)
        ids, positions = _aligned(group)
        if len(ids) == 0:
            raise RadstoreError(f"{task}/{head}: the runs {', '.join(r.meta['run_id'] for r in group)} share no test image")
        idx = resample_indices(len(ids), cfg.resamples, cfg.seed)  # the same resamples for every encoder: paired
        base = {"task": task, "head": head, "fold": fold}
        for r, label, pos in zip(group, labels, positions):
            for j, metric in enumerate(spec.metrics):
                m = M.get_metric(metric)
                ci = bootstrap_ci(
                    m.fn,
                    _take(r, pos, m.inputs),
                    resamples=cfg.resamples,
                    seed=cfg.seed,
                    method=cfg.method,
                    confidence=cfg.confidence,
                    idx=idx,
                )
                out["metrics"].append(
                    {
                        **base,
                        "eval_id": eval_id,
                        "created_at": created_at,
                        "task_kind": kind,
                        "encoder": label,
                        "feature_set_id": r.meta["feature_set_id"],
                        "run_id": r.meta["run_id"],
                        "metric": metric,
                        "primary": j == 0,
                        "value": ci.value,
                        "ci_low": ci.low,
                        "ci_high": ci.high,
                        "method": ci.method,
                        "confidence": ci.confidence,
                        "n": ci.n,
                        "resamples": ci.resamples,
                        "seed": ci.seed,
                    }
                )
            if spec.dense:
                a = r.arrays
                for i, image_id in enumerate(r.image_ids):
                    out["per_image"].append(
                        {
                            **base,
                            "eval_id": eval_id,
                            "run_id": r.meta["run_id"],
                            "encoder": label,
                            "feature_set_id": r.meta["feature_set_id"],
                            "image_id": image_id,
                            "mask_row": int(a["mask_row"][i]),
                            "dice": float(a["dice"][i]),
                            "iou": float(a["iou"][i]),
                            "true_pixels": int(a["true_pixels"][i]),
                            "predicted_pixels": int(a["predicted_pixels"][i]),
                        }
                    )
        for (ra, la, pa_), (rb, lb, pb) in itertools.combinations(zip(group, labels, positions), 2):
            pair = {
                **base,
                "eval_id": eval_id,
                "encoder_a": la,
                "encoder_b": lb,
                "feature_set_a": ra.meta["feature_set_id"],
                "feature_set_b": rb.meta["feature_set_id"],
                "run_a": ra.meta["run_id"],
                "run_b": rb.meta["run_id"],
                "n": len(ids),
            }
            for metric in spec.metrics:
                m = M.get_metric(metric)
                d = paired_bootstrap(
                    m.fn,
                    _take(ra, pa_, m.inputs),
                    _take(rb, pb, m.inputs),
                    resamples=cfg.resamples,
                    seed=cfg.seed,
                    confidence=cfg.confidence,
                    idx=idx,
                )
                out["comparisons"].append(
                    {
                        **pair,
                        "metric": metric,
                        "test": "paired-bootstrap",
                        "value_a": d.a,
                        "value_b": d.b,
                        "diff": d.diff,
                        "ci_low": d.low,
                        "ci_high": d.high,
                        "p": d.p,
                    }
                )
            if "auroc" in spec.metrics and not spec.dense:  # DeLong's test of two correlated AUROCs
                (ya, sa), (_, sb) = _take(ra, pa_, M.GLOBAL_INPUTS), _take(rb, pb, M.GLOBAL_INPUTS)
                if 2 <= ya.sum() <= len(ya) - 2:  # DeLong's variance needs two of each class
                    dl = delong(ya, sa, sb)
                    out["comparisons"].append(
                        {
                            **pair,
                            "metric": "auroc",
                            "test": "delong",
                            "value_a": dl["auc_a"],
                            "value_b": dl["auc_b"],
                            "diff": dl["auc_a"] - dl["auc_b"],
                            "ci_low": np.nan,
                            "ci_high": np.nan,
                            "p": dl["p"],
                        }
                    )
    _fold_summaries(out, eval_id)
    _correct(out["comparisons"])
    return out


def _fold_summaries(out: dict[str, list[dict]], eval_id: str) -> None:
    """Across folds: median and t-interval per encoder; Friedman + Nemenyi with >= 3 encoders."""
    by: dict[tuple, dict[str, dict[int, float]]] = {}
    fsid: dict[str, str] = {}
    for m in out["metrics"]:
        if m["fold"] is None:
            continue
        by.setdefault((m["task"], m["head"], m["metric"]), {}).setdefault(m["encoder"], {})[m["fold"]] = m["value"]
        fsid[m["encoder"]] = m["feature_set_id"]
    for (task, head, metric), enc in sorted(by.items()):
        folds = sorted(set.intersection(*(set(v) for v in enc.values())))
        if len(folds) < 2:
            continue
        names = sorted(enc)
        table = np.array([[enc[e][f] for e in names] for f in folds])  # [folds, encoders]
        fr = None
        if len(names) >= 3 and np.isfinite(table).all():
            fr = friedman_nemenyi(table, higher_is_better=M.get_metric(metric).higher_is_better)
        for j, e in enumerate(names):
            v = table[:, j]
            half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
            out["folds"].append(
                {
                    "eval_id": eval_id,
                    "task": task,
                    "head": head,
                    "metric": metric,
                    "encoder": e,
                    "feature_set_id": fsid[e],
                    "folds": len(v),
                    "median": float(np.median(v)),
                    "mean": float(v.mean()),
                    "ci_low": float(v.mean() - half),
                    "ci_high": float(v.mean() + half),
                    "mean_rank": float(fr["mean_rank"][j]) if fr else np.nan,
                    "friedman_statistic": fr["statistic"] if fr else np.nan,
                    "friedman_p": fr["p"] if fr else np.nan,
                }
            )
        if fr:
            for i, j in itertools.combinations(range(len(names)), 2):
                out["comparisons"].append(
                    {
                        "eval_id": eval_id,
                        "task": task,
                        "head": head,
                        "fold": None,
                        "metric": metric,
                        "test": "nemenyi",
                        "encoder_a": names[i],
                        "encoder_b": names[j],
                        "feature_set_a": fsid[names[i]],
                        "feature_set_b": fsid[names[j]],
                        "run_a": None,
                        "run_b": None,
                        "value_a": float(np.median(table[:, i])),
                        "value_b": float(np.median(table[:, j])),
                        "diff": float(fr["mean_rank"][i] - fr["mean_rank"][j]),
                        "ci_low": np.nan,
                        "ci_high": np.nan,
                        "p": float(fr["nemenyi_p"][i, j]),
                        "n": len(folds),
                    }
                )


def _correct(rows: list[dict]) -> None:
    """Bonferroni and Holm over each family: the comparisons sharing a test and a metric."""
    fam: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        r.update(p_bonferroni=np.nan, p_holm=np.nan, family_size=0)
        fam.setdefault((r["test"], r["metric"]), []).append(i)
    for members in fam.values():
        members = [i for i in members if np.isfinite(rows[i]["p"])]  # undefined tests are not in the family
        if not members:
            continue
        p = np.array([rows[i]["p"] for i in members])
        if rows[members[0]]["test"] == "nemenyi":  # Nemenyi's p-values are already family-wise
            bonf = holm = p
        else:
            bonf, holm = adjust(p, "bonferroni"), adjust(p, "holm")
        for k, i in enumerate(members):
            rows[i].update(p_bonferroni=float(bonf[k]), p_holm=float(holm[k]), family_size=len(members))


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
    rows = compute(runs, cfg, eval_id, created)
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
                "encoder": m["encoder"],
                "fold": "" if m["fold"] is None else m["fold"],
                "metric": m["metric"],
                "value [95% CI]": f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]",
                "n": m["n"],
            }
        )
    return sorted(rows, key=lambda r: (r["task"], r["head"], str(r["fold"]), r["encoder"]))
