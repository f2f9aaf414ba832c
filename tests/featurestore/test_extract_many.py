"""Decode once, embed with every encoder: the same rows as separate runs, one decode per image,
an encoder's failure that does not cost the others their rows, and a killed run that completes."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

import featurestore.extract as ex
from featurestore.config import ExtractConfig
from featurestore.errors import RadstoreError
from featurestore.extract import extract, extract_many, plan_many
from featurestore.manifest import load_manifest
from featurestore.store import Store
from tests.conftest import COHORT, ROOT

pytestmark = pytest.mark.slow  # one decode for several encoders, end to end

NAMES = ("pixels", "random-vit", "rad-dino")


def _cfg(encoder: str, **kw) -> ExtractConfig:
    return ExtractConfig(encoder=encoder, weights=None if encoder == "pixels" else "random:tiny", progress=False, num_workers=0, **kw)


@pytest.fixture
def counted_decodes(monkeypatch):
    """Count the decodes of the extraction engine (in-process: num_workers=0)."""
    calls = []
    real = ex.decode

    def counting(uri, *a, **kw):
        calls.append(uri)
        return real(uri, *a, **kw)

    monkeypatch.setattr(ex, "decode", counting)
    return calls


def _rows(store: Store, fsid: str) -> dict[str, np.ndarray]:
    fs = store.feature_set(fsid)
    t = fs.cls().sort_by("image_id")
    ids = t.column("image_id").to_pylist()
    return {"ids": np.array(ids), "cls": np.array(t.column("cls").to_pylist()), "patches": fs.patches(ids)}


def test_one_decode_feeds_every_encoder_with_the_rows_of_separate_runs(cohort, tmp_path, counted_decodes):
    together = Store.open(str(tmp_path / "together"), create=True)
    results = extract_many(str(cohort), together, [_cfg(n) for n in NAMES])
    assert [r.encoder for r in results] == list(NAMES)
    assert all((r.done, r.skipped, r.failed) == (COHORT.n, 0, []) for r in results)
    assert len(counted_decodes) == COHORT.n  # once per image, not once per image and encoder
    apart = Store.open(str(tmp_path / "apart"), create=True)
    for name, r in zip(NAMES, results):
        ref = extract(str(cohort), apart, _cfg(name))
        assert ref.feature_set_id == r.feature_set_id
        a, b = _rows(together, r.feature_set_id), _rows(apart, ref.feature_set_id)
        np.testing.assert_array_equal(a["ids"], b["ids"])
        np.testing.assert_array_equal(a["cls"], b["cls"])
        np.testing.assert_array_equal(a["patches"], b["patches"])  # the same inputs and forwards, bit for bit


def test_only_what_an_encoder_lacks_is_decoded(cohort, tmp_path, counted_decodes):
    store = Store.open(str(tmp_path / "s"), create=True)
    half = load_manifest(str(cohort)).table.column("image_id").to_pylist()[: COHORT.n // 2]
    extract_many(str(cohort), store, [_cfg("pixels")], image_ids=half)
    counted_decodes.clear()
    plan = plan_many(str(cohort), store, [_cfg("pixels"), _cfg("random-vit")])
    assert sum(map(len, plan.groups)) == COHORT.n and plan.plans[0].skipped == len(half)
    rs = extract_many(str(cohort), store, [_cfg("pixels"), _cfg("random-vit")])
    assert [(r.done, r.skipped) for r in rs] == [(COHORT.n - len(half), len(half)), (COHORT.n, 0)]
    assert len(counted_decodes) == COHORT.n
    counted_decodes.clear()
    rs = extract_many(str(cohort), store, [_cfg("pixels"), _cfg("random-vit")])
    assert [(r.done, r.skipped) for r in rs] == [(0, COHORT.n), (0, COHORT.n)] and counted_decodes == []


def test_a_failing_encoder_does_not_cost_the_others_their_rows(cohort, tmp_path, monkeypatch):
    store = Store.open(str(tmp_path / "s"), create=True)
    cfgs = [_cfg("pixels", batch_size=4), _cfg("random-vit", batch_size=4, shard_images=4)]
    vit = ex.encoder_for(cfgs[1])
    real, calls = vit.embed, []

    def flaky(x):
        calls.append(len(x))
        if len(calls) == 3:  # two batches (8 images) embedded, then the model breaks
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(x)

    monkeypatch.setattr(vit, "embed", flaky)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        extract_many(str(cohort), store, cfgs)
    pix, rv = (store.feature_set(ex.feature_set_for(store, c).id) for c in cfgs)
    assert len(pix) == COHORT.n  # the healthy encoder went on to the end
    assert len(rv) == 8 and rv.verify() == []  # the failing one kept what it had validated
    monkeypatch.setattr(vit, "embed", real)
    rs = extract_many(str(cohort), store, cfgs)
    assert [(r.done, r.skipped) for r in rs] == [(0, COHORT.n), (COHORT.n - 8, 8)]
    assert sorted(rv.cls().column("image_id").to_pylist()) == sorted(pix.committed_ids())


def test_a_bad_image_is_rejected_for_every_encoder(cohort, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(cohort)
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x01" * 64)
    paths = [load_manifest(str(cohort)).resolve(p) for p in table.column("path").to_pylist()]
    paths[0] = str(bad)
    m = tmp_path / "m.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths)), m)
    store = Store.open(str(tmp_path / "s"), create=True)
    rs = extract_many(str(m), store, [_cfg("pixels"), _cfg("random-vit")])
    first = table.column("image_id")[0].as_py()
    for r in rs:
        assert r.done == COHORT.n - 1 and [i for i, _ in r.failed] == [first]
        assert store.feature_set(r.feature_set_id).rejects().column("image_id").to_pylist() == [first]


def test_the_same_encoder_twice_is_refused(cohort, tmp_path):
    with pytest.raises(RadstoreError, match="listed twice"):
        extract_many(str(cohort), Store.open(str(tmp_path / "s"), create=True), [_cfg("pixels"), _cfg("pixels")])


def test_profile_accounts_for_the_wall_time(cohort, tmp_path):
    rs = extract_many(str(cohort), Store.open(str(tmp_path / "s"), create=True), [_cfg("pixels"), _cfg("random-vit")])
    for r in rs:
        assert r.wait_s > 0 and r.forward_s > 0 and r.commit_s > 0
        assert r.wait_s + r.forward_s + r.commit_s <= r.seconds
    # the input wait is shared, the forwards and commits are each encoder's own
    assert rs[0].wait_s == rs[1].wait_s and rs[0].forward_s != rs[1].forward_s
    line = rs[1].profile_line()
    assert line.startswith("profile random-vit: 24 images, ") and "input wait" in line and "forward" in line and "commit" in line


def test_device_preprocessing_path_matches_the_worker_path(cohort, tmp_path):
    """The small arrays shipped to the device and finished there (here the CPU stands in for the
    GPU) give embeddings within the parity bound's effect of the worker-side path."""
    a = Store.open(str(tmp_path / "a"), create=True)
    b = Store.open(str(tmp_path / "b"), create=True)
    ra = extract(str(cohort), a, _cfg("pixels", dtype="float32"))
    rb = extract(str(cohort), b, _cfg("pixels", dtype="float32", device_preprocess=True))
    assert ra.feature_set_id == rb.feature_set_id
    ids = sorted(a.feature_set(ra.feature_set_id).committed_ids())
    x, y = a.feature_set(ra.feature_set_id).patches(ids), b.feature_set(rb.feature_set_id).patches(ids)
    # pixels' grid is the normalised input pooled: the bound (1.5/255 of the input range) over its std
    std = min(ex.encoder_for(_cfg("pixels")).preprocessing.std)
    assert np.abs(x - y).max() <= 1.5 / 255 / std + 1e-6


def test_killed_multi_encoder_extraction_completes_on_rerun_exactly_once(cohort, tmp_path):
    store_dir = tmp_path / "s"
    code = (
        "import time\n"
        "from featurestore.config import ExtractConfig\n"
        "from featurestore.extract import extract_many\n"
        "from featurestore.store import Store\n"
        "import featurestore.featureset as F\n"
        "orig = F.FeatureSet.commit_cls_part\n"
        "def slow(self, shard, table):\n"
        "    orig(self, shard, table); print('committed', self.spec.encoder, shard, flush=True)\n"
        "    if self.spec.encoder == 'random-vit': time.sleep(30)\n"
        "F.FeatureSet.commit_cls_part = slow\n"
        "cfgs = [ExtractConfig(e, weights=w, progress=False, num_workers=0, shard_images=8, batch_size=8)\n"
        "        for e, w in (('pixels', None), ('random-vit', 'random:tiny'))]\n"
        f"extract_many({str(cohort)!r}, Store.open({str(store_dir)!r}, create=True), cfgs)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    while True:
        line = proc.stdout.readline()
        assert line, "the extraction ended before committing a random-vit shard"
        if line.startswith("committed random-vit"):
            break
    proc.send_signal(signal.SIGKILL)  # random-vit's first shard committed, its second in flight
    proc.wait(timeout=30)
    store = Store.open(str(store_dir))
    cfgs = [_cfg("pixels", shard_images=8, batch_size=8), _cfg("random-vit", shard_images=8, batch_size=8)]
    before = {fs.spec.encoder: len(fs) for fs in store.feature_sets()}
    assert before["random-vit"] == 8
    rs = extract_many(str(cohort), store, cfgs)
    assert [r.done + r.skipped for r in rs] == [COHORT.n, COHORT.n]
    assert rs[1].skipped == 8
    everyone = sorted(load_manifest(str(cohort)).table.column("image_id").to_pylist())
    for fs in store.feature_sets():
        assert sorted(fs.cls().column("image_id").to_pylist()) == everyone  # each row exactly once
        assert fs.verify() == []
