"""Leakage audit: test images whose embedding nearly repeats a training image's.

A near-duplicate across splits (the same film exported twice, a re-scan filed under another
patient id) lets a head score well on the test split by memory. The audit compares every test
image with every training image by cosine similarity of their global embeddings, exactly (no
approximate index), in blocks of test rows so memory stays ``block x n_train``: a 100,000-image
cohort is a few dense matrix products.

The cosine is taken after whitening (Su et al., 2021, "Whitening sentence representations";
a Mahalanobis-type cosine): the embeddings are centred on the feature set's mean and rotated
and scaled by its covariance, ``W = V diag(l + r mean(l))^-1/2`` from the eigenvectors ``V``
and eigenvalues ``l`` with a small ridge ``r``. Most encoders' embeddings share a common
direction (see anisotropy) and spend most of their variance in a few more (a random or
untrained network especially), which puts every raw -- even centred -- cosine near 1 and hides
a duplicate among ordinary neighbours; after whitening, unrelated images spread out and a
near-duplicate stands out near 1. ``whiten=None`` audits the centred cosine instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Neighbours:
    """The audit of one test set against one training set (indices into each)."""

    nearest: np.ndarray  # per test row: index of its nearest training row
    nearest_cosine: np.ndarray  # and that cosine
    pairs: np.ndarray  # [k, 2] (test row, train row): each test row's closest pairs at or above the threshold
    pair_cosine: np.ndarray  # [k], descending
    count: int  # every pair at or above the threshold, listed or not


def whitener(covariance: np.ndarray, ridge: float) -> np.ndarray:
    """``V diag(l + ridge * mean(l))^-1/2`` (see the module docstring); identity without variance."""
    lam, v = np.linalg.eigh(np.asarray(covariance, dtype=np.float64))
    lam = np.clip(lam, 0, None)
    floor = ridge * lam.mean()
    if floor <= 0:
        return np.eye(len(lam))
    return v / np.sqrt(lam + floor)


def unit_rows(x: np.ndarray, center: np.ndarray | None = None, transform: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``x`` (minus ``center``, times ``transform``) scaled to norm 1 (rows of norm 0 stay 0), float32."""
    x = np.asarray(x, dtype=np.float32)
    if center is not None:
        x = x - center.astype(np.float32)
    if transform is not None:
        x = x @ transform.astype(np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1)


def audit(test: np.ndarray, train: np.ndarray, threshold: float, *, per_image: int = 5, block: int = 1024) -> Neighbours:
    """Exact cosine neighbours of unit rows ``test`` among unit rows ``train`` (:func:`unit_rows`):
    every test row's nearest, the count of pairs at or above ``threshold``, and each test row's
    ``per_image`` closest of them listed (a collapsed feature set, where every pair qualifies,
    stays a count instead of ``n_test x n_train`` rows)."""
    if len(train) == 0 or len(test) == 0:
        z = np.zeros(0, dtype=np.int64)
        return Neighbours(z, np.zeros(0), np.zeros((0, 2), dtype=np.int64), np.zeros(0), 0)
    nearest = np.empty(len(test), dtype=np.int64)
    best = np.empty(len(test), dtype=np.float64)
    pairs: list[np.ndarray] = [np.zeros((0, 2), dtype=np.int64)]
    cos: list[np.ndarray] = [np.zeros(0)]
    count = 0
    train_t = np.ascontiguousarray(train.T)
    k = max(1, min(per_image, len(train)))
    for start in range(0, len(test), block):
        s = test[start : start + block] @ train_t  # [b, n_train]
        j = s.argmax(1)
        top = s[np.arange(len(s)), j]
        nearest[start : start + len(s)] = j
        best[start : start + len(s)] = top
        hit = np.flatnonzero(top >= threshold)  # only a row whose nearest qualifies has pairs
        if not len(hit):
            continue
        sh = s[hit]
        count += int((sh >= threshold).sum())
        cand = np.argpartition(-sh, k - 1, axis=1)[:, :k] if k < sh.shape[1] else np.broadcast_to(np.arange(sh.shape[1]), sh.shape)
        cs = np.take_along_axis(sh, cand, 1)
        r, q = np.nonzero(cs >= threshold)
        pairs.append(np.stack([hit[r] + start, cand[r, q]], 1))
        cos.append(cs[r, q].astype(np.float64))
    p = np.concatenate(pairs)
    pc = np.concatenate(cos)
    order = np.lexsort((p[:, 1], p[:, 0], -pc))
    return Neighbours(nearest, best, p[order], pc[order], count)
