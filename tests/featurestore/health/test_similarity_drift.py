"""CKA against the HSIC formula, MMD against its definition, and the drift test's error rates."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore.health.drift import drift_test, mean_shift, median_bandwidth, mmd2_unbiased
from featurestore.health.similarity import linear_cka


def _hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    n = len(x)
    h = np.eye(n) - 1 / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((k * l_).sum() / np.sqrt((k * k).sum() * (l_ * l_).sum()))


def test_linear_cka_equals_hsic_and_is_invariant():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 10))
    y = x @ rng.standard_normal((10, 7)) + rng.standard_normal((60, 7))
    assert linear_cka(x, y) == pytest.approx(_hsic_cka(x, y), rel=1e-9)
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0)  # orthogonal transform, scale, shift
    assert linear_cka(x, rng.standard_normal((60, 10))) < 0.4
    with pytest.raises(ValueError, match="same images"):
        linear_cka(x, y[:10])


def _mmd_loops(x, y, h):
    k = lambda a, b: np.exp(-((a - b) ** 2).sum() / (2 * h * h))  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_mmd_equals_its_definition_and_bandwidth_is_the_median_distance():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((12, 3)), rng.standard_normal((9, 3)) + 0.5
    z = np.vstack([x, y])
    d = [np.linalg.norm(z[i] - z[j]) for i in range(len(z)) for j in range(i + 1, len(z))]
    assert median_bandwidth(z) == pytest.approx(np.median(d))
    assert mmd2_unbiased(x, y, 1.3) == pytest.approx(_mmd_loops(x, y, 1.3), rel=1e-9)
    t = drift_test(x, y, permutations=50, bandwidth=1.3)
    assert t.mmd2 == pytest.approx(_mmd_loops(x, y, 1.3), rel=1e-9)


def test_mean_shift_is_in_units_of_the_earlier_spread():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4000, 16))
    shift = np.zeros(16)
    shift[0] = 2.0  # sqrt(trace cov) = 4, so the shift is 0.5
    assert mean_shift(x, rng.standard_normal((4000, 16)) + shift) == pytest.approx(0.5, abs=0.03)


def test_drift_test_rejects_at_its_level_and_finds_a_real_shift():
    """Calibration under the null (same distribution: p-values about uniform, rejections at
    alpha about alpha) and power against a planted change of scale and mean."""
    rng = np.random.default_rng(3)
    ps = [drift_test(rng.standard_normal((40, 8)), rng.standard_normal((40, 8)), permutations=99, seed=s).p_value for s in range(120)]
    rate = np.mean(np.array(ps) <= 0.05)
    assert rate < 0.12  # 0.05 expected; binomial sd with 120 draws is 0.02
    assert 0.35 < np.mean(ps) < 0.65  # uniform: mean 0.5
    shifted = drift_test(rng.standard_normal((80, 8)), 1.3 * rng.standard_normal((80, 8)) + 0.4, permutations=199)
    assert shifted.p_value <= 0.01
    with pytest.raises(ValueError, match="at least 2"):
        drift_test(rng.standard_normal((1, 8)), rng.standard_normal((5, 8)))
