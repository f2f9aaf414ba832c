"""Operating points of a classifier: a threshold chosen on the validation split, read on the test split.

A score becomes a decision at a threshold; choosing it on the test split and reporting the
test sensitivity there is optimistic (the threshold fits that split's noise). So the threshold
is chosen on the validation split's predictions, by a rule:

* ``youden``: the threshold maximising Youden's J = sensitivity + specificity - 1 (Youden,
  1950) over the validation ROC curve (scikit-learn's ``roc_curve``; ties to the highest);
* ``sensitivity@0.90``: the highest threshold whose validation sensitivity reaches the target,
  the screening use ("miss at most 1 in 10").

and then fixed: sensitivity, specificity, PPV and NPV at it on the test split, with bootstrap
intervals over the test images (the interval is the test sampling error at that threshold; the
threshold's own validation uncertainty is not in it). An image is positive when its score is at
or above the threshold, as in ``roc_curve``.
"""

from __future__ import annotations

import numpy as np

from evaluation.metrics import _blocks

RULES = ("youden", "sensitivity")
RATES = ("sensitivity", "specificity", "ppv", "npv")


def rule_name(rule: str, target: float) -> str:
    """How a rule is shown and stored: ``youden`` or ``sensitivity@0.90``."""
    return f"sensitivity@{target:.2f}" if rule == "sensitivity" else rule


def choose(rule: str, y_val: np.ndarray, score_val: np.ndarray, target: float = 0.9) -> float:
    """The threshold ``rule`` (:data:`RULES`) picks on the validation labels and scores; NaN
    where the validation split lacks a class."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y_val) > 0.5
    if y.all() or not y.any():
        return float("nan")
    fpr, tpr, thr = roc_curve(y, score_val)
    finite = np.isfinite(thr)  # the first threshold (+inf) predicts nothing positive
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    if rule == "youden":
        return float(thr[np.argmax(tpr - fpr)])
    if rule == "sensitivity":
        return float(thr[np.flatnonzero(tpr >= target - 1e-12)[0]])
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def rate(name: str, threshold: float):
    """The metric ``name`` (:data:`RATES`) at ``threshold`` as a vectorised ``fn(y, score, idx) -> [R]``
    (NaN in a row where its denominator is 0)."""
    if name not in RATES:
        raise ValueError(f"rate must be one of {RATES}, got {name!r}")

    def fn(y: np.ndarray, score: np.ndarray, idx: np.ndarray) -> np.ndarray:
        truth = np.asarray(y) > 0.5
        called = np.asarray(score) >= threshold
        r = idx.shape[0]
        out = np.empty(r)
        for a, b in _blocks(r, idx.shape[1]):
            t, c = truth[idx[a:b]], called[idx[a:b]]
            num, den = {
                "sensitivity": ((t & c).sum(1), t.sum(1)),
                "specificity": ((~t & ~c).sum(1), (~t).sum(1)),
                "ppv": ((t & c).sum(1), c.sum(1)),
                "npv": ((~t & ~c).sum(1), (~c).sum(1)),
            }[name]
            with np.errstate(invalid="ignore", divide="ignore"):
                out[a:b] = np.where(den > 0, num / np.maximum(den, 1), np.nan)
        return out

    return fn
