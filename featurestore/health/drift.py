"""Did the images of a backfill embed like the images before it?

Two figures compare a backfill's new embeddings ``Y`` with the earlier ones ``X``:

* ``mean_shift``: the distance between the two means in units of the earlier set's spread,
  ``|mean(Y) - mean(X)| / sqrt(trace cov(X))`` (the RMS distance of an earlier embedding to
  its mean): 0 for no shift, about 1 when the centre moved by a typical embedding's deviation;
* the maximum mean discrepancy with a Gaussian kernel (Gretton et al., JMLR 2012): the
  unbiased estimate of MMD^2, the bandwidth set by the median heuristic (the median distance
  between all pooled points), and a permutation p-value (the share of random relabellings of
  the pooled points whose MMD^2 reaches the observed one, counting the observed labelling), so
  a change of scanner or preprocessing in the incoming data is a small p-value, not a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _sq_dists(z: np.ndarray) -> np.ndarray:
    sq = (z * z).sum(1)
    return np.clip(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0, None)


def median_bandwidth(z: np.ndarray) -> float:
    """The median distance between distinct rows of ``z`` (1.0 when they all coincide)."""
    d = np.sqrt(_sq_dists(np.asarray(z, dtype=np.float64))[np.triu_indices(len(z), 1)])
    med = float(np.median(d)) if d.size else 0.0
    return med if med > 0 else 1.0


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased MMD^2 between the rows of ``x`` and ``y`` with ``k(a, b) = exp(-|a-b|^2 / (2 h^2))``."""
    z = np.vstack([x, y]).astype(np.float64)
    k = np.exp(-_sq_dists(z) / (2 * bandwidth**2))
    return float(_mmd2_from_kernel(k, (np.arange(len(z)) < len(x))[None, :])[0])


def _mmd2_from_kernel(k: np.ndarray, is_x: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for each labelling (row of boolean ``is_x``, [L, N]) of the pooled points."""
    k0 = k - np.diag(np.diag(k))
    a = is_x.astype(np.float64)
    b = 1.0 - a
    m = a.sum(1)
    n = b.sum(1)
    ka = k0 @ a.T  # [N, L]
    kb = k0 @ b.T
    sxx = (a.T * ka).sum(0)
    syy = (b.T * kb).sum(0)
    sxy = (a.T * kb).sum(0)  # the diagonal never pairs an x with a y
    return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2 * sxy / (m * n)


@dataclass(frozen=True)
class DriftTest:
    """A two-sample comparison of earlier (``x``) and new (``y``) embeddings."""

    n_before: int
    n_new: int
    mean_shift: float
    mmd2: float
    bandwidth: float
    p_value: float
    permutations: int


def mean_shift(x: np.ndarray, y: np.ndarray) -> float:
    """``|mean(y) - mean(x)| / sqrt(trace cov(x))`` (see the module docstring); inf when ``x`` has no spread."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    spread = np.sqrt(x.var(0, ddof=1).sum()) if len(x) > 1 else 0.0
    d = float(np.linalg.norm(y.mean(0) - x.mean(0)))
    return d / spread if spread > 0 else (0.0 if d == 0 else float("inf"))


def drift_test(x: np.ndarray, y: np.ndarray, *, permutations: int = 500, seed: int = 0, bandwidth: float | None = None) -> DriftTest:
    """MMD^2 of ``x`` vs ``y`` with its permutation p-value, and the mean shift."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"a drift test needs at least 2 embeddings on each side, got {len(x)} and {len(y)}")
    z = np.vstack([x, y])
    h = bandwidth if bandwidth is not None else median_bandwidth(z)
    k = np.exp(-_sq_dists(z) / (2 * h**2))
    n = len(z)
    observed = (np.arange(n) < len(x))[None, :]
    stat = float(_mmd2_from_kernel(k, observed)[0])
    rng = np.random.default_rng(seed)
    exceed = 0
    for start in range(0, permutations, 100):
        count = min(100, permutations - start)
        labels = np.stack([rng.permutation(n) < len(x) for _ in range(count)])
        exceed += int((_mmd2_from_kernel(k, labels) >= stat - 1e-12).sum())
    p = (1 + exceed) / (1 + permutations)
    return DriftTest(len(x), len(y), mean_shift(x, y), stat, float(h), float(p), permutations)
