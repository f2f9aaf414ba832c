"""Independent writer processes on one feature set, on S3 and on local disk, with SIGKILLs.

Each trial starts 4-8 processes at once on a fresh store (so they also race to create the store
and the feature set), on disjoint, overlapping or identical image ranges; in most trials some
are killed at a random moment and run again. Afterwards every committed row must equal the
oracle embedding of its image exactly (max difference 0), no image may be lost or repeated in
the committed view, no shard may be committed twice or hold another process's rows, the array
may hold no more rows than the shards claimed, and no temporary file may be left.
"""

from __future__ import annotations

import collections
import dataclasses
import signal
import time
import uuid

import numpy as np
import pytest

from featurestore import layout
from featurestore.store import Store
from tests.conftest import batch_for
from tests.featurestore.test_faults import _spawn

N_IMAGES = 32
SCENARIOS = ("disjoint", "overlapping", "identical")


def _ranges(scenario: str, procs: int) -> list[tuple[int, int]]:
    """(start, stop) image ranges of each process."""
    if scenario == "identical":
        return [(0, N_IMAGES)] * procs
    step = N_IMAGES // procs
    if scenario == "disjoint":
        return [(k * step, N_IMAGES if k == procs - 1 else (k + 1) * step) for k in range(procs)]
    return [(k * step, min(N_IMAGES, k * step + 2 * step + 3)) for k in range(procs)]  # each overlaps the next


def _check(url: str, opts, spec, expected: set[str]) -> dict:
    fs = Store.open(url, storage_options=opts).feature_set(spec.feature_set_id)
    t = fs.cls()
    ids = t.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)), "an image appears twice in the committed view"
    assert set(ids) == expected, f"lost {sorted(expected - set(ids))[:5]}, extra {sorted(set(ids) - expected)[:5]}"
    cls, patches = batch_for(ids)
    got = fs.patches(ids)
    assert float(np.abs(got.astype(np.float32) - patches.astype(spec.dtype).astype(np.float32)).max()) == 0.0
    assert np.array_equal(np.asarray(t.column("cls").to_pylist(), np.float32), cls)
    assert fs.verify() == []
    # No shard committed twice; every committed row lies in its shard; every shard was claimed.
    assert fs.shared_shards() == {}
    parts = collections.Counter(layout.shard_of_part(p) for p in fs.cls_parts())
    rows = fs.committed_rows()
    s = spec.shard_images
    assert (rows.column("row").to_numpy() // s == rows.column("shard").to_numpy()).all()
    claims = {int(p.rsplit("-", 1)[-1].split(".")[0]) for p in fs.loc.list(layout.CLAIMS_DIR, suffix=".json")}
    assert set(parts) <= claims
    # The array holds exactly the claimed shards' rows: a killed writer grew it no further.
    assert fs.array_rows() == (max(claims) + 1) * s
    if fs.loc.is_local:
        assert fs.loc.walk_partials(older_than_s=-1) == [], "temporary files left behind"
    return {"shards": len(parts), "claims": len(claims), "unused_claims": len(claims - set(parts))}


def _run_trials(backend_of, spec, trials: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    stats = collections.Counter()
    for trial in range(trials):
        url, opts = backend_of(trial)
        scenario = SCENARIOS[trial % len(SCENARIOS)]
        procs = (4, 6, 8)[trial % 3]
        ranges = _ranges(scenario, procs)
        kw = [{"batch": int(rng.integers(3, 12)), "sleep": float(rng.uniform(0.0, 0.02))} for _ in ranges]
        running = [_spawn((url, opts), spec, stop=b, start=a, **k) for (a, b), k in zip(ranges, kw)]
        killed = []
        if trial % 4 != 3:  # three trials in four kill 1-2 writers at a random moment
            time.sleep(float(rng.uniform(1.5, 3.0)))
            for k in rng.choice(len(running), size=int(rng.integers(1, 3)), replace=False):
                if running[k].poll() is None:
                    running[k].send_signal(signal.SIGKILL)
                    killed.append(int(k))
        for k, p in enumerate(running):
            out, err = p.communicate(timeout=300)
            assert p.returncode == (-signal.SIGKILL if k in killed else 0), err
        for k in killed:  # the killed ones again, to completion (resume)
            p = _spawn((url, opts), spec, stop=ranges[k][1], start=ranges[k][0], **kw[k])
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
        expected = {f"img{i:04d}" for a, b in ranges for i in range(a, b)}
        got = _check(url, opts, spec, expected)
        stats.update(trials=1, processes=procs, kills=len(killed), **got)
        stats[f"scenario_{scenario}"] += 1
    return dict(stats)


@pytest.fixture
def small_shards(tiny_spec):
    """Shards of 8 images: many shards per trial, so writers contend for the same shard numbers."""
    return dataclasses.replace(tiny_spec, shard_images=8)


@pytest.mark.slow
def test_concurrent_writers_on_s3(s3_server, small_shards):
    stats = _run_trials(lambda t: (f"s3://radstore-test/concurrent-{uuid.uuid4().hex}", s3_server), small_shards, trials=6, seed=19)
    print(f"\nS3 concurrency: {stats}")
    assert stats["trials"] == 6 and stats["kills"] >= 3


@pytest.mark.slow
def test_concurrent_writers_on_local_disk(tmp_path, small_shards):
    stats = _run_trials(lambda t: (str(tmp_path / f"store-{t}"), None), small_shards, trials=2, seed=20)
    print(f"\nlocal concurrency: {stats}")
    assert stats["trials"] == 2
