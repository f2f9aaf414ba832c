"""A classification run's scores as decisions: calibration and operating points, as table rows.

For each classification run of an evaluation: the Brier score and ECE of its test scores, raw
and after each recalibration fitted on its validation split (:mod:`evaluation.calibration`),
with bootstrap intervals from the evaluation's own test resamples; the reliability diagram's
bins; and, at each threshold rule chosen on validation (:mod:`evaluation.thresholds`), the
test sensitivity, specificity, PPV and NPV with intervals. A run without validation predictions
(trained before runs kept them) or with fewer than ``min_class_count`` of a validation class
gets rows with a status and no numbers where validation is needed: the raw calibration needs
none.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evaluation.bootstrap import bootstrap_ci
from evaluation.calibration import brier, ece, fit_scaling, reliability, squared_ce_debiased
from evaluation.config import EvalConfig
from evaluation.thresholds import RATES, RULES, choose, rate, rule_name

CALIBRATION_METRICS = ("brier", "ece", "sce_debiased")
#: The interval each calibration metric gets under ``method: auto`` (evaluation.calibration says
#: why): BCa for the Brier score (a mean), the reflected bootstrap for the upward-biased ECE, the
#: percentile interval for the unbiased squared error.
AUTO_METHOD = {"brier": "bca", "ece": "basic", "sce_debiased": "percentile"}


def _calibration_fn(metric: str, bins: int):
    if metric == "brier":
        return brier
    f = ece if metric == "ece" else squared_ce_debiased
    return lambda y, p, idx: f(y, p, idx, bins)


def _ci(fn, arrays: tuple, cfg: EvalConfig, idx: np.ndarray, auto: str = "bca") -> dict[str, Any]:
    method = auto if cfg.method == "auto" else cfg.method
    ci = bootstrap_ci(fn, arrays, resamples=cfg.resamples, seed=cfg.seed, method="percentile" if method == "basic" else method,
                      confidence=cfg.confidence, idx=idx)  # fmt: skip
    low, high = ci.low, ci.high
    if method == "basic":  # reflected about the estimate; a calibration error is never below 0
        low, high = max(0.0, 2 * ci.value - ci.high), max(0.0, 2 * ci.value - ci.low)
    return {"value": ci.value, "ci_low": low, "ci_high": high, "method": method, "n": ci.n}


def _empty(n: int) -> dict[str, Any]:
    return {"value": np.nan, "ci_low": np.nan, "ci_high": np.nan, "method": None, "n": n}


def status_text(status: str | None, min_class_count: Any = None) -> str:
    """Why a calibration or operating-point row has no number, for people."""
    if status == "no-validation":
        return "no validation predictions (retrain)"
    if status == "insufficient":
        if min_class_count == 1:  # fewer than one: a class is missing altogether
            return "validation split holds one class only"
        least = f" (< {min_class_count} of a class)" if min_class_count is not None else ""
        return f"too few validation positives or negatives{least}"
    if status == "no-threshold":
        return "no threshold found on validation"
    return str(status)


def validation_status(val: dict[str, np.ndarray] | None, cfg: EvalConfig) -> str:
    """``ok``, ``no-validation`` (the run kept no validation predictions) or ``insufficient``
    (fewer than ``min_class_count`` validation positives or negatives)."""
    if val is None:
        return "no-validation"
    pos = int((val["y"] > 0.5).sum())
    return "ok" if min(pos, len(val["y"]) - pos) >= cfg.min_class_count else "insufficient"


def decision_rows(y: np.ndarray, score: np.ndarray, val: dict[str, np.ndarray] | None, base: dict[str, Any],
                  cfg: EvalConfig, idx: np.ndarray) -> dict[str, list[dict]]:  # fmt: skip
    """The calibration, reliability and operating-point rows of one run: ``y``/``score`` its test
    labels and scores (in the order ``idx`` resamples), ``val`` its validation split, ``base``
    the columns every row carries (task, head, run, encoder, ...)."""
    status = validation_status(val, cfg)
    out: dict[str, list[dict]] = {"calibration": [], "reliability": [], "operating_points": []}
    for method in ("none", *cfg.scalings):
        usable = method == "none" or status == "ok"
        scaling = fit_scaling(method, val["y"], val["prediction"]) if usable and method != "none" else None
        p = scaling.apply(score) if scaling is not None else np.asarray(score, np.float64)
        for metric in CALIBRATION_METRICS:
            fn = _calibration_fn(metric, cfg.calibration_bins)
            nums = _ci(fn, (y, p), cfg, idx, AUTO_METHOD[metric]) if usable else _empty(len(y))
            out["calibration"].append({**base, "scaling": method, "metric": metric, **nums,
                                       "slope": scaling.slope if scaling else (1.0 if method == "none" else np.nan),
                                       "intercept": scaling.intercept if scaling else (0.0 if method == "none" else np.nan),
                                       "status": "ok" if usable else status})  # fmt: skip
        if usable:
            rel = reliability(y, p, cfg.calibration_bins)
            for b in range(cfg.calibration_bins):
                out["reliability"].append({**base, "scaling": method, "bin": b, "lower": float(rel.lower[b]), "upper": float(rel.upper[b]),
                                           "count": int(rel.count[b]), "mean_predicted": float(rel.mean_predicted[b]),
                                           "fraction_positive": float(rel.fraction_positive[b])})  # fmt: skip
    for rule in RULES:
        t = choose(rule, val["y"], val["prediction"], cfg.target_sensitivity) if status == "ok" else np.nan
        ok = status == "ok" and np.isfinite(t)
        for name in RATES:
            nums = _ci(rate(name, t), (y, score), cfg, idx) if ok else _empty(len(y))
            out["operating_points"].append({**base, "rule": rule_name(rule, cfg.target_sensitivity), "threshold": t, "metric": name,
                                            **nums, "status": "ok" if ok else (status if status != "ok" else "no-threshold")})  # fmt: skip
    return out
