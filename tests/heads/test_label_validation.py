"""Labels are checked per column before training: a bad value or mask is one line naming the
manifest, the column, the task, the image ids and what was expected; nothing is trained or written."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from featurestore.errors import LabelError, RadstoreError
from featurestore.imageio import read_image
from featurestore.layout import RUNS_DIR
from featurestore.layout.records import read_run
from featurestore.store import Store
from featurestore.tasks import TASKS, TaskDef, TaskKind, ValueRange, register_task
from heads.config import TrainConfig
from heads.data import SPLITS, header_size, load_labels
from heads.train import train

FAST = dict(lr=1e-3, max_epochs=2, progress=False, target_size=32, solver="lbfgs", min_val_positives=0)
MASKS = ("heart_mask", "lung_mask", "pneumothorax_mask")
REMEDY = "fix them, or leave those cells empty to train without those images"
BINARY = "booleans (true/false or 0/1)"
MASK = "paths of readable mask images (PNG, JPEG, TIFF or DICOM) the size (width x height) of their image"


def cohort_rows(manifest: str) -> list[dict]:
    """The cohort's manifest rows with every path made absolute (so a copy can live elsewhere)."""
    base = Path(manifest).parent
    rows = pq.read_table(manifest).to_pylist()
    for r in rows:
        for c in ("path", *MASKS):
            if r[c]:
                r[c] = str(base / r[c])
    return rows


def write_csv(path: Path, rows: list[dict]) -> str:
    """Rows as a CSV whose column types pyarrow infers (booleans as true/false, None as empty)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else str(v).lower() if isinstance(v, bool) else v for k, v in r.items()})
    return str(path)


def run_dirs(url: str) -> set[str]:
    runs = Path(url) / RUNS_DIR
    return {p.name for p in runs.iterdir()} if runs.exists() else set()


def expect_one_line(store_url: str, fsid: str, task: str, manifest: str, message: str) -> None:
    """load_labels and train() both raise exactly ``message``, and no run directory appears."""
    store = Store.open(store_url)
    before = run_dirs(store_url)
    with pytest.raises(LabelError) as e:
        load_labels(TASKS[task], store.feature_set(fsid), manifest, store)
    assert str(e.value) == message and "\n" not in message
    with pytest.raises(LabelError) as e:
        train(store, fsid, TrainConfig(task=task, **FAST), manifest)
    assert str(e.value) == message
    assert run_dirs(store_url) == before


ZERO_ONE = {k: int(k % 3 == 0) for k in range(24)}  # a cohort-long column of 0/1 integers


def _id(k: int) -> str:
    return f"synth-7-{k:06d}"


# -- the rule, cell by cell ------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, cell, want",
    [
        ("cardiomegaly-cls", True, 1.0),
        ("cardiomegaly-cls", False, 0.0),
        ("cardiomegaly-cls", 1, 1.0),
        ("cardiomegaly-cls", 0, 0.0),
        ("cardiomegaly-cls", 1.0, 1.0),
        ("cardiomegaly-cls", "TRUE", 1.0),
        ("cardiomegaly-cls", "False", 0.0),
        ("cardiomegaly-cls", " 1 ", 1.0),
        ("cardiomegaly-cls", "0", 0.0),
        ("ctr-reg", 0.5, 0.5),
        ("ctr-reg", "0.25", 0.25),
        ("ctr-reg", 0.999, 0.999),
        ("heart-seg", "masks/a.png", "masks/a.png"),
    ],
)
def test_cells_inside_the_domain(task, cell, want):
    assert TASKS[task].label(cell) == want


@pytest.mark.parametrize(
    "task, cell",
    [
        ("cardiomegaly-cls", "yes"),
        ("cardiomegaly-cls", 2),
        ("cardiomegaly-cls", "2"),
        ("cardiomegaly-cls", -1),
        ("cardiomegaly-cls", 0.5),
        ("cardiomegaly-cls", math.nan),
        ("ctr-reg", 1.7),
        ("ctr-reg", 0.0),
        ("ctr-reg", 1),
        ("ctr-reg", -0.2),
        ("ctr-reg", math.nan),
        ("ctr-reg", math.inf),
        ("ctr-reg", "abc"),
        ("ctr-reg", "nan"),
        ("ctr-reg", True),
        ("heart-seg", 3),
    ],
)
def test_cells_outside_the_domain(task, cell):
    with pytest.raises(ValueError):
        TASKS[task].label(cell)


def test_domains_are_declared_once_per_kind_and_task():
    assert {t: TASKS[t].spec.labels for t in TASKS} == {
        "pneumothorax-cls": "binary",
        "cardiomegaly-cls": "binary",
        "ctr-reg": "number",
        "pneumothorax-seg": "mask",
        "heart-seg": "mask",
    }
    assert TASKS["ctr-reg"].expected == "finite numbers in (0, 1)"
    assert TASKS["cardiomegaly-cls"].expected == BINARY and TASKS["heart-seg"].expected == MASK
    # A kind without ``labels`` gets them from its objective; an unbounded number has no range.
    ordinal = TaskKind("ordinal", "global", "grade", "regression", ("mae",), ("linear",))
    assert ordinal.labels == "number"
    assert TaskDef("grade", "regression", "grade").expected == "finite numbers"
    assert TaskDef("grade", "regression", "grade", ValueRange(0, 4, closed=True)).label(4) == 4.0
    with pytest.raises(RadstoreError, match="only number labels have a value_range"):
        register_task(TaskDef("odd", "classification", "cardiomegaly", ValueRange(0, 1)))
    with pytest.raises(RadstoreError, match="patch kinds, and only they, have mask labels"):
        TaskKind("odd", "global", "score", "classification", ("auroc",), ("linear",), labels="mask")


# -- whole columns, through load_labels and train() ------------------------------------------


@pytest.mark.parametrize(
    "column, task, cells, read_as, shown",
    [
        ("cardiomegaly", "cardiomegaly-cls", {3: "yes"}, pa.string(), "synth-7-000003 ('yes')"),
        # A column of 0/1 is read as integers, and a 2 there too (it was an IndexError in the loss).
        ("cardiomegaly", "cardiomegaly-cls", {**ZERO_ONE, 3: 2, 7: 2}, pa.int64(), "synth-7-000003 (2), synth-7-000007 (2)"),
        ("cardiomegaly", "cardiomegaly-cls", {3: "2"}, pa.string(), "synth-7-000003 ('2')"),  # the same among true/false
        (
            "pneumothorax",
            "pneumothorax-cls",
            {0: "yes", 5: "2", 9: "no"},
            pa.string(),
            "synth-7-000000 ('yes'), synth-7-000005 ('2'), synth-7-000009 ('no')",
        ),
        ("ctr", "ctr-reg", {4: 1.7}, pa.float64(), "synth-7-000004 (1.7)"),
        # One text cell makes the whole CSV column text: every cell comes back as written.
        ("ctr", "ctr-reg", {4: "abc", 11: -0.5}, pa.string(), "synth-7-000004 ('abc'), synth-7-000011 ('-0.5')"),
    ],
)
def test_bad_values_in_a_csv_are_one_line(pixels_store, tmp_path, column, task, cells, read_as, shown):
    url, fsid, manifest = pixels_store
    rows = cohort_rows(manifest)
    for k, v in cells.items():
        rows[k][column] = v
    csv_path = write_csv(tmp_path / "m.csv", rows)
    assert pacsv.read_csv(csv_path).schema.field(column).type == read_as  # what the check sees
    n = shown.count("synth-7-")
    expected = BINARY if column != "ctr" else "finite numbers in (0, 1)"
    message = f"manifest {csv_path} column '{column}' (task {task}) has {n} value(s) that are not {expected}: image_id {shown}; {REMEDY}"
    expect_one_line(url, fsid, task, csv_path, message)


def test_nan_in_a_parquet_manifest_is_named(pixels_store, tmp_path):
    url, fsid, manifest = pixels_store
    rows = cohort_rows(manifest)
    rows[6]["ctr"] = math.nan
    rows[8]["ctr"] = None  # a null is no label: left out, not an error
    path = str(tmp_path / "m.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    message = f"manifest {path} column 'ctr' (task ctr-reg) has 1 value(s) that are not finite numbers in (0, 1): image_id synth-7-000006 (nan); {REMEDY}"
    expect_one_line(url, fsid, "ctr-reg", path, message)


def test_every_bad_row_is_counted_and_ten_are_listed(pixels_store, tmp_path):
    url, fsid, manifest = pixels_store
    rows = cohort_rows(manifest)
    for k in range(12):
        rows[k]["cardiomegaly"] = "maybe"
    csv_path = write_csv(tmp_path / "m.csv", rows)
    shown = ", ".join(f"{_id(k)} ('maybe')" for k in range(10))
    message = f"manifest {csv_path} column 'cardiomegaly' (task cardiomegaly-cls) has 12 value(s) that are not {BINARY}: image_id {shown}, and 2 more; {REMEDY}"
    expect_one_line(url, fsid, "cardiomegaly-cls", csv_path, message)


def test_bad_masks_are_one_line(pixels_store, tmp_path):
    """A mask of the wrong size, a path to nothing and a corrupt file, all three in one line."""
    url, fsid, manifest = pixels_store
    rows = cohort_rows(manifest)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(small)  # 12 wide, 10 high
    missing = tmp_path / "nowhere" / "mask.png"
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not a PNG file at all")
    rows[2]["heart_mask"], rows[5]["heart_mask"], rows[13]["heart_mask"] = str(small), str(missing), str(corrupt)
    rows[20]["heart_mask"] = None  # no mask: left out
    csv_path = write_csv(tmp_path / "m.csv", rows)
    img = read_image(rows[2]["path"]).meta  # oracle: the decoded image's size
    shown = (
        f"synth-7-000002 (mask 12x10, image {img.width}x{img.height}), "
        f"synth-7-000005 ({missing}: file not found), "
        f"synth-7-000013 ({corrupt}: not a readable image (UnidentifiedImageError))"
    )
    message = f"manifest {csv_path} column 'heart_mask' (task heart-seg) has 3 value(s) that are not {MASK}: image_id {shown}; {REMEDY}"
    expect_one_line(url, fsid, "heart-seg", csv_path, message)


def test_a_mask_is_checked_against_its_image_file_when_the_index_does_not_know_it(pixels_store, tmp_path):
    """Feature-set images missing from the store's image index: the size comes from the image file."""
    url, fsid, manifest = pixels_store
    rows = cohort_rows(manifest)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(small)
    rows[1]["heart_mask"] = str(small)
    csv_path = write_csv(tmp_path / "m.csv", rows)

    class NoIndex:  # the same store, with an empty image index
        def __init__(self, store):
            self.store = store

        def images(self):
            return self.store.images().slice(0, 0)

    store = Store.open(url)
    with pytest.raises(LabelError, match=r"image_id synth-7-000001 \(mask 12x10, image 288x286\); fix"):
        load_labels(TASKS["heart-seg"], store.feature_set(fsid), csv_path, NoIndex(store))
    assert header_size(rows[1]["path"]) == (286, 288)  # the index's size of that PNG: 288 wide, 286 high


def test_cli_prints_one_line_and_exits_2(pixels_store, tmp_path, capfd):
    """The message reaches the terminal alone: no traceback (capfd: Prefect's log handlers too)."""
    from flows.cli import main

    url, fsid, manifest = pixels_store
    rows = cohort_rows(manifest)
    rows[3]["cardiomegaly"] = "yes"
    csv_path = write_csv(tmp_path / "m.csv", rows)
    before = run_dirs(url)
    code = main(["train", "--store", url, "--feature-set", fsid, "--task", "cardiomegaly-cls", "--manifest", csv_path, "--max-epochs", "2"])
    err = capfd.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        f"error: manifest {csv_path} column 'cardiomegaly' (task cardiomegaly-cls) has 1 value(s) that are not {BINARY}: "
        f"image_id synth-7-000003 ('yes'); {REMEDY}"
    ]
    assert "Traceback" not in err and run_dirs(url) == before


# -- valid manifests still train --------------------------------------------------------------


@pytest.mark.parametrize("task, column", [("cardiomegaly-cls", "cardiomegaly"), ("ctr-reg", "ctr"), ("heart-seg", "heart_mask")])
def test_a_valid_csv_manifest_trains_without_its_empty_cells(pixels_store, tmp_path, task, column):
    url, fsid, manifest = pixels_store
    rows = cohort_rows(manifest)
    rows[0][column] = None  # an empty cell: that image is left out of the task
    csv_path = write_csv(tmp_path / "m.csv", rows)
    store = Store.open(url)
    labels = load_labels(TASKS[task], store.feature_set(fsid), csv_path, store)
    assert len(labels.image_ids) == 23 and _id(0) not in labels.image_ids
    if task == "cardiomegaly-cls":
        want = [float(r["cardiomegaly"]) for r in rows[1:]]
        assert labels.values.tolist() == want
    r = train(store, fsid, TrainConfig(task=task, **FAST), csv_path)  # mask kinds train with AdamW whatever the solver
    splits = read_run(store, r.run_id)["splits"]
    assert sum(splits[s] for s in SPLITS) == 23
