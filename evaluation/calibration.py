"""Is a classifier's score usable as a probability?

* Brier score: the mean squared difference between the predicted probability and the 0/1 label
  (Brier, 1950), as scikit-learn's ``brier_score_loss``; it mixes discrimination and calibration.
* Expected calibration error (Naeini et al., AAAI 2015; Guo et al., ICML 2017): the test images
  binned by predicted probability into ``bins`` equal-width bins over [0, 1], and
  ``ECE = sum_b (n_b / n) |mean(y_b) - mean(p_b)|``, the reliability diagram's mean gap weighted
  by how many images each bin holds. The familiar number, but biased upward: noise alone makes
  every bin's gap positive, so even a perfectly calibrated score has ECE > 0 on a finite test
  split, and a plain bootstrap interval (which adds the same noise again) sits above the truth.
  Its interval is therefore the basic (reflected) bootstrap interval ``[2 ECE - q_hi, 2 ECE -
  q_lo]`` floored at 0, which corrects that shift when the score is miscalibrated;
* the debiased squared calibration error (Kumar, Liang & Ma, NeurIPS 2019, "Verified
  uncertainty calibration"): ``sum_b (n_b / n) [(mean(y_b) - mean(p_b))^2 - v_b / (n_b - 1)]``
  with ``v_b = mean(y_b) (1 - mean(y_b))``, unbiased for the binned squared error, so it can be
  negative and its percentile interval contains 0 when the score is calibrated: the number
  that answers "is it calibrated?".
* Recalibration fitted on the validation split, never on the test split: Platt scaling (a
  logistic regression of the label on the score's logit; Platt, 1999) and temperature scaling
  (the logit divided by one temperature ``T`` minimising the validation log loss; Guo et al.,
  2017). Both are monotone, so they leave AUROC unchanged and change only what a score of 0.7
  means.

The metric functions take the [R, n] resample index matrix of :mod:`evaluation.bootstrap`, so
their intervals come from the same resamples as every other metric of the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluation.metrics import _blocks

EPS = 1e-7
SCALINGS = ("none", "platt", "temperature")


def bin_of(p: np.ndarray, bins: int) -> np.ndarray:
    """The equal-width bin of each probability (1.0 falls into the last bin), as ``calibration_curve``."""
    return np.clip((np.asarray(p, np.float64) * bins).astype(np.int64), 0, bins - 1)


def brier(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Brier score of each resample row; lower is better."""
    sq = (np.asarray(p, np.float64) - y) ** 2
    return sq[idx].mean(1)


def ece(y: np.ndarray, p: np.ndarray, idx: np.ndarray, bins: int = 10) -> np.ndarray:
    """Expected calibration error of each resample row (module docstring): per bin the summed
    ``y - p`` of the row's images, ``sum_b |.| / n``."""
    b = bin_of(p, bins)
    d = np.asarray(y, np.float64) - np.asarray(p, np.float64)
    r, n = idx.shape
    out = np.empty(r)
    for a, e in _blocks(r, n):
        _, sums = _bin_sums(b, bins, idx, a, e, d)
        out[a:e] = np.abs(sums).sum(1) / n
    return out


def _bin_sums(b: np.ndarray, bins: int, idx: np.ndarray, a: int, e: int, *values: np.ndarray) -> list[np.ndarray]:
    """Per resample row of ``idx[a:e]`` and bin: the image count and the sums of ``values``."""
    rows = e - a
    flat = (b[idx[a:e]] + np.arange(rows)[:, None] * bins).ravel()
    out = [np.bincount(flat, minlength=rows * bins).reshape(rows, bins).astype(np.float64)]
    out += [np.bincount(flat, weights=v[idx[a:e]].ravel(), minlength=rows * bins).reshape(rows, bins) for v in values]
    return out


def squared_ce_debiased(y: np.ndarray, p: np.ndarray, idx: np.ndarray, bins: int = 10) -> np.ndarray:
    """The debiased squared calibration error of each resample row (module docstring); bins
    with fewer than two images add nothing."""
    b = bin_of(p, bins)
    yy, pp = np.asarray(y, np.float64), np.asarray(p, np.float64)
    r, n = idx.shape
    out = np.empty(r)
    for a, e in _blocks(r, n):
        cnt, sy, sp = _bin_sums(b, bins, idx, a, e, yy, pp)
        with np.errstate(invalid="ignore", divide="ignore"):
            my, mp = sy / cnt, sp / cnt
            term = (my - mp) ** 2 - my * (1 - my) / (cnt - 1)
        out[a:e] = (cnt / n * np.where(cnt > 1, term, 0.0)).sum(1)
    return out


@dataclass(frozen=True)
class Reliability:
    """The reliability diagram's bins: edges, images, mean predicted probability and observed
    fraction of positives (NaN for an empty bin)."""

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    mean_predicted: np.ndarray
    fraction_positive: np.ndarray


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> Reliability:
    """The reliability diagram of ``p`` against ``y`` in ``bins`` equal-width bins."""
    b = bin_of(p, bins)
    count = np.bincount(b, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mp = np.bincount(b, weights=p, minlength=bins) / count
        fp = np.bincount(b, weights=np.asarray(y, np.float64), minlength=bins) / count
    edges = np.linspace(0, 1, bins + 1)
    return Reliability(edges[:-1], edges[1:], count, mp, fp)


def logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))``, the probability clipped to [EPS, 1 - EPS] first."""
    q = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(q) - np.log1p(-q)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, overflow-free."""
    return 0.5 * (1 + np.tanh(0.5 * np.asarray(z, np.float64)))


@dataclass(frozen=True)
class Scaling:
    """A recalibration ``p' = sigmoid(slope * logit(p) + intercept)`` fitted on validation
    (temperature scaling: ``slope = 1 / T``, ``intercept = 0``)."""

    method: str
    slope: float
    intercept: float

    def apply(self, p: np.ndarray) -> np.ndarray:
        """The recalibrated probabilities of ``p``."""
        if self.method == "none":
            return np.asarray(p, np.float64)
        return sigmoid(self.slope * logit(p) + self.intercept)


def fit_scaling(method: str, y_val: np.ndarray, p_val: np.ndarray) -> Scaling:
    """Fit ``method`` (one of :data:`SCALINGS`) on the validation labels and scores."""
    if method == "none":
        return Scaling("none", 1.0, 0.0)
    z = logit(p_val)
    y = np.asarray(y_val, np.float64)
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000).fit(z[:, None], y.astype(int))
        return Scaling("platt", float(lr.coef_[0, 0]), float(lr.intercept_[0]))
    if method == "temperature":
        from scipy.optimize import minimize_scalar

        def nll(log_t: float) -> float:
            q = np.clip(sigmoid(z / np.exp(log_t)), EPS, 1 - EPS)
            return float(-(y * np.log(q) + (1 - y) * np.log1p(-q)).mean())

        res = minimize_scalar(nll, bounds=(np.log(1e-2), np.log(1e2)), method="bounded", options={"xatol": 1e-6})
        return Scaling("temperature", float(np.exp(-res.x)), 0.0)
    raise ValueError(f"scaling must be one of {SCALINGS}, got {method!r}")
