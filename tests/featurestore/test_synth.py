"""The synthetic cohort: labels consistent with masks, prevalences, formats, determinism."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from featurestore.imageio import read_image
from featurestore.manifest import MANIFEST_SCHEMA
from featurestore.synth.cohort import NEAR_DUPLICATES_FILE, SynthConfig, read_near_duplicates, synthesize
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


# Near-duplicates planted across splits: the ground truth a leakage audit is checked against.
TINY = SynthConfig(n=30, seed=5, min_side=64, max_side=96, png_fraction=0.4, workers=1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The same tiny cohort without and with 3 near-duplicates: (plain manifest, planted manifest)."""
    plain = synthesize(tmp_path_factory.mktemp("plain"), TINY, progress=False)
    dup = synthesize(tmp_path_factory.mktemp("dup"), SynthConfig(**{**TINY.__dict__, "near_duplicates": 3}), progress=False)
    return plain, dup


def _thumb(path) -> np.ndarray:
    """The reader's [0, 1] image on a common grid, so images of different sizes can be compared."""
    return np.asarray(Image.fromarray(read_image(str(path)).pixels).resize((48, 48), Image.BILINEAR))


def test_near_duplicates_are_test_copies_of_train_images(planted):
    _, manifest = planted
    root = manifest.parent
    rows = {r["image_id"]: r for r in pq.read_table(manifest).to_pylist()}
    assert len(rows) == TINY.n + 3
    pairs = read_near_duplicates(manifest)
    assert [d for d, _ in pairs] == [f"synth-{TINY.seed}-dup-{j:04d}" for j in range(3)]
    assert list(rows)[TINY.n :] == [d for d, _ in pairs]  # after the regular images
    assert len({s for _, s in pairs}) == 3
    truth = pq.read_table(root / NEAR_DUPLICATES_FILE).to_pylist()
    assert [t["image_id"] for t in truth] == [d for d, _ in pairs]
    patients = [r["patient_id"] for r in rows.values()]
    thumbs = {i: _thumb(root / r["path"]) for i, r in rows.items()}
    for (d, s), t in zip(pairs, truth):
        dup, src = rows[d], rows[s]
        assert t["duplicate_of"] == s and t["patient_id"] == dup["patient_id"] == f"P{TINY.seed}-dup-{d[-4:]}"
        assert t["source_patient_id"] == src["patient_id"]
        assert dup["split"] == "test" and src["split"] == "train"
        assert patients.count(dup["patient_id"]) == 1  # a patient of its own: no patient-level split sees it
        for col in ("format", "pneumothorax", "cardiomegaly", "ctr"):
            assert dup[col] == src[col]
        for col in ("heart_mask", "lung_mask", "pneumothorax_mask"):
            assert d in dup[col] and (root / dup[col]).read_bytes() == (root / src[col]).read_bytes()
        a, b = read_image(str(root / dup["path"])), read_image(str(root / src["path"]))
        assert (a.meta.height, a.meta.width, a.meta.bits_stored, a.meta.photometric) == (
            b.meta.height, b.meta.width, b.meta.bits_stored, b.meta.photometric,
        )  # fmt: skip
        diff = np.abs(a.pixels - b.pixels)
        assert 0 < diff.mean() < 0.03  # close, yet not a byte copy
        assert (root / dup["path"]).read_bytes() != (root / src["path"]).read_bytes()
        near = np.abs(thumbs[d] - thumbs[s]).mean()
        others = [np.abs(thumbs[d] - v).mean() for i, v in thumbs.items() if i not in (d, s)]
        assert near * 5 < min(others)  # much closer to its source than to anything else, same patient's films included


def test_near_duplicates_leave_the_regular_images_unchanged(planted):
    plain, dup = planted
    a, b = _digest(plain.parent), _digest(dup.parent)
    assert NEAR_DUPLICATES_FILE not in a
    assert all(b[k] == v for k, v in a.items() if k != "manifest.parquet")
    assert pq.read_table(dup).slice(0, TINY.n).equals(pq.read_table(plain))


def test_no_near_duplicates_no_ground_truth(tmp_path):
    cfg = SynthConfig(**{**TINY.__dict__, "n": 8})
    m = synthesize(tmp_path, SynthConfig(**{**cfg.__dict__, "near_duplicates": 1}), progress=False)
    assert len(read_near_duplicates(m)) == 1
    m = synthesize(tmp_path, cfg, progress=False)  # rewritten without: the stale answer goes
    assert not (tmp_path / NEAR_DUPLICATES_FILE).exists()
    assert read_near_duplicates(m) == []


def test_near_duplicates_must_be_possible(planted, tmp_path):
    with pytest.raises(ValueError, match="near_duplicates"):
        SynthConfig(near_duplicates=-1)
    with pytest.raises(ValueError, match="near_duplicate_noise"):
        SynthConfig(near_duplicate_noise=-0.1)
    train = pq.read_table(planted[0]).column("split").to_pylist().count("train")
    assert train < TINY.n  # so the bound is the train images, not the cohort
    cfg = SynthConfig(**{**TINY.__dict__, "near_duplicates": train + 1})
    with pytest.raises(ValueError, match="train images"):
        synthesize(tmp_path / "c", cfg, progress=False)
    assert not (tmp_path / "c").exists()  # refused before anything is written


def test_cli_plants_near_duplicates(tmp_path, capsys):
    from flows.cli import main

    out = tmp_path / "c"
    argv = ["synth", "--out", str(out), "--n", "12", "--seed", "5", "--min-side", "64", "--max-side", "96", "--workers", "1"]
    assert main([*argv, "--near-duplicates", "2", "--near-duplicate-noise", "0.02", "--quiet"]) == 0
    assert "wrote 14 images" in capsys.readouterr().out
    assert len(read_near_duplicates(out / "manifest.parquet")) == 2


def test_cli_refuses_impossible_near_duplicates_in_one_line(tmp_path, capsys):
    from flows.cli import main

    out = tmp_path / "c"
    assert main(["synth", "--out", str(out), "--n", "3", "--near-duplicates", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: near_duplicates=4") and "Traceback" not in err
    assert not out.exists()
