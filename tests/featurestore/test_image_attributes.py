"""Acquisition and patient attributes in the image index: read from the DICOM header, or the
manifest's columns; stores written before the columns existed still read, with nulls."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from featurestore import attributes, layout
from featurestore.ingest import ingest
from featurestore.store import Store

NEW = ("view_position", "manufacturer", "patient_sex", "patient_age")


@pytest.mark.parametrize(
    ("value", "years"),
    [
        ("065Y", 65.0),
        ("006M", 0.5),
        ("010W", 70 / 365.25),
        ("003D", 3 / 365.25),
        ("000Y", 0.0),
        (" 58Y ", 58.0),
        ("065y", 65.0),
        ("65", 65.0),  # a bare number: years
        (72, 72.0),
        (72.5, 72.5),
        ("", None),
        ("   ", None),
        ("abc", None),
        ("65 years", None),
        ("200Y", None),  # outside [0, 150]
        ("-5Y", None),
        (None, None),
        (float("nan"), None),
        (True, None),
    ],
)
def test_parse_age(value, years):
    got = attributes.parse_age(value)
    assert got == (pytest.approx(years) if years is not None else None)


def test_header_attributes_of_pydicom_sample_files():
    """Known answers from the files' own headers (CT_small: GE, sex O, age 000Y; examples_overlay:
    SIEMENS, M, 058Y; MR_small: TOSHIBA_MEC, F, no age; none has a ViewPosition)."""
    read = {name: attributes.from_dataset(pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True))
            for name in ("CT_small.dcm", "examples_overlay.dcm", "MR_small.dcm")}  # fmt: skip
    assert read["CT_small.dcm"] == {"view_position": None, "manufacturer": "GE MEDICAL SYSTEMS", "patient_sex": "O", "patient_age": 0.0}
    assert read["examples_overlay.dcm"] == {"view_position": None, "manufacturer": "SIEMENS", "patient_sex": "M", "patient_age": 58.0}
    assert read["MR_small.dcm"] == {"view_position": None, "manufacturer": "TOSHIBA_MEC", "patient_sex": "F", "patient_age": None}
    assert attributes.from_dataset(None) == dict.fromkeys(NEW)


def test_manifest_cell_wins_over_the_header_and_fills_its_gaps():
    header = {"view_position": None, "manufacturer": "GE", "patient_sex": "M", "patient_age": 60.0}
    row = {"manufacturer": "  ", "patient_sex": "F", "patient_age": "070Y", "view_position": None}
    assert attributes.merge(header, row) == {"view_position": None, "manufacturer": "GE", "patient_sex": "F", "patient_age": 70.0}
    assert attributes.merge(header, {}) == header


@pytest.fixture
def sample_cohort(tmp_path):
    """Two pydicom sample files (one given a ViewPosition), a PNG without attributes and a PNG
    whose manifest row gives them; a manifest without the attribute columns, and one with them."""
    shutil.copy(get_testdata_file("examples_overlay.dcm"), tmp_path / "overlay.dcm")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.ViewPosition = "AP"
    ds.save_as(tmp_path / "ct.dcm")
    img = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "plain.png")
    Image.fromarray(img[::-1]).save(tmp_path / "labelled.png")
    ids = ["overlay", "ct", "plain", "labelled"]
    paths = ["overlay.dcm", "ct.dcm", "plain.png", "labelled.png"]
    pq.write_table(pa.table({"image_id": ids, "path": paths}), tmp_path / "bare.parquet")
    pq.write_table(
        pa.table({
            "image_id": ids, "path": paths,
            "view_position": [None, None, None, "PA"], "manufacturer": ["Siemens Healthineers", None, None, "VendorB"],
            "patient_sex": [None, None, None, "F"], "patient_age": [None, None, None, 41.0],
        }),
        tmp_path / "with_columns.parquet",
    )  # fmt: skip
    return tmp_path


def _attrs(store: Store) -> dict[str, tuple]:
    return {r["image_id"]: tuple(r[c] for c in NEW) for r in store.images().to_pylist()}


def test_ingest_records_the_dicom_header_and_nulls_for_a_png(sample_cohort):
    store = Store.open(str(sample_cohort / "s"), create=True)
    assert ingest(str(sample_cohort / "bare.parquet"), store, progress=False).ok
    assert _attrs(store) == {
        "overlay": (None, "SIEMENS", "M", 58.0),
        "ct": ("AP", "GE MEDICAL SYSTEMS", "O", 0.0),
        "plain": (None, None, None, None),
        "labelled": (None, None, None, None),
    }
    assert store.images().schema.equals(layout.IMAGES_SCHEMA)


def test_ingest_takes_the_manifest_columns_where_given(sample_cohort):
    store = Store.open(str(sample_cohort / "s"), create=True)
    assert ingest(str(sample_cohort / "with_columns.parquet"), store, progress=False).ok
    assert _attrs(store) == {
        "overlay": (None, "Siemens Healthineers", "M", 58.0),  # the manifest's manufacturer, the header's sex and age
        "ct": ("AP", "GE MEDICAL SYSTEMS", "O", 0.0),
        "plain": (None, None, None, None),
        "labelled": ("PA", "VendorB", "F", 41.0),
    }


def _old_images_part(store: Store, image_id: str) -> None:
    """An images part as radstore wrote it before bits_rule and the attributes existed."""
    old = pa.schema([f for f in layout.IMAGES_SCHEMA if f.name not in ("bits_rule", *NEW)])
    row = {"image_id": image_id, "patient_id": "p", "split": "train", "uri": f"/x/{image_id}.png", "format": "png",
           "sha256": "0" * 64, "size_bytes": 1, "height": 8, "width": 8, "bits_stored": 8, "photometric": "MONOCHROME2",
           "ingested_at": layout.now_ms(), "manifest": None}  # fmt: skip
    store.loc.write_parquet(pa.Table.from_pylist([row], schema=old), layout.IMAGES_DIR, layout.part_name())


def test_an_images_part_written_before_the_attributes_still_reads(sample_cohort):
    """Old and new parts side by side: one table of today's schema, nulls where a part had no column."""
    store = Store.open(str(sample_cohort / "s"), create=True)
    _old_images_part(store, "old")
    assert ingest(str(sample_cohort / "bare.parquet"), store, progress=False).ok
    t = store.images()
    assert t.schema.equals(layout.IMAGES_SCHEMA) and t.num_rows == 5
    got = _attrs(store)
    assert got["old"] == (None, None, None, None) and got["overlay"] == (None, "SIEMENS", "M", 58.0)
    alone = Store.open(str(sample_cohort / "s2"), create=True)
    _old_images_part(alone, "only")
    assert alone.images().schema.equals(layout.IMAGES_SCHEMA) and _attrs(alone) == {"only": (None, None, None, None)}


def test_the_v1_fixture_store_reads_with_null_attributes(tmp_path):
    from pathlib import Path

    root = tmp_path / "store-v1"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "store-v1", root)
    t = Store.open(str(root)).images()
    assert t.num_rows > 0 and t.schema.equals(layout.IMAGES_SCHEMA)
    assert all(t.column(c).null_count == t.num_rows for c in NEW)


def test_a_header_value_pydicom_cannot_convert_is_null():
    class Broken:
        def get(self, keyword):
            if keyword == "PatientAge":
                raise ValueError("bad AS")
            return {"Manufacturer": "ACME"}.get(keyword)

    got = attributes.from_dataset(Broken())
    assert got == {"view_position": None, "manufacturer": "ACME", "patient_sex": None, "patient_age": None}
