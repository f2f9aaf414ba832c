"""Metrics, vectorised over bootstrap resamples.

Every function takes index arrays ``idx`` of shape [R, n] (R resamples of n images; one row of
``arange(n)`` is the plain metric) so that 2,000 resamples over 10,000 images are a few array
operations, not 2,000 calls. Each matches its scikit-learn counterpart on every row (tests):
``roc_auc_score`` (ties get average ranks), ``average_precision_score`` (tied scores form one
threshold), ``r2_score``, ``mean_absolute_error``.

Segmentation: Dice and IoU are computed per image, then averaged. An image whose true and
predicted masks are both empty is a perfect answer by default (``EMPTY_BOTH="one"``); set
``"nan"`` to leave such images out of the mean, or ``"zero"`` to count them as failures.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

EMPTY_CONVENTIONS = ("one", "nan", "zero")


def identity_index(n: int) -> np.ndarray:
    """The [1, n] index matrix of the plain metric: one row holding every image once."""
    return np.arange(n)[None, :]


def counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each image appears in each resample row: [R, n] (a row of arange(n) is all ones)."""
    r = idx.shape[0]
    flat = (idx + np.arange(r)[:, None] * n).ravel()
    return np.bincount(flat, minlength=r * n).reshape(r, n)


#: Resample rows are processed in blocks of about this many elements, so that the [rows, n]
#: temporaries stay in cache instead of allocating (and page-faulting) R x n arrays at once.
BLOCK_ELEMENTS = 250_000


#: Blocks of resample rows are spread over this many threads (numpy releases the GIL in the
#: bincounts, cumulative sums and gathers that make up a block).
THREADS = min(2, os.cpu_count() or 1)


def _blocks(r: int, width: int):
    b = max(1, BLOCK_ELEMENTS // max(width, 1))
    return ((a, min(r, a + b)) for a in range(0, r, b))


def _each_block(fn, r: int, width: int) -> None:
    """``fn(a, b)`` for every block of rows, on THREADS threads when there are several blocks."""
    blocks = list(_blocks(r, width))
    if THREADS <= 1 or len(blocks) < 2:
        for a, b in blocks:
            fn(a, b)
        return
    with ThreadPoolExecutor(THREADS) as ex:
        for f in [ex.submit(fn, a, b) for a, b in blocks]:
            f.result()


def auroc(y: np.ndarray, score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC of each resample row (NaN where a row has one class only).

    Sorted once: a resample is a vector of multiplicities ``c`` in score order, so per row
    twice the statistic is the integer sum over positives of ``c x (negatives strictly below +
    negatives up to the end of its group of tied scores)``, i.e. ties count half, exactly as
    average ranks do; one bincount and one cumulative sum per row, in cache-sized blocks.
    """
    idx = np.asarray(idx)
    n = len(y)
    r, m = idx.shape
    order = np.argsort(score, kind="stable")
    s_sorted = score[order]
    new_group = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    rank_of = np.empty(n, np.int64)
    rank_of[order] = np.arange(n)
    pos = y[order].astype(bool)
    neg = (~pos).astype(np.int64)
    pos_cols = np.flatnonzero(pos)
    ties = not new_group.all()
    if ties:  # a positive in tied group [start, end) sees negatives below start and up to end
        gid = np.cumsum(new_group) - 1
        starts = np.flatnonzero(new_group)
        ends = np.r_[starts[1:], n]
        lo_cols, hi_cols = starts[gid[pos_cols]], ends[gid[pos_cols]]
    out = np.empty(r)

    def block(a: int, b: int) -> None:
        k = b - a
        flat = rank_of[idx[a:b]]
        flat += (np.arange(k) * n)[:, None]
        c = np.bincount(flat.ravel(), minlength=k * n).reshape(k, n)
        z = np.zeros((k, n + 1), np.int64)  # [:, j]: negatives among the first j in score order
        np.cumsum(c * neg, axis=1, out=z[:, 1:])
        cp = c[:, pos_cols]
        num2 = (cp * (z[:, lo_cols] + z[:, hi_cols])).sum(1) if ties else 2 * (cp * z[:, pos_cols]).sum(1)
        n_pos, n_neg = cp.sum(1), z[:, n]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[a:b] = np.where((n_pos > 0) & (n_neg > 0), num2 / (2.0 * n_pos * n_neg), np.nan)

    _each_block(block, r, max(m, n))
    return out


def average_precision(y: np.ndarray, score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Average precision (sklearn's step-wise AP) of each resample row; tied scores are one step."""
    s = score[idx]
    order = np.argsort(-s, axis=1, kind="stable")
    s_sorted = np.take_along_axis(s, order, 1)
    y_sorted = np.take_along_axis(y[idx].astype(np.float64), order, 1)
    tp = np.cumsum(y_sorted, 1)
    n = s.shape[1]
    k = np.arange(1, n + 1)[None, :]
    # The end of each group of equal scores is a threshold.
    is_end = np.ones_like(s_sorted, dtype=bool)
    is_end[:, :-1] = s_sorted[:, 1:] != s_sorted[:, :-1]
    tp_at_end = np.where(is_end, tp, 0.0)
    last_end = np.maximum.accumulate(tp_at_end, axis=1)  # tp is non-decreasing
    prev = np.concatenate([np.zeros((s.shape[0], 1)), last_end[:, :-1]], 1)
    n_pos = tp[:, -1]
    gain = np.where(is_end, (tp - prev) * (tp / k), 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, gain / n_pos, np.nan)


def r2(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Coefficient of determination of each resample row, as ``r2_score``; NaN where a row's labels
    are all equal."""
    yy, pp = y[idx], pred[idx]
    ss_res = ((yy - pp) ** 2).sum(1)
    ss_tot = ((yy - yy.mean(1, keepdims=True)) ** 2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ss_tot > 0, 1 - ss_res / ss_tot, np.nan)


def mae(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean absolute error of each resample row, as ``mean_absolute_error``; lower is better."""
    return np.abs(y[idx] - pred[idx]).mean(1)


def per_image_overlap(truth: np.ndarray, pred: np.ndarray, empty_both: str = "one") -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU of each image (boolean masks [n, H, W]) under the empty-mask convention."""
    if empty_both not in EMPTY_CONVENTIONS:
        raise ValueError(f"empty_both must be one of {EMPTY_CONVENTIONS}")
    t = truth.reshape(len(truth), -1).astype(bool)
    p = pred.reshape(len(pred), -1).astype(bool)
    inter = (t & p).sum(1).astype(np.float64)
    sizes = t.sum(1) + p.sum(1)
    union = (t | p).sum(1)
    both_empty = sizes == 0
    fill = {"one": 1.0, "nan": np.nan, "zero": 0.0}[empty_both]
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(both_empty, fill, 2 * inter / sizes)
        iou = np.where(both_empty, fill, inter / union)
    return dice, iou


def mean_of(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean of per-image values per resample row; NaNs (images left out by convention) ignored."""
    idx = np.asarray(idx)
    out = np.empty(len(idx))
    missing = np.isnan(values)
    if missing.any():
        filled, present = np.where(missing, 0.0, values), (~missing).astype(np.float64)

        def block(a: int, b: int) -> None:
            with np.errstate(invalid="ignore", divide="ignore"):
                out[a:b] = filled[idx[a:b]].sum(1) / present[idx[a:b]].sum(1)

    else:

        def block(a: int, b: int) -> None:
            out[a:b] = values[idx[a:b]].mean(1)

    _each_block(block, *idx.shape)
    return out


# -- the metric table --------------------------------------------------------------------------

#: The arrays a global kind's metric takes: the true label and the run's prediction column.
GLOBAL_INPUTS = ("y", "prediction")


@dataclass(frozen=True)
class Metric:
    """One metric: its vectorised function, the arrays it takes (by name), how to show it
    and which direction is better. Task kinds list metrics by name (featurestore.tasks)."""

    name: str
    display: str
    higher_is_better: bool
    inputs: tuple[str, ...]  # GLOBAL_INPUTS, or per-image arrays of a mask kind (PER_IMAGE)
    fn: Callable[..., np.ndarray]
    #: Ranks positives against negatives (AUROC, AP): resampled within each class, and reported
    #: only when both classes reach the evaluation's minimum count.
    class_based: bool = False

    def __call__(self, arrays: dict[str, np.ndarray], idx: np.ndarray | None = None) -> np.ndarray:
        """The metric over ``idx`` rows (default: the plain metric, one row)."""
        args = tuple(arrays[n] for n in self.inputs)
        return self.fn(*args, identity_index(len(args[0])) if idx is None else idx)


METRICS: dict[str, Metric] = {}


def register_metric(name: str, display: str, higher_is_better: bool, inputs: tuple[str, ...] = GLOBAL_INPUTS,
                    class_based: bool = False):  # fmt: skip
    """Decorator adding a vectorised metric ``fn(*arrays, idx) -> [R]`` to :data:`METRICS`."""

    def deco(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        METRICS[name] = Metric(name, display, higher_is_better, tuple(inputs), fn, class_based)
        return fn

    return deco


def get_metric(name: str) -> Metric:
    """The registered metric ``name``; raises KeyError naming the registered ones otherwise."""
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; registered: {', '.join(METRICS)}")
    return METRICS[name]


def mean_where(values: np.ndarray, where: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean of per-image ``values`` over the images of each resample row with ``where`` set
    (NaN for a row that has none): Dice on non-empty masks, the false-positive rate on empty ones."""
    idx = np.asarray(idx)
    w = np.asarray(where, np.float64)
    v = np.where(w > 0, np.asarray(values, np.float64), 0.0)
    out = np.empty(len(idx))

    def block(a: int, b: int) -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            out[a:b] = v[idx[a:b]].sum(1) / w[idx[a:b]].sum(1)

    _each_block(block, *idx.shape)
    return out


def class_counts(flags: np.ndarray) -> tuple[int, int] | None:
    """(positives, negatives) of 0/1 labels, or of per-image "has a true mask" flags; None when
    the values are not binary (a regression target has no classes to count)."""
    y = np.asarray(flags, np.float64)
    if not np.isin(y, (0, 1)).all():
        return None
    k = int(y.sum())
    return k, len(y) - k


def mask_arrays(truth: np.ndarray, prob: np.ndarray, threshold: float, empty_both: str = "one") -> dict[str, np.ndarray]:
    """Every per-image array the mask metrics take, from true masks and predicted probabilities
    ([n, H, W]): one place decides what "Dice", "empty" and "a false positive" mean."""
    t = truth.reshape(len(truth), -1) > 0
    pm = prob.reshape(len(prob), -1) > threshold
    dice, iou = per_image_overlap(t, pm, empty_both)
    dice_05, _ = per_image_overlap(t, prob.reshape(len(prob), -1) > 0.5, empty_both)
    nonempty = t.any(1)
    return {"dice": dice, "iou": iou, "dice_05": dice_05, "nonempty": nonempty.astype(np.float64),
            "empty": (~nonempty).astype(np.float64), "predicted_any": pm.any(1).astype(np.float64),
            "true_pixels": t.sum(1), "predicted_pixels": pm.sum(1)}  # fmt: skip


#: Per-image arrays a mask kind's run provides (what its metrics may take as inputs): Dice and
#: IoU at the run's threshold, Dice at 0.5, whether the true mask is non-empty / empty, and
#: whether anything was predicted (a false positive on an empty image).
PER_IMAGE = ("dice", "iou", "dice_05", "nonempty", "empty", "predicted_any")

register_metric("auroc", "AUROC", True, class_based=True)(auroc)
register_metric("auprc", "AP", True, class_based=True)(average_precision)
register_metric("r2", "R²", True)(r2)
register_metric("mae", "MAE", False)(mae)
register_metric("dice_nonempty", "Dice (non-empty masks)", True, ("dice", "nonempty"))(mean_where)
register_metric("dice", "Dice (all images)", True, ("dice",))(mean_of)
register_metric("fp_empty", "FP rate (empty masks)", False, ("predicted_any", "empty"))(mean_where)
register_metric("iou", "IoU", True, ("iou",))(mean_of)
register_metric("dice_05", "Dice at 0.5", True, ("dice_05",))(mean_of)
