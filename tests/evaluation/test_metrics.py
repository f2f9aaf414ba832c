"""Every metric and CI against an independent oracle (scikit-learn, scipy), plus coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, mean_absolute_error, r2_score, roc_auc_score

from evaluation.bootstrap import bootstrap_ci, resample_indices
from evaluation.metrics import auroc, average_precision, mae, mean_of, per_image_overlap, r2


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(int)
    score = np.round(y * 0.8 + rng.normal(0, 0.7, 300), 1)  # rounded: plenty of ties
    value = 0.47 + 0.05 * rng.standard_normal(300)
    pred = value + 0.03 * rng.standard_normal(300)
    return y, score, value, pred


def test_metrics_match_scikit_learn_on_every_resample(data):
    y, score, value, pred = data
    idx = resample_indices(len(y), 25, seed=1)
    a, ap, rr, mm = auroc(y, score, idx), average_precision(y, score, idx), r2(value, pred, idx), mae(value, pred, idx)
    for k, row in enumerate(idx):
        assert a[k] == pytest.approx(roc_auc_score(y[row], score[row]), abs=1e-12)
        assert ap[k] == pytest.approx(average_precision_score(y[row], score[row]), abs=1e-12)
        assert rr[k] == pytest.approx(r2_score(value[row], pred[row]), abs=1e-12)
        assert mm[k] == pytest.approx(mean_absolute_error(value[row], pred[row]), abs=1e-12)


def test_single_class_resample_is_nan():
    y = np.array([1, 1, 1])
    assert np.isnan(auroc(y, np.array([0.1, 0.2, 0.3]), np.arange(3)[None]))[0]


def test_dice_iou_and_the_empty_convention():
    t = np.zeros((3, 4, 4), bool)
    p = np.zeros((3, 4, 4), bool)
    t[0, :2] = True
    p[0, :1] = True  # 4 of 8 true pixels found, nothing extra
    t[1, 0, 0] = True  # missed entirely
    dice, iou = per_image_overlap(t, p)
    np.testing.assert_allclose(dice, [2 * 4 / 12, 0.0, 1.0])
    np.testing.assert_allclose(iou, [4 / 8, 0.0, 1.0])
    assert np.isnan(per_image_overlap(t, p, "nan")[0][2])
    assert per_image_overlap(t, p, "zero")[0][2] == 0.0
    d_nan = per_image_overlap(t, p, "nan")[0]
    assert mean_of(d_nan, np.arange(3)[None])[0] == pytest.approx((2 * 4 / 12 + 0) / 2)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_cis_equal_scipy_bootstrap_on_the_same_resamples(data, method):
    y, score, _, _ = data
    res = stats.bootstrap(
        (y, score),
        lambda a, b, axis=-1: _auroc_rows(a, b),
        paired=True,
        vectorized=True,
        n_resamples=500,
        method="BCa" if method == "bca" else "percentile",
        rng=np.random.default_rng(7),
    )
    ci = bootstrap_ci(auroc, (y, score), resamples=500, seed=7, method=method)
    assert ci.low == pytest.approx(res.confidence_interval.low, abs=1e-9)
    assert ci.high == pytest.approx(res.confidence_interval.high, abs=1e-9)
    assert ci.value == pytest.approx(roc_auc_score(y, score), abs=1e-12)


def _auroc_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """scipy hands a paired statistic [..., n] arrays; rank within the last axis."""
    a2, b2 = np.atleast_2d(a), np.atleast_2d(b)
    out = auroc_rows_direct(a2, b2)
    return out if a.ndim > 1 else out[0]


def auroc_rows_direct(y2: np.ndarray, s2: np.ndarray) -> np.ndarray:
    r = stats.rankdata(s2, axis=1)
    pos = y2.astype(bool)
    n1 = pos.sum(1)
    n0 = pos.shape[1] - n1
    return ((r * pos).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def test_dice_ci_equals_scipy_mean_bootstrap():
    rng = np.random.default_rng(3)
    dice = rng.beta(5, 2, 400)
    res = stats.bootstrap((dice,), np.mean, n_resamples=800, method="percentile", rng=np.random.default_rng(11))
    ci = bootstrap_ci(mean_of, (dice,), resamples=800, seed=11)
    assert (ci.low, ci.high) == pytest.approx((res.confidence_interval.low, res.confidence_interval.high), abs=1e-12)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_coverage_is_near_95_percent(method):
    """A known truth: per-image values with mean 0.7; the 95% interval should cover it ~95%."""
    rng = np.random.default_rng(5)
    trials, covered = 200, 0
    for t in range(trials):
        x = rng.beta(7, 3, 80)  # mean 0.7
        ci = bootstrap_ci(mean_of, (x,), resamples=400, seed=t, method=method)
        covered += ci.low <= 0.7 <= ci.high
    assert 0.90 <= covered / trials <= 0.985
