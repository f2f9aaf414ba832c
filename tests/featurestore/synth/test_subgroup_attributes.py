"""The synthetic cohort's acquisition and patient attributes, and the planted subgroup effect."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest

from featurestore.ingest import ingest
from featurestore.store import Store
from featurestore.synth.cohort import SUBGROUP_EFFECT_FILE, SynthConfig, read_subgroup_effect, synthesize
from featurestore.synth.phantom import render, sample_patient

ATTRS = ("view_position", "manufacturer", "patient_sex", "patient_age")
BASE = SynthConfig(n=40, seed=9, min_side=64, max_side=96, png_fraction=0.4, workers=1)
PLANTED = SynthConfig(**{**BASE.__dict__, "subgroup_effect": "manufacturer=VendorC", "subgroup_effect_strength": 0.7})


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """(manifest without an effect, manifest with manufacturer=VendorC planted) of the same seed."""
    plain = synthesize(tmp_path_factory.mktemp("plain"), BASE, progress=False)
    planted = synthesize(tmp_path_factory.mktemp("planted"), PLANTED, progress=False)
    return plain, planted


def _header(path) -> tuple:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.ViewPosition, ds.Manufacturer, ds.PatientSex, ds.PatientAge


def test_every_image_has_attributes_as_tags_or_manifest_columns(cohorts):
    manifest, _ = cohorts
    root = manifest.parent
    rows = pq.read_table(manifest).to_pylist()
    by_patient: dict[str, set] = {}
    seen = set()
    for r in rows:
        if r["format"] == "dicom":
            assert all(r[c] is None for c in ATTRS)  # the header carries them
            view, maker, sex, age = _header(root / r["path"])
            assert age.endswith("Y") and len(age) == 4
            attrs = (view, maker, sex, float(age[:3]))
        else:
            attrs = tuple(r[c] for c in ATTRS)
        view, maker, sex, age = attrs
        assert view in ("PA", "AP") and maker in BASE.manufacturers and sex in ("M", "F") and 18 <= age <= 95
        by_patient.setdefault(r["patient_id"], set()).add((sex, age))
        seen.add((view, maker, sex))
    assert all(len(v) == 1 for v in by_patient.values())  # sex and age belong to the patient
    assert {v for v, _, _ in seen} == {"PA", "AP"} and {m for _, m, _ in seen} == set(BASE.manufacturers)
    assert {s for _, _, s in seen} == {"M", "F"}


def test_ingest_puts_the_attributes_in_the_image_index(cohorts, tmp_path):
    manifest, _ = cohorts
    store = Store.open(str(tmp_path / "s"), create=True)
    assert ingest(str(manifest), store, progress=False).ok
    index = {r["image_id"]: r for r in store.images().to_pylist()}
    for r in pq.read_table(manifest).to_pylist():
        got = tuple(index[r["image_id"]][c] for c in ATTRS)
        if r["format"] == "dicom":
            view, maker, sex, age = _header(manifest.parent / r["path"])
            assert got == (view, maker, sex, float(age[:3]))
        else:
            assert got == tuple(r[c] for c in ATTRS)


def _digests(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_planted_effect_is_recorded_and_touches_only_its_subgroup(cohorts, tmp_path):
    plain, planted = cohorts
    truth = read_subgroup_effect(planted)
    assert read_subgroup_effect(plain) is None and not (plain.parent / SUBGROUP_EFFECT_FILE).exists()
    assert (truth["attribute"], truth["value"], truth["strength"]) == ("manufacturer", "VendorC", 0.7)
    assert truth["lesion_contrast"] == pytest.approx(0.3)
    store = Store.open(str(tmp_path / "s"), create=True)
    assert ingest(str(planted), store, progress=False).ok
    vendor_c = sorted(r["image_id"] for r in store.images().to_pylist() if r["manufacturer"] == "VendorC")
    assert sorted(truth["image_ids"]) == vendor_c and 0 < len(vendor_c) < BASE.n
    rows = {r["image_id"]: r for r in pq.read_table(planted).to_pylist()}
    assert pq.read_table(planted).equals(pq.read_table(plain))  # labels, masks, attributes: all the same
    a, b = _digests(plain.parent), _digests(planted.parent)
    for image_id, r in rows.items():
        same = a[r["path"]] == b[r["path"]]
        assert same == (image_id not in vendor_c), image_id  # only the planted subgroup's pixels differ
        for mask in ("heart_mask", "lung_mask", "pneumothorax_mask"):
            assert a[r[mask]] == b[r[mask]]


def test_rewriting_without_an_effect_removes_its_record(tmp_path):
    cfg = SynthConfig(**{**PLANTED.__dict__, "n": 4})
    m = synthesize(tmp_path, cfg, progress=False)
    assert read_subgroup_effect(m) is not None
    m = synthesize(tmp_path, SynthConfig(**{**cfg.__dict__, "subgroup_effect": None}), progress=False)
    assert read_subgroup_effect(m) is None and not (tmp_path / SUBGROUP_EFFECT_FILE).exists()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"subgroup_effect": "manufacturer=VendorZ"}, "manufacturer takes VendorA, VendorB, VendorC"),
        ({"subgroup_effect": "scanner=VendorA"}, "ATTRIBUTE=VALUE"),
        ({"subgroup_effect": "manufacturer"}, "ATTRIBUTE=VALUE"),
        ({"subgroup_effect": "view_position=LL"}, "view_position takes PA, AP"),
        ({"subgroup_effect_strength": 1.5}, "subgroup_effect_strength"),
        ({"ap_fraction": -0.1}, "ap_fraction"),
        ({"manufacturers": ()}, "manufacturers"),
    ],
)
def test_effects_that_name_no_subgroup_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        SynthConfig(**kw)


def test_lesion_contrast_fades_the_findings_and_nothing_else():
    """The same anatomy and draws at contrast 1, 0.4 and 0: masks and labels identical; the
    pneumothorax's and the heart's departure from the no-finding rendering shrinks with the
    contrast; contrast 1 is the default rendering, bit for bit."""
    anatomy = sample_patient(np.random.default_rng(4))

    def at(c: float | None):
        rng = np.random.default_rng(5)
        kw = {} if c is None else {"lesion_contrast": c}
        return render(anatomy, rng, 160, 150, pneumothorax=True, **kw)

    default, full, faint, none = at(None), at(1.0), at(0.4), at(0.0)
    np.testing.assert_array_equal(default.image, full.image)
    for ph in (faint, none):
        for m in ("lung_mask", "heart_mask", "pneumothorax_mask"):
            np.testing.assert_array_equal(getattr(ph, m), getattr(full, m))
        assert (ph.ctr, ph.pneumothorax) == (full.ctr, full.pneumothorax)
    for region in (full.pneumothorax_mask, full.heart_mask):
        strong = np.abs(full.image - none.image)[region].mean()
        weak = np.abs(faint.image - none.image)[region].mean()
        assert 0 < weak < 0.6 * strong
    with pytest.raises(ValueError, match="lesion_contrast"):
        render(anatomy, np.random.default_rng(5), 64, 64, pneumothorax=False, lesion_contrast=1.2)


def test_cli_plants_a_subgroup_effect(tmp_path, capsys):
    from flows.cli import main

    argv = ["synth", "--out", str(tmp_path / "c"), "--n", "6", "--seed", "2", "--min-side", "64", "--max-side", "80", "--workers", "1"]
    assert main([*argv, "--subgroup-effect", "patient_sex=F", "--subgroup-effect-strength", "0.5", "--quiet"]) == 0
    assert SUBGROUP_EFFECT_FILE in capsys.readouterr().out
    truth = read_subgroup_effect(tmp_path / "c" / "manifest.parquet")
    assert (truth["attribute"], truth["value"], truth["strength"]) == ("patient_sex", "F", 0.5)
    assert main([*argv[:2], str(tmp_path / "d"), *argv[3:], "--subgroup-effect", "sex=F", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: subgroup_effect") and "Traceback" not in err and not (tmp_path / "d").exists()
