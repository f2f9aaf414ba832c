"""Operating points chosen on validation, the fixed input standardiser, early stopping's knobs and
the validation-size warning: unit tests with known answers, and the records they leave."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featurestore.layout.records import RunRecord, read_run
from featurestore.store import Store
from heads.linear import LinearProbe, LinearSegProbe, Standardiser
from heads.operating_points import GRID, choose_threshold, score_thresholds
from heads.train import TrainConfig, fit_standardisers, train

FAST = dict(lr=1e-3, max_epochs=4, progress=False, target_size=32)


def test_dice_threshold_is_where_the_masks_separate():
    # Foreground scores in [0.265, 0.35), background in [0.05, 0.15): any threshold in
    # [0.15, 0.265) is perfect; the tied best closest to 0.5 is 0.26.
    rng = np.random.default_rng(0)
    y = np.zeros((6, 8, 8), np.uint8)
    y[:, 2:5, 2:5] = 1
    s = np.where(y == 1, rng.uniform(0.265, 0.35, y.shape), rng.uniform(0.05, 0.15, y.shape))
    assert choose_threshold(y, s, objective="dice") == pytest.approx(0.26)
    assert score_thresholds(y, s, "dice", np.array([0.2]))[0] == 1.0
    assert score_thresholds(y, s, "dice", np.array([0.5]))[0] == 0.0  # a fixed 0.5 marks nothing


def test_ties_go_to_the_threshold_closest_to_one_half():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.01, 0.02, 0.98, 0.99])  # every grid threshold separates them
    assert choose_threshold(y, s, "youden") == 0.5
    assert choose_threshold(y, s, "dice") == 0.5
    assert choose_threshold(np.zeros(4), s, "youden") == 0.5  # no positives: nothing to measure


def test_youden_threshold_known_answer():
    # Positives at 0.6..0.9, negatives at 0.1..0.7: J = 1 - 1/4 (one false positive, 0.7) for
    # every threshold in [0.3, 0.6); the one closest to 0.5 is 0.5.
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.6, 0.75, 0.8, 0.9])
    j = score_thresholds(y, s, "youden")
    t = choose_threshold(y, s, "youden")
    assert j.max() == pytest.approx(0.75) and 0.3 <= t < 0.6 and t == pytest.approx(0.5)
    assert len(j) == len(GRID) and GRID[0] == 0.05 and GRID[-1] == 0.95
    with pytest.raises(ValueError, match="objective"):
        choose_threshold(y, s, "f2")


def test_standardiser_is_fixed_and_saved():
    probe = LinearProbe(3, 2)
    assert isinstance(probe.norm, Standardiser)
    assert torch.count_nonzero(probe.fc.weight) == 0 and torch.count_nonzero(probe.fc.bias) == 0  # zero-initialised
    x = torch.tensor([[1.0, 10.0, 5.0], [3.0, 30.0, 5.0]])
    probe.norm.set_stats(x.mean(0), x.std(0, unbiased=False))
    probe.train()
    z = probe.norm(x)
    np.testing.assert_allclose(z.numpy(), [[-1, -1, 0], [1, 1, 0]], atol=1e-6)  # a constant channel: std 1
    probe.norm(torch.randn(16, 3) * 100)  # training mode moves nothing
    np.testing.assert_allclose(probe.norm(x).numpy(), z.numpy())
    sd = probe.state_dict()
    assert {"norm.mean", "norm.std"} <= set(sd) and not any("running" in k for k in sd)
    again = LinearProbe(3, 2)
    again.load_state_dict(sd)
    np.testing.assert_allclose(again.norm(x).numpy(), z.numpy())
    seg = LinearSegProbe(4, 16)
    assert torch.count_nonzero(seg.conv.weight) == 0
    seg.norm.set_stats(torch.arange(4.0), torch.full((4,), 2.0))
    p = torch.arange(4.0).view(1, 4, 1, 1).expand(2, 4, 3, 3)
    assert torch.allclose(seg.norm(p), torch.zeros(2, 4, 3, 3))


def test_fit_standardisers_uses_the_training_split(pixels_store):
    from featurestore.tasks import TASKS
    from heads.data import StreamingLoader, load_labels, split_indices
    from heads.train import _collect, build_head

    url, fsid, _ = pixels_store
    store = Store.open(url)
    fs = store.feature_set(fsid)
    task = TASKS["cardiomegaly-cls"]
    labels = load_labels(task, fs, None, store)
    idx = split_indices(labels, None, 5, 0)["train"]
    loader = StreamingLoader(fs, [labels.image_ids[i] for i in idx], labels.values[idx], batch_size=5)
    model = build_head(task, TrainConfig(task=task.name), fs, labels.values[idx])
    assert fit_standardisers(model, loader) == {"global": len(idx)}
    x, _ = _collect(loader)
    np.testing.assert_allclose(model.norm.mean.numpy(), x.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.norm.std.numpy(), np.where(x.std(0) > 1e-8, x.std(0), 1), rtol=1e-3, atol=1e-4)


def test_min_epochs_and_min_delta(pixels_store):
    url, fsid, _ = pixels_store
    store = Store.open(url)
    # A min_delta no epoch can beat: only min_epochs keeps training going, then patience stops it.
    r = train(store, fsid, TrainConfig(task="ctr-reg", **{**FAST, "max_epochs": 50, "patience": 2, "min_delta": 1e9, "min_epochs": 7}))
    assert r.epochs == 7
    r = train(store, fsid, TrainConfig(task="ctr-reg", **{**FAST, "max_epochs": 50, "patience": 2, "min_delta": 1e9, "min_epochs": 0}))
    assert r.epochs == 3  # the first epoch always improves on nothing, then patience
    with pytest.raises(Exception, match="min_delta"):
        TrainConfig(task="ctr-reg", min_delta=-1)


def test_mask_threshold_is_chosen_on_validation_and_recorded(pixels_store):
    url, fsid, _ = pixels_store
    store = Store.open(url)
    with pytest.warns(UserWarning, match="heart-seg: the validation split has"):
        r = train(store, fsid, TrainConfig(task="heart-seg", **FAST))
    meta = read_run(store, r.run_id)
    t = meta["operating_points"]["threshold"]
    assert 0.05 <= t <= 0.95 and r.operating_points["threshold"] == t
    assert meta["val_counts"]["positives"] + meta["val_counts"]["negatives"] == meta["splits"]["val"]
    assert "fewer than 10" in meta["warnings"]["validation_warning"]


def test_classification_warning_names_task_and_counts(pixels_store):
    url, fsid, _ = pixels_store
    store = Store.open(url)
    with pytest.warns(UserWarning, match=r"pneumothorax-cls: the validation split has \d+ positive and \d+ negative labels"):
        r = train(store, fsid, TrainConfig(task="pneumothorax-cls", **FAST))
    meta = read_run(store, r.run_id)
    assert set(meta["val_counts"]) == {"positives", "negatives"} and meta["warnings"]["validation_warning"]
    assert meta["operating_points"] == {}  # classification scores are left as they are
    r = train(store, fsid, TrainConfig(task="pneumothorax-cls", min_val_positives=0, **FAST))
    assert read_run(store, r.run_id)["warnings"] == {}


def test_old_run_records_load_without_the_new_fields():
    old = {"run_id": "r", "task": "heart-seg", "task_kind": "segmentation", "head": "linear", "feature_set_id": "f",
           "encoder": "e", "config": {}, "created_at": "2025-01-01T00:00:00+00:00"}  # fmt: skip
    rec = RunRecord.from_json(old)
    assert rec.operating_points == {} and rec.val_counts == {} and rec.warnings == {} and rec.extra == {}
