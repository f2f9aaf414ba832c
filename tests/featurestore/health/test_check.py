"""A health version read from a store: every figure equals its independent computation, planted
collapse is flagged and an isotropic set is not, planted duplicates and drift are found, and
unchanged inputs return the stored version."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from featurestore import layout
from featurestore.errors import RadstoreError
from featurestore.featureset import FeatureSetSpec
from featurestore.health import HealthConfig, check_health, latest_health
from featurestore.health.compute import choose
from featurestore.layout.records import list_health
from featurestore.store import Store
from tests.featurestore.health.conftest import register_images, write_set

N, D, GRID = 120, 24, (16, 5, 5)
CFG = HealthConfig(sample=50, rank_images=10, permutations=199)


def _cohort(store, n=N, seed=0, prefix="i"):
    rng = np.random.default_rng(seed)
    ids = [f"{prefix}{k:04d}" for k in range(n)]
    splits = list(rng.choice(["train", "val", "test"], n, p=[0.6, 0.2, 0.2]))
    register_images(store, ids, splits, [f"p-{i}" for i in ids])
    return ids, splits


def _summary(result) -> dict[str, dict]:
    return {r["metric"]: r for r in result.tables["summary"].to_pylist()}


def test_every_figure_equals_its_independent_computation(store):
    rng = np.random.default_rng(0)
    ids, _ = _cohort(store)
    g = rng.standard_normal((N, 4)) @ rng.standard_normal((4, D)) + 0.3 * rng.standard_normal((N, D)) + 2.0
    grids = rng.standard_normal((N, *GRID)) + rng.standard_normal((N, GRID[0], 1, 1))
    fsid = write_set(store, ids, g, grids)
    px = rng.standard_normal((N, 9))
    pxid = write_set(store, ids, px, rng.standard_normal((N, 4, 3, 3)), encoder="pixels")
    r = check_health(store, fsid, CFG)
    s = _summary(r)
    g32 = g.astype(np.float32).astype(np.float64)  # what the store holds
    sv = np.linalg.svd(g32, compute_uv=False)
    p = sv / sv.sum()
    assert s["rankme"]["value"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
    lam = np.linalg.eigvalsh(np.cov(g32.T))
    assert s["participation_ratio"]["value"] == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-6)
    u = g32 / np.linalg.norm(g32, axis=1, keepdims=True)
    assert s["anisotropy"]["value"] == pytest.approx(((u @ u.T).sum() - N) / (N * (N - 1)), abs=1e-9)
    norms = np.linalg.norm(g32, axis=1)
    assert s["norm_median"]["value"] == pytest.approx(np.median(norms), rel=1e-9)
    spec = r.tables["spectrum"].filter(pa.compute.equal(r.tables["spectrum"]["source"], "global"))
    np.testing.assert_allclose(spec.column("singular_value").to_numpy(), sv, rtol=1e-6)
    # the patch figures of exactly the sampled images (seeded, by committed row order = id order here)
    pos = choose(N, CFG.sample, CFG.seed, "sample")
    rows = r.tables["patch_images"].to_pylist()
    assert [x["image_id"] for x in rows] == [ids[i] for i in pos]
    for x, i in zip(rows, pos):
        t = grids[i].astype(np.float32).reshape(GRID[0], -1).T.astype(np.float64)
        ut = t / np.linalg.norm(t, axis=1, keepdims=True)
        assert x["patch_cosine"] == pytest.approx(((ut @ ut.T).sum() - len(t)) / (len(t) * (len(t) - 1)), abs=1e-5)
    assert sum(x["patch_rank"] is not None for x in rows) == CFG.rank_images
    nm = r.tables["norm_map"].sort_by([("y", "ascending"), ("x", "ascending")]).column("mean_norm").to_numpy().reshape(GRID[1:])
    np.testing.assert_allclose(nm, np.linalg.norm(grids[pos].astype(np.float32), axis=1).mean(0), rtol=1e-5)
    # CKA with the pixels control on the sampled images
    x, y = g32[pos] - g32[pos].mean(0), px[pos].astype(np.float32).astype(np.float64)
    y = y - y.mean(0)
    cka = np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))
    assert s["cka_pixels"]["value"] == pytest.approx(cka, rel=1e-6)
    assert s["cka_pixels"]["detail"] == pxid
    dims = r.tables["dimensions"]
    np.testing.assert_allclose(dims.column("variance").to_numpy(), g32.var(0, ddof=1), rtol=1e-6)


def test_planted_collapse_is_flagged_and_an_isotropic_set_is_not(store):
    rng = np.random.default_rng(1)
    ids, _ = _cohort(store)
    iso = check_health(store, write_set(store, ids, rng.standard_normal((N, D)), rng.standard_normal((N, *GRID)), tag="iso"), CFG)
    v, token = rng.standard_normal(D), rng.standard_normal((GRID[0], 1, 1))
    collapsed_grids = token + 0.01 * rng.standard_normal((N, *GRID))  # every patch token equal, plus noise
    collapsed = check_health(store, write_set(store, ids, v + 0.01 * rng.standard_normal((N, D)), collapsed_grids, tag="flat"), CFG)
    assert iso.record.flags == []
    flagged = {r["metric"] for r in collapsed.tables["summary"].to_pylist() if r["flagged"]}
    assert {"anisotropy", "patch_cosine_median"} <= flagged
    assert any("patch_cosine_median" in f for f in collapsed.record.flags)
    assert _summary(collapsed)["patch_rank_median"]["value"] < 0.5 * _summary(iso)["patch_rank_median"]["value"]


def test_every_planted_duplicate_is_found_with_no_false_pair(store):
    rng = np.random.default_rng(2)
    ids, splits = _cohort(store, n=300)
    g = rng.standard_normal((300, D)) + 3.0  # a common direction: raw cosines would all be high
    train = [i for i, s in enumerate(splits) if s == "train"]
    test = [i for i, s in enumerate(splits) if s == "test"]
    planted = list(zip(test[:5], train[:5]))
    for t, s in planted:
        g[t] = g[s] + 0.05 * rng.standard_normal(D)
    r = check_health(store, write_set(store, ids, g, rng.standard_normal((300, *GRID))), CFG)
    found = {(x["test_image_id"], x["train_image_id"]) for x in r.tables["leakage"].to_pylist()}
    assert found == {(ids[t], ids[s]) for t, s in planted}
    assert all(x["test_patient_id"] == f"p-{x['test_image_id']}" for x in r.tables["leakage"].to_pylist())
    assert _summary(r)["pairs"]["value"] == 5 and _summary(r)["pairs"]["flagged"]
    assert r.tables["neighbours"].num_rows == len(test)


def _grow(store, fsid, ids, g, grids):
    fs = store.feature_set(fsid)
    with fs.writer() as w:
        for k in range(0, len(ids), 16):
            w.write(ids[k : k + 16], g[k : k + 16].astype(np.float32), grids[k : k + 16].astype(np.float32))


@pytest.mark.parametrize("shift", [0.0, 0.8])
def test_a_backfill_is_compared_with_the_images_before(store, shift):
    rng = np.random.default_rng(3)
    ids, _ = _cohort(store, n=200)
    g = rng.standard_normal((200, D))
    grids = rng.standard_normal((200, *GRID))
    fsid = write_set(store, ids[:120], g[:120], grids[:120])
    first = check_health(store, fsid, CFG)
    assert first.tables["drift"].num_rows == 0 and first.record.previous is None
    again = check_health(store, fsid, CFG)
    assert not again.created and again.record.health_id == first.record.health_id and again.path == first.path
    g[120:, :3] += shift * 3  # a new scanner: the backfill's embeddings move
    _grow(store, fsid, ids[120:], g[120:], grids[120:])
    second = check_health(store, fsid, CFG)
    assert second.created and second.record.previous == first.record.health_id
    (row,) = second.tables["drift"].to_pylist()
    assert (row["n_before"], row["n_new"], row["backfill"]) == (120, 80, 1)
    if shift:
        assert row["flagged"] and row["p_value"] < 0.01 and row["mean_shift"] > 0.3
        assert any(f.startswith("drift p_value") for f in second.record.flags)
    else:
        assert not row["flagged"] and row["p_value"] > 0.01
    # the next version carries the history
    ids2 = [f"j{k:04d}" for k in range(40)]
    register_images(store, ids2, ["train"] * 40, ids2)
    _grow(store, fsid, ids2, rng.standard_normal((40, D)), rng.standard_normal((40, *GRID)))
    third = check_health(store, fsid, CFG)
    assert [r["backfill"] for r in third.tables["drift"].to_pylist()] == [1, 2]
    assert latest_health(store.feature_set(fsid)).health_id == third.record.health_id


def test_drift_compares_versions_of_the_same_config_and_takes_new_rows_by_part(store, monkeypatch):
    rng = np.random.default_rng(6)
    ids, _ = _cohort(store, n=200)
    g = rng.standard_normal((200, D))
    g[120:, :3] += 2.4  # the backfill moved
    grids = rng.standard_normal((200, *GRID))
    fsid = write_set(store, ids[:120], g[:120], grids[:120])
    first = check_health(store, fsid, CFG)
    other = HealthConfig(sample=40, rank_images=10, permutations=199)  # another configuration's version in between
    check_health(store, fsid, other)
    # a writer whose rows are stamped before the first check (a slow worker's commit landing late)
    import featurestore.layout as L

    old = L.now_ms()
    early = old.replace(year=old.year - 1)
    monkeypatch.setattr(L, "now_ms", lambda: early)
    _grow(store, fsid, ids[120:], g[120:], grids[120:])
    monkeypatch.undo()
    second = check_health(store, fsid, CFG)
    assert second.record.previous == first.record.health_id
    (row,) = second.tables["drift"].to_pylist()
    assert (row["n_before"], row["n_new"]) == (120, 80) and row["flagged"]
    alone = check_health(store, fsid, HealthConfig(sample=30, rank_images=10, permutations=199))  # a first version of its own
    assert alone.record.previous is None and alone.tables["drift"].num_rows == 0


def test_config_errors_name_the_key():
    for bad, match in (({"permutations": 50}, "cannot reach"), ({"drift_sample": 0}, "drift_sample"), ({"leakage_whiten": 0}, "leakage_whiten"),
                       ({"leakage_pairs_per_image": 0}, "leakage_pairs_per_image")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            HealthConfig(**bad)
    assert HealthConfig(permutations=100, drift_alpha=0.01).permutations == 100


def test_a_version_exists_only_once_its_record_is_written(store):
    rng = np.random.default_rng(4)
    ids, _ = _cohort(store)
    fsid = write_set(store, ids, rng.standard_normal((N, D)), rng.standard_normal((N, *GRID)))
    r = check_health(store, fsid, CFG)
    fs = store.feature_set(fsid)
    os.remove(os.path.join(r.path, layout.HEALTH_JSON))  # a crash before the commit
    assert list_health(fs) == []
    again = check_health(store, fsid, CFG)
    assert again.created and again.record.health_id == r.record.health_id


def test_int8_feature_set_and_errors(store):
    rng = np.random.default_rng(5)
    ids, _ = _cohort(store)
    grids = rng.standard_normal((N, *GRID))
    r = check_health(store, write_set(store, ids, rng.standard_normal((N, D)), grids, dtype="int8", tag="q"), CFG)
    cos = r.tables["patch_images"].column("patch_cosine").to_numpy()
    assert np.isfinite(cos).all() and np.abs(cos).max() < 0.2  # dequantised, not codes
    empty = store.create_feature_set(FeatureSetSpec(encoder="synthetic", weights_fingerprint="empty", grid=GRID, global_dim=D))
    with pytest.raises(RadstoreError, match="no committed rows"):
        check_health(store, empty.id, CFG)
    with pytest.raises(ValueError, match="unknown key"):
        HealthConfig.from_dict({"samples": 3})


def test_a_check_on_an_object_store_equals_the_local_one(store, s3_server, tmp_path):
    import uuid

    rng = np.random.default_rng(7)
    s3 = Store.open(f"s3://radstore-test/health-{uuid.uuid4().hex[:8]}", create=True, storage_options=s3_server)
    g, grids = rng.standard_normal((N, D)), rng.standard_normal((N, *GRID))
    results = []
    for st in (store, s3):
        ids, _ = _cohort(st)
        results.append(check_health(st, write_set(st, ids, g, grids), CFG))
    local, remote = results
    drop = ["created_at", "health_id"]  # part names, hence ids, are unique per write
    assert remote.tables["summary"].drop(drop).equals(local.tables["summary"].drop(drop))
    again = check_health(s3, remote.record.feature_set_id, CFG)
    assert not again.created and len(again.record.parts) == len(local.record.parts) > 1


def test_a_handful_of_images_is_reported_not_flagged(store):
    rng = np.random.default_rng(8)
    ids, _ = _cohort(store, n=3)
    r = check_health(store, write_set(store, ids, rng.standard_normal((3, D)), rng.standard_normal((3, *GRID))), CFG)
    s = _summary(r)
    assert s["participation_ratio"]["value"] <= 2 and s["participation_ratio"]["flagged"] is None
    assert r.record.flags == []
