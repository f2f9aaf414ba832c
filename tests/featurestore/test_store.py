"""The store suite: every backend (local disk, S3-compatible) must pass all of it."""

from __future__ import annotations

import dataclasses
import json

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import xarray as xr
import zarr

from featurestore import layout
from featurestore.errors import FeatureSetError, StoreCorruptionError, StoreVersionError
from featurestore.featureset import FeatureSetSpec
from featurestore.featureset.spec import FILES_SCHEME
from featurestore.store import Store
from tests.conftest import TINY_DIM, TINY_GRID, batch_for

IDS = [f"img{i:03d}" for i in range(40)]


def _open(backend, create=True) -> Store:
    url, opts = backend
    return Store.open(url, create=create, storage_options=opts)


def _write(fs, ids, batch=8, **kw):
    with fs.writer(**kw) as w:
        for k in range(0, len(ids), batch):
            c, p = batch_for(ids[k : k + batch])
            w.write(ids[k : k + batch], c, p, sha256=[f"sha-{i}" for i in ids[k : k + batch]])
    return w


def test_roundtrip_in_requested_order(backend, tiny_spec):
    store = _open(backend)
    fs = store.create_feature_set(tiny_spec)
    w = _write(fs, IDS)
    assert w.written == 40 and w.shards_committed == 3  # 16 + 16 + 8
    order = list(np.random.default_rng(0).permutation(IDS))
    got = fs.patches(order)
    _, want = batch_for(order)
    assert got.dtype == np.float16 and got.shape == (40, *TINY_GRID)
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-3, atol=1e-3)
    t = fs.cls()
    assert t.num_rows == 40 and sorted(t.column("image_id").to_pylist()) == IDS
    assert t.schema.field("cls").type.list_size == TINY_DIM
    want_cls, _ = batch_for(t.column("image_id").to_pylist())
    np.testing.assert_array_equal(np.asarray(t.column("cls").to_pylist(), np.float32), want_cls)
    assert t.column("sha256").to_pylist()[0].startswith("sha-")


def test_float32_storage_is_exact(backend):
    store = _open(backend)
    fs = store.create_feature_set(FeatureSetSpec("tiny", "w", TINY_GRID, TINY_DIM, dtype="float32", shard_images=16))
    _write(fs, IDS[:10])
    _, want = batch_for(IDS[:10])
    np.testing.assert_array_equal(fs.patches(IDS[:10]), want)


def test_torch_input_and_unsharded_layout(backend):
    store = _open(backend)
    fs = store.create_feature_set(FeatureSetSpec("tiny", "w2", TINY_GRID, TINY_DIM, sharded=False, shard_images=16))
    c, p = batch_for(IDS[:20])
    with fs.writer() as w:
        w.write(IDS[:20], torch.from_numpy(c), torch.from_numpy(p))
    np.testing.assert_allclose(fs.patches(IDS[:20]).astype(np.float32), p, atol=1e-3, rtol=1e-3)
    meta = json.loads(store.loc.read_bytes(layout.FEATURES_DIR, fs.id, layout.PATCHES_GROUP, layout.PATCHES_ARRAY, "zarr.json"))
    assert all(c["name"] != "sharding_indexed" for c in meta["codecs"])


def test_sharded_layout_on_disk(backend, tiny_spec):
    store = _open(backend)
    fs = store.create_feature_set(tiny_spec)
    _write(fs, IDS[:20])
    meta = json.loads(store.loc.read_bytes(layout.FEATURES_DIR, fs.id, layout.PATCHES_GROUP, layout.PATCHES_ARRAY, "zarr.json"))
    (shard,) = [c for c in meta["codecs"] if c["name"] == "sharding_indexed"]
    assert shard["configuration"]["chunk_shape"] == [1, *TINY_GRID]
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [16, *TINY_GRID]
    assert meta["dimension_names"] == list(layout.DIMENSION_NAMES)
    assert meta["data_type"] == "float16"
    parts = store.loc.list(layout.FEATURES_DIR, fs.id, layout.CLS_DIR)
    assert [layout.shard_of_part(p) for p in parts] == [0, 1]


def test_readable_without_radstore(backend, tiny_spec):
    """pyarrow, DuckDB, plain zarr-python and plain xarray read the store's files directly."""
    store = _open(backend)
    fs = store.create_feature_set(tiny_spec)
    _write(fs, IDS[:20])
    url, opts = backend
    base = f"{url}/features/{fs.id}"
    if opts is None:
        t = pq.read_table(f"{base}/cls")
        con = duckdb.connect()
        n, dim = con.execute(f"select count(*), max(len(cls)) from read_parquet('{base}/cls/*.parquet')").fetchone()
        assert (n, dim) == (20, TINY_DIM)
        arr = zarr.open_array(f"{base}/patches.zarr/patches", mode="r")
        ds = xr.open_zarr(f"{base}/patches.zarr", consolidated=False)
    else:
        import s3fs

        s3 = s3fs.S3FileSystem(**opts)
        t = pq.read_table(f"{base.removeprefix('s3://')}/cls", filesystem=s3)
        arr = zarr.open_array(f"{base}/patches.zarr/patches", mode="r", storage_options=opts)
        ds = xr.open_zarr(f"{base}/patches.zarr", consolidated=False, storage_options=opts)
    assert t.num_rows == 20
    row = t.to_pydict()
    i = row["image_id"].index("img005")
    _, want = batch_for(["img005"])
    np.testing.assert_allclose(arr[row["row"][i]].astype(np.float32), want[0], atol=1e-3, rtol=1e-3)
    assert ds["patches"].dims == layout.DIMENSION_NAMES


def test_to_xarray_is_lazy_and_committed_only(backend, tiny_spec):
    store = _open(backend)
    fs = store.create_feature_set(tiny_spec)
    _write(fs, IDS[:20])
    fs.allocate_shards(1)  # an allocated, never committed shard: must not appear
    ds = fs.to_xarray()
    assert ds.sizes["image_id"] == 20
    assert ds["patches"].chunks is not None  # dask-backed
    assert ds["patches"].dims == ("image_id", "channel", "y", "x")
    _, want = batch_for(["img007"])
    np.testing.assert_allclose(ds["patches"].sel(image_id="img007").values.astype(np.float32), want[0], atol=1e-3, rtol=1e-3)
    want_cls, _ = batch_for(["img007"])
    np.testing.assert_array_equal(ds["cls"].sel(image_id="img007").values, want_cls[0])
    assert not np.isnan(ds["patches"].mean().compute())


def test_resume_skips_committed(backend, tiny_spec):
    store = _open(backend)
    fs = store.create_feature_set(tiny_spec)
    _write(fs, IDS[:25])
    w = _write(fs, IDS)  # the whole list again
    assert w.skipped == 25 and w.written == 15
    assert len(fs) == 40
    assert fs.cls().num_rows == 40


def test_feature_set_identity(backend, tiny_spec):
    store = _open(backend)
    a = store.create_feature_set(tiny_spec)
    b = store.create_feature_set(FeatureSetSpec(**{**tiny_spec.to_json(), "grid": TINY_GRID}))
    assert a.id == b.id
    other = FeatureSetSpec(**{**tiny_spec.to_json(), "grid": TINY_GRID, "preprocessing": {"bits": 8}})
    c = store.create_feature_set(other)
    assert c.id != a.id and c.id.startswith("tiny-")
    assert sorted(store.feature_set_ids()) == sorted([a.id, c.id])
    with pytest.raises(KeyError, match="no feature set 'nope'"):
        store.feature_set("nope")


@pytest.mark.parametrize(
    "case, match",
    [
        ("cls_shape", r"cls has shape \(4, 5\)"),
        ("patch_shape", r"patches have shape \(4, 8, 4, 3\)"),
        ("int_dtype", "must be floating point"),
        ("nan", "NaN or Inf in the embedding of image_id\\(s\\) b2"),
        ("inf", "NaN or Inf in the embedding of image_id\\(s\\) b1"),
        ("dup", "b1 appear twice in one batch"),
        ("empty_id", "empty image_id"),
    ],
)
def test_bad_batch_commits_nothing(backend, tiny_spec, case, match):
    store = _open(backend)
    fs = store.create_feature_set(tiny_spec)
    ids = ["b0", "b1", "b2", "b3"]
    c, p = batch_for(ids)
    if case == "cls_shape":
        c = c[:, :5]
    elif case == "patch_shape":
        p = p[..., :3]
    elif case == "int_dtype":
        p = p.astype(np.int32)
    elif case == "nan":
        p[2, 0, 1, 1] = np.nan
    elif case == "inf":
        c[1, 0] = np.inf
    elif case == "dup":
        ids = ["b0", "b1", "b1", "b3"]
    elif case == "empty_id":
        ids = ["b0", "", "b2", "b3"]
    with fs.writer() as w:
        w.write(["ok0", "ok1"], *batch_for(["ok0", "ok1"]))
        with pytest.raises(FeatureSetError, match=match):
            w.write(ids, c, p)
    # The good batch before is committed; nothing of the bad one.
    assert sorted(fs.committed_ids()) == ["ok0", "ok1"]


def test_unknown_image_id_is_named(backend, tiny_spec):
    store = _open(backend)
    fs = store.create_feature_set(tiny_spec)
    _write(fs, IDS[:3])
    with pytest.raises(FeatureSetError, match="no committed row .*: ghost"):
        fs.patches(["img000", "ghost"])


def test_newer_store_format_is_refused(backend):
    store = _open(backend)
    meta = dict(store.meta, format_version=layout.FORMAT_VERSION + 1)
    store.loc.write_json(meta, layout.STORE_JSON)
    with pytest.raises(StoreVersionError, match=f"format version {layout.FORMAT_VERSION + 1}.*Upgrade radstore"):
        _open(backend, create=False)


def test_newer_feature_set_format_is_refused(backend, tiny_spec):
    store = _open(backend)
    fs = store.create_feature_set(tiny_spec)
    meta = dict(fs.meta, format_version=99)
    fs.loc.write_json(meta, layout.FEATURE_SET_JSON)
    with pytest.raises(StoreVersionError, match="format version 99"):
        store.feature_set(fs.id)


def test_missing_grid_is_detected_not_read_as_fill(backend, tiny_spec):
    """A committed row whose shard vanished must raise, never return NaN fill values."""
    store = _open(backend)
    fs = store.create_feature_set(tiny_spec)
    _write(fs, IDS[:20])
    shard_key = fs.loc.path(layout.PATCHES_GROUP, layout.PATCHES_ARRAY, "c", "1", "0", "0", "0")
    assert fs.loc.fs.exists(shard_key)
    fs.loc.fs.rm(shard_key)
    assert fs.verify() == IDS[16:20]
    with pytest.raises(StoreCorruptionError, match="img017"):
        fs.patches(["img001", "img017"])
    np.testing.assert_allclose(fs.patches(["img001"]).astype(np.float32), batch_for(["img001"])[1], atol=1e-3, rtol=1e-3)


def test_duplicate_commit_keeps_first(backend, tiny_spec):
    """Two racing backfills may both commit an image: readers keep the first shard's row."""
    store = _open(backend)
    fs = store.create_feature_set(tiny_spec)
    _write(fs, IDS[:4])
    _write(fs, IDS[:4], skip_committed=False)
    t = fs.cls()
    assert t.num_rows == 4
    assert set(t.column("shard").to_pylist()) == {0}


def test_summary_counts(backend, tiny_spec):
    store = _open(backend)
    fs = store.create_feature_set(tiny_spec)
    _write(fs, IDS[:20])
    s = store.summary()
    (f,) = s["feature_sets"]
    assert f["images"] == 20 and f["grid"] == "8x4x4" and f["bytes"] > 20 * 8 * 16 * 2


def test_opening_a_missing_store_says_how_to_create(tmp_path):
    from featurestore.errors import RadstoreError

    with pytest.raises(RadstoreError, match="no radstore store at .*Create one"):
        Store.open(str(tmp_path / "nothing"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(RadstoreError, match="not empty and is not a radstore store"):
        Store.open(str(tmp_path / "junk"), create=True)


# -- weights fingerprint schemes: a feature set written with the legacy fingerprint --------------


def _files_spec(tiny_spec: FeatureSetSpec) -> FeatureSetSpec:
    """tiny_spec as the files-v1 scheme fingerprints the same weights."""
    return dataclasses.replace(tiny_spec, weights_fingerprint="files-fp", fingerprint_scheme=FILES_SCHEME)


def test_a_legacy_feature_set_is_found_and_aliased(backend, tiny_spec):
    """tiny_spec plays the feature set a previous version wrote (fingerprint "test-weights", no
    scheme); the same weights fingerprinted from the files find it, with its rows."""
    store = _open(backend)
    old = store.create_feature_set(tiny_spec)
    _write(old, IDS[:5])
    new = _files_spec(tiny_spec)
    calls = []

    def legacy() -> str:
        calls.append(1)
        return tiny_spec.weights_fingerprint

    fs = store.create_feature_set(new, legacy_fingerprint=legacy)
    assert fs.id == old.id and len(fs) == 5 and calls == [1]
    assert store.feature_set_ids() == [old.id]
    record = json.loads(store.loc.read_bytes(layout.ALIASES_DIR, layout.alias_name(new.feature_set_id)))
    assert record["alias_of"] == old.id and record["feature_set_id"] == new.feature_set_id
    assert (record["fingerprint_scheme"], record["weights_fingerprint"], record["legacy_fingerprint"]) == (
        "files-v1",
        "files-fp",
        "test-weights",
    )
    # Later lookups go through the alias: the legacy fingerprint is not computed again.
    assert store.create_feature_set(new, legacy_fingerprint=legacy).id == old.id and calls == [1]
    assert store.create_feature_set(new).id == old.id
    assert store.feature_set(new.feature_set_id).id == old.id
    (info,) = store.summary()["feature_sets"]
    assert info["fingerprint_scheme"] == "legacy module state_dict"
    assert info["aliases"] == [{"feature_set_id": new.feature_set_id, "fingerprint_scheme": "files-v1", "weights_fingerprint": "files-fp"}]


def test_no_alias_without_the_same_spec(backend, tiny_spec):
    """Another spec (here another dtype) or no legacy feature set: a new feature set, no alias."""
    store = _open(backend)
    store.create_feature_set(tiny_spec)
    new = dataclasses.replace(_files_spec(tiny_spec), dtype="float32")
    fs = store.create_feature_set(new, legacy_fingerprint=lambda: tiny_spec.weights_fingerprint)
    assert fs.id == new.feature_set_id != tiny_spec.feature_set_id
    assert fs.spec.scheme_name == "files-v1" and store.aliases() == {}
    other = store.create_feature_set(_files_spec(tiny_spec), legacy_fingerprint=lambda: "other-weights")
    assert other.id == _files_spec(tiny_spec).feature_set_id and store.aliases() == {}
    schemes = {f["feature_set_id"]: f["fingerprint_scheme"] for f in store.summary()["feature_sets"]}
    assert schemes == {tiny_spec.feature_set_id: "legacy module state_dict", fs.id: "files-v1", other.id: "files-v1"}


def test_a_new_feature_set_wins_over_a_legacy_one(backend, tiny_spec):
    """Once the files-v1 feature set exists it is the one used; the legacy callable is not called."""
    store = _open(backend)
    new = store.create_feature_set(_files_spec(tiny_spec))
    store.create_feature_set(tiny_spec)

    def boom() -> str:
        raise AssertionError("the legacy fingerprint is not needed")

    assert store.create_feature_set(_files_spec(tiny_spec), legacy_fingerprint=boom).id == new.id
