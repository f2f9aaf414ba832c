"""The leakage audit against brute force over every pair."""

from __future__ import annotations

import numpy as np

from featurestore.health.leakage import audit, unit_rows


def test_audit_equals_brute_force_in_any_block_size():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((300, 16))
    test = rng.standard_normal((70, 16))
    test[[3, 40, 41]] = train[[10, 200, 200]] + 0.01 * rng.standard_normal((3, 16))  # planted near-duplicates
    c = np.vstack([train, test]).mean(0)
    te, tr = unit_rows(test, c), unit_rows(train, c)
    full = te.astype(np.float64) @ tr.T.astype(np.float64)
    for block in (1, 16, 1024):
        nb = audit(te, tr, 0.9, block=block)
        np.testing.assert_array_equal(nb.nearest, full.argmax(1))
        np.testing.assert_allclose(nb.nearest_cosine, full.max(1), atol=1e-5)
        want = {(int(i), int(j)) for i, j in zip(*np.nonzero(full >= 0.9))}
        assert {tuple(p) for p in nb.pairs.tolist()} == want == {(3, 10), (40, 200), (41, 200)}
        assert list(nb.pair_cosine) == sorted(nb.pair_cosine, reverse=True)


def test_empty_sides():
    nb = audit(np.zeros((0, 4), np.float32), np.ones((3, 4), np.float32), 0.9)
    assert len(nb.pairs) == 0 and len(nb.nearest) == 0


def test_a_collapsed_set_is_counted_and_its_listing_capped():
    rng = np.random.default_rng(1)
    v = rng.standard_normal(8)
    train, test = v + 1e-4 * rng.standard_normal((500, 8)), v + 1e-4 * rng.standard_normal((40, 8))
    te, tr = unit_rows(test), unit_rows(train)
    full = te.astype(np.float64) @ tr.T.astype(np.float64)
    nb = audit(te, tr, 0.9, per_image=3, block=16)
    assert nb.count == 40 * 500  # every pair qualifies, and is counted
    assert len(nb.pairs) == 40 * 3  # but each test image lists its 3 closest
    for (i, j), c in zip(nb.pairs, nb.pair_cosine):
        assert c >= np.sort(full[i])[-3] - 1e-6 and abs(c - full[i, j]) < 1e-5
