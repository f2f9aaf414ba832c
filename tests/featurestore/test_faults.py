"""Kill a writer mid-commit, resume it, and run two writers at once: no row lost, torn or mixed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featurestore.store import Store
from tests.conftest import batch_for

ROOT = Path(__file__).resolve().parents[2]


def _spawn(backend, spec, stop, start=0, prefix="img", **kw) -> subprocess.Popen:
    url, opts = backend
    cmd = [
        sys.executable,
        "-m",
        "tests.featurestore.writer_proc",
        "--store",
        url,
        "--options",
        json.dumps(opts),
        "--spec",
        json.dumps(spec.to_json()),
        "--start",
        str(start),
        "--stop",
        str(stop),
        "--prefix",
        prefix,
    ]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_consistent(fs, expect_ids=None):
    """Every visible row has its exact grid; no NaN fill, no row of another image."""
    t = fs.cls()
    ids = t.column("image_id").to_pylist()
    assert len(ids) == len(set(ids))
    if ids:
        c, p = batch_for(ids)
        np.testing.assert_allclose(fs.patches(ids).astype(np.float32), p, atol=1e-3, rtol=1e-3)
        np.testing.assert_array_equal(np.asarray(t.column("cls").to_pylist(), np.float32), c)
    assert fs.verify() == []
    if expect_ids is not None:
        assert sorted(ids) == sorted(expect_ids)
    return ids


@pytest.mark.slow
def test_sigkill_between_grid_write_and_commit(backend, tiny_spec):
    url, opts = backend
    proc = _spawn(backend, tiny_spec, stop=64, kill_at_commit=3)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    fs = Store.open(url, storage_options=opts).feature_set(tiny_spec.feature_set_id)
    # Shards 0 and 1 committed; shard 2's grids were written but its cls part never was.
    ids = _assert_consistent(fs, [f"img{i:04d}" for i in range(32)])
    assert len(ids) == 32
    proc = _spawn(backend, tiny_spec, stop=64)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "written=32 skipped=32" in out
    _assert_consistent(fs, [f"img{i:04d}" for i in range(64)])


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path, tiny_spec):
    """Kill after a random number of batches (while the background thread may be mid-shard)."""
    backend = (str(tmp_path / "store"), None)
    rng = np.random.default_rng(0)
    for _trial in range(3):
        proc = _spawn(backend, tiny_spec, stop=96, sleep=0.01)
        target = int(rng.integers(1, 11)) * 8
        for line in proc.stdout:
            if line.startswith("wrote ") and int(line.split()[1]) >= target:
                time.sleep(float(rng.uniform(0, 0.01)))
                proc.send_signal(signal.SIGKILL)
                break
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        _assert_consistent(Store.open(backend[0]).feature_set(tiny_spec.feature_set_id))
    proc = _spawn(backend, tiny_spec, stop=96)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    fs = Store.open(backend[0]).feature_set(tiny_spec.feature_set_id)
    _assert_consistent(fs, [f"img{i:04d}" for i in range(96)])


@pytest.mark.slow
def test_two_processes_write_one_feature_set(tmp_path, tiny_spec):
    """Two writers at once, different images: shards are allocated under a lock, never shared."""
    backend = (str(tmp_path / "store"), None)
    Store.open(backend[0], create=True).create_feature_set(tiny_spec)
    a = _spawn(backend, tiny_spec, stop=120, prefix="a", batch=5)
    b = _spawn(backend, tiny_spec, stop=120, prefix="b", batch=7)
    for p in (a, b):
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    fs = Store.open(backend[0]).feature_set(tiny_spec.feature_set_id)
    ids = _assert_consistent(fs, [f"a{i:04d}" for i in range(120)] + [f"b{i:04d}" for i in range(120)])
    shards = fs.cls(columns=["shard", "image_id"]).to_pydict()
    owner = {}
    for s, i in zip(shards["shard"], shards["image_id"]):
        owner.setdefault(s, set()).add(i[0])
    assert all(len(v) == 1 for v in owner.values()), owner  # no shard holds rows of both writers
    assert len(ids) == 240
