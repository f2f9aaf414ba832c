"""Ingestion: metadata into the store, idempotent, bad rows reported while the rest go in."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.errors import ManifestError
from featurestore.imageio import read_image
from featurestore.ingest import ingest
from featurestore.store import Store
from tests.conftest import COHORT


def test_ingest_records_metadata_and_is_idempotent(cohort, tmp_path):
    store = Store.open(str(tmp_path / "s"), create=True)
    r1 = ingest(str(cohort), store, progress=False)
    assert r1.ok and len(r1.added) == COHORT.n
    t = store.images()
    assert t.num_rows == COHORT.n and t.schema.names[:3] == ["image_id", "patient_id", "split"]
    row = t.filter(pa.compute.equal(t.column("image_id"), r1.added[0])).to_pylist()[0]
    m = read_image(row["uri"]).meta
    assert (row["sha256"], row["height"], row["width"], row["bits_stored"], row["photometric"]) == (
        m.sha256,
        m.height,
        m.width,
        m.bits_stored,
        m.photometric,
    )
    r2 = ingest(str(cohort), store, progress=False)
    assert r2.ok and not r2.added and len(r2.unchanged) == COHORT.n
    assert store.images().num_rows == COHORT.n


def test_images_table_records_how_the_bit_depth_was_found(tmp_path):
    """A 16-bit PNG of 12-bit data: bits_stored 12 from its sBIT chunk, or from its maximum
    without one; the rule used is in the table's ``bits_rule`` column."""
    import numpy as np
    from PIL import Image, PngImagePlugin

    data = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([12]))
    Image.fromarray(data).save(tmp_path / "sbit.png", pnginfo=info)
    Image.fromarray(data).save(tmp_path / "plain.png")
    Image.fromarray((data // 16).astype(np.uint8)).save(tmp_path / "eight.png")
    pq.write_table(
        pa.table({"image_id": ["sbit", "plain", "eight"], "path": ["sbit.png", "plain.png", "eight.png"]}), tmp_path / "m.parquet"
    )
    store = Store.open(str(tmp_path / "s"), create=True)
    assert ingest(str(tmp_path / "m.parquet"), store, progress=False).ok
    rows = {r["image_id"]: (r["bits_stored"], r["bits_rule"]) for r in store.images().to_pylist()}
    assert rows == {"sbit": (12, "sBIT"), "plain": (12, "max-value"), "eight": (8, "8-bit")}


def _broken_cohort(cohort, tmp_path):
    """A copy of the cohort with one of every kind of bad row."""
    root = tmp_path / "broken"
    shutil.copytree(cohort.parent, root)
    rows = pq.read_table(root / "manifest.parquet").to_pylist()
    ids = [r["image_id"] for r in rows]
    dcm = next(r for r in rows if r["format"] == "dicom")
    png = next(r for r in rows if r["format"] == "png")
    data = (root / dcm["path"]).read_bytes()
    (root / dcm["path"]).write_bytes(data[: len(data) // 2])  # truncated DICOM
    (root / png["path"]).write_bytes(b"this is not a png")  # corrupt, unrecognisable
    extra = [
        {**rows[0], "image_id": "missing-file", "path": "images/does-not-exist.dcm"},
        {**rows[0], "image_id": "notes", "path": "notes.txt", "format": None},
        {**rows[1], "image_id": ids[2]},  # duplicate image_id
    ]
    (root / "notes.txt").write_text("hello")
    pq.write_table(pa.Table.from_pylist(rows + extra, schema=pq.read_schema(root / "manifest.parquet")), root / "manifest.parquet")
    return root, dcm["image_id"], png["image_id"], ids[2]


def test_bad_rows_are_reported_and_the_rest_ingested(cohort, tmp_path):
    root, bad_dcm, bad_png, dup = _broken_cohort(cohort, tmp_path)
    store = Store.open(str(tmp_path / "s"), create=True)
    lines: list[str] = []
    rep = ingest(str(root / "manifest.parquet"), store, progress=False, log=lines.append)
    failed = {i: reason for i, _, reason in rep.failed}
    assert set(failed) == {bad_dcm, bad_png, "missing-file", "notes", dup}
    assert "corrupt or truncated dicom" in failed[bad_dcm]
    assert "corrupt png file: its content is not a png image" in failed[bad_png]
    assert "file not found" in failed["missing-file"]
    assert "unrecognised image format" in failed["notes"]
    assert "duplicate image_id in manifest" in failed[dup]
    assert len(lines) == 6 and all(line.startswith("ERROR image_id=") for line in lines)  # dup: both rows
    assert len(rep.added) == COHORT.n - 3  # everything else went in
    errs = store.ingest_errors()
    assert errs.num_rows == 6 and set(errs.column("image_id").to_pylist()) == set(failed)


def test_changed_bytes_are_reported_not_replaced(cohort, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(cohort.parent, root)
    store = Store.open(str(tmp_path / "s"), create=True)
    ingest(str(root / "manifest.parquet"), store, progress=False)
    before = store.images()
    row = pq.read_table(root / "manifest.parquet").to_pylist()[3]
    other = pq.read_table(root / "manifest.parquet").to_pylist()[4]
    shutil.copy(root / other["path"], root / row["path"])  # same id, different bytes
    rep = ingest(str(root / "manifest.parquet"), store, progress=False, log=lambda m: None)
    assert [i for i, _, _ in rep.failed] == [row["image_id"]]
    assert "bytes changed since it was ingested" in rep.failed[0][2]
    assert store.images().equals(before)


def test_manifest_problems(tmp_path, cohort):
    t = pq.read_table(cohort).drop_columns(["path"])
    pq.write_table(t, tmp_path / "m.parquet")
    store = Store.open(str(tmp_path / "s"), create=True)
    with pytest.raises(ManifestError, match="missing required column\\(s\\) path"):
        ingest(str(tmp_path / "m.parquet"), store, progress=False)
    with pytest.raises(ManifestError, match="does not exist"):
        ingest(str(tmp_path / "nope.parquet"), store, progress=False)
    (tmp_path / "bad.parquet").write_text("garbage")
    with pytest.raises(ManifestError, match="could not be read as Parquet"):
        ingest(str(tmp_path / "bad.parquet"), store, progress=False)


def test_csv_manifest(tmp_path, cohort):
    t = pq.read_table(cohort).select(["image_id", "path"]).slice(0, 3)
    import pyarrow.csv as pacsv

    pacsv.write_csv(t, cohort.parent / "small.csv")
    store = Store.open(str(tmp_path / "s"), create=True)
    rep = ingest(str(cohort.parent / "small.csv"), store, progress=False)
    assert rep.ok and len(rep.added) == 3
