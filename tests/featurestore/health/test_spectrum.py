"""The global figures against numpy on the full matrix."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore.health.spectrum import Moments, effective_rank, participation_ratio, spectrum_of


def _rankme(z: np.ndarray) -> float:
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def _pairwise_cosine(z: np.ndarray) -> float:
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    c = u @ u.T
    n = len(z)
    return float((c.sum() - np.trace(c)) / (n * (n - 1)))


@pytest.mark.parametrize("n,d", [(300, 24), (20, 64)])
def test_streamed_figures_equal_numpy_on_the_full_matrix(n, d):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, 5)) @ rng.standard_normal((5, d)) * 3 + 0.2 * rng.standard_normal((n, d)) + 7.0  # large common mean
    m = Moments(d)
    for part in np.array_split(z, 7):  # streamed in uneven parts
        m.add(part)
    s = m.spectrum()
    sv = np.linalg.svd(z, compute_uv=False)
    np.testing.assert_allclose(s.singular_values, sv, rtol=1e-6, atol=1e-6 * sv[0])
    assert s.rankme == pytest.approx(_rankme(z), rel=1e-6)
    cov_eig = np.linalg.eigvalsh(np.cov(z.T))[::-1]
    assert s.participation_ratio == pytest.approx(cov_eig.sum() ** 2 / (cov_eig**2).sum(), rel=1e-6)
    np.testing.assert_allclose(s.centered_singular_values**2, np.clip(cov_eig[: len(s.centered_singular_values)], 0, None) * (n - 1),
                               rtol=1e-6, atol=1e-6 * cov_eig[0] * n)  # fmt: skip
    assert s.anisotropy == pytest.approx(_pairwise_cosine(z), abs=1e-9)
    np.testing.assert_allclose(s.variance, z.var(0, ddof=1), rtol=1e-6)
    np.testing.assert_allclose(s.mean, z.mean(0), rtol=1e-9)


def test_known_values():
    assert effective_rank(np.ones(10)) == pytest.approx(10)  # perfectly spread
    assert effective_rank(np.array([5.0, 0, 0])) == pytest.approx(1)  # rank one
    assert effective_rank(np.zeros(4)) == 0
    assert participation_ratio(np.array([1.0, 1, 1, 1])) == pytest.approx(4)
    assert participation_ratio(np.array([1.0, 0, 0])) == pytest.approx(1)


def test_collapsed_set_is_anisotropic_and_isotropic_set_is_not():
    rng = np.random.default_rng(1)
    v = rng.standard_normal(64)
    collapsed = spectrum_of(v + 0.01 * rng.standard_normal((500, 64)))
    iso = spectrum_of(rng.standard_normal((500, 64)))
    assert collapsed.anisotropy > 0.99
    assert abs(iso.anisotropy) < 0.01
    assert iso.rankme > 0.9 * 64  # close to the full rank of an isotropic set
    assert iso.participation_ratio > 0.8 * 64
    assert collapsed.rankme < 0.5 * iso.rankme  # one direction holds nearly all of the raw matrix


def test_dead_dimensions_and_zero_rows_are_counted():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((200, 16))
    z[:, [3, 9]] = 1.5  # constant: dead
    s = spectrum_of(z)
    assert s.dead_count == 2 and list(np.nonzero(s.dead)[0]) == [3, 9]
    assert s.zero_rows == 0
    z[7] = 0.0  # a zero row: no direction, left out of the anisotropy
    s = spectrum_of(z)
    assert s.zero_rows == 1
    keep = np.delete(z, 7, axis=0)
    assert s.anisotropy == pytest.approx(_pairwise_cosine(keep), abs=1e-9)
