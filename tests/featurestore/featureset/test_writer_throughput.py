"""The writer's fast path: shard files written into reserved blocks, one thread per shard buffer.

Oracles: the filesystem's own ``st_size``/``st_blocks`` for the reservation, numpy's float16 cast
and raw file bytes for what the shards hold.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from featurestore.featureset import FeatureSetSpec
from featurestore.layout import ShardIndex
from featurestore.layout.paths import TMP_DIR
from featurestore.storage import PREALLOCATE_MIN_BYTES, Location, preallocate, release_preallocation
from featurestore.store import Store

GRID = (128, 8, 16)  # 32 KiB per float16 grid: a shard of 64 is 2 MiB, above PREALLOCATE_MIN_BYTES
SHARD = 64


def _allocated(path_or_fd) -> int:
    st = os.fstat(path_or_fd) if isinstance(path_or_fd, int) else os.stat(path_or_fd)
    return st.st_blocks * 512


def test_preallocate_reserves_blocks_without_changing_the_size(tmp_path):
    """Reserved blocks count in st_blocks, not st_size; releasing gives back those past the end
    and keeps every written byte."""
    data = np.arange(PREALLOCATE_MIN_BYTES // 8, dtype=np.int64)  # 1 MiB of known bytes
    with open(tmp_path / "f", "wb") as f:
        if not preallocate(f.fileno(), 8 * PREALLOCATE_MIN_BYTES):
            pytest.skip("this filesystem cannot reserve blocks")
        assert os.fstat(f.fileno()).st_size == 0
        assert _allocated(f.fileno()) >= 8 * PREALLOCATE_MIN_BYTES
        f.write(data.tobytes())
        f.flush()
        release_preallocation(f.fileno())
        assert os.fstat(f.fileno()).st_size == data.nbytes
        assert _allocated(f.fileno()) < 2 * data.nbytes
    np.testing.assert_array_equal(np.fromfile(tmp_path / "f", dtype=np.int64), data)


def test_small_objects_are_not_preallocated(tmp_path):
    with open(tmp_path / "f", "wb") as f:
        assert not preallocate(f.fileno(), PREALLOCATE_MIN_BYTES - 1)
        assert _allocated(f.fileno()) == 0


def test_write_atomic_of_a_big_object_is_exact(tmp_path):
    """A shard-sized object from several buffers: its bytes in order, no block reserved past them."""
    parts = [np.full(PREALLOCATE_MIN_BYTES + 5, 7, np.uint8), b"index", memoryview(b"tail")]
    loc = Location(str(tmp_path / "s"))
    path = loc.write_atomic(parts, "a", "obj")
    assert open(path, "rb").read() == parts[0].tobytes() + b"index" + b"tail"
    assert _allocated(path) < os.path.getsize(path) + (1 << 16)


@pytest.mark.parametrize("n", [SHARD * 2 + 5, SHARD * 3])
@pytest.mark.parametrize("half", [False, True])
def test_streamed_shards_hold_exactly_their_grids(tmp_path, n, half):
    """Full and partial streamed shards (float32 or float16 input, in batches that cross shard
    boundaries): each file is the numpy float16 cast of its rows, then the dense index, and
    nothing is left reserved past its end."""
    spec = FeatureSetSpec("tiny", "w", GRID, 8, shard_images=SHARD)
    fs = Store.open(str(tmp_path / "s"), create=True).create_feature_set(spec)
    rng = np.random.default_rng(0)
    grids = rng.standard_normal((n, *GRID), dtype=np.float32)
    ids = [f"img{i:04d}" for i in range(n)]
    with fs.writer() as w:
        for k in range(0, n, 24):
            p = torch.from_numpy(grids[k : k + 24])
            w.write(ids[k : k + 24], np.zeros((len(p), 8), np.float32), p.half() if half else p)
    rows = fs.cls(columns=["image_id", "row", "shard"]).sort_by("row")
    assert rows.column("image_id").to_pylist() == ids  # each row once, in the order written
    want = grids.astype(np.float16)
    for shard in sorted(set(rows.column("shard").to_pylist())):
        k = min(SHARD, n - shard * SHARD)
        path = fs.loc.path(fs.shard_key(shard))
        index = ShardIndex.dense(k, SHARD, want[0].nbytes).to_bytes()
        assert open(path, "rb").read() == want[shard * SHARD : shard * SHARD + k].tobytes() + index
        assert _allocated(path) < os.path.getsize(path) + (1 << 16)
    np.testing.assert_array_equal(fs.patches(ids[::7]), want[::7])
    tmp = fs.loc.path(TMP_DIR)
    assert not os.path.isdir(tmp) or not os.listdir(tmp)  # no temporary file left behind
