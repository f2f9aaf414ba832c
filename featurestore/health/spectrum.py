"""How many directions an embedding uses: effective rank, participation ratio, spectrum, anisotropy.

Everything is computed from streamed sufficient statistics (:class:`Moments`: the count, the sum,
the d x d Gram matrix and the sum of unit vectors), so a feature set of any size is read once,
in bounded memory, and the figures are exact, not estimated from a sample:

* singular values of the raw embedding matrix ``Z`` (n x d) are the square roots of the
  eigenvalues of ``Z^T Z``; RankMe (Garrido et al., ICML 2023) is ``exp`` of the entropy of
  those singular values normalised to sum to one: 1 for a rank-one set, ``min(n, d)`` for a
  perfectly spread one;
* the participation ratio ``(sum l)^2 / sum l^2`` of the covariance eigenvalues ``l`` counts
  the directions the variance is spread over (Gao et al., 2017), after removing the mean;
* anisotropy is the mean cosine over all distinct pairs, ``(|sum u|^2 - n) / (n (n - 1))``
  with ``u`` the unit vectors (Ethayarajh, 2019): near 1 when every embedding points the same way.

The Gram matrix is accumulated about a reference point (the first batch's mean) in float64,
so the covariance of a set with a large common mean does not lose its digits to cancellation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A dimension is dead when its variance is below this fraction of the mean variance per dimension.
DEAD_FRACTION = 1e-6


def effective_rank(singular_values: np.ndarray) -> float:
    """RankMe: ``exp(-sum p log p)`` with ``p = s / sum(s)`` over the singular values ``s``
    (zeros contribute nothing); 0 for an all-zero matrix."""
    s = np.clip(np.asarray(singular_values, dtype=np.float64), 0, None)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def participation_ratio(eigenvalues: np.ndarray) -> float:
    """``(sum l)^2 / sum l^2`` over the covariance eigenvalues ``l``: the number of equally
    strong directions that would hold the same variance; 0 when there is no variance."""
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0, None)
    sq = (lam**2).sum()
    return float(lam.sum() ** 2 / sq) if sq > 0 else 0.0


@dataclass(frozen=True)
class Spectrum:
    """The figures of one embedding matrix (see the module docstring)."""

    n: int
    dim: int
    singular_values: np.ndarray  # of the raw matrix, largest first, min(n, d) of them
    centered_singular_values: np.ndarray  # of the mean-removed matrix, largest first
    mean: np.ndarray
    variance: np.ndarray  # per dimension (ddof=1)
    covariance: np.ndarray  # d x d (ddof=1)
    rankme: float
    participation_ratio: float
    anisotropy: float
    dead: np.ndarray  # bool per dimension
    zero_rows: int  # rows of norm 0 (left out of the anisotropy)

    @property
    def dead_count(self) -> int:
        """How many dimensions are dead (variance below DEAD_FRACTION of the mean)."""
        return int(self.dead.sum())


class Moments:
    """Streaming sufficient statistics of the rows of an embedding matrix (see module docstring)."""

    def __init__(self, dim: int):
        self.dim = dim
        self.n = 0
        self.ref: np.ndarray | None = None
        self.sum = np.zeros(dim, dtype=np.float64)  # of (x - ref)
        self.gram = np.zeros((dim, dim), dtype=np.float64)  # of (x - ref)
        self.unit_sum = np.zeros(dim, dtype=np.float64)
        self.nonzero = 0

    def add(self, x: np.ndarray) -> np.ndarray:
        """Add the rows of ``x`` (n x dim); returns their norms."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.dim)
        if len(x) == 0:
            return np.zeros(0)
        if self.ref is None:
            self.ref = x.mean(0)
        c = x - self.ref
        self.n += len(x)
        self.sum += c.sum(0)
        self.gram += c.T @ c
        norms = np.linalg.norm(x, axis=1)
        ok = norms > 0
        self.unit_sum += (x[ok] / norms[ok, None]).sum(0)
        self.nonzero += int(ok.sum())
        return norms

    def spectrum(self) -> Spectrum:
        """The figures of every row added so far."""
        n, d = self.n, self.dim
        if n == 0:
            raise ValueError("no rows were added")
        ref = self.ref if self.ref is not None else np.zeros(d)
        mean_c = self.sum / n
        mean = ref + mean_c
        scatter = self.gram - n * np.outer(mean_c, mean_c)  # about the mean
        raw = self.gram + np.outer(ref, self.sum) + np.outer(self.sum, ref) + n * np.outer(ref, ref)  # Z^T Z
        k = min(n, d)
        sv = np.sqrt(np.clip(np.linalg.eigvalsh(raw)[::-1][:k], 0, None))
        lam = np.clip(np.linalg.eigvalsh(scatter)[::-1][: max(min(n - 1, d), 1)], 0, None)
        variance = np.clip(np.diag(scatter), 0, None) / max(n - 1, 1)
        dead = variance <= DEAD_FRACTION * variance.mean() if variance.mean() > 0 else np.ones(d, dtype=bool)
        m = self.nonzero
        aniso = float((self.unit_sum @ self.unit_sum - m) / (m * (m - 1))) if m > 1 else float("nan")
        return Spectrum(
            n=n,
            dim=d,
            singular_values=sv,
            centered_singular_values=np.sqrt(lam),
            mean=mean,
            variance=variance,
            covariance=scatter / max(n - 1, 1),
            rankme=effective_rank(sv),
            participation_ratio=participation_ratio(lam),
            anisotropy=aniso,
            dead=dead,
            zero_rows=n - m,
        )


def spectrum_of(x: np.ndarray) -> Spectrum:
    """The figures of one in-memory matrix (one :class:`Moments` pass)."""
    m = Moments(np.asarray(x).shape[1])
    m.add(x)
    return m.spectrum()
