"""Operating points chosen on the validation split, never on the test split.

A mask head's probabilities are thresholded to give a mask; a fixed 0.5 is wrong for a head
trained with class-weighted BCE (``pos_weight = (1 - f) / f`` puts an uninformative pixel at
p = 0.5 exactly, so half the image is marked). The threshold that maximises the mean Dice on
the validation split is recorded in the run (``operating_points["threshold"]``) and used by
the run's summary and the evaluation. Classification keeps its scores; the same function can
pick a Youden threshold for it when one is wanted.
"""

from __future__ import annotations

import numpy as np

from evaluation.metrics import per_image_overlap

OBJECTIVES = ("youden", "dice")
#: The candidate thresholds: 0.05, 0.06, ..., 0.95.
GRID = np.round(np.arange(0.05, 0.9501, 0.01), 2)


def score_thresholds(y_val: np.ndarray, scores: np.ndarray, objective: str = "dice",
                     thresholds: np.ndarray = GRID) -> np.ndarray:  # fmt: skip
    """The objective at every threshold (a prediction is positive when ``score > threshold``).

    ``dice``: mean per-image Dice for masks [n, H, W] (the Dice of the whole vector for 1-d
    labels); ``youden``: sensitivity + specificity - 1 for 1-d labels.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    y = np.asarray(y_val) > 0.5
    s = np.asarray(scores, np.float32)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    if y.ndim == 1 and objective == "dice":
        y, s = y[None], s[None]
    out = np.empty(len(thresholds))
    for k, t in enumerate(thresholds):
        p = s > t
        if objective == "dice":
            out[k] = float(per_image_overlap(y, p)[0].mean())
        else:
            pos, neg = y.sum(), (~y).sum()
            sens = (p & y).sum() / pos if pos else np.nan
            spec = (~p & ~y).sum() / neg if neg else np.nan
            out[k] = sens + spec - 1
    return out


def choose_threshold(y_val: np.ndarray, scores: np.ndarray, objective: str = "youden",
                     thresholds: np.ndarray = GRID) -> float:  # fmt: skip
    """The threshold maximising ``objective`` on the validation labels ``y_val`` and ``scores``
    (see :func:`score_thresholds`); ties, and a split where nothing can be measured, go to the
    candidate closest to 0.5, the threshold a calibrated score would use."""
    values = score_thresholds(y_val, scores, objective, thresholds)
    if not np.isfinite(values).any():
        return 0.5
    best = np.nanmax(values)
    tied = np.flatnonzero(values >= best - 1e-12)
    return float(thresholds[tied[np.argmin(np.abs(thresholds[tied] - 0.5))]])
