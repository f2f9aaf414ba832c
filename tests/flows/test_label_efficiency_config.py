"""The study's ``label_efficiency`` key: a typed plan (featurestore.subsets.LabelEfficiency) whose
subset runs join the one training grid the study flow and its no-op check share
(StudyConfig.train_grid), reused like any other run."""

from __future__ import annotations

import shutil

import pytest

from featurestore.errors import RadstoreError
from featurestore.subsets import DEFAULT_FRACTIONS, DEFAULT_SEEDS, DEFAULT_SHOTS, LabelEfficiency, TrainSubset
from flows.config import StudyConfig, load_config
from flows.noop import reusable_runs

TASKS = ["cardiomegaly-cls", "ctr-reg"]
FAST = {"solver": "lbfgs", "progress": False}


def _study(**kw) -> StudyConfig:
    return StudyConfig(encoders=["pixels"], positive_control=False, tasks=TASKS, heads=["linear"], train=FAST, **kw)


def test_off_by_default_and_the_grid_unchanged():
    assert _study().label_efficiency is None
    assert [c.subset for c in _study().train_grid()] == [None, None]
    assert _study(label_efficiency=False).label_efficiency is None


def test_the_defaults_add_every_subset_once_and_the_whole_split_run_once(tmp_path):
    cfg = _study(label_efficiency=True)
    assert cfg.label_efficiency == LabelEfficiency()
    grid = cfg.train_grid()
    whole = [c for c in grid if c.subset is None]
    assert [(c.task, c.head) for c in whole] == [(t, "linear") for t in TASKS]  # fraction 1 is not trained again
    fractions = (len(DEFAULT_FRACTIONS) - 1) * DEFAULT_SEEDS
    assert len(grid) == len(TASKS) * (1 + fractions) + len(DEFAULT_SHOTS) * DEFAULT_SEEDS  # shots: the class-labelled task only
    assert len(set(grid)) == len(grid)
    assert all(c.solver == "lbfgs" and c.device == cfg.device for c in grid)  # the study's train settings apply to subset runs


def test_a_config_file_key_validates_narrows_and_round_trips(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(
        "encoders: [pixels]\npositive_control: false\ntasks: [cardiomegaly-cls, ctr-reg]\nheads: [linear]\n"
        "label_efficiency: {fractions: [0.5, 0.1], shots: [4], seeds: 2, tasks: [ctr-reg]}\n"
    )
    cfg = load_config(path)
    assert cfg.label_efficiency == LabelEfficiency(fractions=(0.1, 0.5), shots=(4,), seeds=2, tasks=("ctr-reg",))
    subsets = [(c.task, c.subset) for c in cfg.train_grid() if c.subset is not None]
    assert subsets == [("ctr-reg", TrainSubset(f, None, s)) for f in (0.1, 0.5) for s in (0, 1)]  # no shots for regression
    again = StudyConfig.from_dict(cfg.to_json())
    assert again.label_efficiency == cfg.label_efficiency and again.train_grid() == cfg.train_grid()
    for text, match in [
        ("label_efficiency: {fraction: [0.1]}\n", "label_efficiency: unknown key.*fraction;.*known: fractions"),
        ("label_efficiency: {fractions: [2]}\n", r"train_fraction must be a number in \(0, 1\]"),
        ("label_efficiency: {seeds: 0}\n", "seeds must be a whole number >= 1"),
        ("label_efficiency: [0.1]\n", "label_efficiency: expected a mapping"),
        ("tasks: [ctr-reg]\nlabel_efficiency: {tasks: [heart-seg]}\n", "label_efficiency: tasks heart-seg not among the study's tasks"),
        ("train: {train_fraction: 0.5}\n", "train: unknown or per-run key.*train_fraction.*planned by label_efficiency"),
        ("train: {shots: 8}\n", "per-run key.*shots"),
    ]:
        path.write_text(text)
        with pytest.raises(RadstoreError, match=match):
            load_config(path)


@pytest.mark.filterwarnings("ignore:.*the validation split has:UserWarning")  # 24 images: a tiny validation split
def test_subset_runs_are_planned_trained_once_and_then_reused(pixels_store, tmp_path):
    """The no-op check plans the study's grid: subset runs are missing until trained, then reused
    like any other run; shots a split cannot supply fail before anything trains, naming the task."""
    from featurestore.store import Store
    from heads.train import train

    url, fsid, manifest = pixels_store
    copy = str(tmp_path / "store")
    shutil.copytree(url, copy)
    store = Store.open(copy)
    plan = {"fractions": [0.5, 1.0], "shots": [], "seeds": 2}
    cfg = _study(label_efficiency=plan)
    grid = cfg.train_grid()
    assert len(grid) == 2 + 2 * 2
    assert reusable_runs(store, fsid, grid, manifest) is None
    ids = [train(store, fsid, c, manifest).run_id for c in grid]
    assert reusable_runs(store, fsid, grid, manifest) == ids
    with pytest.raises(RadstoreError, match="cardiomegaly-cls: 99 shots need 99 training images of each class"):
        reusable_runs(store, fsid, _study(label_efficiency={**plan, "shots": [99]}).train_grid(), manifest)
