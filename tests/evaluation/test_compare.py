"""Comparisons against independent oracles: scikit-learn, brute-force DeLong, textbook values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from evaluation.bootstrap import resample_indices
from evaluation.compare import adjust, delong, friedman_nemenyi, paired_bootstrap
from evaluation.metrics import auroc


@pytest.fixture(scope="module")
def two_encoders():
    rng = np.random.default_rng(2)
    y = (rng.random(250) < 0.3).astype(int)
    a = y * 1.2 + rng.normal(0, 1, 250)  # the better encoder
    b = y * 0.6 + rng.normal(0, 1, 250)
    return y, a, b


def test_paired_bootstrap_uses_the_same_resamples_for_both(two_encoders):
    y, a, b = two_encoders
    d = paired_bootstrap(auroc, (y, a), (y, b), resamples=300, seed=4)
    assert d.diff == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b), abs=1e-12)
    idx = resample_indices(len(y), 300, 4)
    loop = np.array([roc_auc_score(y[r], a[r]) - roc_auc_score(y[r], b[r]) for r in idx])
    assert (d.low, d.high) == pytest.approx(tuple(np.quantile(loop, [0.025, 0.975])), abs=1e-12)
    assert d.p < 0.05 and d.low > 0
    same = paired_bootstrap(auroc, (y, a), (y, a), resamples=300, seed=4)
    assert same.diff == 0 and same.p == 1.0


def _delong_brute(y, s1, s2):
    """O(m n) structural components straight from the 1988 paper."""
    pos, neg = y == 1, y == 0
    out = []
    for s in (s1, s2):
        x, z = s[pos][:, None], s[neg][None, :]
        psi = (x > z) + 0.5 * (x == z)
        out.append((psi.mean(1), psi.mean(0)))
    v10 = np.array([o[0] for o in out])
    v01 = np.array([o[1] for o in out])
    cov = np.cov(v10) / pos.sum() + np.cov(v01) / neg.sum()
    auc = [o[0].mean() for o in out]
    z = (auc[0] - auc[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return auc, cov, z


def test_delong_equals_the_brute_force_definition(two_encoders):
    y, a, b = two_encoders
    a = np.round(a, 1)  # ties too
    r = delong(y, a, b)
    auc, cov, z = _delong_brute(y, a, b)
    assert (r["auc_a"], r["auc_b"]) == pytest.approx((roc_auc_score(y, a), roc_auc_score(y, b)), abs=1e-12)
    assert (r["auc_a"], r["auc_b"]) == pytest.approx(tuple(auc), abs=1e-12)
    assert (r["var_a"], r["var_b"]) == pytest.approx((cov[0, 0], cov[1, 1]), rel=1e-9)
    assert r["z"] == pytest.approx(z, rel=1e-9)
    assert r["p"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    assert delong(y, a, a)["p"] == 1.0


def test_delong_p_values_are_uniform_under_the_null():
    """Two encoders that are the same model plus independent noise: ~5% rejections at 0.05."""
    rng = np.random.default_rng(9)
    rejections = 0
    trials = 300
    for _ in range(trials):
        y = (rng.random(120) < 0.4).astype(int)
        base = y * 0.8 + rng.normal(0, 1, 120)
        rejections += delong(y, base + rng.normal(0, 0.5, 120), base + rng.normal(0, 0.5, 120))["p"] < 0.05
    assert 0.02 <= rejections / trials <= 0.09


def test_bonferroni_and_holm_textbook_example():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjust(p, "bonferroni"), [0.04, 0.16, 0.12, 0.02])
    np.testing.assert_allclose(adjust(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    assert (adjust(np.array([0.5, 0.9]), "bonferroni") <= 1).all()


def test_friedman_and_nemenyi():
    rng = np.random.default_rng(0)
    base = rng.normal(0.7, 0.02, (14, 1))
    scores = base + np.array([0.10, 0.05, 0.0, -0.02]) + rng.normal(0, 0.01, (14, 4))
    r = friedman_nemenyi(scores)
    assert r["statistic"] == pytest.approx(stats.friedmanchisquare(*scores.T).statistic)
    assert r["p"] < 1e-4 and r["mean_rank"][0] < r["mean_rank"][3]
    # Demsar (2006), Table 5: k=4 classifiers, N=14 data sets, alpha=0.05 -> CD = 2.569 * sqrt(20/84) = 1.25
    assert r["critical_difference"] == pytest.approx(2.569 * np.sqrt(4 * 5 / (6 * 14)), abs=2e-3)
    post = r["nemenyi_p"]
    np.testing.assert_allclose(post, post.T)
    assert post[0, 3] < 0.01 and np.all(np.diag(post) == 1)
    # A pair whose mean-rank gap equals the critical difference sits at p = 0.05.
    k, n = 4, 14
    se = np.sqrt(k * (k + 1) / (6 * n))
    assert stats.studentized_range.sf(r["critical_difference"] / se * np.sqrt(2), k, np.inf) == pytest.approx(0.05, abs=1e-6)
