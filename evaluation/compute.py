"""Every table of an evaluation from runs' predictions, without I/O: the same inputs give the
same rows (the resamples come from the configured seed).

Runs are grouped by (task, head, fold); within a group every pair of feature sets is compared
on the test images they share with the SAME bootstrap indices (paired bootstrap of the
difference), plus DeLong's test where the kind's metrics include AUROC. Across folds each
encoder's fold values give a median and a t-interval, and with three or more encoders
Friedman's test with Nemenyi's post-hoc p-values. Bonferroni and Holm are applied per family
of comparisons sharing a test and a metric, undefined p-values left out of the family.
Classification runs also get their calibration and operating points (:mod:`evaluation.decisions`)
from the same test resamples.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from scipy import stats

from evaluation import metrics as M
from evaluation.bootstrap import bootstrap_ci, resample_indices
from evaluation.compare import adjust, delong, delong_ci, friedman_nemenyi, paired_bootstrap
from evaluation.config import EvalConfig
from evaluation.decisions import decision_rows
from featurestore.errors import RadstoreError
from featurestore.layout import EVAL_TABLES
from featurestore.subsets import TrainSubset
from featurestore.tasks import get_kind


@dataclass
class RunData:
    """One run's test-set predictions, as arrays the metrics take (image order = predictions)."""

    meta: dict[str, Any]
    image_ids: np.ndarray
    arrays: dict[str, np.ndarray]  # global kinds: y, prediction; mask kinds: evaluation.metrics.PER_IMAGE
    sha256: str
    threshold: float | None = None  # mask kinds: the probability threshold the masks were cut at
    val: dict[str, np.ndarray] | None = None  # global kinds: the validation split's y and prediction

    @property
    def key(self) -> tuple:
        """The group a run is compared within: (task, head, fold)."""
        return (self.meta["task"], self.meta["head"], self.meta.get("fold"))


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


def interval(m: M.Metric, arrays: tuple, cfg: EvalConfig, idx: np.ndarray) -> Any:
    """The metric with its interval by the configured method. ``auto`` (the default) takes the
    method that covers in simulation (tests/evaluation/test_coverage.py, README): the
    logit-transformed DeLong interval for AUROC, BCa over the (stratified) resamples otherwise."""
    method = cfg.method
    if method == "auto":
        if m.name == "auroc" and m.inputs == M.GLOBAL_INPUTS:
            return delong_ci(arrays[0], arrays[1], cfg.confidence)
        method = "bca"
    return bootstrap_ci(m.fn, arrays, resamples=cfg.resamples, seed=cfg.seed, method=method, confidence=cfg.confidence, idx=idx)


def primary_metric(spec: Any, cfg: EvalConfig) -> str:
    """The headline metric of a kind: the kind's first, unless the configuration names another."""
    return cfg.primary.get(spec.name, spec.metrics[0])


def _insufficient(m: M.Metric, counts: tuple[int | None, int | None], cfg: EvalConfig) -> bool:
    """A class-based metric on fewer than ``cfg.min_class_count`` of either class says nothing
    reliable: no number, no interval, no comparison."""
    pos, neg = counts
    return m.class_based and (pos is None or min(pos, neg) < cfg.min_class_count)


def _decides(spec: Any) -> bool:
    """Whether a kind's scores are probabilities of a class (calibration and operating points apply)."""
    return not spec.dense and any(M.get_metric(m).class_based for m in spec.metrics)


def _labels(group: list[RunData]) -> list[str]:
    """Encoder names, or feature set ids where one encoder has several feature sets in a group."""
    names = [r.meta["encoder"] for r in group]
    return [r.meta["feature_set_id"] if names.count(n) > 1 else n for r, n in zip(group, names)]


def whole_split(r: RunData) -> bool:
    """Whether a run trained on its whole training split (the main table's runs); runs on
    subsets of it are label-efficiency points (:mod:`evaluation.label_efficiency`)."""
    return TrainSubset.of(r.meta.get("config") or {}) is None


def compute(runs: list[RunData], cfg: EvalConfig, eval_id: str, created_at: datetime, attributes: Any = None) -> dict[str, list[dict]]:
    """Every table of an evaluation, as rows (no I/O: the same inputs give the same rows).
    ``attributes``: the image index (or image_id -> {column: value}) the subgroups are read
    from; None: no subgroup rows."""
    from evaluation.label_efficiency import label_efficiency_rows  # these build on this module's helpers
    from evaluation.subgroups import subgroup_rows

    out: dict[str, list[dict]] = {name: [] for name in EVAL_TABLES}
    groups: dict[tuple, list[RunData]] = {}
    for r in runs:
        if whole_split(r):
            groups.setdefault(r.key, []).append(r)
    for (task, head, fold), group in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        group.sort(key=lambda r: (r.meta["encoder"], r.meta["feature_set_id"]))
        kind = group[0].meta["task_kind"]
        spec = get_kind(kind)
        labels = _labels(group)
        ids, positions = _aligned(group)
        if len(ids) == 0:
            raise RadstoreError(f"{task}/{head}: the runs {', '.join(r.meta['run_id'] for r in group)} share no test image")
        # Classes: the labels of a classification-like kind, "has a true mask" for a mask kind.
        (classes,) = _take(group[0], positions[0], ("nonempty" if spec.dense else "y",))
        counts = M.class_counts(classes) or (None, None)
        # Class-based and mask metrics resample within each class (no one-class resamples, a
        # constant number of empty and non-empty masks); the same resamples for every encoder of
        # the group make the comparisons paired.
        stratify = (spec.dense or any(M.get_metric(m).class_based for m in spec.metrics)) and counts[0] is not None
        strata = classes if stratify else None
        idx = resample_indices(len(ids), cfg.resamples, cfg.seed, strata=strata)
        base = {"task": task, "head": head, "fold": fold}
        headline = primary_metric(spec, cfg)
        for r, label, pos in zip(group, labels, positions):
            for metric in spec.metrics:
                m = M.get_metric(metric)
                ci = interval(m, _take(r, pos, m.inputs), cfg, idx)
                short = _insufficient(m, counts, cfg)
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
                        "primary": metric == headline,
                        "value": np.nan if short else ci.value,
                        "ci_low": np.nan if short else ci.low,
                        "ci_high": np.nan if short else ci.high,
                        "method": ci.method,
                        "confidence": ci.confidence,
                        "n": ci.n,
                        "resamples": ci.resamples,
                        "seed": ci.seed,
                        "n_pos": counts[0],
                        "n_neg": counts[1],
                        "status": "insufficient" if short else "ok",
                        "threshold": r.threshold,
                    }
                )
            if _decides(spec):
                y, score = _take(r, pos, M.GLOBAL_INPUTS)
                run_cols = {**base, "eval_id": eval_id, "created_at": created_at, "encoder": label,
                            "feature_set_id": r.meta["feature_set_id"], "run_id": r.meta["run_id"]}  # fmt: skip
                for name, rows in decision_rows(y, score, r.val, run_cols, cfg, idx).items():
                    out[name] += rows
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
                if _insufficient(m, counts, cfg):
                    continue  # too few of a class to compare anything
                d = paired_bootstrap(
                    m.fn,
                    _take(ra, pa_, m.inputs),
                    _take(rb, pb, m.inputs),
                    resamples=cfg.resamples,
                    seed=cfg.seed,
                    confidence=cfg.confidence,
                    idx=idx,
                    strata=strata,
                )
                out["comparisons"].append(
                    {
                        **pair,
                        "metric": metric,
                        "test": "paired-bootstrap",
                        **d.row(),
                    }
                )
            if "auroc" in spec.metrics and not spec.dense and not _insufficient(M.get_metric("auroc"), counts, cfg):
                # DeLong's test of two correlated AUROCs
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
    out.update(label_efficiency_rows(runs, cfg, eval_id, created_at))
    if attributes is not None and cfg.subgroups:
        main = [r for r in runs if whole_split(r)]
        out["subgroups"] = subgroup_rows(main, attributes, cfg.subgroups, cfg, eval_id, created_at, min_images=cfg.min_subgroup_images)
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
