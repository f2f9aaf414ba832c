"""The extraction flow: a real flow run against a real Prefect server, fan-out on Dask, the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from featurestore.extract import ExtractConfig, extract
from featurestore.store import Store
from tests.conftest import COHORT

ROOT = Path(__file__).resolve().parents[2]


def _artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as c:
        return c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_flow_run_backfills_and_publishes_a_summary(prefect_server, cohort, tmp_path):
    from flows.extract import run_extraction

    params = dict(manifest=str(cohort), store=str(tmp_path / "s"), encoder="pixels", num_workers=0, shard_images=16)
    state = run_extraction("local", **params)
    assert state.is_completed(), state.message
    out = state.result()
    assert (out["done"], out["skipped"], out["failed"]) == (COHORT.n, 0, [])
    fid = out["feature_set_id"]
    arts = _artifacts(f"extract-{fid}")
    assert arts and arts[0].type == "table"
    assert _artifacts(f"extract-{fid}-report")[0].type == "markdown"
    state = run_extraction("local", **params)
    assert state.result()["done"] == 0 and state.result()["skipped"] == COHORT.n


def test_flow_fails_visibly_on_a_corrupt_image(prefect_server, cohort, tmp_path):
    from flows.extract import run_extraction

    root = tmp_path / "c"
    shutil.copytree(cohort.parent, root)
    bad = pq.read_table(root / "manifest.parquet").to_pylist()[2]
    (root / bad["path"]).write_bytes(b"\x00" * 100)
    state = run_extraction("local", manifest=str(root / "manifest.parquet"), store=str(tmp_path / "s"), encoder="pixels", num_workers=0)
    assert state.is_failed() and "1 image(s) failed" in state.message
    out = state.result(raise_on_failure=False)
    assert [i for i, _ in out["failed"]] == [bad["image_id"]]
    fs = Store.open(str(tmp_path / "s")).feature_set(out["feature_set_id"])
    assert len(fs) == COHORT.n - 1


@pytest.mark.slow
def test_dask_fan_out_equals_a_serial_run(prefect_server, cohort, tmp_path):
    """Groups run as tasks on a 2-worker dask.distributed LocalCluster, writing one store."""
    from flows.extract import run_extraction

    serial = Store.open(str(tmp_path / "serial"), create=True)
    ref = extract(str(cohort), serial, ExtractConfig("rad-dino", weights="random:tiny", progress=False, num_workers=0, shard_images=16))
    state = run_extraction(
        "dask",
        manifest=str(cohort),
        store=str(tmp_path / "dask"),
        encoder="rad-dino",
        weights="random:tiny",
        num_workers=0,
        shard_images=16,
    )
    assert state.is_completed(), state.message
    out = state.result()
    assert out["feature_set_id"] == ref.feature_set_id and out["done"] == COHORT.n
    a = serial.feature_set(ref.feature_set_id)
    b = Store.open(str(tmp_path / "dask")).feature_set(ref.feature_set_id)
    ids = sorted(a.committed_ids())
    assert ids == sorted(b.committed_ids())
    np.testing.assert_allclose(a.patches(ids).astype(np.float32), b.patches(ids).astype(np.float32), rtol=1e-3, atol=1e-3)
    ca, cb = a.cls().to_pydict(), b.cls().to_pydict()
    va = dict(zip(ca["image_id"], ca["cls"]))
    vb = dict(zip(cb["image_id"], cb["cls"]))
    np.testing.assert_allclose(np.array([va[i] for i in ids]), np.array([vb[i] for i in ids]), rtol=1e-5, atol=1e-5)
    assert len(set(cb["shard"])) == 2  # two groups, two shards, possibly on two workers


@pytest.mark.slow
def test_cli_on_the_ephemeral_api(cohort, tmp_path):
    """`radstore extract` with no server configured: Prefect's ephemeral API, exit status, stdout id."""
    root = tmp_path / "c"
    shutil.copytree(cohort.parent, root)
    bad = pq.read_table(root / "manifest.parquet").to_pylist()[7]
    (root / bad["path"]).write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    exe = Path(sys.executable).with_name("radstore")
    cmd = [
        str(exe),
        "extract",
        "--manifest",
        str(root / "manifest.parquet"),
        "--store",
        str(tmp_path / "s"),
        "--encoder",
        "biomedclip",
        "--weights",
        "random:tiny",
        "--num-workers",
        "0",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    assert f"ERROR image_id={bad['image_id']} path={bad['path']}: file is empty" in r.stderr
    fid = r.stdout.strip().splitlines()[-1]
    assert fid.startswith("biomedclip-")
    assert len(Store.open(str(tmp_path / "s")).feature_set(fid)) == COHORT.n - 1
    r = subprocess.run(
        [str(exe), "extract", "--manifest", str(root / "manifest.parquet"), "--store", str(tmp_path / "s"), "--encoder", "rad-dino"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 2 and "no weights for encoder rad-dino" in r.stderr and "Traceback" not in r.stderr


PROFILE_LINE = r"^profile (?P<enc>[\w-]+): (?P<n>\d+) images, (?P<ips>[\d.]+) images/s; input wait (?P<w>[\d.]+)%, forward (?P<f>[\d.]+)%, commit (?P<c>[\d.]+)%$"


def test_cli_embeds_with_several_encoders_from_one_decode(prefect_server, cohort, tmp_path):
    """`radstore extract --encoder a,b --profile`: one feature set per encoder, each complete, a
    profile line each; the rerun has nothing to do and says so."""
    import re

    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    exe = Path(sys.executable).with_name("radstore")
    cmd = [str(exe), "extract", "--manifest", str(cohort), "--store", str(tmp_path / "s"), "--encoder", "pixels,random-vit",
           "--weights", "random:tiny", "--num-workers", "0", "--profile"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    profiles = [m for line in lines if (m := re.match(PROFILE_LINE, line))]
    assert [m["enc"] for m in profiles] == ["pixels", "random-vit"]
    assert all(int(m["n"]) == COHORT.n and float(m["w"]) + float(m["f"]) + float(m["c"]) <= 100.1 for m in profiles)
    ids = [line for line in lines if line.startswith(("pixels-", "random-vit-"))]
    store = Store.open(str(tmp_path / "s"))
    assert [store.feature_set(i).spec.encoder for i in ids] == ["pixels", "random-vit"]
    assert all(len(store.feature_set(i)) == COHORT.n for i in ids)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "nothing to extract" in r.stdout, r.stdout


def test_cli_refuses_an_unknown_or_repeated_encoder(tmp_path):
    exe = Path(sys.executable).with_name("radstore")
    for enc, msg in (("pixels,nope", "unknown encoder(s) 'nope'"), ("pixels,pixels", "listed twice: pixels")):
        r = subprocess.run([str(exe), "extract", "--manifest", "m.parquet", "--store", str(tmp_path), "--encoder", enc],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr


def test_one_worker_per_device_sees_only_its_own():
    """flows.devices: each worker process of the per-device cluster has CUDA_VISIBLE_DEVICES set to
    its one device (pretend devices here: the workers run on the CPU)."""
    from distributed import Client

    from flows.devices import per_device_cluster

    with per_device_cluster(["0", "1"]) as cluster, Client(cluster) as client:
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(seen.values()) == ["0", "1"]
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in seen)


@pytest.mark.slow
def test_several_encoders_on_one_worker_per_device_equal_a_serial_run(prefect_server, cohort, tmp_path):
    """Two encoders, groups fanned out over two workers that each see one (pretend) device: the
    rows equal a serial in-process run of each encoder."""
    from flows.extract import run_extraction

    serial = Store.open(str(tmp_path / "serial"), create=True)
    refs = [extract(str(cohort), serial, ExtractConfig(e, weights="random:tiny", progress=False, num_workers=0, shard_images=8))
            for e in ("rad-dino", "pixels")]  # fmt: skip
    state = run_extraction("dask-devices:0,1", manifest=str(cohort), store=str(tmp_path / "dask"), encoder="rad-dino,pixels",
                           weights="random:tiny", num_workers=0, shard_images=8)  # fmt: skip
    assert state.is_completed(), state.message
    out = state.result()
    assert [r["feature_set_id"] for r in out["results"]] == [r.feature_set_id for r in refs]
    for ref in refs:
        a = serial.feature_set(ref.feature_set_id)
        b = Store.open(str(tmp_path / "dask")).feature_set(ref.feature_set_id)
        ids = sorted(a.committed_ids())
        assert ids == sorted(b.committed_ids()) and len(ids) == COHORT.n
        np.testing.assert_allclose(a.patches(ids).astype(np.float32), b.patches(ids).astype(np.float32), rtol=1e-3, atol=1e-3)
        assert len(set(b.cls().column("shard").to_pylist())) == 3  # three groups of 8, three shards
