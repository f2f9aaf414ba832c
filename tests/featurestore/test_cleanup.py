"""What dead writers leave behind, a full disk, and missing shards under a lazy read.

Temporary files of killed writers are swept by the next writer and by ``radstore store gc``;
the array grows only for claimed shards; a full disk is one line naming the store, the path
and the bytes needed, with committed data intact; ``to_xarray()`` never hands out a missing
grid as NaN.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featurestore import layout, storage
from featurestore.errors import StoreCorruptionError, StoreFullError
from featurestore.featureset import FeatureSetSpec
from featurestore.store import Store
from flows.cli import main
from tests.conftest import batch_for
from tests.featurestore.test_faults import _spawn

IDS = [f"img{i:04d}" for i in range(64)]


def _write(fs, ids, batch=8):
    with fs.writer() as w:
        for k in range(0, len(ids), batch):
            w.write(ids[k : k + batch], *batch_for(ids[k : k + batch]))
    return w


def _partials(root: str) -> list[str]:
    return [f"{d}/{f}" for d, _, fs in os.walk(root) for f in fs if f.endswith(layout.PARTIAL_SUFFIX)]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.slow
def test_killed_writers_leave_nothing_once_the_next_writer_starts(tmp_path, tiny_spec):
    """Writers killed while streaming a shard leave temporary files; the next writer removes
    them, and the array holds only the shards that were claimed."""
    url = str(tmp_path / "store")
    rng = np.random.default_rng(5)
    kills = 0
    left_after_kill = []
    for _ in range(5):
        proc = _spawn((url, None), tiny_spec, stop=64, sleep=0.02, batch=4)
        target = int(rng.integers(1, 6)) * 4
        for line in proc.stdout:
            if line.startswith("wrote ") and int(line.split()[1]) >= target:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
        proc.communicate(timeout=60)
        left_after_kill.append(len(_partials(url)))
    assert kills == 5
    assert max(left_after_kill) >= 1  # a killed writer did leave its shard's temporary file
    assert max(left_after_kill) <= 2  # ... but each new writer swept the previous one's
    proc = _spawn((url, None), tiny_spec, stop=64)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert _partials(url) == []
    fs = Store.open(url).feature_set(tiny_spec.feature_set_id)
    assert sorted(fs.cls().column("image_id").to_pylist()) == IDS
    claims = fs.loc.list(layout.CLAIMS_DIR, suffix=".json")
    assert fs.array_rows() == len(claims) * tiny_spec.shard_images  # rows only for claimed shards
    assert len(claims) <= 64 // tiny_spec.shard_images + kills  # at most one uncommitted claim per kill


def test_planning_grows_nothing(tmp_path, cohort):
    """A plan claims no shards: a planner killed after planning leaves the array as it was."""
    from featurestore.extract import ExtractConfig, plan

    store = Store.open(str(tmp_path / "store"), create=True)
    cfg = ExtractConfig("pixels", progress=False, num_workers=0)
    for _ in range(5):
        p = plan(str(cohort), store, cfg)
    assert p.shards == [] and sum(map(len, p.groups)) == 24
    fs = store.feature_set(p.feature_set_id)
    assert fs.array_rows() == 0 and fs.loc.list(layout.CLAIMS_DIR) == []


def test_gc_removes_dead_temporary_files_and_reports_unused_rows(tmp_path, tiny_spec, capsys):
    url = str(tmp_path / "store")
    fs = Store.open(url, create=True).create_feature_set(tiny_spec)
    _write(fs, IDS[:20])  # shard 0 full, shard 1 holds 4 of 16
    (claimed,) = fs.allocate_shards(1)  # claimed, never committed
    tmp = Path(fs.loc.path(layout.TMP_DIR))
    tmp.mkdir(exist_ok=True)
    dead = tmp / f"{storage.HOST}-{_dead_pid()}-aa.partial"  # its writer is gone: nobody holds it
    # Held by a live writer (here: this test) whose pid this process cannot see, as from another
    # pid namespace (a container with the same host name): the lock, not the pid, says alive.
    alive = tmp / f"{storage.HOST}-{_dead_pid()}-bb.partial"
    foreign_old = tmp / "otherhost-123-cc.partial"
    foreign_new = tmp / "otherhost-124-dd.partial"
    legacy = Path(fs.loc.path(layout.CLS_DIR)) / "shard-00000009-x.parquet.0123abcd.partial"  # an older version's name
    not_ours = tmp / "notes.txt"  # not a temporary file of radstore's: never touched
    for p in (dead, alive, foreign_old, foreign_new, legacy, not_ours):
        p.write_bytes(b"x" * 1000)
    minute, days = time.time() - 60, time.time() - 2 * 86400
    for p, t in ((dead, minute), (alive, minute), (foreign_new, minute), (foreign_old, days), (legacy, days), (not_ours, days)):
        os.utime(p, (t, t))
    held = open(alive, "rb")  # noqa: SIM115
    storage.hold(held)
    try:
        assert main(["store", "gc", url]) == 0
    finally:
        held.close()
    out = capsys.readouterr().out
    assert not_ours.exists()
    assert not dead.exists() and not foreign_old.exists() and not legacy.exists()
    assert alive.exists() and foreign_new.exists()  # a live writer's and a recent foreign one stay
    line = next(ln for ln in out.splitlines() if ln.startswith(tiny_spec.feature_set_id))
    assert "removed 3 temporary file(s) (3,000 bytes)" in line
    assert f"array rows 48, committed 20, unused 28 (1 claimed shard(s) never committed: {claimed})" in line
    assert sorted(fs.cls().column("image_id").to_pylist()) == IDS[:20]  # committed data untouched
    assert fs.verify() == []


def test_to_xarray_raises_for_a_committed_image_whose_shard_is_missing(tmp_path, tiny_spec):
    fs = Store.open(str(tmp_path / "store"), create=True).create_feature_set(tiny_spec)
    _write(fs, IDS[:32])
    os.unlink(fs.loc.path(fs.shard_key(1)))
    ds = fs.to_xarray()  # lazy: nothing read yet
    np.testing.assert_array_equal(ds["patches"].sel(image_id="img0003").values, batch_for(["img0003"])[1][0].astype(np.float16))
    with pytest.raises(StoreCorruptionError, match="img0016"):
        ds["patches"].sel(image_id="img0020").values  # noqa: B018
    with pytest.raises(StoreCorruptionError):
        ds["patches"].mean().compute()


# -- a full disk ---------------------------------------------------------------------------

BIG = FeatureSetSpec(encoder="tiny", weights_fingerprint="test-weights", grid=(64, 32, 32), global_dim=6, shard_images=8)  # 1 MiB shards


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _big_batch(ids):
    rng = np.random.default_rng(len(ids))
    return rng.standard_normal((len(ids), 6)).astype(np.float32), rng.standard_normal((len(ids), *BIG.grid)).astype(np.float16)


@pytest.mark.parametrize("direct", [True, False])
def test_full_disk_is_one_clear_error_and_loses_nothing(small_disk, direct):
    url = str(small_disk / "store")
    fs = Store.open(url, create=True).create_feature_set(BIG)
    ids = [f"img{i:04d}" for i in range(64)]
    cls, patches = _big_batch(ids)
    with pytest.raises(StoreFullError) as e:
        with fs.writer(direct=direct) as w:
            for k in range(0, 64, 8):
                w.write(ids[k : k + 8], cls[k : k + 8], patches[k : k + 8])
    msg = str(e.value)
    assert "\n" not in msg
    assert f"store location {url}" in msg and "no space left on device writing" in msg and "bytes needed" in msg
    committed = fs.cls().column("image_id").to_pylist()
    assert 0 < len(committed) < 64
    at = [ids.index(i) for i in committed]
    assert np.array_equal(fs.patches(committed), patches[at])  # what was committed is whole and exact
    assert fs.verify() == []
    assert [p for p in _partials(url) if "/.tmp/" in p] == []  # the failed write's temporary file is gone


@pytest.mark.slow
def test_extract_on_a_full_disk_says_so_once_without_retrying(small_disk, cohort):
    url = str(small_disk / "store")
    exe = Path(sys.executable).with_name("radstore")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}  # Prefect's ephemeral API, own process
    r = subprocess.run([str(exe), "ingest", "--store", url, "--manifest", str(cohort), "--quiet"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    with open(small_disk / "filler", "wb") as f:  # leave about 16 KB: too little for a shard
        f.write(b"\0" * max(0, free - 16 * 1024))
    t0 = time.perf_counter()
    cmd = [str(exe), "extract", "--store", url, "--encoder", "pixels", "--num-workers", "0", "--manifest", str(cohort)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    seconds = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "no space left on device writing" in lines[0] and url in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert "Retrying" not in r.stderr and seconds < 90  # the flow's retries (5 s apart) were not used
    with contextlib.suppress(FileNotFoundError):
        os.unlink(small_disk / "filler")
    store = Store.open(url)
    for fs in store.feature_sets():
        assert fs.verify() == []


def test_verify_flags_a_shard_committed_twice(tmp_path, tiny_spec, capsys):
    """What racing writers of older versions left (two parts for one shard) is reported."""
    url = str(tmp_path / "store")
    fs = Store.open(url, create=True).create_feature_set(tiny_spec)
    _write(fs, IDS[:16])
    assert main(["store", "verify", url]) == 0
    from featurestore.featureset.writer import cls_table

    cls, _ = batch_for(IDS[16:20])
    fs.commit_cls_part(0, cls_table(fs, 0, IDS[16:20], cls, None, None))  # a second writer's part for shard 0
    capsys.readouterr()
    assert main(["store", "verify", url]) == 1
    out = capsys.readouterr().out
    assert "1 shard(s) committed more than once (shard 0 by 2 parts)" in out


def test_two_creators_with_other_shard_sizes_agree_on_the_array(tmp_path, tiny_spec):
    """Shard size is not part of a feature set's id: when two creators race with different ones,
    the array's decides, and a record contradicting its array is refused."""
    import dataclasses

    from featurestore.featureset.array import create_array
    from featurestore.featureset.reader import FeatureSet

    store = Store.open(str(tmp_path / "store"), create=True)
    loc = store.loc.child(layout.FEATURES_DIR, tiny_spec.feature_set_id)
    create_array(loc, dataclasses.replace(tiny_spec, shard_images=8))  # the first creator, then it stalls
    fs = FeatureSet.create_or_open(loc, dataclasses.replace(tiny_spec, shard_images=4))
    assert fs.spec.shard_images == 8 and fs.plain_layout
    _write(fs, IDS[:20])
    assert fs.verify() == [] and sorted(fs.cls().column("image_id").to_pylist()) == IDS[:20]
    record = loc.read_json(layout.FEATURE_SET_JSON)
    record["spec"]["shard_images"] = 4
    loc.write_json(record, layout.FEATURE_SET_JSON)
    with pytest.raises(Exception, match="stored otherwise"):
        store.feature_set(tiny_spec.feature_set_id)


def test_a_temporary_file_is_whole_when_it_gets_its_name(tmp_path, monkeypatch):
    """The file is renamed (or linked) while still open and held: its bytes must be flushed
    first, or a reader of the final name could see a short object until the writer closes it."""
    loc = storage.Location(str(tmp_path / "loc"))
    seen = []
    real_replace, real_link = os.replace, os.link

    def replace(src, dst):
        seen.append(os.path.getsize(src))
        return real_replace(src, dst)

    def link(src, dst):
        seen.append(os.path.getsize(src))
        return real_link(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "link", link)
    loc.write_atomic([b"a" * 1000, b"b" * 24], "x", "one.bin")
    assert loc.create_exclusive(b"c" * 700, "x", "two.bin") and not loc.create_exclusive(b"d", "x", "two.bin")
    assert seen[:2] == [1024, 700]
    assert loc.read_bytes("x", "two.bin") == b"c" * 700 and _partials(str(tmp_path)) == []
