"""radstore's direct shard I/O and the committed index (featurestore.layout) against zarr."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from featurestore import layout
from featurestore.errors import FeatureSetError, StoreCorruptionError
from featurestore.featureset import FeatureSet, FeatureSetSpec
from featurestore.store import Store
from tests.conftest import TINY_DIM, TINY_GRID, batch_for

IDS = [f"img{i:03d}" for i in range(40)]


def _open(backend) -> Store:
    url, opts = backend
    return Store.open(url, create=True, storage_options=opts)


def _write(fs, ids, batch=8, **kw):
    with fs.writer(**kw) as w:
        for k in range(0, len(ids), batch):
            c, p = batch_for(ids[k : k + batch])
            w.write(ids[k : k + batch], c, p)


def _zarr_array(fs):
    with zarr.config.set({"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}):
        return zarr.open_group(fs.loc.zarr_store(layout.PATCHES_GROUP, read_only=True), mode="r")[layout.PATCHES_ARRAY]


def test_directly_written_shards_are_what_zarr_reads(backend, tiny_spec):
    """Plain shards (full and partial) read back identically through plain zarr-python."""
    fs = _open(backend).create_feature_set(tiny_spec)
    assert fs.plain_layout
    _write(fs, IDS)  # shards of 16: 16 + 16 + 8 (a partial shard)
    _, want = batch_for(IDS)
    arr = _zarr_array(fs)
    rows = fs.cls(columns=["image_id", "row"]).sort_by("row")
    got = np.stack([arr[r] for r in rows.column("row").to_pylist()])
    np.testing.assert_array_equal(got, want.astype(np.float16)[[IDS.index(i) for i in rows.column("image_id").to_pylist()]])
    assert np.isnan(arr[40:48]).all()  # never-written images of the partial shard: the fill value


def test_zarr_written_shards_read_directly(backend):
    """Shards written by zarr (compressed layouts excepted) are read by the direct path too."""
    spec = FeatureSetSpec("tiny", "z", TINY_GRID, TINY_DIM, shard_images=16)
    fs = _open(backend).create_feature_set(spec)
    _write(fs, IDS[:20], batch=5, direct=False)  # through zarr's sharding codec
    fresh = FeatureSet.open(fs.loc)
    assert fresh.plain_layout
    order = list(np.random.default_rng(1).permutation(IDS[:20]))
    _, want = batch_for(order)
    np.testing.assert_array_equal(fresh.patches(order), want.astype(np.float16))
    np.testing.assert_array_equal(fresh.read_span(np.arange(16, 20)), batch_for(IDS[16:20])[1].astype(np.float16))


def test_compressed_layout_is_not_plain(backend):
    fs = _open(backend).create_feature_set(FeatureSetSpec("tiny", "c", TINY_GRID, TINY_DIM, shard_images=16, codec="zstd"))
    assert not fs.plain_layout
    with pytest.raises(FeatureSetError, match="plain shard layout"):
        fs.writer(direct=True)
    _write(fs, IDS[:20])
    np.testing.assert_array_equal(fs.patches(IDS[:20]), batch_for(IDS[:20])[1].astype(np.float16))


def test_direct_read_of_a_missing_shard_raises(backend, tiny_spec):
    fs = _open(backend).create_feature_set(tiny_spec)
    _write(fs, IDS[:32])
    fs.loc.fs.rm(fs.loc.path(fs.shard_key(1)))
    fresh = FeatureSet.open(fs.loc)
    with pytest.raises(StoreCorruptionError, match="img016"):
        fresh.patches(["img001", "img016"])
    with pytest.raises(StoreCorruptionError):
        fresh.read_span(np.arange(16, 32))


def test_committed_index(backend, tiny_spec, monkeypatch):
    monkeypatch.setattr(FeatureSet, "COMMITTED_INDEX_MIN_NEW_PARTS", 2)
    fs = _open(backend).create_feature_set(tiny_spec)
    _write(fs, IDS[:32])  # 2 parts
    full = fs.cls(columns=["image_id", "row", "shard"])
    assert fs.committed_rows(update_index=True).num_rows == 32
    (index,) = fs.loc.list(layout.COMMITTED_DIR, suffix=".parquet")
    assert layout.committed_index_parts(index) == 2
    # A later commit is seen through the index plus the one part it does not name.
    _write(fs, IDS[32:])
    assert fs.committed_ids() == set(IDS)
    assert fs.cls(columns=["image_id", "row", "shard"]).num_rows == 40
    assert fs.cls(columns=["image_id", "row", "shard"]).slice(0, 32).equals(full)
    fs.committed_rows(update_index=True)  # only 1 new part: below the threshold, index kept
    assert fs.loc.list(layout.COMMITTED_DIR, suffix=".parquet") == [index]
    # Readers never trust an index naming a part that is gone: the parts are the truth.
    part0 = fs.cls_parts()[0]
    fs.loc.fs.rm(part0)
    assert fs.committed_ids() == set(IDS[16:])
    # Repeated commits: the index keeps every row, readers keep the first.
    _write_dupe = fs.writer(skip_committed=False)
    with _write_dupe as w:
        c, p = batch_for(IDS[16:20])
        w.write(IDS[16:20], c, p)
    t = fs.cls(columns=["image_id", "shard"])
    assert t.num_rows == 24 and set(
        t.filter(np.isin(t.column("image_id").to_numpy(zero_copy_only=False), IDS[16:20])).column("shard").to_pylist()
    ) == {1}


def test_map_rows_is_read_span_without_the_read(tmp_path, tiny_spec):
    fs = Store.open(str(tmp_path / "s"), create=True).create_feature_set(tiny_spec)
    _write(fs, IDS)
    rows = np.array([17, 20, 31, 16])
    mapped, at = fs.map_rows(rows)
    np.testing.assert_array_equal(mapped[at], fs.read_span(rows))
    assert fs.map_rows(np.array([15, 16])) is None  # two shards
    z = Store.open(str(tmp_path / "z"), create=True).create_feature_set(
        FeatureSetSpec("tiny", "c", TINY_GRID, TINY_DIM, shard_images=16, codec="zstd")
    )
    _write(z, IDS[:16])
    assert z.map_rows(np.arange(4)) is None
