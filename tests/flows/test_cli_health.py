"""``radstore health`` as a user runs it, and the SQL views of the versions it writes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from evaluation.query import query
from featurestore.store import Store
from tests.featurestore.health.conftest import register_images, write_set


def _radstore(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_health_command_views_and_errors(tmp_path):
    url = str(tmp_path / "store")
    store = Store.open(url, create=True)
    rng = np.random.default_rng(0)
    ids = [f"i{k:03d}" for k in range(80)]
    splits = ["train"] * 50 + ["test"] * 30
    register_images(store, ids, splits, [f"p{k}" for k in range(80)])
    g = rng.standard_normal((80, 16))
    g[60] = g[5] + 0.01 * rng.standard_normal(16)  # test image 60 repeats training image 5
    iso = write_set(store, ids, g, rng.standard_normal((80, 8, 4, 4)), tag="iso")
    flat = write_set(store, ids, rng.standard_normal(16) + 0.01 * rng.standard_normal((80, 16)),
                     rng.standard_normal((8, 1, 1)) + 0.01 * rng.standard_normal((80, 8, 4, 4)), encoder="flat", tag="flat")  # fmt: skip

    r = _radstore("health", "--store", url, "--quiet", "--permutations", "100")
    assert r.returncode == 0, r.stderr
    assert iso in r.stdout and flat in r.stdout and "anisotropy" in r.stdout
    assert "leakage: test i060 (p60) ~ train i005 (p5)" in r.stdout
    assert "flag: patch patch_cosine_median" in r.stdout  # the collapsed set
    again = _radstore("health", "--store", url, "--quiet", "--permutations", "100", "--feature-set", iso, "--json", "--fail-on-flags")
    assert again.returncode == 1  # the planted duplicate is a flag
    (doc,) = json.loads(again.stdout)
    assert doc["feature_set_id"] == iso and doc["created"] is False  # unchanged inputs: the stored version

    t = query(url, "select feature_set_id, metric, value, flagged from health where metric in ('anisotropy', 'pairs') order by 1, 2")
    rows = {(x["feature_set_id"], x["metric"]): x for x in t.to_pylist()}
    assert rows[(flat, "anisotropy")]["flagged"] and not rows[(iso, "anisotropy")]["flagged"]
    assert rows[(iso, "pairs")]["value"] == 1
    leak = query(url, "select test_image_id, train_image_id from health_leakage where feature_set_id = '" + iso + "'").to_pylist()
    assert leak == [{"test_image_id": "i060", "train_image_id": "i005"}]
    versions = query(url, "select feature_set_id, latest, len(flags) > 0 as flagged from health_versions order by 1").to_pylist()
    assert [v["latest"] for v in versions] == [True, True] and all(v["flagged"] for v in versions)
    spectrum = query(url, "select count(*) as n from health_spectrum where source = 'global'").column("n")[0].as_py()
    assert spectrum == 32  # 16 singular values per set

    bad = _radstore("health", "--store", url, "--feature-set", "nope")
    assert bad.returncode == 2 and "no feature set 'nope'" in bad.stderr and "Traceback" not in bad.stderr
