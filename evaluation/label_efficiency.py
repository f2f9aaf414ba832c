"""Label-efficiency curves: how each encoder's test metrics grow with the training labels, from
runs trained on nested, patient-level subsets of the training split (:mod:`featurestore.subsets`),
without I/O: the same inputs give the same rows.

A run's point on the curve is its recorded subset: (``fraction``, f) or (``shots``, k); a run
on the whole split is (``fraction``, 1). Runs are grouped by (task, head, fold) and, as in the
main table, every run of a group is scored on the test images they all share with the SAME
bootstrap resamples (stratified by class where the kind's metrics are class-based), so every
interval and comparison of the group is paired.

- ``label_efficiency_seeds``: each run's metrics with the interval the main table gives them.
- ``label_efficiency``: per encoder and size, the mean over subset seeds with the percentile
  interval of that mean over the test resamples (the test-set uncertainty of the curve at
  the subsets drawn), and the spread over seeds (sd, min, max: the uncertainty of which
  patients were labelled), with the training labels used.
- ``label_efficiency_comparisons``: per pair of encoders at each size, the paired bootstrap of
  the difference of their seed means (:func:`evaluation.compare.paired_bootstrap` on the
  group's resamples, over the seeds both have). It is paired twice over: the same test
  resamples, and the same training subsets (a seed draws the same patients for every encoder).
  Its p-value is about the test images at the subsets drawn; ``wins_a``/``wins_b`` count the
  seeds each encoder is better at, the spread a p-value does not show. Bonferroni and Holm are
  applied over the comparisons of one (task, head, fold, size, metric).

When a (regime, size, subset seed) of one encoder appears in several runs, the latest counts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np

from evaluation import metrics as M
from evaluation.bootstrap import resample_indices
from evaluation.compare import adjust, paired_bootstrap
from evaluation.compute import RunData, _aligned, _insufficient, _take, interval, primary_metric
from evaluation.config import EvalConfig
from featurestore.layout.schemas import LABEL_EFFICIENCY_TABLES
from featurestore.subsets import REGIMES, TrainSubset
from featurestore.tasks import get_kind

TEST = "paired-bootstrap-seed-mean"  # the comparisons' ``test``


@dataclass(frozen=True)
class Point:
    """Where a run sits on a curve: its regime, size and subset seed."""

    regime: str
    size: float
    seed: int

    @classmethod
    def of(cls, run: RunData) -> Point:
        """The run's point from its recorded training config (a whole-split run: fraction 1, seed 0)."""
        subset = TrainSubset.of(run.meta.get("config") or {})
        return WHOLE if subset is None else cls(subset.regime, subset.size, subset.seed)


WHOLE = Point(REGIMES[0], 1.0, 0)  # a whole-split run: the fraction curve's last point


@dataclass
class Scored:
    """One run on one metric: its value and interval, and the metric on each group resample."""

    run: RunData
    seed: int
    ci: Any  # evaluation.bootstrap.CI
    boot: np.ndarray  # [resamples]


def label_efficiency_rows(runs: list[RunData], cfg: EvalConfig, eval_id: str, created_at: datetime) -> dict[str, list[dict]]:
    """Every label-efficiency table as rows, by name (the keys of
    :data:`featurestore.layout.schemas.LABEL_EFFICIENCY_TABLES`). Only (task, head, fold) groups
    with at least one subset run give rows; their whole-split runs are the curve's last point."""
    out: dict[str, list[dict]] = {name: [] for name in LABEL_EFFICIENCY_TABLES}
    groups: dict[tuple, list[RunData]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    for key, group in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        if any(Point.of(r) != WHOLE for r in group):  # a group with subset runs draws curves
            _group_rows(out, key, _latest(group), cfg, eval_id, created_at)
    _correct(out["label_efficiency_comparisons"])
    return out


def _latest(group: list[RunData]) -> list[RunData]:
    """One run per (feature set, point): the latest recorded."""
    best: dict[tuple, RunData] = {}
    for r in sorted(group, key=lambda r: str(r.meta.get("created_at", ""))):
        best[(r.meta["feature_set_id"], Point.of(r))] = r
    return list(best.values())


def _encoder_names(group: list[RunData]) -> dict[str, str]:
    """feature set id -> the encoder's name, or the feature set id where one encoder has several."""
    encoders = {r.meta["feature_set_id"]: r.meta["encoder"] for r in group}
    names = list(encoders.values())
    return {f: f if names.count(e) > 1 else e for f, e in encoders.items()}


@dataclass
class Group:
    """One (task, head, fold): its runs, each one's positions of the test images they all share,
    the class counts of those images and the resamples every run of the group is scored on."""

    key: tuple
    runs: list[RunData]
    positions: list[np.ndarray]
    counts: tuple[int | None, int | None]
    strata: np.ndarray | None
    idx: np.ndarray

    @classmethod
    def of(cls, key: tuple, runs: list[RunData], cfg: EvalConfig) -> Group | None:
        """The group's shared images and resamples, stratified as the main table's; None when
        its runs share no test image."""
        spec = get_kind(runs[0].meta["task_kind"])
        ids, positions = _aligned(runs)
        if len(ids) == 0:
            return None
        (classes,) = _take(runs[0], positions[0], ("nonempty" if spec.dense else "y",))
        counts = M.class_counts(classes) or (None, None)
        stratify = (spec.dense or any(M.get_metric(m).class_based for m in spec.metrics)) and counts[0] is not None
        strata = classes if stratify else None
        return cls(key, runs, positions, counts, strata, resample_indices(len(ids), cfg.resamples, cfg.seed, strata=strata))

    def by_size(self) -> dict[tuple[str, float], dict[str, list[tuple[int, RunData, np.ndarray]]]]:
        """(regime, size) -> feature set id -> its (subset seed, run, positions), by seed."""
        out: dict[tuple[str, float], dict[str, list]] = {}
        for r, pos in zip(self.runs, self.positions):
            p = Point.of(r)
            out.setdefault((p.regime, p.size), {}).setdefault(r.meta["feature_set_id"], []).append((p.seed, r, pos))
        for encoders in out.values():
            for members in encoders.values():
                members.sort(key=lambda t: t[0])
        return dict(sorted(out.items()))


def _group_rows(out: dict[str, list[dict]], key: tuple, runs: list[RunData], cfg: EvalConfig, eval_id: str,
                created_at: datetime) -> None:  # fmt: skip
    g = Group.of(key, runs, cfg)
    if g is None:
        return
    kind = runs[0].meta["task_kind"]
    spec = get_kind(kind)
    names = _encoder_names(runs)
    task, head, fold = key
    for (regime, size), encoders in g.by_size().items():
        point = {"eval_id": eval_id, "task": task, "head": head, "fold": fold, "regime": regime, "size": size}
        for metric in spec.metrics:
            m = M.get_metric(metric)
            short = _insufficient(m, g.counts, cfg)
            scored = {}
            for fsid in sorted(encoders, key=lambda f: (names[f], f)):
                scored[fsid] = [_score(m, r, pos, seed, cfg, g.idx) for seed, r, pos in encoders[fsid]]
                cols = {**point, "created_at": created_at, "task_kind": kind, "encoder": names[fsid], "feature_set_id": fsid,
                        "metric": metric, "primary": metric == primary_metric(spec, cfg)}  # fmt: skip
                out["label_efficiency_seeds"] += [_seed_row(cols, s, g.counts, short) for s in scored[fsid]]
                out["label_efficiency"].append(_summary_row(cols, scored[fsid], g.counts, short, cfg, g.idx))
            if short:
                continue  # too few of a class to compare anything
            for a, b in itertools.combinations(scored, 2):
                row = _compare(m, scored[a], scored[b], g, cfg)
                if row is not None:
                    pair = {"encoder_a": names[a], "encoder_b": names[b], "feature_set_a": a, "feature_set_b": b}
                    out["label_efficiency_comparisons"].append({**point, "metric": metric, **pair, "n": g.idx.shape[1], **row})


def _score(m: M.Metric, r: RunData, pos: np.ndarray, seed: int, cfg: EvalConfig, idx: np.ndarray) -> Scored:
    """The run's interval as the main table computes it, and its metric on each group resample
    (computed once: the interval's bootstrap reuses it)."""
    arrays = _take(r, pos, m.inputs)
    boot = np.asarray(m.fn(*arrays, idx), np.float64)

    def fn(*args: np.ndarray) -> np.ndarray:
        return boot if args[-1] is idx else m.fn(*args)

    return Scored(r, seed, interval(replace(m, fn=fn), arrays, cfg, idx), boot)


def _labels_used(r: RunData) -> tuple[int | None, int | None, int | None]:
    """(training images, their positives, the whole training split) the run recorded; None where it did not."""
    splits = r.meta.get("splits") or {}
    return splits.get("train"), splits.get("train_positives"), splits.get("train_pool")


def _seed_row(cols: dict, s: Scored, counts: tuple, short: bool) -> dict:
    images, positives, pool = _labels_used(s.run)
    return {
        **cols,
        "run_id": s.run.meta["run_id"],
        "subset_seed": s.seed,
        "value": np.nan if short else s.ci.value,
        "ci_low": np.nan if short else s.ci.low,
        "ci_high": np.nan if short else s.ci.high,
        "method": s.ci.method,
        "confidence": s.ci.confidence,
        "n": s.ci.n,
        "resamples": s.ci.resamples,
        "seed": s.ci.seed,
        "n_pos": counts[0],
        "n_neg": counts[1],
        "status": "insufficient" if short else "ok",
        "train_images": images,
        "train_positives": positives,
        "train_pool": pool,
    }


def _mean_or_none(values: list[int | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def _summary_row(cols: dict, seeds: list[Scored], counts: tuple, short: bool, cfg: EvalConfig, idx: np.ndarray) -> dict:
    values = np.array([s.ci.value for s in seeds])
    boot = SeedMean.of(seeds, idx).boot
    boot = boot[np.isfinite(boot)]
    alpha = (1 - cfg.confidence) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha]) if len(boot) else (np.nan, np.nan)
    used = [_labels_used(s.run) for s in seeds]
    ok = not short
    return {
        **cols,
        "seeds": len(seeds),
        "value": float(values.mean()) if ok else np.nan,
        "ci_low": float(low) if ok else np.nan,
        "ci_high": float(high) if ok else np.nan,
        "seed_sd": float(values.std(ddof=1)) if ok and len(values) > 1 else np.nan,
        "seed_min": float(values.min()) if ok else np.nan,
        "seed_max": float(values.max()) if ok else np.nan,
        "train_images": _mean_or_none([u[0] for u in used]),
        "train_positives": _mean_or_none([u[1] for u in used]),
        "confidence": cfg.confidence,
        "n": seeds[0].ci.n,
        "resamples": cfg.resamples,
        "seed": cfg.seed,
        "n_pos": counts[0],
        "n_neg": counts[1],
        "status": "insufficient" if short else "ok",
    }


@dataclass(frozen=True)
class SeedMean:
    """An encoder's mean over subset seeds, known on all test images (``value``) and on the
    group's resamples ``idx`` (``boot``, from each run's resampled values, computed once)."""

    value: float
    boot: np.ndarray
    idx: np.ndarray

    @classmethod
    def of(cls, seeds: list[Scored], idx: np.ndarray) -> SeedMean:
        """The mean of ``seeds``, scored on ``idx``."""
        return cls(float(np.mean([s.ci.value for s in seeds])), np.mean([s.boot for s in seeds], axis=0), idx)


def seed_mean_metric(positions: np.ndarray, mean: SeedMean, at: np.ndarray) -> np.ndarray:
    """A seed mean as a metric :func:`paired_bootstrap` takes (``arrays`` = (test positions, the
    SeedMean)): its value on all images, or its resampled values on the group's resamples."""
    if at is mean.idx:
        return mean.boot
    if at.shape == (1, len(positions)) and np.array_equal(at[0], np.arange(len(positions))):
        return np.array([mean.value])
    raise ValueError("a seed mean is known on all images and on the group's resamples only")


def _compare(m: M.Metric, a: list[Scored], b: list[Scored], g: Group, cfg: EvalConfig) -> dict | None:
    """The paired comparison of two encoders' seed means over the seeds both have; None when they share none."""
    shared = sorted({s.seed for s in a} & {s.seed for s in b})
    if not shared:
        return None
    a = [s for s in a if s.seed in shared]
    b = [s for s in b if s.seed in shared]
    positions = np.arange(g.idx.shape[1])
    d = paired_bootstrap(seed_mean_metric, (positions, SeedMean.of(a, g.idx)), (positions, SeedMean.of(b, g.idx)),
                         resamples=cfg.resamples, seed=cfg.seed, confidence=cfg.confidence, idx=g.idx, strata=g.strata)  # fmt: skip
    better = (np.array([s.ci.value for s in a]) - np.array([s.ci.value for s in b])) * (1.0 if m.higher_is_better else -1.0)
    return {
        "test": TEST,
        "seeds": len(shared),
        **d.row(),
        "wins_a": int(np.sum(better > 0)),
        "wins_b": int(np.sum(better < 0)),
    }


def _correct(rows: list[dict]) -> None:
    """Bonferroni and Holm over each family: the encoder pairs of one (task, head, fold, regime,
    size, metric); undefined p-values are left out of the family."""
    fam: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        r.update(p_bonferroni=np.nan, p_holm=np.nan, family_size=0)
        fam.setdefault(tuple(r[k] for k in ("task", "head", "fold", "regime", "size", "metric")), []).append(i)
    for members in fam.values():
        members = [i for i in members if np.isfinite(rows[i]["p"])]
        if not members:
            continue
        p = np.array([rows[i]["p"] for i in members])
        bonf, holm = adjust(p, "bonferroni"), adjust(p, "holm")
        for k, i in enumerate(members):
            rows[i].update(p_bonferroni=float(bonf[k]), p_holm=float(holm[k]), family_size=len(members))
