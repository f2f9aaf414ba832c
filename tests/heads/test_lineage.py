"""A run's data identity: each kind of change to what a run trained on retrains exactly the runs
it touches, and an unchanged grid reuses every run (heads.lineage, heads.runs.plan_runs)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from featurestore.extract import ExtractConfig, extract
from featurestore.layout.records import read_lineage, read_run
from featurestore.synth.cohort import synthesize
from featurestore.tasks import get_task
from heads.data import SPLITS
from heads.lineage import data_hash
from heads.runs import plan_runs
from heads.train import train
from tests.lineage_grid import COHORT, GRID, build, configs, edit_manifest

pytestmark = pytest.mark.slow  # trains every task on a real store, then retrains after each change


@pytest.fixture
def trained(tmp_path):
    """A 40-image cohort, its pixels feature set and one run per task of the grid."""
    return build(tmp_path)


def _retrained(store, fsid) -> set[tuple[str, str]]:
    _, todo = plan_runs(store, fsid, configs())
    return {(c.task, c.head) for c in todo}


def test_unchanged_data_reuses_every_run_and_the_lineage_is_recorded(trained):
    manifest, store, fsid, runs = trained
    reuse, todo = plan_runs(store, fsid, configs())
    assert todo == [] and {rid for _, rid in reuse} == set(runs.values())
    for (task, _), rid in runs.items():
        lin = read_lineage(store, rid)
        rec = read_run(store, rid)
        assert rec.data_hash == data_hash(lin, fsid)
        assert sorted(set(lin.column("split").to_pylist())) == ["test", "train", "val"]
        assert dict(zip(*np.unique(lin.column("split").to_pylist(), return_counts=True))) == {s: rec.splits[s] for s in SPLITS}
        dense = get_task(task).spec.dense
        assert lin.column("mask_sha256").null_count == (0 if dense else lin.num_rows)
        assert lin.column("label").null_count == (lin.num_rows if dense else 0)


def test_a_relabelled_image_retrains_only_its_task(trained):
    manifest, store, fsid, _ = trained
    t = pq.read_table(manifest)
    image_id, label = t.column("image_id")[0].as_py(), t.column("pneumothorax")[0].as_py()
    edit_manifest(manifest, "pneumothorax", {image_id: not label})
    assert _retrained(store, fsid) == {("pneumothorax-cls", "linear")}


def test_an_edited_mask_retrains_only_the_mask_task_and_its_targets_are_reread(trained):
    manifest, store, fsid, runs = trained
    t = pq.read_table(manifest)
    row = t.filter(pc.equal(t.column("split"), "test")).slice(0, 1).to_pylist()[0]
    path = manifest.parent / row["heart_mask"]
    mask = np.asarray(Image.open(path)).copy()
    mask[:] = 0  # the heart erased: same path, other bytes
    Image.fromarray(mask).save(path)
    assert _retrained(store, fsid) == {("heart-seg", "linear")}
    cfg = next(c for c in configs() if c.task == "heart-seg")
    new = train(store, fsid, cfg).run_id
    old_sha = dict(zip(*(read_lineage(store, runs[("heart-seg", "linear")]).column(c).to_pylist() for c in ("image_id", "mask_sha256"))))
    new_sha = dict(zip(*(read_lineage(store, new).column(c).to_pylist() for c in ("image_id", "mask_sha256"))))
    assert {i for i in new_sha if new_sha[i] != old_sha[i]} == {row["image_id"]}
    # The training targets were read again, not served from the cache: the new run's target for
    # that image is empty, the old run's was not.
    from featurestore.layout.records import open_masks, read_predictions

    def target(run_id):
        p = read_predictions(store, run_id).to_pylist()
        k = next(r["mask_row"] for r in p if r["image_id"] == row["image_id"])
        return open_masks(store, run_id)[1][k]

    assert target(runs[("heart-seg", "linear")]).any() and not target(new).any()
    assert _retrained(store, fsid) == set()  # the new run is the one reused from now on


def test_a_patient_moved_to_another_split_retrains_every_task_that_labels_it(trained):
    manifest, store, fsid, _ = trained
    t = pq.read_table(manifest)
    patient = t.filter(pc.equal(t.column("split"), "train")).column("patient_id")[0].as_py()
    splits = ["test" if p == patient else s for p, s in zip(t.column("patient_id").to_pylist(), t.column("split").to_pylist())]
    pq.write_table(t.set_column(t.schema.get_field_index("split"), "split", pa.array(splits)), manifest)
    assert _retrained(store, fsid) == set(GRID)


def test_a_new_test_image_retrains_the_tasks_that_label_it_and_a_changed_config_only_its_run(trained, tmp_path):
    manifest, store, fsid, _ = trained
    bigger = synthesize(tmp_path / "bigger", dataclasses.replace(COHORT, n=COHORT.n + 6), progress=False)
    t = pq.read_table(bigger)
    new = t.slice(COHORT.n)
    assert "test" in new.column("split").to_pylist()
    extract(str(bigger), store, ExtractConfig("pixels", progress=False, num_workers=0))
    # The new images have every label: every task retrains, on the bigger manifest.
    _, todo = plan_runs(store, fsid, configs(), manifest=str(bigger))
    assert {(c.task, c.head) for c in todo} == set(GRID)
    # Without their labels (the ingested manifest), nothing changed for any run.
    assert _retrained(store, fsid) == set()
    # Labelled for every task but the CTR: the CTR run is reused, the others retrain.
    edit_manifest(bigger, "ctr", dict.fromkeys(new.column("image_id").to_pylist()))
    _, todo = plan_runs(store, fsid, configs(), manifest=str(bigger))
    assert {(c.task, c.head) for c in todo} == set(GRID) - {("ctr-reg", "linear")}
    # Another hyperparameter for one run of the grid: only that run is new.
    cfgs = configs()
    cfgs[1] = dataclasses.replace(cfgs[1], lr=0.01)
    _, todo = plan_runs(store, fsid, cfgs)
    assert [(c.task, c.head) for c in todo] == [GRID[1]]
