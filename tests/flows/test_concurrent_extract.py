"""Four `radstore extract` processes at once into one S3 feature set, as a data engineer backfilling
quarters of a cohort in parallel would run them: every row equals a clean extraction, to the bit."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from featurestore.config import ExtractConfig
from featurestore.extract import extract_group, plan
from featurestore.store import Store
from tests.conftest import ROOT

QUARTERS = 4
SHARD = 4  # 24 images in shards of 4: the four processes contend for the same shard numbers


def test_four_cli_extractions_at_once_on_s3(prefect_server, s3_server, cohort, tmp_path):
    table = pq.read_table(cohort)
    n = table.num_rows
    manifests = []
    for q in range(QUARTERS):
        path = cohort.parent / f"quarter-{q}-{uuid.uuid4().hex[:6]}.parquet"
        pq.write_table(table.slice(q * n // QUARTERS, n // QUARTERS), path)
        manifests.append(path)
    url = f"s3://radstore-test/cli-{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "AWS_ENDPOINT_URL": s3_server["client_kwargs"]["endpoint_url"],
        "AWS_ACCESS_KEY_ID": s3_server["key"],
        "AWS_SECRET_ACCESS_KEY": s3_server["secret"],
    }
    exe = Path(sys.executable).with_name("radstore")
    args = ["--store", url, "--encoder", "pixels", "--num-workers", "0", "--shard-images", str(SHARD)]
    procs = [
        subprocess.Popen(
            [str(exe), "extract", "--manifest", str(m), *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for m in manifests
    ]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        ids.append(out.strip().splitlines()[-1])
    assert len(set(ids)) == 1
    fs = Store.open(url, storage_options=s3_server).feature_set(ids[0])

    # The clean reference: the same groups, one after another, into a local store.
    clean = Store.open(str(tmp_path / "clean"), create=True)
    cfg = ExtractConfig("pixels", num_workers=0, shard_images=SHARD, progress=False)
    for m in manifests:
        for g in plan(str(m), clean, cfg).groups:
            extract_group(str(m), clean, cfg, g)
    ref = clean.feature_set(ids[0])

    got_ids = fs.cls().column("image_id").to_pylist()
    assert sorted(got_ids) == sorted(table.column("image_id").to_pylist())  # none lost, none twice
    assert float(np.abs(fs.patches(got_ids).astype(np.float32) - ref.patches(got_ids).astype(np.float32)).max()) == 0.0
    a = dict(zip(got_ids, fs.cls().column("cls").to_pylist()))
    b = dict(zip(ref.cls().column("image_id").to_pylist(), ref.cls().column("cls").to_pylist()))
    assert all(a[i] == b[i] for i in got_ids)
    assert fs.verify() == [] and fs.shared_shards() == {}
