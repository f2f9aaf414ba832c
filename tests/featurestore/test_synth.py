"""The synthetic cohort: labels consistent with masks, prevalences, formats, determinism."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from featurestore.imageio import read_image
from featurestore.manifest import MANIFEST_SCHEMA
from featurestore.synth.cohort import SynthConfig, synthesize
from featurestore.synth.phantom import measure_ctr, render, sample_patient
from tests.conftest import COHORT


def _digest(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_schema_and_paths(cohort):
    t = pq.read_table(cohort)
    assert t.schema.equals(MANIFEST_SCHEMA)
    assert t.num_rows == COHORT.n and len(set(t.column("image_id").to_pylist())) == COHORT.n
    root = cohort.parent
    for r in t.to_pylist():
        for col in ("path", "heart_mask", "lung_mask", "pneumothorax_mask"):
            assert not r[col].startswith("/") and (root / r[col]).is_file()


def test_labels_agree_with_masks(cohort):
    root = cohort.parent
    for r in pq.read_table(cohort).to_pylist():
        heart = read_image(str(root / r["heart_mask"])).pixels > 0.5
        lung = read_image(str(root / r["lung_mask"])).pixels > 0.5
        ptx = read_image(str(root / r["pneumothorax_mask"])).pixels > 0.5
        assert heart.any() and lung.any()
        assert not (heart & lung).any()
        assert r["ctr"] == pytest.approx(measure_ctr(heart, lung), abs=0.02)
        assert r["cardiomegaly"] == (r["ctr"] > 0.5)
        assert r["pneumothorax"] == bool(ptx.any())
        assert not (ptx & ~lung).any()  # the PTX lies in the lung field
        img = read_image(str(root / r["path"]))
        # Air in the lungs is darker than the heart: the anatomy is where the masks say.
        assert img.pixels[lung & ~ptx].mean() < img.pixels[heart].mean() - 0.1


def test_formats_cover_the_variants(cohort):
    root = cohort.parent
    seen = set()
    for r in pq.read_table(cohort).to_pylist():
        m = read_image(str(root / r["path"])).meta
        assert m.format == r["format"]
        seen.add((m.format, m.bits_stored, m.photometric))
        assert COHORT.min_side <= max(m.height, m.width) <= COHORT.max_side
    assert ("png", 8, "MONOCHROME2") in seen
    assert {b for f, b, _ in seen if f == "dicom"} == {12, 16}
    assert {p for f, _, p in seen if f == "dicom"} == {"MONOCHROME1", "MONOCHROME2"}


def test_splits_are_by_patient(cohort):
    t = pq.read_table(cohort).to_pylist()
    by_patient: dict[str, set] = {}
    for r in t:
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    assert {r["split"] for r in t} <= {"train", "val", "test"}
    assert len(by_patient) < len(t)  # some patients have several films


def test_prevalences_and_hard_small_pneumothoraces():
    """Over many patients: cardiomegaly ~30%, pneumothorax sizes span large to small."""
    rng = np.random.default_rng(11)
    ctr, depth, area = [], [], []
    for _ in range(120):
        ph = render(sample_patient(rng), rng, 192, 176, pneumothorax=True)
        ctr.append(ph.ctr)
        depth.append(ph.pneumothorax_depth)
        area.append(ph.pneumothorax_mask.sum() / ph.lung_mask.sum())
    assert 0.2 < np.mean(np.array(ctr) > 0.5) < 0.4
    assert min(area) < 0.03 and max(area) > 0.25  # tiny slivers and large collapses


def test_cohort_prevalence_near_targets(tmp_path):
    m = synthesize(tmp_path, SynthConfig(n=60, seed=1, min_side=96, max_side=128), progress=False)
    t = pq.read_table(m)
    ptx = np.mean(t.column("pneumothorax").to_numpy(zero_copy_only=False))
    cm = np.mean(t.column("cardiomegaly").to_numpy(zero_copy_only=False))
    assert 0.08 < ptx < 0.35 and 0.12 < cm < 0.5


def test_same_seed_same_bytes_and_prefix_stability(tmp_path):
    cfg = SynthConfig(n=5, seed=3, min_side=128, max_side=160, workers=1)
    a = synthesize(tmp_path / "a", cfg, progress=False).parent
    b = synthesize(tmp_path / "b", SynthConfig(**{**cfg.__dict__, "workers": 2}), progress=False).parent
    assert _digest(a) == _digest(b)
    c = synthesize(tmp_path / "c", SynthConfig(**{**cfg.__dict__, "n": 7}), progress=False).parent
    da, dc = _digest(a), _digest(c)
    assert all(dc[k] == v for k, v in da.items() if k != "manifest.parquet")
    ta, tc = pq.read_table(a / "manifest.parquet"), pq.read_table(c / "manifest.parquet")
    assert tc.slice(0, 5).equals(ta)
    d = synthesize(tmp_path / "d", SynthConfig(**{**cfg.__dict__, "seed": 4}), progress=False).parent
    assert _digest(d) != da


def test_default_sizes_are_512_to_1024():
    cfg = SynthConfig()
    assert (cfg.min_side, cfg.max_side) == (512, 1024)
