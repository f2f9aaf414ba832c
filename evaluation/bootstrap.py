"""Bootstrap confidence intervals over images, vectorised.

The resample indices are drawn once, ``Generator(seed).integers(0, n, (R, n))`` -- exactly
what ``scipy.stats.bootstrap(..., paired=True)`` draws from the same generator -- and every
metric in :mod:`evaluation.metrics` takes the whole [R, n] index matrix at once. Paired
comparisons reuse the same indices for every encoder. Percentile intervals, and BCa (bias
corrected and accelerated, Efron & Tibshirani eq. 14.14 / 15.36, as scipy computes it) where
the jackknife is defined.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import ndtr, ndtri

Metric = Callable[..., np.ndarray]  # metric(*arrays, idx[R, n]) -> [R]
METHODS = ("percentile", "bca")


@dataclass(frozen=True)
class CI:
    """A metric's value on all images with its bootstrap interval, and what reproduces it (images,
    resamples, seed, method); low and high are NaN where the interval is undefined."""

    value: float
    low: float
    high: float
    n: int
    resamples: int
    seed: int
    method: str
    confidence: float = 0.95

    def to_dict(self) -> dict:
        """The interval as a plain dict of its fields, for json and table rows."""
        return asdict(self)


def resample_indices(n: int, resamples: int, seed: int, strata: np.ndarray | None = None) -> np.ndarray:
    """The [resamples, n] image indices drawn with replacement from ``seed``: the same seed gives the
    same matrix, which is what lets paired comparisons share their resamples.

    With ``strata`` (one label per image, e.g. the 0/1 classes) every resample draws within each
    stratum as many images as it holds, so each resample keeps the class counts of the data and
    none has a single class (an AUROC resample with one class is undefined and was dropped,
    which narrowed the interval at few positives). Column j of a row is an image of column j's
    stratum. Without ``strata`` the matrix is exactly the unstratified one drawn before (stored
    evaluations and scipy's ``bootstrap`` depend on it).
    """
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, (resamples, n))
    strata = np.asarray(strata)
    if strata.shape != (n,):
        raise ValueError(f"strata needs one label per image ({n}), got shape {strata.shape}")
    out = np.empty((resamples, n), np.int64)
    for label in np.unique(strata):  # sorted labels: the same strata and seed give the same matrix
        members = np.flatnonzero(strata == label)
        out[:, members] = members[rng.integers(0, len(members), (resamples, len(members)))]
    return out


def _jackknife(metric: Metric, arrays: tuple, n: int, max_elems: int = 20_000_000) -> np.ndarray:
    """Leave-one-out values of the metric, computed in row blocks to bound memory."""
    out = np.empty(n)
    block = max(1, max_elems // max(n - 1, 1))
    base = np.arange(n)
    for k in range(0, n, block):
        rows = np.arange(k, min(n, k + block))
        keep = np.ones((len(rows), n), bool)
        keep[np.arange(len(rows)), rows] = False
        idx = np.broadcast_to(base, keep.shape)[keep].reshape(len(rows), n - 1)
        out[rows] = metric(*arrays, idx)
    return out


def bootstrap_ci(
    metric: Metric,
    arrays: tuple,
    *,
    resamples: int = 2000,
    seed: int = 0,
    method: str = "percentile",
    confidence: float = 0.95,
    idx: np.ndarray | None = None,
    strata: np.ndarray | None = None,
) -> CI:
    """CI of ``metric(*arrays)`` by resampling images (the arrays' first axis) with replacement.

    ``strata`` (e.g. the labels of a classification task) draws the resamples within each class
    (:func:`resample_indices`), so that no resample has a single class; ignored when ``idx`` is
    given. For AUROC prefer :func:`evaluation.compare.delong_ci`: it is the interval that covers
    at 10-50 positives (README, *Intervals that cover*).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("all arrays need one entry per image")
    value = float(metric(*arrays, np.arange(n)[None, :])[0])
    if idx is None:
        idx = resample_indices(n, resamples, seed, strata=strata)
    boot = metric(*arrays, idx)
    boot = boot[np.isfinite(boot)]  # e.g. resamples with a single class have no AUROC
    alpha = (1 - confidence) / 2
    if len(boot) == 0 or not np.isfinite(value):
        return CI(value, np.nan, np.nan, n, len(idx), seed, method, confidence)
    lo_q, hi_q = alpha, 1 - alpha
    if method == "bca":
        # z0 from the share of resamples below the estimate (ties count half), a from the jackknife.
        pct = (np.count_nonzero(boot < value) + np.count_nonzero(boot <= value)) / (2 * len(boot))
        z0 = ndtri(pct)
        jack = _jackknife(metric, arrays, n)
        u = (n - 1) * (jack.mean() - jack)
        den = (u**2).sum() / n**2
        a = (u**3).sum() / n**3 / (6 * den**1.5) if den > 0 else 0.0
        za = ndtri(alpha)
        lo_q = float(ndtr(z0 + (z0 + za) / (1 - a * (z0 + za))))
        hi_q = float(ndtr(z0 + (z0 - za) / (1 - a * (z0 - za))))
        if not (np.isfinite(lo_q) and np.isfinite(hi_q)):  # degenerate: BCa undefined
            return CI(value, np.nan, np.nan, n, len(idx), seed, method, confidence)
    low, high = np.quantile(boot, [lo_q, hi_q])
    return CI(value, float(low), float(high), n, len(idx), seed, method, confidence)
