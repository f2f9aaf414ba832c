"""Reruns with nothing to do are answered before Prefect starts (flows/noop.py)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import describe
from featurestore.config import ExtractConfig
from featurestore.manifest import load_manifest
from flows import noop
from heads.config import grid_configs
from tests.conftest import COHORT

ROOT = Path(__file__).resolve().parents[2]
#: The configuration the pixels_store fixture extracted with.
PIXELS = ExtractConfig("pixels", progress=False, num_workers=0, shard_images=16)
TINY_TRAIN = {"solver": "lbfgs", "lr": 1e-3, "max_epochs": 3, "target_size": 32, "progress": False}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RADSTORE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def store(pixels_store, tmp_path, cache) -> tuple[str, str, str]:
    """A private copy of the pixels store (url, feature set id, manifest), its feature set remembered."""
    url, fsid, manifest = pixels_store
    copy = str(tmp_path / "store")
    shutil.copytree(url, copy)
    describe.remember(PIXELS, fsid)
    return copy, fsid, manifest


def _manifest_like(manifest: str, out: Path, table_of) -> str:
    """A manifest written to ``out`` from ``table_of(original table)``, paths made absolute."""
    m = load_manifest(manifest)
    t = m.table.set_column(m.table.column_names.index("path"), "path", pa.array([m.resolve(p) for p in m.table.column("path").to_pylist()]))
    pq.write_table(table_of(t), out)
    return str(out)


def test_a_complete_feature_set_is_nothing_to_extract(store):
    url, fsid, manifest = store
    assert noop.extract_noop(manifest, url, [PIXELS]) == (
        f"nothing to extract: all {COHORT.n} images of the manifest are committed in {fsid} (pixels)"
    )
    two = noop.extract_noop(manifest, url, [PIXELS, dataclasses.replace(PIXELS, batch_size=4)])
    assert two is not None and len(two.splitlines()) == 2


def test_anything_missing_is_work_to_do(store, tmp_path):
    url, fsid, manifest = store
    one_more = _manifest_like(
        manifest, tmp_path / "more.parquet", lambda t: pa.concat_tables([t, t.slice(0, 1).set_column(0, "image_id", pa.array(["new-1"]))])
    )
    assert noop.extract_noop(one_more, url, [PIXELS]) is None  # an image not committed yet
    repeated = _manifest_like(manifest, tmp_path / "dup.parquet", lambda t: pa.concat_tables([t, t.slice(0, 1)]))
    assert noop.extract_noop(repeated, url, [PIXELS]) is None  # a bad row: rejected and recorded each run
    fewer = _manifest_like(manifest, tmp_path / "fewer.parquet", lambda t: t.slice(1))
    assert noop.extract_noop(fewer, url, [PIXELS]) is not None  # a subset is still all committed
    other = dataclasses.replace(PIXELS, size=256)
    assert noop.extract_noop(manifest, url, [PIXELS, other]) is None  # never extracted here: unknown
    describe.remember(other, "pixels-000000000000")
    assert noop.extract_noop(manifest, url, [other]) is None  # known, but not in this store
    assert noop.extract_noop(manifest, str(tmp_path / "no-store"), [PIXELS]) is None


def test_a_feature_set_found_under_an_alias_counts(store):
    import json

    url, fsid, manifest = store
    other = dataclasses.replace(PIXELS, size=256)
    describe.remember(other, "pixels-0000000000aa")
    aliases = Path(url) / "aliases"
    aliases.mkdir(exist_ok=True)
    from featurestore import layout

    (aliases / layout.alias_name("pixels-0000000000aa")).write_text(json.dumps({"feature_set_id": "pixels-0000000000aa", "alias_of": fsid}))
    assert fsid in noop.extract_noop(manifest, url, [other])


def test_a_missing_committed_part_is_seen(store):
    url, fsid, manifest = store
    parts = sorted((Path(url) / "features" / fsid / "cls").glob("*.parquet"))
    assert len(parts) == 2  # 24 images in shards of 16
    parts[-1].unlink()
    for index in (Path(url) / "features" / fsid / "committed").glob("*.parquet"):
        index.unlink()  # an index naming a part no longer listed is ignored anyway
    assert noop.extract_noop(manifest, url, [PIXELS]) is None


def test_a_fresh_process_answers_without_torch_or_prefect(store):
    url, fsid, manifest = store
    code = (
        "import sys, time; t = time.perf_counter(); from flows.noop import extract_noop; "
        "from featurestore.config import ExtractConfig; "
        f"msg = extract_noop({manifest!r}, {url!r}, [ExtractConfig(**{PIXELS.to_json()!r})]); "
        "print(msg); print(sorted(m for m in ('torch', 'prefect', 'transformers') if m in sys.modules)); "
        "print(f'{time.perf_counter() - t:.2f}', file=sys.stderr)"
    )
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, env=os.environ)
    wall = time.perf_counter() - t
    msg, modules = r.stdout.strip().splitlines()
    assert fsid in msg and modules == "[]"
    print(f"extract_noop in a fresh process: {wall:.2f} s wall, {r.stderr.strip()} s after start-up")


def _train(url: str, fsid: str, manifest: str, cfgs) -> list[str]:
    from featurestore.store import Store
    from heads.train import train

    st = Store.open(url)
    return [train(st, fsid, c, manifest).run_id for c in cfgs]


def test_train_is_nothing_to_do_when_every_run_is_reusable(store):
    url, fsid, manifest = store
    grid = dict(tasks=["cardiomegaly-cls"], heads=["linear"], folds=None, manifest=manifest, config=TINY_TRAIN)
    assert noop.train_noop(url, fsid, **grid) is None  # no run yet
    (rid,) = _train(url, fsid, manifest, grid_configs(["cardiomegaly-cls"], ["linear"], None, TINY_TRAIN))
    msg = noop.train_noop(url, fsid, **grid)
    assert msg is not None and msg.splitlines()[1:] == [rid] and fsid in msg.splitlines()[0]
    assert noop.train_noop(url, fsid, **{**grid, "config": {**TINY_TRAIN, "lr": 1e-2}}) is None  # another config
    assert noop.train_noop(url, fsid, **{**grid, "tasks": ["cardiomegaly-cls", "pneumothorax-cls"]}) is None  # a bigger grid
    relabelled = _manifest_like(
        manifest, Path(url).parent / "relabelled.parquet", lambda t: t.set_column(t.column_names.index("cardiomegaly"), "cardiomegaly",
                                                                                    pa.array([not v for v in t.column("cardiomegaly").to_pylist()]))
    )  # fmt: skip
    assert noop.train_noop(url, fsid, **{**grid, "manifest": relabelled}) is None  # other data


@pytest.fixture
def study(store, tmp_path):
    """(StudyConfig, ExtractConfig the study extracts with) on a copy of the cohort: one encoder,
    one task, one head, a report directory."""
    from featurestore.extract import feature_set_for
    from featurestore.store import Store
    from flows.config import StudyConfig

    url, fsid, manifest = store
    cohort = tmp_path / "cohort"
    shutil.copytree(Path(manifest).parent, cohort)  # copy2: times kept, older than the index
    cfg = StudyConfig.from_dict(
        dict(store=url, manifest=str(cohort / Path(manifest).name), encoders=["pixels"], positive_control=False,
             tasks=["cardiomegaly-cls"], heads=["linear"], train=TINY_TRAIN, evaluation={"resamples": 100},
             report=str(tmp_path / "report"), num_workers=0)
    )  # fmt: skip
    ecfg = ExtractConfig("pixels", batch_size=16, device=cfg.device, num_workers=0)
    describe.remember(ecfg, feature_set_for(Store.open(url), ecfg).id)  # what the lead's feature_set_for line does
    return cfg, ecfg


def test_a_study_with_nothing_new_is_answered(study, store, tmp_path):
    from evaluation.artifacts import EvalConfig, evaluate
    from evaluation.report import write_report
    from featurestore.health import check_health
    from featurestore.store import Store

    cfg, _ = study
    url, fsid, _ = store
    assert noop.study_noop(cfg) is None  # nothing trained
    rids = _train(url, fsid, cfg.manifest, grid_configs(cfg.tasks, cfg.heads, None, {**cfg.train, "device": cfg.device}))
    assert noop.study_noop(cfg) is None  # not evaluated
    ev = evaluate(Store.open(url), rids, EvalConfig(**cfg.evaluation))
    assert noop.study_noop(cfg) is None  # no report
    Path(cfg.report_dir).mkdir()
    (Path(cfg.report_dir) / "index.html").write_text(
        f"<title>radstore evaluation eval-000000000000</title><h3>What changed since <code>{ev.eval_id}</code></h3>"
    )
    assert noop.study_noop(cfg) is None  # the report of another evaluation, which names this one
    write_report(Store.open(url), cfg.report_dir, ev.eval_id, overlays=0)
    assert noop.study_noop(cfg) is None  # no embedding health yet: the study would check it
    assert noop.study_noop(dataclasses.replace(cfg, health=None)) is not None  # unless it is off
    check_health(Store.open(url), fsid, cfg.health_config())
    msg = noop.study_noop(cfg)
    assert msg is not None and ev.eval_id in msg and fsid in msg and str(Path(cfg.report_dir) / "index.html") in msg
    assert noop.study_noop(dataclasses.replace(cfg, evaluation={"resamples": 140})) is None  # another evaluation config

    image = sorted((Path(cfg.manifest).parent).rglob("*.png"))[0]
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, time.time_ns()))  # rewritten since it was indexed: ingest would hash it
    assert noop.study_noop(cfg) is None
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert noop.study_noop(cfg) is not None
    with image.open("ab") as f:
        f.write(b"\0")
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))  # another size, even with the old time
    assert noop.study_noop(cfg) is None
