"""Training: every task and head runs, the run directory is complete, seeds reproduce, errors are clear."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import zarr

from featurestore.errors import RadstoreError
from featurestore.extract import ExtractConfig, extract
from featurestore.ingest import ingest
from featurestore.layout import RUNS_DIR
from featurestore.layout.records import list_runs, read_predictions, read_run, read_test_predictions
from featurestore.store import Store
from featurestore.synth.cohort import SynthConfig, synthesize
from featurestore.tasks import TASKS
from heads.train import TrainConfig, train

FAST = dict(lr=1e-3, max_epochs=4, progress=False, target_size=32, attn_size=16, refiner_channels=(16, 8))


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_trains_and_writes_a_complete_run(pixels_store, task):
    url, fsid, _ = pixels_store
    store = Store.open(url)
    heads = ["linear", "cross-attention"] if TASKS[task].kind == "segmentation" else ["linear"]
    for head in heads:
        r = train(store, fsid, TrainConfig(task=task, head=head, **FAST))
        meta = read_run(store, r.run_id)
        assert meta["feature_set_id"] == fsid and meta["task"] == task and meta["head"] == head
        assert meta["seed"] == 0 and meta["code_version"] and len(meta["curve"]) == r.epochs >= 1
        assert {"train_loss", "val_loss"} <= set(meta["curve"][0])
        assert store.loc.exists(RUNS_DIR, r.run_id, "head.pt")
        preds = read_predictions(store, r.run_id)
        splits = preds.column("split").to_pylist()
        if TASKS[task].kind == "segmentation":
            assert preds.num_rows == meta["splits"]["test"] and set(splits) == {"test"}
        else:  # the validation split's predictions too: the evaluation's operating points are chosen on them
            assert (splits.count("test"), splits.count("val")) == (meta["splits"]["test"], meta["splits"]["val"])
            preds = preds.filter(pa.compute.equal(preds.column("split"), "test"))
        if TASKS[task].kind == "segmentation":
            masks = zarr.open_array(store.loc.zarr_store(RUNS_DIR, r.run_id, "masks.zarr"), mode="r")
            assert masks.shape == (preds.num_rows, 32, 32) and masks.metadata.dimension_names == ("image", "y", "x")
            assert np.isfinite(masks[:]).all() and 0 <= masks[:].min() and masks[:].max() <= 1
        else:
            col = "score" if TASKS[task].kind == "classification" else "value"
            assert np.isfinite(preds.column(col).to_numpy()).all()


@pytest.mark.slow
def test_same_seed_same_predictions(pixels_store):
    url, fsid, _ = pixels_store
    store = Store.open(url)
    cfg = TrainConfig(task="heart-seg", head="cross-attention", **FAST)
    a, b = train(store, fsid, cfg), train(store, fsid, cfg)
    pa_ = zarr.open_array(store.loc.zarr_store(RUNS_DIR, a.run_id, "masks.zarr"), mode="r")[:]
    pb_ = zarr.open_array(store.loc.zarr_store(RUNS_DIR, b.run_id, "masks.zarr"), mode="r")[:]
    np.testing.assert_array_equal(pa_, pb_)
    assert a.curve[-1]["val_loss"] == b.curve[-1]["val_loss"]
    c = train(store, fsid, TrainConfig(task="heart-seg", head="cross-attention", **{**FAST, "seed": 1}))
    assert c.curve[-1]["val_loss"] != a.curve[-1]["val_loss"]


def test_fold_is_recorded(pixels_store):
    url, fsid, _ = pixels_store
    store = Store.open(url)
    r = train(store, fsid, TrainConfig(task="ctr-reg", fold=2, folds=4, **FAST))
    assert read_run(store, r.run_id)["fold"] == 2
    assert any(m["run_id"] == r.run_id for m in list_runs(store))


def test_clear_errors(pixels_store, tmp_path):
    url, fsid, _ = pixels_store
    store = Store.open(url)
    with pytest.raises(RadstoreError, match="unknown task 'lung-cls'"):
        TrainConfig(task="lung-cls")
    with pytest.raises(RadstoreError, match="head .cross-attention. does not apply to task ctr-reg"):
        train(store, fsid, TrainConfig(task="ctr-reg", head="cross-attention", **FAST))
    with pytest.raises(RadstoreError, match="no run 'nope'"):
        read_run(store, "nope")
    empty = Store.open(str(tmp_path / "e"), create=True)
    empty_fs = empty.create_feature_set(store.feature_set(fsid).spec)
    with pytest.raises(RadstoreError, match="no manifest to take labels"):
        train(empty, empty_fs.id, TrainConfig(task="ctr-reg", **FAST))


def test_lbfgs_probe_equals_scikit_learn(pixels_store):
    """Oracle: refit scikit-learn's Ridge at the chosen strength; the run's predictions match."""
    from sklearn.linear_model import Ridge

    from heads.data import StreamingLoader, load_labels, split_indices
    from heads.train import _collect

    url, fsid, _ = pixels_store
    store = Store.open(url)
    r = train(store, fsid, TrainConfig(task="ctr-reg", solver="lbfgs", progress=False))
    meta = read_run(store, r.run_id)
    best = min(meta["curve"], key=lambda row: row["val_loss"])
    fs = store.feature_set(fsid)
    labels = load_labels(TASKS["ctr-reg"], fs, None, store)
    sp = split_indices(labels, None, 5, 0)

    def data(split):
        idx = sp[split]
        return _collect(StreamingLoader(fs, [labels.image_ids[i] for i in idx], labels.values[idx], batch_size=64))

    xtr, ytr = data("train")
    xte, _ = data("test")
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    ym, ys = ytr.mean(), ytr.std()
    ref = Ridge(alpha=1 / best["C"]).fit((xtr - mu) / sd, (ytr - ym) / ys).predict((xte - mu) / sd) * ys + ym
    preds = read_test_predictions(store, r.run_id)[0]
    np.testing.assert_allclose(preds.column("value").to_numpy(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_pixels_beat_chance(tmp_path):
    """Acceptance run: a synthetic cohort, the pixels control, every task on its test split.

    300 images (a 45-image test split) rather than 200: with ~9 positives, a 200-image cohort's
    30-image test split makes AUROC too noisy to show a margin either way.
    """
    m = synthesize(tmp_path / "c", SynthConfig(n=300, seed=0, min_side=256, max_side=320), progress=False)
    store = Store.open(str(tmp_path / "s"), create=True)
    ingest(str(m), store, progress=False)
    fsid = extract(str(m), store, ExtractConfig("pixels", progress=False)).feature_set_id
    common = dict(lr=1e-3, patience=10, max_epochs=200, progress=False, target_size=64, attn_size=32, refiner_channels=(32, 16))
    res, run_ids = {}, {}
    for task, head in [
        ("cardiomegaly-cls", "linear"),
        ("pneumothorax-cls", "linear"),
        ("ctr-reg", "linear"),
        ("heart-seg", "linear"),
        ("heart-seg", "cross-attention"),
        ("pneumothorax-seg", "cross-attention"),
    ]:
        # Global probes: the CLIP-style L-BFGS probe. With AdamW + early stopping the 274-d
        # pixel statistics overfit from the first epoch (best epoch 0) and stay at chance.
        solver = "lbfgs" if TASKS[task].input == "global" else "adamw"
        r = train(store, fsid, TrainConfig(task=task, head=head, solver=solver, **common))
        res[(task, head)], run_ids[(task, head)] = r.test, r.run_id
    print(res)
    assert res[("cardiomegaly-cls", "linear")]["auroc"] > 0.65
    assert res[("ctr-reg", "linear")]["r2"] > 0.1
    assert res[("heart-seg", "linear")]["dice"] > 0.1  # all-background scores 0
    assert res[("heart-seg", "cross-attention")]["dice"] > 0.5
    assert res[("pneumothorax-cls", "linear")]["auroc"] > 0.6
    # A small pneumothorax on pixel statistics: the threshold the validation split's 7 positive
    # masks choose often predicts nothing (mean Dice rewards it on the many empty masks), so the
    # test is threshold-free: the predicted probabilities rank the pixels of the test images'
    # pneumothoraces above the rest of those images (chance: 0.5).
    from sklearn.metrics import roc_auc_score

    from featurestore.layout.records import open_masks

    pred, truth = (a[:] for a in open_masks(store, run_ids[("pneumothorax-seg", "cross-attention")]))
    positive = truth.reshape(len(truth), -1).any(1)
    pixel_auroc = roc_auc_score(truth[positive].ravel(), pred[positive].astype(np.float64).ravel())
    print("pneumothorax-seg pixel AUROC on positive test images", pixel_auroc)
    assert pixel_auroc > 0.7
