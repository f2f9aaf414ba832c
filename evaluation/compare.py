"""Comparisons between encoders on the same test images, and across cross-validation folds.

- :func:`paired_bootstrap` -- the difference of a metric between two encoders, resampling the
  same image indices for both (the pairing), with its percentile CI and a two-sided p-value.
- :func:`delong` -- DeLong's test for two correlated AUROCs (DeLong, DeLong & Clarke-Pearson
  1988), with the fast midrank formulation of Sun & Xu (2014).
- :func:`adjust` -- Bonferroni and Holm corrections over a family of p-values.
- :func:`friedman_nemenyi` -- across folds: scipy's Friedman test, then Nemenyi's post-hoc
  p-values from the studentized range distribution, as the study's authors reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from evaluation.bootstrap import Metric, resample_indices


@dataclass(frozen=True)
class Difference:
    """A paired comparison: each encoder's metric, their difference with its bootstrap interval, and
    the two-sided p (NaN when the metric is undefined on every resample)."""

    a: float
    b: float
    diff: float  # a - b
    low: float
    high: float
    p: float
    resamples: int
    seed: int


def paired_bootstrap(
    metric: Metric,
    arrays_a: tuple,
    arrays_b: tuple,
    *,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    idx: np.ndarray | None = None,
) -> Difference:
    """``metric(A) - metric(B)`` on the same images, both resampled with the same indices."""
    n = len(arrays_a[0])
    if len(arrays_b[0]) != n:
        raise ValueError("paired comparison needs the same images for both encoders")
    one = np.arange(n)[None, :]
    a, b = float(metric(*arrays_a, one)[0]), float(metric(*arrays_b, one)[0])
    if idx is None:
        idx = resample_indices(n, resamples, seed)
    d = metric(*arrays_a, idx) - metric(*arrays_b, idx)
    d = d[np.isfinite(d)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(d, [alpha, 1 - alpha]) if len(d) else (np.nan, np.nan)
    # Two-sided bootstrap p-value: how often the resampled difference crosses zero.
    if len(d) == 0:  # the metric is undefined on every resample (e.g. one class only): no test
        p = np.nan
    else:
        p = min(1.0, 2 * min((np.sum(d <= 0) + 1) / (len(d) + 1), (np.sum(d >= 0) + 1) / (len(d) + 1)))
    return Difference(a, b, a - b, float(low), float(high), float(p), len(idx), seed)


def _midrank(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, method="average")


def delong(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict[str, float]:
    """DeLong's test of AUROC(a) == AUROC(b) on the same images; returns AUCs, z and p."""
    y = np.asarray(y).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs positives and negatives")
    aucs, v10, v01 = [], [], []
    for s in (np.asarray(score_a, float), np.asarray(score_b, float)):
        pos, neg = s[y], s[~y]
        tz = _midrank(np.concatenate([pos, neg]))
        tx, ty = _midrank(pos), _midrank(neg)
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)  # structural components of the positives
        v01.append(1 - (tz[m:] - ty) / m)  # and of the negatives
    s10, s01 = np.cov(np.array(v10)), np.cov(np.array(v01))
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = aucs[0] - aucs[1]
    if var <= 0:
        z, p = (0.0, 1.0) if diff == 0 else (np.inf * np.sign(diff), 0.0)
    else:
        z = diff / np.sqrt(var)
        p = 2 * stats.norm.sf(abs(z))
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "var_a": float(cov[0, 0]),
        "var_b": float(cov[1, 1]),
        "z": float(z),
        "p": float(p),
    }


def adjust(p: np.ndarray, method: str) -> np.ndarray:
    """Family-wise corrected p-values: ``bonferroni`` or ``holm`` (step-down, monotone)."""
    p = np.asarray(p, float)
    k = len(p)
    if method == "bonferroni":
        return np.minimum(1.0, p * k)
    if method == "holm":
        order = np.argsort(p, kind="stable")
        stepped = np.maximum.accumulate((k - np.arange(k)) * p[order])
        out = np.empty(k)
        out[order] = np.minimum(1.0, stepped)
        return out
    raise ValueError("method must be 'bonferroni' or 'holm'")


def friedman_nemenyi(scores: np.ndarray, higher_is_better: bool = True) -> dict:
    """``scores`` [folds, encoders]: Friedman's test, mean ranks, Nemenyi post-hoc p-value matrix."""
    scores = np.asarray(scores, float)
    n, k = scores.shape
    if k < 3:
        raise ValueError("Friedman's test needs at least three encoders")
    stat, p = stats.friedmanchisquare(*scores.T)
    ranks = stats.rankdata(-scores if higher_is_better else scores, axis=1)  # 1 = best in that fold
    mean_rank = ranks.mean(0)
    se = np.sqrt(k * (k + 1) / (6.0 * n))
    q = np.abs(mean_rank[:, None] - mean_rank[None, :]) / se
    post = stats.studentized_range.sf(q * np.sqrt(2), k, np.inf)
    np.fill_diagonal(post, 1.0)
    cd = stats.studentized_range.ppf(0.95, k, np.inf) / np.sqrt(2) * se
    return {"statistic": float(stat), "p": float(p), "mean_rank": mean_rank, "nemenyi_p": post, "critical_difference": float(cd)}
