"""Training subsets (featurestore.subsets, heads.data.subset_training): nested, patient-level,
sized by the documented rule, one draw per seed; the config fields that select them validate,
and adding them leaves every run recorded before them reusable."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, fields

import numpy as np
import pytest

from featurestore.errors import RadstoreError
from featurestore.layout.records import RunRecord
from featurestore.subsets import DEFAULT_FRACTIONS, DEFAULT_SHOTS, WHOLE_SPLIT, LabelEfficiency, TrainSubset
from featurestore.tasks import get_task
from heads.config import TrainConfig, grid_configs, label_efficiency_grid
from heads.data import Labels, split_counts, split_indices, subset_training
from heads.runs import find_run

SEEDS = range(5)


def cohort(n_patients: int = 200, seed: int = 0, prevalence: float = 0.25) -> Labels:
    """1-3 images per patient, a binary label per image, 60/20/20 train/val/test by patient."""
    rng = np.random.default_rng(seed)
    ids, patients, splits, values = [], [], [], []
    for p in range(n_patients):
        split = ("train", "val", "test")[int(rng.choice(3, p=[0.6, 0.2, 0.2]))]
        for _ in range(int(rng.integers(1, 4))):
            ids.append(f"img{len(ids):04d}")
            patients.append(f"P{p:04d}")
            splits.append(split)
            values.append(float(rng.random() < prevalence))
    return Labels(ids, patients, splits, np.asarray(values, np.float32), None, (0.0, 1.0))


def order_by_hand(patients: set[str], seed: int) -> list[str]:
    """The documented draw order, derived here from its definition: sha256 of "seed<TAB>patient"."""
    return sorted(patients, key=lambda p: hashlib.sha256(f"{seed}\t{p}".encode()).digest())


@pytest.fixture(scope="module")
def labels() -> Labels:
    return cohort()


@pytest.fixture(scope="module")
def train(labels) -> np.ndarray:
    return np.flatnonzero(np.array(labels.splits) == "train")


def _patients(labels: Labels, idx) -> set[str]:
    return {labels.patients[i] for i in idx}


def test_fractions_are_nested_and_take_whole_patients(labels, train):
    for seed in SEEDS:
        subsets = [set(subset_training(labels, train, fraction=f, seed=seed).tolist()) for f in DEFAULT_FRACTIONS]
        for small, big in zip(subsets, subsets[1:]):
            assert small <= big  # 1% within 2% ... within 100%
        assert subsets[-1] == set(train.tolist())  # a fraction of 1 is the whole split
        for s in subsets:
            inside = _patients(labels, s)
            assert {i for i in train.tolist() if labels.patients[i] in inside} == s  # every image of a patient, or none


def test_a_fraction_is_the_shortest_prefix_of_the_seed_order_reaching_its_size_and_every_class(labels, train):
    """Known answer: rebuild the subset from the documented rule (hash order, ceil(f * n) images,
    an image of each class) independently of the implementation."""
    by_patient: dict[str, list[int]] = {}
    for i in train.tolist():
        by_patient.setdefault(labels.patients[i], []).append(i)
    for seed in SEEDS:
        order = order_by_hand(set(by_patient), seed)
        for f in (0.01, 0.02, 0.05, 0.1, 0.25, 0.5):
            target = math.ceil(round(f * len(train), 9))
            want: list[int] = []
            for p in order:
                classes = {float(labels.values[i]) for i in want}
                if len(want) >= target and classes == {0.0, 1.0}:
                    break
                want += by_patient[p]
            got = subset_training(labels, train, fraction=f, seed=seed)
            assert got.tolist() == sorted(want), (seed, f)


def test_the_size_rule_rounds_up_exactly():
    """0.1 of 30 images is 3 images (not 4 from 0.1 * 30 = 3.0000000000000004); one image per patient."""
    labels = Labels([f"i{k}" for k in range(30)], [f"p{k}" for k in range(30)], ["train"] * 30,
                    np.array([k % 2 for k in range(30)], np.float32), None)  # fmt: skip
    train = np.arange(30)
    assert len(subset_training(labels, train, fraction=0.1)) == 3
    assert len(subset_training(labels, train, fraction=0.11)) == 4
    assert len(subset_training(labels, train, fraction=0.001)) == 1  # never empty


def test_a_small_fraction_still_holds_both_classes(labels, train):
    """The smallest fractions would often draw one class only: a classifier cannot be fitted to it."""
    for seed in SEEDS:
        got = subset_training(labels, train, fraction=0.01, seed=seed)
        assert set(labels.values[got].tolist()) == {0.0, 1.0}


def test_shots_are_nested_patient_level_and_reach_k_of_each_class(labels, train):
    for seed in SEEDS:
        subsets = [subset_training(labels, train, shots=k, seed=seed) for k in DEFAULT_SHOTS]
        for small, big in zip(subsets, subsets[1:]):
            assert set(small.tolist()) <= set(big.tolist())
        for k, s in zip(DEFAULT_SHOTS, subsets):
            y = labels.values[s]
            assert (y == 1).sum() >= k and (y == 0).sum() >= k
            # minimal: without its last patient in the draw order, a class falls short of k
            last = order_by_hand(_patients(labels, s), seed)[-1]
            rest = labels.values[[i for i in s.tolist() if labels.patients[i] != last]]
            assert (rest == 1).sum() < k or (rest == 0).sum() < k
        # one patient order per seed: a k-shot subset is within any fraction subset at least as big
        for f in DEFAULT_FRACTIONS:
            frac = set(subset_training(labels, train, fraction=f, seed=seed).tolist())
            for s in subsets:
                assert set(s.tolist()) <= frac or frac <= set(s.tolist())


def test_seeds_draw_different_subsets_and_a_seed_always_the_same(labels, train):
    draws = [tuple(subset_training(labels, train, fraction=0.1, seed=s).tolist()) for s in SEEDS]
    assert len(set(draws)) == len(draws)
    assert draws[2] == tuple(subset_training(cohort(), train, fraction=0.1, seed=2).tolist())
    shots = [tuple(subset_training(labels, train, shots=8, seed=s).tolist()) for s in SEEDS]
    assert len(set(shots)) == len(shots)


def test_too_few_of_a_class_for_k_shots_is_an_error(labels, train):
    positives = int((labels.values[train] == 1).sum())
    with pytest.raises(RadstoreError, match=rf"{positives + 1} shots need .* {positives} of class 1"):
        subset_training(labels, train, shots=positives + 1)
    no_classes = Labels(labels.image_ids, labels.patients, labels.splits, labels.values, None)
    with pytest.raises(RadstoreError, match="labels that are classes"):
        subset_training(no_classes, train, shots=2)
    with pytest.raises(RadstoreError, match="one of the two"):
        subset_training(labels, train, fraction=0.5, shots=2)


def test_split_indices_subsets_training_only_and_counts_what_was_used(labels):
    whole = split_indices(labels, None, 5, 0)
    sub = split_indices(labels, None, 5, 0, TrainSubset(fraction=0.25, seed=3))
    assert np.array_equal(sub["val"], whole["val"]) and np.array_equal(sub["test"], whole["test"])
    assert np.array_equal(sub["train_pool"], whole["train"])
    assert np.array_equal(sub["train"], subset_training(labels, whole["train"], fraction=0.25, seed=3))
    counts = split_counts(labels, sub)
    assert counts == {"train": len(sub["train"]), "val": len(whole["val"]), "test": len(whole["test"]),
                      "train_pool": len(whole["train"]), "train_positives": int(labels.values[sub["train"]].sum())}  # fmt: skip
    assert "train_pool" not in split_counts(labels, whole)
    folds = split_indices(labels, 1, 5, 0, TrainSubset(shots=8, seed=1))  # a fold's training split is subset the same way
    assert set(folds["train"].tolist()) <= set(folds["train_pool"].tolist())
    assert (labels.values[folds["train"]] == 1).sum() >= 8


# -- the config fields ----------------------------------------------------------------------------


def test_train_config_subset_fields_validate():
    cases = [
        (dict(train_fraction=0), r"train_fraction must be a number in \(0, 1\]"),
        (dict(train_fraction=1.5), r"train_fraction must be a number in \(0, 1\]"),
        (dict(train_fraction=True), r"train_fraction must be a number"),
        (dict(shots=0), "shots must be a whole number >= 1"),
        (dict(shots=2.5), "shots must be a whole number >= 1"),
        (dict(shots=8, train_fraction=0.1), "not both"),
        (dict(shots=8, subset_seed=-1), "subset_seed must be a whole number >= 0"),
    ]
    for kw, msg in cases:
        with pytest.raises(RadstoreError, match=msg):
            TrainConfig(task="cardiomegaly-cls", **kw)
    for task in ("ctr-reg", "heart-seg"):  # kinds whose labels are not classes: by the registry, not by name
        with pytest.raises(RadstoreError, match="shots .* apply to tasks whose labels are classes"):
            TrainConfig(task=task, head="linear", shots=8)
        assert TrainConfig(task=task, head="linear", train_fraction=0.5).subset == TrainSubset(fraction=0.5)


def test_one_spelling_of_the_whole_split_and_of_each_subset():
    whole = TrainConfig(task="cardiomegaly-cls")
    assert whole.subset is None
    assert TrainConfig(task="cardiomegaly-cls", train_fraction=1.0, subset_seed=4) == whole  # a fraction of 1 draws nothing
    assert TrainConfig(task="cardiomegaly-cls", subset_seed=4) == whole
    sub = TrainConfig(task="cardiomegaly-cls", train_fraction=0.1, subset_seed=2)
    assert sub.subset == TrainSubset(fraction=0.1, seed=2) and sub.subset.regime == "fraction" and sub.subset.size == 0.1
    assert TrainConfig(task="cardiomegaly-cls", shots=16).subset.size == 16.0
    # the fields' defaults are the whole split's values the record leaves out
    assert {f.name: f.default for f in fields(TrainConfig) if f.name in WHOLE_SPLIT} == WHOLE_SPLIT


def test_a_whole_split_config_is_recorded_exactly_as_before_the_subset_fields():
    cfg = TrainConfig(task="cardiomegaly-cls", solver="lbfgs")
    recorded = cfg.to_json()
    assert not set(WHOLE_SPLIT) & set(recorded)
    assert recorded == {k: v for k, v in asdict(cfg).items() if k not in WHOLE_SPLIT} | {"refiner_channels": [512, 256]}
    sub = TrainConfig(task="cardiomegaly-cls", shots=8, subset_seed=3).to_json()
    assert (sub["shots"], sub["subset_seed"]) == (8, 3) and "train_fraction" not in sub
    assert TrainSubset.of(sub) == TrainSubset(shots=8, seed=3) and TrainSubset.of(recorded) is None


def _record(config: dict, run_id: str = "old-run") -> RunRecord:
    return RunRecord.from_json({"run_id": run_id, "task": config["task"], "task_kind": "classification", "head": config["head"],
                                "feature_set_id": "fs", "encoder": "pixels", "config": config,
                                "created_at": "2025-01-01T00:00:00+00:00"})  # fmt: skip


def test_a_run_recorded_before_the_subset_fields_is_reused_for_a_whole_split_config():
    cfg = TrainConfig(task="cardiomegaly-cls", solver="lbfgs")
    old = {k: v for k, v in asdict(cfg).items() if k not in WHOLE_SPLIT} | {"refiner_channels": [512, 256]}  # the old format
    explicit = {**old, **WHOLE_SPLIT}
    runs = [_record(old)]
    assert find_run(None, "fs", cfg.to_json(), runs=runs) == "old-run"
    assert find_run(None, "fs", cfg.to_json(), runs=[_record(explicit, "explicit")]) == "explicit"  # absent == its default
    for other in (dict(train_fraction=0.5), dict(shots=8), dict(train_fraction=0.5, subset_seed=1)):
        assert find_run(None, "fs", TrainConfig(task="cardiomegaly-cls", solver="lbfgs", **other).to_json(), runs=runs) is None
    a, b = (TrainConfig(task="cardiomegaly-cls", train_fraction=0.5, subset_seed=s).to_json() for s in (0, 1))
    assert find_run(None, "fs", a, runs=[_record(b, "seed-1")]) is None  # another draw is another run
    assert find_run(None, "fs", b, runs=[_record(b, "seed-1")]) == "seed-1"


# -- the study's plan ------------------------------------------------------------------------------


def test_the_plan_adds_each_subset_once_per_seed_and_never_the_whole_split_again():
    base = grid_configs(["cardiomegaly-cls", "ctr-reg", "heart-seg"], ["linear"], None, {"solver": "lbfgs"})
    plan = LabelEfficiency()
    grid = label_efficiency_grid(base, plan)
    per_fraction = (len(DEFAULT_FRACTIONS) - 1) * plan.seeds  # a fraction of 1 is the whole-split run
    assert len(grid) == 3 * per_fraction + len(DEFAULT_SHOTS) * plan.seeds  # shots for the class-labelled task only
    assert all(c.subset is not None for c in grid)
    assert len(set(grid + base)) == len(grid) + len(base)  # no run twice
    assert {c.subset.seed for c in grid} == set(range(plan.seeds))
    assert {c.seed for c in grid} == {0}  # the seed draws the subset; training keeps the study's seed
    narrowed = label_efficiency_grid(base, LabelEfficiency(fractions=[0.5], shots=[], seeds=2, tasks=["ctr-reg"]))
    assert [(c.task, c.subset) for c in narrowed] == [("ctr-reg", TrainSubset(0.5, None, 0)), ("ctr-reg", TrainSubset(0.5, None, 1))]
    assert get_task("ctr-reg").spec.classes == () and get_task("cardiomegaly-cls").spec.classes == (0.0, 1.0)


def test_the_plan_validates():
    for kw, msg in [
        (dict(fractions=[0.0]), r"\(0, 1\]"),
        (dict(fractions=0.5), "fractions must be a list"),
        (dict(shots=[0]), "shots must be a whole number"),
        (dict(seeds=0), "seeds must be a whole number >= 1"),
        (dict(fractions=[], shots=[]), "at least one fraction"),
        (dict(tasks=["no-such-task"]), "unknown task"),
        (dict(heads=["mlp"]), "unknown head"),
    ]:
        with pytest.raises(RadstoreError, match=msg):
            LabelEfficiency(**kw)
    with pytest.raises(RadstoreError, match="unknown key.*seed;"):
        LabelEfficiency.from_dict({"seed": 3})
    assert LabelEfficiency.from_dict(True) == LabelEfficiency() and LabelEfficiency.from_dict(None) is None
    assert LabelEfficiency(fractions=[0.5, 0.1, 0.5]).fractions == (0.1, 0.5)
    plan = LabelEfficiency(fractions=[0.1], shots=[4], seeds=2, tasks=["cardiomegaly-cls"])
    assert LabelEfficiency.from_dict(plan.to_json()) == plan
