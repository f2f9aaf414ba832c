"""int8 patch grids: the quantisation against a numpy oracle, what is stored, and every read path.

The oracle is the documented rule computed by numpy in float32: scale[c] = max|x[c]| / 127,
q = clip(round(x / scale), -127, 127) (a zero channel: scale 0, codes 0), x' = q * scale.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from featurestore import layout
from featurestore.errors import FeatureSetError, StoreCorruptionError
from featurestore.featureset import SUPPORTED_DTYPES, FeatureSetSpec
from featurestore.featureset.quantize import quantize
from featurestore.store import Store
from heads.data import StreamingLoader
from tests.oracle import batch_for

GRID = (8, 4, 4)
DIM = 6
IDS = [f"img{k:03d}" for k in range(40)]  # 16-image shards: two whole, one partial


def oracle(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, scales, dequantised) of float grids ``x`` [N, C, H, W] by the documented rule."""
    x = x.astype(np.float32)
    scales = np.abs(x).max(axis=(2, 3)) / np.float32(127)
    div = np.where(scales > 0, scales, np.float32(1))[:, :, None, None]
    q = np.clip(np.round(x / div), -127, 127).astype(np.int8)
    return q, scales, q.astype(np.float32) * scales[:, :, None, None]


def grids(ids: list[str]) -> np.ndarray:
    """float16 grids (what extraction hands an int8 writer) with channels of very different
    magnitudes, a channel of zeros and the float16 extremes."""
    p = batch_for(ids, GRID, DIM)[1] * np.logspace(-4, 4, GRID[0], dtype=np.float32)[None, :, None, None]
    p = p.astype(np.float16)
    p[:, 1] = 0  # a channel of zeros
    p[::3, 2, 0, 0] = np.finfo(np.float16).max  # extremes: the largest float16, an outlier in its channel
    p[1::3, 2, 1, 1] = -np.finfo(np.float16).max
    p[:, 3] = np.float16(6e-8)  # the smallest float16 subnormal, everywhere
    return p


def make(root: str, dtype: str = "int8", **kw) -> object:
    store = Store.open(root, create=True)
    fs = store.create_feature_set(FeatureSetSpec("tiny", "w", GRID, DIM, dtype=dtype, shard_images=16, **kw))
    return fs


def fill(fs, ids: list[str], **writer) -> np.ndarray:
    """Write ``ids`` in uneven batches; returns the float16 grids written."""
    p = grids(ids)
    cls = batch_for(ids, GRID, DIM)[0]
    with fs.writer(**writer) as w:
        for k in range(0, len(ids), 7):
            w.write(ids[k : k + 7], cls[k : k + 7], torch.from_numpy(p[k : k + 7]))
    return p


def test_int8_is_a_supported_dtype_and_a_distinct_feature_set():
    assert "int8" in SUPPORTED_DTYPES
    ids = {d: FeatureSetSpec("tiny", "w", GRID, DIM, dtype=d).feature_set_id for d in SUPPORTED_DTYPES}
    assert len(set(ids.values())) == len(SUPPORTED_DTYPES)
    # shards like its float16 twin (rows per commit), so readers hold no more once dequantised
    big = (768, 37, 37)
    assert FeatureSetSpec("e", "w", big, 768, dtype="int8").shard_images == FeatureSetSpec("e", "w", big, 768).shard_images


def test_quantize_matches_the_numpy_oracle_and_the_error_bound():
    x = grids(IDS)
    q, s = quantize(torch.from_numpy(x))
    want_q, want_s, want_x = oracle(x)
    np.testing.assert_array_equal(q.numpy(), want_q)
    np.testing.assert_array_equal(s.numpy(), want_s)
    err = np.abs(x.astype(np.float64) - want_x.astype(np.float64))
    assert (err <= want_s[:, :, None, None].astype(np.float64) / 2 * (1 + 1e-6)).all()
    assert (s.numpy()[:, 1] == 0).all() and (q.numpy()[:, 1] == 0).all()  # zeros: scale 0, codes 0
    assert q.numpy()[0, 2, 0, 0] == 127 and q.numpy()[1, 2, 1, 1] == -127  # extremes hit the ends
    assert q.numpy().min() >= -127  # -128 is the fill value, never a code


def test_float32_extremes_stay_within_the_bound():
    x = np.zeros((2, *GRID), np.float32)
    x[0, 0] = np.linspace(-3e38, 3e38, 16).reshape(4, 4)
    x[0, 1] = np.linspace(-1e-30, 1e-30, 16).reshape(4, 4)
    x[1, 0, 0, 0] = 1.0  # one value, all else zero
    q, s = quantize(torch.from_numpy(x))
    back = q.numpy().astype(np.float64) * s.numpy().astype(np.float64)[:, :, None, None]
    assert np.isfinite(back).all()
    assert (np.abs(x - back) <= s.numpy()[:, :, None, None].astype(np.float64) / 2 * (1 + 1e-6)).all()


@pytest.mark.parametrize("writer", [{}, {"background": False}, {"direct": False}], ids=["streamed", "buffered", "zarr"])
def test_every_read_path_gives_the_dequantised_grids(tmp_path, writer):
    fs = make(str(tmp_path / "s"))
    p = fill(fs, IDS, **writer)
    _, scales, want = oracle(p)
    order = np.random.default_rng(0).permutation(len(IDS))
    got = fs.patches([IDS[k] for k in order])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want[order])
    np.testing.assert_array_equal(fs.read_rows(np.arange(40)), want)
    half = np.empty((40, *GRID), np.float16)  # a float16 buffer is dequantised into as asked
    np.testing.assert_array_equal(fs.read_rows(np.arange(40), out=half), want.astype(np.float16))
    np.testing.assert_array_equal(fs.read_span(np.arange(16, 32)), want[16:32])
    np.testing.assert_array_equal(fs.read_span(np.array([33, 35])), want[[33, 35]])
    mapped, at = fs.map_rows(np.array([20, 17, 30]))
    np.testing.assert_array_equal(mapped[at], want[[20, 17, 30]])
    np.testing.assert_array_equal(mapped[int(at[0])], want[20])
    ds = fs.to_xarray()
    assert ds["patches"].dtype == np.float32
    np.testing.assert_array_equal(ds["patches"].sel(image_id=IDS).values, want)
    t = fs.cls(columns=["image_id", "scales"])  # the scales are committed with the rows
    assert t.column("image_id").to_pylist() == IDS
    np.testing.assert_array_equal(np.asarray(t.column("scales").to_pylist(), np.float32), scales)


def test_non_plain_layouts_and_an_object_store_dequantise_too(backend):
    url, opts = backend
    store = Store.open(url, create=True, storage_options=opts)
    fs = store.create_feature_set(FeatureSetSpec("tiny", "w", GRID, DIM, dtype="int8", shard_images=16, codec="zstd"))
    p = fill(fs, IDS)
    want = oracle(p)[2]
    assert not fs.plain_layout
    np.testing.assert_array_equal(fs.patches(IDS[::-1]), want[::-1])
    np.testing.assert_array_equal(fs.read_span(np.arange(16, 32)), want[16:32])
    assert fs.map_rows(np.arange(4)) is None
    fs = store.create_feature_set(FeatureSetSpec("tiny2", "w", GRID, DIM, dtype="int8", shard_images=16))
    want = oracle(fill(fs, IDS))[2]
    assert fs.plain_layout  # ranged reads of the codes
    np.testing.assert_array_equal(fs.patches(IDS[::-1]), want[::-1])
    np.testing.assert_array_equal(fs.read_span(np.arange(16, 32)), want[16:32])


@pytest.mark.parametrize("in_memory", [False, True], ids=["streamed", "in-memory"])
def test_the_heads_loader_sees_dequantised_float32(tmp_path, in_memory):
    fs = make(str(tmp_path / "s"))
    want = dict(zip(IDS, oracle(fill(fs, IDS))[2]))
    loader = StreamingLoader(fs, IDS, np.zeros(40, np.float32), batch_size=8, shuffle=True, need_patches=True, in_memory=in_memory)
    seen = []
    for b in loader:
        assert b.patches.dtype == torch.float32
        np.testing.assert_array_equal(b.patches.numpy(), np.stack([want[i] for i in b.ids]))
        seen += b.ids
    assert sorted(seen) == IDS


def test_the_heads_loader_dequantises_where_shards_cannot_be_mapped(tmp_path):
    fs = make(str(tmp_path / "s"), codec="zstd")
    want = dict(zip(IDS, oracle(fill(fs, IDS))[2]))
    for b in StreamingLoader(fs, IDS, np.zeros(40, np.float32), batch_size=8, need_patches=True):
        np.testing.assert_array_equal(b.patches.numpy(), np.stack([want[i] for i in b.ids]))


def test_bytes_per_image_at_most_0_27_of_float32(tmp_path):
    grid, n = (384, 16, 16), 16
    ids = IDS[:n]
    x = np.random.default_rng(0).standard_normal((n, *grid), dtype=np.float32)
    cls = np.random.default_rng(1).standard_normal((n, 384), dtype=np.float32)
    stored = {}
    for dtype in ("float32", "int8"):
        store = Store.open(str(tmp_path / dtype), create=True)
        fs = store.create_feature_set(FeatureSetSpec("e", "w", grid, 384, dtype=dtype, shard_images=n))
        with fs.writer() as w:
            w.write(ids, cls, x)
        stored[dtype] = fs.loc.du(layout.PATCHES_GROUP) + fs.loc.du(layout.CLS_DIR)  # grids, and cls parts (scales)
        assert fs.loc.du(layout.PATCHES_GROUP) >= n * np.prod(grid) * np.dtype(dtype).itemsize  # the grids really are there
    assert stored["int8"] <= 0.27 * stored["float32"], stored


def test_a_missing_int8_grid_is_reported_not_read_as_codes(tmp_path):
    fs = make(str(tmp_path / "s"))
    fill(fs, IDS)
    os.remove(fs.loc.path(fs.shard_key(1)))  # shard 1 (img016..img031) lost after its commit
    fresh = Store.open(str(tmp_path / "s")).feature_set(fs.id)
    with pytest.raises(StoreCorruptionError, match="img016"):
        fresh.patches(["img001", "img016"])
    with pytest.raises(StoreCorruptionError):
        fresh.read_span(np.arange(16, 20))
    assert fresh.verify() == IDS[16:32]


def test_out_buffers_must_be_float(tmp_path):
    fs = make(str(tmp_path / "s"))
    fill(fs, IDS[:4])
    with pytest.raises(FeatureSetError, match="float16 or float32"):
        fs.read_rows(np.arange(4), out=np.empty((4, *GRID), np.int8))
