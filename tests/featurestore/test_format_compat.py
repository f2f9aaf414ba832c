"""Today's code against the fixture store written before the format refactors (tests/data/store-v1).

The fixture and its digests (tests/data/store-v1-expected.json) were written once by the older
code (tests/data/make_store_v1.py). Reading it must give the same values, and writing the same
spec and arrays must give the same bytes: the on-disk format is a promise to existing stores.
The committed files are copied first and never modified.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from featurestore import layout
from featurestore.featureset import FeatureSet, FeatureSetSpec
from featurestore.layout import ShardIndex
from featurestore.store import Store

DATA = Path(__file__).resolve().parents[1] / "data"
EXPECTED = json.loads((DATA / "store-v1-expected.json").read_text())["feature_sets"]
PLAIN = "pixels-6fe4f49e0987"  # sharded, plain layout: written directly
(COPY,) = [k for k in EXPECTED if k.startswith("pixels-copy-")]  # unsharded: written through zarr


def digest(a: np.ndarray) -> str:
    """The recipe of make_store_v1.py."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def store_v1(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("compat") / "store-v1"
    shutil.copytree(DATA / "store-v1", root)
    return Store.open(str(root))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_fixture_feature_sets_read_to_the_recorded_digests(store_v1):
    assert sorted(fs.id for fs in store_v1.feature_sets()) == sorted(EXPECTED)
    for fsid, want in EXPECTED.items():
        fs = store_v1.feature_set(fsid)
        assert fs.spec.shard_images == want["shard_images"]
        t = fs.cls().sort_by("image_id")
        ids = t.column("image_id").to_pylist()
        assert ids == want["images"]
        cls = t.column("cls").combine_chunks().flatten().to_numpy()
        assert digest(cls.astype(np.float32)) == want["cls_sha256"], fsid
        patches = fs.patches(ids)
        assert digest(patches) == want["patches_sha256"], fsid
        # The other read paths agree with patches(): per-shard spans (and memory maps where plain).
        rows = fs.rows_for(ids)
        s = fs.spec.shard_images
        for shard in np.unique(rows // s):
            at = np.flatnonzero(rows // s == shard)
            np.testing.assert_array_equal(fs.read_span(rows[at]), patches[at])
            mapped = fs.map_rows(rows[at])
            assert (mapped is not None) == (fsid == PLAIN)
            if mapped is not None:
                np.testing.assert_array_equal(mapped[0][mapped[1]], patches[at])
        assert fs.verify() == []


# (feature set, writer arguments): the streamed and the buffered direct writes of the plain
# set (byte for byte), zarr's sharding codec for the same set (same chunks, same values), and
# the zarr path of the unsharded set (byte for byte).
WRITES = [
    (PLAIN, {}),
    (PLAIN, {"background": False}),
    (PLAIN, {"direct": False}),
    (COPY, {}),
    (COPY, {"background": False}),
]


@pytest.mark.parametrize(("fsid", "writer_kw"), WRITES, ids=[f"{f.split('-')[1]}-{kw}" for f, kw in WRITES])
def test_writer_reproduces_fixture_patch_bytes(store_v1, tmp_path, fsid, writer_kw):
    src = store_v1.feature_set(fsid)
    spec = FeatureSetSpec.from_json(src.loc.read_json(layout.FEATURE_SET_JSON)["spec"])
    t = src.cls(columns=["image_id", "row", "cls", "sha256"])
    rows = t.column("row").to_numpy()
    assert np.array_equal(rows, np.arange(len(rows))), "the writer assigns rows in order from 0"
    ids = t.column("image_id").to_pylist()
    cls = np.array(t.column("cls").combine_chunks().flatten().to_numpy().reshape(len(ids), -1))  # writable
    patches = src.read_rows(rows)

    dst = Store.open(str(tmp_path / "new"), create=True).create_feature_set(spec)
    assert dst.id == fsid and dst.meta["spec"] == src.meta["spec"]
    with dst.writer(**writer_kw) as w:
        for k in range(0, len(ids), 5):  # batches that straddle shard boundaries
            w.write(ids[k : k + 5], cls[k : k + 5], patches[k : k + 5], sha256=t.column("sha256").to_pylist()[k : k + 5])

    got = _files(Path(dst.loc.path(layout.PATCHES_GROUP)))
    want = _files(Path(src.loc.path(layout.PATCHES_GROUP)))
    assert sorted(got) == sorted(want)
    assert any(k.startswith(f"{layout.PATCHES_ARRAY}/c/") for k in want) and "zarr.json" in want
    # zarr's own sharding codec encodes a shard's chunks concurrently and may store them in
    # another order inside the object (the index points at each one): for that write the
    # objects hold the same chunks and the same decoded values, not necessarily the same bytes.
    zarr_sharded = writer_kw.get("direct") is False and spec.sharded and spec.shard_images > 1
    for name in want:
        if zarr_sharded and name.startswith(f"{layout.PATCHES_ARRAY}/c/"):
            assert len(got[name]) == len(want[name]), name
            continue
        assert got[name] == want[name], name
    np.testing.assert_array_equal(dst.patches(ids), patches)


def test_shard_index_round_trips_fixture_shard_tails(store_v1):
    fs: FeatureSet = store_v1.feature_set(PLAIN)
    s, nb = fs.spec.shard_images, fs.image_bytes
    counts = np.bincount(fs.cls(columns=["shard"]).column("shard").to_numpy())
    assert fs.plain_layout and not store_v1.feature_set(COPY).plain_layout
    for shard, k in enumerate(counts):
        data = Path(fs.loc.path(fs.shard_key(shard))).read_bytes()
        tail = data[-ShardIndex.nbytes(s) :]
        idx = ShardIndex.parse(tail, s, nb)
        assert idx.to_bytes() == tail
        assert idx == ShardIndex.dense(int(k), s, nb) and idx.dense_count() == k
        assert len(data) == k * nb + ShardIndex.nbytes(s)
        assert idx.offsets(np.arange(k)).tolist() == [i * nb for i in range(k)]
        if k < s:
            assert idx.offsets(np.arange(s)) is None  # the empty entries of a partial shard
        with pytest.raises(ValueError, match="checksum"):
            ShardIndex.parse(tail[:-1] + bytes([tail[-1] ^ 1]), s, nb)
