"""Calibration and operating points against scikit-learn and against simulations whose right
answer is known: a calibrated score, a score sharpened by a known temperature, and a binormal
score whose Youden and fixed-sensitivity thresholds have closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

from evaluation.bootstrap import resample_indices
from evaluation.calibration import brier, ece, fit_scaling, logit, reliability, sigmoid
from evaluation.config import EvalConfig
from evaluation.decisions import decision_rows
from evaluation.metrics import identity_index
from evaluation.thresholds import choose, rate


def _calibrated(n, seed, temperature=1.0):
    """Labels drawn from true probabilities; the score reports them sharpened by ``temperature``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < sigmoid(z)).astype(float)
    return y, sigmoid(z * temperature)


def test_brier_ece_and_reliability_equal_scikit_learn():
    y, p = _calibrated(500, 0, temperature=2.0)
    one = identity_index(len(y))
    assert brier(y, p, one)[0] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="uniform")
    rel = reliability(y, p, 10)
    full = rel.count > 0
    np.testing.assert_allclose(rel.fraction_positive[full], frac, atol=1e-12)
    np.testing.assert_allclose(rel.mean_predicted[full], mean, atol=1e-12)
    want = (rel.count[full] / len(y) * np.abs(frac - mean)).sum()
    assert ece(y, p, one)[0] == pytest.approx(want, abs=1e-12)
    # vectorised over resamples: each row equals the metric of that resample
    idx = resample_indices(len(y), 7, 3)
    for r in range(7):
        assert ece(y, p, idx)[r] == pytest.approx(ece(y[idx[r]], p[idx[r]], one)[0], abs=1e-12)
        assert brier(y, p, idx)[r] == pytest.approx(brier_score_loss(y[idx[r]], p[idx[r]]), abs=1e-12)


def test_scaling_recovers_a_planted_temperature_and_removes_the_miscalibration():
    y_val, p_val = _calibrated(20000, 1, temperature=3.0)  # overconfident by a factor of 3 in logit
    t = fit_scaling("temperature", y_val, p_val)
    assert 1 / t.slope == pytest.approx(3.0, rel=0.05)
    platt = fit_scaling("platt", y_val, p_val)
    assert platt.slope == pytest.approx(1 / 3, rel=0.05) and abs(platt.intercept) < 0.05
    y, p = _calibrated(20000, 2, temperature=3.0)
    one = identity_index(len(y))
    assert ece(y, p, one)[0] > 0.08
    for s in (t, platt):
        assert ece(y, s.apply(p), one)[0] < 0.015
        # monotone: the ranking, hence AUROC, is unchanged (up to scores saturated at 0 or 1)
        assert roc_auc_score(y, s.apply(p)) == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    np.testing.assert_allclose(sigmoid(logit(np.array([0.2, 0.7]))), [0.2, 0.7])


def test_rates_at_a_threshold_equal_the_confusion_matrix():
    rng = np.random.default_rng(4)
    y = (rng.random(300) < 0.3).astype(float)
    s = rng.random(300) * 0.5 + 0.4 * y
    t = 0.55
    tn, fp, fn, tp = confusion_matrix(y, s >= t).ravel()
    one = identity_index(len(y))
    want = {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp), "npv": tn / (tn + fn)}
    for name, v in want.items():
        assert rate(name, t)(y, s, one)[0] == pytest.approx(v)
    assert np.isnan(rate("ppv", 2.0)(y, s, one)[0])  # nothing called positive: PPV undefined


def test_thresholds_chosen_on_validation_recover_the_binormal_answers():
    # scores N(0, 1) for negatives, N(d, 1) for positives: Youden's J peaks where the densities
    # cross, at d / 2; sensitivity 0.90 is reached at d - z(0.90)
    d, n = 2.0, 40000
    rng = np.random.default_rng(5)
    y = (rng.random(n) < 0.4).astype(float)
    x = rng.normal(d * y, 1.0)
    p = sigmoid(x)  # any monotone map of the score: the thresholds map with it
    assert logit(np.array([choose("youden", y, p)]))[0] == pytest.approx(d / 2, abs=0.08)
    assert logit(np.array([choose("sensitivity", y, p, 0.9)]))[0] == pytest.approx(d - norm.ppf(0.9), abs=0.05)
    assert np.isnan(choose("youden", np.zeros(5), np.arange(5.0)))


def test_operating_points_cover_the_true_test_sensitivity():
    # a threshold fixed on validation: its test sensitivity has a known true value, which the
    # interval should cover about 95% of the time
    d, cfg = 1.5, EvalConfig(resamples=400)
    t_true = d - norm.ppf(0.9)
    covered = []
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        y = np.r_[np.ones(60), np.zeros(140)]
        x = rng.normal(d * y, 1.0)
        idx = resample_indices(len(y), cfg.resamples, seed, strata=y)
        val = {"y": y, "prediction": sigmoid(rng.normal(d * y, 1.0))}  # an independent validation split
        rows = decision_rows(y, sigmoid(x), val, {}, cfg, idx)["operating_points"]
        (r,) = [r for r in rows if r["rule"] == "sensitivity@0.90" and r["metric"] == "sensitivity"]
        true = 1 - norm.cdf(logit(np.array([r["threshold"]]))[0] - d)  # the threshold's true sensitivity
        covered.append(r["ci_low"] <= true <= r["ci_high"])
        assert abs(logit(np.array([r["threshold"]]))[0] - t_true) < 0.8
    assert np.mean(covered) >= 0.85


def test_a_run_without_validation_predictions_gets_a_status_not_numbers():
    y, p = _calibrated(200, 6)
    cfg = EvalConfig(resamples=200)
    idx = resample_indices(len(y), cfg.resamples, 0, strata=y)
    out = decision_rows(y, p, None, {"run_id": "r"}, cfg, idx)
    raw = [r for r in out["calibration"] if r["scaling"] == "none"]
    assert all(r["status"] == "ok" and np.isfinite(r["value"]) for r in raw)  # needs no validation
    rest = [r for r in out["calibration"] if r["scaling"] != "none"] + out["operating_points"]
    assert rest and all(r["status"] == "no-validation" and np.isnan(r["value"]) for r in rest)
    few = {"y": np.r_[np.ones(3), np.zeros(50)], "prediction": np.linspace(0, 1, 53)}
    assert {r["status"] for r in decision_rows(y, p, few, {}, cfg, idx)["operating_points"]} == {"insufficient"}


@pytest.mark.slow
def test_the_calibration_intervals_cover_the_population_values():
    # a population whose binned calibration errors are known (4 million draws): calibrated
    # (T = 1) and over-confident (T = 1.5); the test splits are 1,000 images
    from evaluation.calibration import squared_ce_debiased

    cfg = EvalConfig(resamples=400)
    for temperature, floor_sce, floor_ece in ((1.0, 0.85, None), (1.5, 0.85, 0.8)):
        y, p = _calibrated(4_000_000, 7, temperature)
        one = identity_index(len(y))
        true_ece, true_sce = ece(y, p, one)[0], squared_ce_debiased(y, p, one)[0]
        hits = {"ece": [], "sce_debiased": []}
        for s in range(60):
            y, p = _calibrated(1000, 1000 + s, temperature)
            idx = resample_indices(len(y), cfg.resamples, s, strata=y)
            rows = decision_rows(y, p, None, {}, cfg, idx)["calibration"]
            for r in rows:
                if r["metric"] in hits and r["scaling"] == "none":
                    hits[r["metric"]].append(r["ci_low"] <= (true_ece if r["metric"] == "ece" else true_sce) <= r["ci_high"])
        assert np.mean(hits["sce_debiased"]) >= floor_sce, (temperature, np.mean(hits["sce_debiased"]))
        if floor_ece is not None:
            assert np.mean(hits["ece"]) >= floor_ece, (temperature, np.mean(hits["ece"]))
