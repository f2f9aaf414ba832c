"""The positive control: its planted signal has the documented strength, a sound pipeline meets
every expected value, and a pipeline that mixes up labels misses them (and says so)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from evaluation.artifacts import EvalConfig, evaluate
from evaluation.controls import TOLERANCE, ControlCheck, checked_metrics, missed
from featurestore.encoders import planted
from featurestore.encoders.registry import display_name
from featurestore.extract import ExtractConfig, extract
from featurestore.ingest import ingest
from featurestore.store import Store
from featurestore.synth.cohort import SynthConfig, synthesize
from heads.train import TrainConfig, train

TASKS = ("pneumothorax-cls", "cardiomegaly-cls", "ctr-reg", "heart-seg")
TRAIN = {"solver": "lbfgs", "target_size": 32, "max_epochs": 60, "patience": 10, "lr": 1e-2}
EVAL = EvalConfig(resamples=300, seed=0, min_class_count=5)


def test_a_binary_dimension_alone_has_the_documented_auroc():
    """The constants: SHIFT * y + N(0, 1) separates the classes with AUROC Phi(SHIFT / sqrt 2) = 0.85."""
    assert norm.cdf(planted.SHIFT / math.sqrt(2)) == pytest.approx(planted.AUROC, abs=1e-9)
    rng = np.random.default_rng(1)
    y = rng.random(40_000) < 0.3
    x = np.array([planted.global_signal("pneumothorax-cls", bool(v)) for v in y]) + rng.standard_normal(len(y))
    assert roc_auc_score(y, x) == pytest.approx(0.85, abs=0.006)


def test_noise_is_the_image_ids_own():
    a, b = planted.noise("img-1"), planted.noise("img-1")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], planted.noise("img-2")[0])
    assert a[1][: len(planted.MASK_COLUMNS)].std() == pytest.approx(planted.MASK_NOISE, rel=0.3)


def test_controls_are_named_as_such():
    assert display_name("planted") == "planted (positive control)"
    assert display_name("pixels") == "pixels (negative control)"
    assert display_name("random-vit") == "random-vit (negative control)"
    assert display_name("rad-dino") == "rad-dino"
    assert checked_metrics("segmentation") == ("dice_nonempty", "dice", "iou")


def test_every_study_gets_the_positive_control_unless_told_otherwise():
    from flows.config import StudyConfig

    assert [e.name for e in StudyConfig(encoders=["pixels"]).encoders] == ["pixels", "planted"]
    assert [e.name for e in StudyConfig(encoders=["planted", "pixels"]).encoders] == ["planted", "pixels"]
    assert [e.name for e in StudyConfig(encoders=["pixels"], positive_control=False).encoders] == ["pixels"]


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    """A 160-image cohort with the planted feature set extracted (and nothing trained)."""
    root = tmp_path_factory.mktemp("planted")
    manifest = synthesize(root / "cohort", SynthConfig(n=160, seed=3, min_side=192, max_side=256, split=(0.5, 0.2, 0.3)), progress=False)
    store = Store.open(str(root / "store"), create=True)
    ingest(str(manifest), store, progress=False)
    fsid = extract(str(manifest), store, ExtractConfig("planted", progress=False, num_workers=0)).feature_set_id
    return store, fsid


def _checks(store, fsid) -> list[dict]:
    runs = [train(store, fsid, TrainConfig(task=t, head="linear", **TRAIN)).run_id for t in TASKS]
    return list(evaluate(store, runs, EVAL).meta.controls)


@pytest.mark.slow
def test_a_sound_pipeline_meets_every_expected_value(planted_store):
    store, fsid = planted_store
    checks = _checks(store, fsid)
    by = {(c["task"], c["metric"]): c for c in checks}
    assert {t for t, _ in by} == set(TASKS)
    assert missed(checks) == [], "\n".join(ControlCheck(**c).line() for c in checks)
    # The expected values are what the model says: pneumothorax is independent of the other
    # labels (0.85), cardiomegaly is also carried by the CTR dimension (higher), the heart's
    # Dice is the grid's ceiling.
    assert by[("pneumothorax-cls", "auroc")]["expected"] == pytest.approx(0.85, abs=0.06)
    assert by[("cardiomegaly-cls", "auroc")]["expected"] > 0.9
    assert 0.6 < by[("heart-seg", "dice_nonempty")]["expected"] <= 1.0
    assert all(c["status"] == "met" for c in checks if c["status"] != "insufficient")


@pytest.mark.slow
def test_labels_joined_to_the_wrong_images_miss_and_the_cli_says_so(planted_store, monkeypatch):
    """A join bug (labels shuffled against image_ids before training) is caught by the control."""
    import heads.data
    import heads.train

    store, fsid = planted_store
    real = heads.data.load_labels

    def shuffled(*a, **k):
        labels = real(*a, **k)
        order = np.random.default_rng(0).permutation(len(labels.image_ids))
        labels.image_ids[:] = [labels.image_ids[i] for i in order]
        return labels

    monkeypatch.setattr(heads.train, "load_labels", shuffled)
    checks = _checks(store, fsid)
    bad = missed(checks)
    assert {c["task"] for c in bad} >= {"pneumothorax-cls", "cardiomegaly-cls", "ctr-reg"}
    for c in bad:
        assert c["ci_high"] < c["expected"] - TOLERANCE  # lost signal, not leaked
    # The command line says so (a process of its own: Prefect's logging outlives pytest's capture):
    # one line per check, the misses counted, exit status 1.
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    exe = Path(sys.executable).with_name("radstore")
    runs = sorted({c["run_id"] for c in bad})
    r = subprocess.run([str(exe), "evaluate", "--store", store.url, "--runs", *runs, "--resamples", "200", "--min-class-count", "5"],
                       capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert r.returncode == 1, r.stderr[-2000:]
    assert "missed their expected value" in r.stderr and "ctr-reg/linear r2" in r.stderr and "MISSED" in r.stderr
