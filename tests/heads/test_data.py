"""The streaming loader: every image once per epoch, reshuffled, bounded memory, same as in RAM."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore.featureset import FeatureSetSpec
from featurestore.store import Store
from featurestore.tasks import TASKS
from heads.data import StreamingLoader, load_labels, mask_targets, split_indices
from tests.conftest import batch_for


@pytest.fixture(scope="module")
def big_fs(tmp_path_factory):
    """200 images in shards of 16: far more than the shuffle buffers used below."""
    store = Store.open(str(tmp_path_factory.mktemp("big") / "s"), create=True)
    fs = store.create_feature_set(FeatureSetSpec("tiny", "w", (8, 4, 4), 6, shard_images=16))
    ids = [f"i{k:04d}" for k in range(200)]
    with fs.writer() as w:
        for k in range(0, 200, 25):
            w.write(ids[k : k + 25], *batch_for(ids[k : k + 25]))
    return fs, ids


def test_streams_every_image_once_with_bounded_memory(big_fs):
    fs, ids = big_fs
    y = np.arange(200, dtype=np.float32)
    loader = StreamingLoader(fs, ids, y, batch_size=16, shuffle=True, seed=0, buffer_images=32, need_patches=True)
    orders = []
    for _ in range(2):
        seen = []
        for b in loader:
            assert b.patches.shape[1:] == (8, 4, 4) and len(b.ids) <= 16
            c, p = batch_for(b.ids)
            np.testing.assert_allclose(b.patches.numpy(), p, atol=1e-2, rtol=1e-2)  # rows match their ids
            np.testing.assert_array_equal(b.g.numpy(), c)
            np.testing.assert_array_equal(b.y.numpy(), [ids.index(i) for i in b.ids])  # labels joined by id
            seen += b.ids
        assert sorted(seen) == sorted(ids)
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled every epoch
    assert loader.max_buffered <= 32 + 16 - 1  # buffer + one shard, never the cohort


def test_in_memory_and_sequential_give_the_same_rows(big_fs):
    fs, ids = big_fs
    sub = ids[5:150:3]
    y = np.ones(len(sub), np.float32)
    stream = StreamingLoader(fs, sub, y, batch_size=7, need_patches=True)
    mem = StreamingLoader(fs, sub, y, batch_size=7, need_patches=True, in_memory=True)
    a = {i: p for b in stream for i, p in zip(b.ids, b.patches.numpy())}
    m = {i: p for b in mem for i, p in zip(b.ids, b.patches.numpy())}
    assert a.keys() == m.keys() == set(sub)
    for i in sub:
        np.testing.assert_array_equal(a[i], m[i])


def test_labels_splits_and_folds(pixels_store):
    url, fsid, manifest = pixels_store
    store = Store.open(url)
    fs = store.feature_set(fsid)
    labels = load_labels(TASKS["cardiomegaly-cls"], fs, None, store)  # manifest found through the ingest
    assert len(labels.image_ids) == 24 and set(labels.values) <= {0.0, 1.0}
    by_split = split_indices(labels, None, 5, 0)
    assert sum(map(len, by_split.values())) == 24
    for fold in range(3):
        s = split_indices(labels, fold, 3, 0)
        pats = {k: {labels.patients[i] for i in v} for k, v in s.items()}
        assert not (pats["train"] & pats["test"]) and not (pats["val"] & pats["test"]) and not (pats["train"] & pats["val"])
        assert sum(map(len, s.values())) == 24


def test_mask_targets_follow_the_feature_set_geometry(pixels_store):
    url, fsid, _ = pixels_store
    store = Store.open(url)
    fs = store.feature_set(fsid)
    labels = load_labels(TASKS["heart-seg"], fs, None, store)
    t = mask_targets(fs, labels, 32, "heart_mask")
    assert t.shape == (24, 32, 32) and t.dtype == np.uint8 and set(np.unique(t)) == {0, 1}
    frac = t.mean((1, 2))
    assert (frac > 0.01).all() and (frac < 0.3).all()  # a heart in every film, never the whole image
    # Oracle for the pixels encoder's squash geometry: Pillow's box resize of the mask.
    from PIL import Image

    from featurestore.imageio import read_image

    for k in (0, 7):
        m = read_image(labels.mask_uris[k]).pixels
        ref = np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize((32, 32), Image.BOX)) > 127
        assert (ref == t[k].astype(bool)).mean() > 0.97
    assert mask_targets(fs, labels, 32, "heart_mask").filename == t.filename  # cached
