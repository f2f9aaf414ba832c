"""The extraction engine without Prefect: every encoder, backfill, bad images, a killed run."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from featurestore.encoders import ENCODERS
from featurestore.extract import ExtractConfig, extract, plan
from featurestore.imageio import read_image
from featurestore.manifest import load_manifest
from featurestore.store import Store
from featurestore.synth.cohort import SynthConfig, synthesize
from tests.conftest import COHORT

ROOT = Path(__file__).resolve().parents[2]


def _cfg(encoder: str, **kw) -> ExtractConfig:
    return ExtractConfig(encoder=encoder, weights=None if encoder == "pixels" else "random:tiny", progress=False, num_workers=0, **kw)


@pytest.mark.slow
def test_every_encoder_into_its_own_feature_set(cohort, tmp_path):
    store = Store.open(str(tmp_path / "s"), create=True)
    ids = set()
    for name in ENCODERS:
        r = extract(str(cohort), store, _cfg(name))
        assert (r.done, r.skipped, r.failed) == (COHORT.n, 0, [])
        ids.add(r.feature_set_id)
        fs = store.feature_set(r.feature_set_id)
        assert len(fs) == COHORT.n
        x = fs.patches(fs.cls().column("image_id").to_pylist()[:3])
        assert x.shape[1:] == fs.spec.grid and np.isfinite(x).all()
    assert len(ids) == len(ENCODERS)
    clip = next(f for f in store.feature_sets() if f.spec.encoder == "biomedclip")
    assert "cls_trunk" in clip.cls().column_names  # the trunk's [CLS] kept beside the projection
    assert all(f.spec.labels["weights"] == "random:tiny" for f in store.feature_sets() if ENCODERS[f.spec.encoder].needs_weights)


def test_embeddings_equal_a_direct_forward(cohort, tmp_path):
    """Oracle: the encoder's forward on the same preprocessed images, outside the engine."""
    import torch

    from featurestore.extract import encoder_for

    store = Store.open(str(tmp_path / "s"), create=True)
    cfg = _cfg("rad-dino", dtype="float32")
    r = extract(str(cohort), store, cfg)
    fs = store.feature_set(r.feature_set_id)
    m = load_manifest(str(cohort))
    rows = m.table.to_pylist()[:4]
    enc = encoder_for(cfg)
    x = torch.stack([enc.preprocessing(read_image(m.resolve(row["path"])).pixels) for row in rows])
    with torch.inference_mode():
        out = enc.embed(x)
    ids = [row["image_id"] for row in rows]
    np.testing.assert_allclose(fs.patches(ids), out.patches.numpy(), rtol=1e-5, atol=1e-5)
    cls = fs.cls()
    got = {i: v for i, v in zip(cls.column("image_id").to_pylist(), cls.column("cls").to_pylist())}
    np.testing.assert_allclose(np.array([got[i] for i in ids]), out.global_.numpy(), rtol=1e-5, atol=1e-5)
    sha = dict(zip(cls.column("image_id").to_pylist(), cls.column("sha256").to_pylist()))
    assert sha[ids[0]] == read_image(m.resolve(rows[0]["path"])).meta.sha256


def _study_input(path: str) -> np.ndarray:
    """The study's intensity rule written out independently: the file's stored values (DICOM:
    after the modality LUT), min-max stretched to uint8; MONOCHROME1 inverted to bright = dense."""
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_modality_lut

    if path.endswith(".dcm"):
        ds = pydicom.dcmread(path)
        raw = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        invert = ds.PhotometricInterpretation == "MONOCHROME1"
    else:
        raw, invert = np.asarray(Image.open(path), dtype=np.float64), False
    u8 = np.round((raw - raw.min()) / (raw.max() - raw.min()) * 255)
    return (255 - u8 if invert else u8).astype(np.uint8)


def test_minmax_intensity_reproduces_the_studys_inputs(cohort, tmp_path):
    """``intensity="minmax"`` is a distinct feature set whose embeddings equal the model's forward
    on the study's own input: the min-max uint8 image through transformers' BitImageProcessor
    read from the weights folder (an oracle that shares no code with radstore's pipeline)."""
    import torch
    from PIL import Image
    from transformers import BitImageProcessor

    from featurestore.encoders.dinov2 import build_random
    from featurestore.extract import encoder_for

    store = Store.open(str(tmp_path / "s"), create=True)
    window = extract(str(cohort), store, _cfg("rad-dino", dtype="float32"))
    cfg = _cfg("rad-dino", dtype="float32", intensity="minmax")
    minmax = extract(str(cohort), store, cfg)
    assert window.feature_set_id != minmax.feature_set_id and minmax.done == COHORT.n
    fs = store.feature_set(minmax.feature_set_id)
    assert fs.spec.preprocessing["intensity"] == "minmax"
    proc = BitImageProcessor.from_pretrained(build_random("random:tiny", "rad-dino"))
    m = load_manifest(str(cohort))
    rows = [r for r in m.table.to_pylist() if r["path"].endswith(".png")][:2] + [
        r for r in m.table.to_pylist() if r["path"].endswith(".dcm")
    ][:4]
    x = torch.cat(
        [proc(Image.fromarray(_study_input(m.resolve(r["path"]))).convert("RGB"), return_tensors="pt").pixel_values for r in rows]
    )
    with torch.inference_mode():
        out = encoder_for(cfg).embed(x)
    # The inputs: radstore's minmax pipeline gives the oracle's exactly; the window pipeline does not.
    std = 0.2583
    for mode, c in (("minmax", cfg), ("window", _cfg("rad-dino", dtype="float32"))):
        pre = encoder_for(c).preprocessing
        ours_x = torch.stack([pre(read_image(m.resolve(r["path"]), **pre.decode_options()).pixels) for r in rows])
        diff = float((ours_x - x).abs().max()) * std
        assert diff <= 1e-5 if mode == "minmax" else diff > 8 / 255, (mode, diff * 255)
    # The stored embeddings (float32): the model's forward on the oracle's input.
    got = dict(zip(*(fs.cls().column(c).to_pylist() for c in ("image_id", "cls"))))
    ours = np.array([got[r["image_id"]] for r in rows])
    np.testing.assert_allclose(ours, out.global_.numpy(), rtol=1e-4, atol=1e-4)


def test_rerun_skips_second_resolution_is_distinct_and_backfill_does_only_new(cohort, tmp_path):
    store = Store.open(str(tmp_path / "s"), create=True)
    first = extract(str(cohort), store, _cfg("pixels"))
    again = extract(str(cohort), store, _cfg("pixels"))
    assert (again.done, again.skipped) == (0, COHORT.n)
    other = extract(str(cohort), store, _cfg("pixels", size=256))
    assert other.feature_set_id != first.feature_set_id and other.done == COHORT.n
    assert store.feature_set(other.feature_set_id).spec.grid == (16, 16, 16)
    # A larger cohort of the same seed: the first 24 images are identical, 6 are new.
    bigger = synthesize(tmp_path / "bigger", SynthConfig(**{**COHORT.__dict__, "n": COHORT.n + 6}), progress=False)
    p = plan(str(bigger), store, _cfg("pixels"), allocate=False)
    assert p.skipped == COHORT.n and sum(map(len, p.groups)) == 6
    r = extract(str(bigger), store, _cfg("pixels"))
    assert (r.done, r.skipped) == (6, COHORT.n)
    assert len(store.feature_set(first.feature_set_id)) == COHORT.n + 6


def test_corrupt_image_is_rejected_and_the_rest_committed(cohort, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(cohort.parent, root)
    rows = pq.read_table(root / "manifest.parquet").to_pylist()
    bad = rows[5]
    data = (root / bad["path"]).read_bytes()
    (root / bad["path"]).write_bytes(data[: len(data) // 3])
    store = Store.open(str(tmp_path / "s"), create=True)
    r = extract(str(root / "manifest.parquet"), store, _cfg("pixels"))
    assert r.done == COHORT.n - 1 and [i for i, _ in r.failed] == [bad["image_id"]]
    assert "corrupt or truncated" in r.failed[0][1]
    fs = store.feature_set(r.feature_set_id)
    assert bad["image_id"] not in fs.committed_ids() and len(fs) == COHORT.n - 1
    assert fs.rejects().column("image_id").to_pylist() == [bad["image_id"]]


@pytest.mark.slow
def test_killed_extraction_completes_on_rerun_exactly_once(cohort, tmp_path):
    store_dir = tmp_path / "s"
    code = (
        "import sys, time\n"
        "from featurestore.extract import ExtractConfig, extract\n"
        "from featurestore.store import Store\n"
        "import featurestore.featureset as F\n"
        "orig = F.FeatureSet.commit_cls_part\n"
        "def slow(self, shard, table):\n"
        "    orig(self, shard, table); print('committed', shard, flush=True); time.sleep(30)\n"
        "F.FeatureSet.commit_cls_part = slow\n"
        f"extract({str(cohort)!r}, Store.open({str(store_dir)!r}, create=True), "
        "ExtractConfig('pixels', progress=False, num_workers=0, shard_images=16))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("committed"), line
    proc.send_signal(signal.SIGKILL)  # one shard committed, the second in flight
    proc.wait(timeout=30)
    store = Store.open(str(store_dir))
    (fs,) = store.feature_sets()
    assert len(fs) == 16
    r = extract(str(cohort), store, _cfg("pixels"))
    assert (r.done, r.skipped) == (COHORT.n - 16, 16)
    ids = fs.cls().column("image_id").to_pylist()
    assert sorted(ids) == sorted(load_manifest(str(cohort)).table.column("image_id").to_pylist())
    assert fs.verify() == []
