"""Patch figures against brute force, and the spatial collapse they exist to catch."""

from __future__ import annotations

import numpy as np

from featurestore.health.patches import PatchAccumulator, patch_cosine, patch_rank
from featurestore.health.spectrum import effective_rank


def _brute_cosine(grid: np.ndarray) -> float:
    t = grid.reshape(grid.shape[0], -1).T  # [P, C]
    u = t / np.linalg.norm(t, axis=1, keepdims=True)
    c = u @ u.T
    p = len(t)
    return float((c.sum() - np.trace(c)) / (p * (p - 1)))


def test_patch_cosine_and_rank_equal_brute_force():
    rng = np.random.default_rng(0)
    grids = rng.standard_normal((5, 12, 4, 6)) + rng.standard_normal((5, 12, 1, 1))
    np.testing.assert_allclose(patch_cosine(grids.astype(np.float32)), [_brute_cosine(g) for g in grids], atol=1e-5)
    want = [effective_rank(np.linalg.svd(g.reshape(12, -1).T, compute_uv=False)) for g in grids]
    np.testing.assert_allclose(patch_rank(grids), want, rtol=1e-8)
    wide = rng.standard_normal((2, 40, 3, 3))  # more channels than tokens: the other Gram side
    np.testing.assert_allclose(patch_rank(wide), [effective_rank(np.linalg.svd(g.reshape(40, -1).T, compute_uv=False)) for g in wide],
                               rtol=1e-8)  # fmt: skip


def test_spatially_collapsed_grids_score_near_one_isotropic_near_zero():
    rng = np.random.default_rng(1)
    token = rng.standard_normal((8, 32, 1, 1))
    collapsed = token + 0.01 * rng.standard_normal((8, 32, 7, 7))
    iso = rng.standard_normal((8, 32, 7, 7))
    assert patch_cosine(collapsed).min() > 0.99
    assert np.abs(patch_cosine(iso)).max() < 0.05
    assert patch_rank(collapsed).max() < 0.5 * patch_rank(iso).min()


def test_accumulator_norm_map_and_rank_budget():
    rng = np.random.default_rng(2)
    grids = rng.standard_normal((10, 6, 5, 5)).astype(np.float32)
    grids[:, :, 0, :] *= 4  # a bright top row: the artefact the map should show
    acc = PatchAccumulator((6, 5, 5), rank_images=3, tokens_per_image=4, seed=0)
    acc.add(grids[:4])
    acc.add(grids[4:])
    np.testing.assert_allclose(acc.norm_map, np.linalg.norm(grids, axis=1).mean(0), rtol=1e-5)
    assert acc.norm_map[0].mean() > 3 * acc.norm_map[1:].mean()
    cos, rank, mean_norm = acc.per_image()
    assert len(cos) == 10 and np.isfinite(rank[:3]).all() and np.isnan(rank[3:]).all()
    np.testing.assert_allclose(mean_norm, np.linalg.norm(grids, axis=1).reshape(10, -1).mean(1), rtol=1e-5)
    assert acc.tokens.n == 40
