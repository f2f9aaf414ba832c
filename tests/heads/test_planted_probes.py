"""Known answers: probes trained with the study's defaults on a planted feature set
(tests/planted.py) recover the planted signal.

The cohort is synthesized with a pneumothorax prevalence of 0.4 so that its validation and
test splits hold enough positives for AUROC and early stopping to mean something. Training uses
the study's default TrainConfig (AdamW lr 1e-4, weight decay 1e-2, batch 16, patience 5, at most
500 epochs) except ``progress=False``, a small ``target_size`` and ``in_memory=True`` (the split
is read once instead of streamed every epoch: the same rows, batches and protocol, several times
faster on two shared cores) and one torch thread (tiny models: OpenMP threads only wait on
each other, ~10x slower on shared cores).

Measured (n=600, seed 3, `pytest tests/heads/test_planted_probes.py -s`): pneumothorax AUROC
AdamW 0.830 vs L-BFGS 0.831; cardiomegaly 0.967 vs 0.968 (the CTR dimension also predicts it);
CTR R2 AdamW 0.824 vs L-BFGS 0.831 (500 epochs); heart-seg Dice at the validation threshold
against the ceiling of the downsampled masks (printed).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featurestore.ingest import ingest
from featurestore.layout.records import read_predictions, read_run
from featurestore.store import Store
from featurestore.synth.cohort import SynthConfig, synthesize
from heads.train import TrainConfig, train
from tests.planted import plant

pytestmark = pytest.mark.slow

T = 32  # target_size
N = 600


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("planted")
    m = synthesize(root / "c", SynthConfig(n=N, seed=3, min_side=128, max_side=160, pneumothorax_prevalence=0.4), progress=False)
    store = Store.open(str(root / "s"), create=True)
    ingest(str(m), store, progress=False)
    yield store, plant(store, str(m), target_size=T), str(m)
    torch.set_num_threads(threads)


def _train(store, fsid, task, **kw):
    return train(store, fsid, TrainConfig(task=task, progress=False, target_size=T, in_memory=True, **kw))


@pytest.mark.parametrize("task", ["pneumothorax-cls", "cardiomegaly-cls"])
def test_adamw_probe_matches_lbfgs(planted, task):
    store, p, _ = planted
    adamw = _train(store, p.feature_set_id, task)
    lbfgs = _train(store, p.feature_set_id, task, solver="lbfgs")
    print(f"\n{task}: AdamW AUROC {adamw.test['auroc']:.3f} (epochs {adamw.epochs}, best {adamw.best_epoch}), "
          f"L-BFGS {lbfgs.test['auroc']:.3f}")  # fmt: skip
    assert adamw.test["auroc"] >= lbfgs.test["auroc"] - 0.02
    assert lbfgs.test["auroc"] > 0.75  # the planted signal is there (0.85 for the dimension alone)


@pytest.fixture(scope="module")
def ctr_runs(planted):
    store, p, _ = planted
    adamw = _train(store, p.feature_set_id, "ctr-reg")
    lbfgs = _train(store, p.feature_set_id, "ctr-reg", solver="lbfgs")
    print(f"\nctr-reg: AdamW R2 {adamw.test['r2']:.3f} (epochs {adamw.epochs}, best {adamw.best_epoch}), L-BFGS {lbfgs.test['r2']:.3f}")
    return adamw, lbfgs


def test_ctr_regression_learns(ctr_runs):
    """The probe no longer stops before it learns (R2 was -0.75 with the running-statistics
    BatchNorm): it trains to the epoch limit and explains most of the planted variance."""
    adamw, lbfgs = ctr_runs
    assert lbfgs.test["r2"] > 0.6  # the planted R2 is 0.8; a finite test split scatters it
    assert adamw.test["r2"] >= 0.5 and adamw.best_epoch >= adamw.epochs - 2


def test_ctr_regression_reaches_070(ctr_runs):
    """The issue's target: R2 >= 0.70 with the study's defaults. AdamW's lr of 1e-4 is a step
    size per batch, so the probe needs steps, not epochs: with 360 training images (23 batches
    an epoch) it gets there inside the 500-epoch cap; with 140 (9 an epoch) the cap stops it at
    R2 0.58 (the study's own cohorts are thousands of images)."""
    assert ctr_runs[0].test["r2"] >= 0.70


def _ceiling(p, column: str, ids: list[str]) -> float:
    """Dice of the true masks at target resolution vs. the same masks area-averaged to the grid,
    upsampled back bilinearly and thresholded at 0.5: the best a linear map of channel 0 can do."""
    rows = [p.image_ids.index(i) for i in ids]
    truth = p.targets[column][rows].astype(bool)
    grid = torch.from_numpy(p.grids[column][rows])[:, None]
    up = F.interpolate(grid, size=(T, T), mode="bilinear", align_corners=False)[:, 0].numpy() > 0.5
    inter = (truth & up).sum((1, 2))
    sizes = truth.sum((1, 2)) + up.sum((1, 2))
    return float(np.where(sizes == 0, 1.0, 2 * inter / np.maximum(sizes, 1)).mean())


def test_linear_heart_segmentation_reaches_the_ceiling(planted):
    store, p, manifest = planted
    r = _train(store, p.feature_set_id, "heart-seg")
    preds = read_predictions(store, r.run_id)
    ids = preds.column("image_id").to_pylist()
    ceiling = _ceiling(p, "heart_mask", ids)
    meta = read_run(store, r.run_id)
    t = meta["operating_points"]["threshold"]
    print(f"\nheart-seg: Dice {r.test['dice']:.3f} at threshold {t} (ceiling {ceiling:.3f}; epochs {r.epochs})")
    assert r.test["dice"] >= ceiling - 0.03
    # Masks at the chosen threshold mark about as many pixels as the truth (a fixed 0.5 after
    # class-weighted BCE marked about half the image as heart).
    marked, true = (preds.column(c).to_numpy().sum() for c in ("predicted_pixels", "positive_pixels"))
    assert 0.8 < marked / true < 1.25


def test_planted_targets_are_the_training_targets(planted):
    from featurestore.tasks import TASKS
    from heads.data import load_labels, mask_targets

    store, p, manifest = planted
    fs = store.feature_set(p.feature_set_id)
    labels = load_labels(TASKS["heart-seg"], fs, manifest, store)
    got = mask_targets(fs, labels, T, "heart_mask")
    want = p.targets["heart_mask"][[p.image_ids.index(i) for i in labels.image_ids]]
    np.testing.assert_array_equal(got, want)
