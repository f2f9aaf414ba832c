"""Embedding health (``featurestore.health.check_health``) of a 100,000-image feature set.

One store, built untimed through the store's own commit functions (``FeatureSet.allocate_shards``,
``featurestore.featureset.writer.cls_table``, ``FeatureSet.commit_cls_part``), with synthetic data:

- the image index: ``n`` images, two per patient, each patient in train, val or test
  (70/10/20 %), so the leakage audit compares about 20,000 test with 70,000 training images;
- the feature set (768-d float32 globals, 768x37x37 float16 grids, shards of 64 images: what
  the store chooses for that grid, ``shard_images=0``): every row's global embedding is
  committed (low rank plus noise around a common mean; ``PLANTED`` test images are near-copies
  of a training image of another patient; the backfill's rows are shifted), but only the grids
  the checks read are written -- the rows of the seeded sample (``featurestore.health.compute.choose``
  with the check's seed), through the zarr array into sparse shards before the cls parts that
  commit them. The other rows' grids are never written: 100,000 grids would be 210 GB, and the
  check never reads them (a read of one would raise);
- the two negative controls a study holds (``pixels``, 274-d, and ``random-vit``, 768-d; globals
  only, partly sharing the encoder's structure), whose globals the CKA reads;
- a backfill: the newest ``backfill`` rows (whole shards) are committed after a first health
  version of the rows before them (untimed), so every timed check also measures the drift of
  the backfill (the parts that version did not read) against the rows before.

Timed, in interleaved rounds, each case reading from disk (``--warm``: the page cache as left;
by default every file of the store is dropped from it first, ``sync`` + ``posix_fadvise
DONTNEED``, untimed), ratios taken round by round:

- ``check_health`` of the whole feature set, a new version each round (the previous round's
  is deleted first, untimed), with its phases from ``record.timings``;
- the same call again with unchanged inputs: it returns that version (``created`` False);
- the naive global spectrum: ``pyarrow.parquet`` read of the cls column of the same parts, then
  ``numpy.linalg.svd`` of the ``n x 768`` float32 matrix (singular values only); its read alone
  is the pure I/O of the globals phase;
- the sampled grids alone: ``FeatureSet.read_rows`` of the same rows in the check's batches,
  the pure I/O of the patches phase.

Run alone: ``.venv/bin/python -m benchmarks.health [--n 100000 --sample 2000 --reps 3]``
(about 5 minutes and 9 GB of scratch disk at the default size, removed at the end).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from benchmarks.common import Row, compare, finish, scratch_dir, speedups, summary, time_row, with_ratio
from featurestore import layout
from featurestore.featureset import FeatureSet, FeatureSetSpec
from featurestore.featureset.writer import cls_table
from featurestore.health import HealthConfig, check_health
from featurestore.health.compute import choose
from featurestore.store import Store

STAGE = "9 health"
GRID = (768, 37, 37)
DIM = 768
RANK = 32  # directions of the globals' signal
SPLITS = (("train", 0.7), ("val", 0.1), ("test", 0.2))
PLANTED = 40  # test images committed as near-copies of a training image of another patient
TARGET_S = 60.0
PHASES = ("globals", "patches", "leakage", "cka", "drift")


@dataclass
class Built:
    """The benchmark's store and what the timed cases need from it."""

    store: Store
    fs: FeatureSet
    ids: list[str]
    sample_rows: np.ndarray  # the timed check's sampled rows (row == position: rows are committed in id order)
    planted: set[tuple[str, str]]  # (test, train) image ids
    before: int  # rows committed before the backfill
    before_id: str  # the health version the backfill is measured against
    n_train: int
    n_test: int
    grids_written: int
    seconds: dict[str, float]


def register_images(store: Store, ids: list[str], splits: list[str], patients: list[str]) -> None:
    """Add ``ids`` to the image index with their split and patient, as ingest would (one part)."""
    n = len(ids)
    now = layout.now_ms()
    cols = {
        "image_id": ids, "patient_id": patients, "split": splits, "uri": [f"mem://{i}" for i in ids],
        "format": ["png"] * n, "sha256": ["0" * 64] * n, "size_bytes": [1] * n, "height": [8] * n, "width": [8] * n,
        "bits_stored": [8] * n, "photometric": ["MONOCHROME2"] * n, "ingested_at": [now] * n, "manifest": [None] * n,
        "bits_rule": [None] * n, "view_position": [None] * n, "manufacturer": [None] * n, "patient_sex": [None] * n,
        "patient_age": [None] * n,
    }  # fmt: skip
    store.append_images(pa.table(cols).cast(layout.IMAGES_SCHEMA))


def cohort(n: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """``n`` image ids, two per patient, each patient in one split."""
    rng = np.random.default_rng(seed)
    ids = [f"img{k:07d}" for k in range(n)]
    patients = [f"pat{k // 2:07d}" for k in range(n)]
    names, p = zip(*SPLITS)
    per_patient = rng.choice(len(names), -(-n // 2), p=p)
    splits = [names[per_patient[k // 2]] for k in range(n)]
    return ids, patients, splits


def globals_of(n: int, dim: int, backfill_from: int, splits: list[str], patients: list[str], seed: int):
    """Low rank plus noise around a common mean (float32), the backfill's rows shifted, and
    ``PLANTED`` test rows (before the backfill) made near-copies of training rows of other
    patients; returns the matrix, the shared factors (the controls reuse them) and the planted
    (test, train) positions."""
    rng = np.random.default_rng(seed + 1)
    factors = rng.standard_normal((n, RANK), dtype=np.float32) * (4.0 / np.sqrt(np.arange(1, RANK + 1, dtype=np.float32)))
    basis = np.linalg.qr(rng.standard_normal((dim, RANK)))[0].T.astype(np.float32)  # RANK orthonormal rows
    mean = rng.standard_normal(dim).astype(np.float32) * 0.3
    x = factors @ basis + 0.5 * rng.standard_normal((n, dim), dtype=np.float32) + mean
    shift = rng.standard_normal(dim).astype(np.float32)
    x[backfill_from:] += 3.0 * shift / np.linalg.norm(shift)  # a new scanner: the backfill moved
    split = np.asarray(splits)
    test = np.flatnonzero(split[:backfill_from] == "test")[:PLANTED]
    train = np.flatnonzero(split[:backfill_from] == "train")
    partner = rng.choice(train, len(test), replace=False)
    assert all(patients[a] != patients[b] for a, b in zip(test, partner))
    x[test] = x[partner] + 0.01 * rng.standard_normal((len(test), dim), dtype=np.float32)
    return x, factors, list(zip(test.tolist(), partner.tolist()))


def commit_globals(fs: FeatureSet, ids: list[str], x: np.ndarray, shards: range) -> None:
    """Commit the cls parts of ``shards`` (allocated): rows ``k*S .. k*S+S-1`` are ``ids``'s and
    ``x``'s at the same positions. A row exists from its part on (layout: the commit point)."""
    s = fs.spec.shard_images
    for k in shards:
        lo, hi = k * s, min(len(ids), (k + 1) * s)
        fs.commit_cls_part(k, cls_table(fs, k, ids[lo:hi], x[lo:hi], None, None))


def write_grids(fs: FeatureSet, rows: np.ndarray, seed: int) -> int:
    """The grids of ``rows`` (allocated, not yet committed), written through the zarr array one
    image at a time: distinct float16 grids (a pool of 8 random grids plus a per-image channel
    offset), so the patch figures are computed on real, different values.

    zarr-python's own codec pipeline, not the zarrs one radstore configures (``ZARR_CONFIG``):
    the same bytes on disk, but adding one chunk to a shard took ~9 ms here against ~110 ms.
    """
    c, h, w = fs.spec.grid
    rng = np.random.default_rng(seed + 2)
    pool = rng.standard_normal((8, c, h, w), dtype=np.float32)
    assert fs.array_rows() > int(rows.max())  # allocated
    arr = zarr.open_group(fs.loc.zarr_store(layout.PATCHES_GROUP), mode="r+")[layout.PATCHES_ARRAY]
    one = np.empty((1, c, h, w), np.dtype(fs.spec.dtype))
    for r in np.sort(rows):
        one[0] = pool[r % len(pool)] + rng.standard_normal((c, 1, 1), dtype=np.float32)
        arr[r : r + 1] = one  # zarr rewrites the shard object with this image's chunk added
    return len(rows)


def control_set(store: Store, encoder: str, fingerprint: str, grid: tuple[int, int, int], dim: int, ids: list[str],
                factors: np.ndarray, seed: int) -> None:  # fmt: skip
    """A negative control's feature set: globals only (partly the encoder's factors), every row committed."""
    fs = store.create_feature_set(FeatureSetSpec(encoder, fingerprint, grid, dim, dtype="float16"))
    rng = np.random.default_rng(seed)
    x = factors @ rng.standard_normal((RANK, dim), dtype=np.float32) * 0.2 + rng.standard_normal((len(ids), dim), dtype=np.float32)
    shards = fs.allocate_shards(-(-len(ids) // fs.spec.shard_images))
    commit_globals(fs, ids, x, range(len(shards)))


def build(root: Path, n: int, backfill: int, dim: int, grid: tuple[int, int, int], shard_images: int, cfg: HealthConfig,
          seed: int = 0) -> Built:  # fmt: skip
    """The store of the module docstring, with the health version before the backfill."""
    secs: dict[str, float] = {}
    t = time.perf_counter()
    store = Store.open(str(root / "store"), create=True)
    ids, patients, splits = cohort(n, seed)
    register_images(store, ids, splits, patients)
    spec = FeatureSetSpec("bench-health", "synthetic", grid, dim, dtype="float16", shard_images=shard_images)
    fs = store.create_feature_set(spec)
    s = fs.spec.shard_images
    before = max(s, (n - backfill) // s * s)  # the backfill is whole shards
    x, factors, planted = globals_of(n, dim, before, splits, patients, seed)
    control_set(store, "pixels", "none", (16, 32, 32), 274, ids, factors, seed + 3)
    control_set(store, "random-vit", "synthetic-random", (768, 37, 37), 768, ids, factors, seed + 4)
    secs["index, globals, controls"] = time.perf_counter() - t

    t = time.perf_counter()
    shards = fs.allocate_shards(-(-n // s))
    assert shards == list(range(len(shards))), shards[:5]  # a fresh set: rows are positions
    # Rows are committed in id order, so the check's sample positions are rows; the version
    # before the backfill samples among its own (fewer) rows.
    sample_rows = choose(n, cfg.sample, cfg.seed, "sample")
    needed = np.union1d(sample_rows, choose(before, cfg.sample, cfg.seed, "sample"))
    written = write_grids(fs, needed, seed)
    secs["grids"] = time.perf_counter() - t

    t = time.perf_counter()
    commit_globals(fs, ids, x, range(before // s))
    secs["commit before the backfill"] = time.perf_counter() - t
    t = time.perf_counter()
    first = check_health(store, fs.id, cfg)
    assert first.created and first.record.images == before, (first.created, first.record.images)
    secs["health version before the backfill"] = time.perf_counter() - t
    t = time.perf_counter()
    commit_globals(fs, ids, x, range(before // s, len(shards)))
    secs["commit the backfill"] = time.perf_counter() - t
    split = np.asarray(splits)
    return Built(
        store=store,
        fs=fs,
        ids=ids,
        sample_rows=sample_rows,
        planted={(ids[a], ids[b]) for a, b in planted},
        before=before,
        before_id=first.record.health_id,
        n_train=int((split == "train").sum()),
        n_test=int((split == "test").sum()),
        grids_written=written,
        seconds=secs,
    )


def drop_cache(path: Path) -> None:
    """Write back, then drop every file under ``path`` from the page cache: the next read is from disk."""
    os.sync()
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def rankme(sv: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values (RankMe), computed here independently."""
    p = sv[sv > 0] / sv.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def run(n: int = 100_000, sample: int = 2000, backfill: int = 5000, dim: int = DIM, grid: tuple[int, int, int] = GRID,
        shard_images: int = 0, rank_images: int = 256, reps: int = 3, warm: bool = False) -> dict:  # fmt: skip
    """Build the store (untimed), then time ``check_health`` against its pure I/O and the naive
    spectrum in interleaved rounds; checks the figures against the naive ones and that the
    planted duplicates and the backfill were found. The scratch store is removed at the end."""
    cfg = HealthConfig(sample=sample, rank_images=rank_images)
    root = scratch_dir("health")
    rows: list[Row] = []
    details: dict = {"config": cfg.to_json(), "warm": warm}
    try:
        t0 = time.perf_counter()
        print(f"health: building {n:,} images ({sample:,} sampled grids of {'x'.join(map(str, grid))}) in {root}", flush=True)
        b = build(root, n, backfill, dim, grid, shard_images, cfg)
        fs, fsid = b.fs, b.fs.id
        parts = fs.cls_parts()
        setup_s = time.perf_counter() - t0
        print(f"health: built in {setup_s:.0f} s ({', '.join(f'{k} {v:.1f} s' for k, v in b.seconds.items())})", flush=True)
        made: dict = {}
        got: dict = {}

        def cold() -> None:
            if not warm:
                drop_cache(root)

        def fresh_version() -> None:
            if "id" in made:
                shutil.rmtree(fs.loc.path(layout.HEALTH_DIR, made["id"]))
            cold()

        def naive() -> None:
            t = time.perf_counter()
            col = pq.read_table(parts, columns=["cls"]).column("cls").combine_chunks()
            x = col.flatten().to_numpy().reshape(-1, dim)
            got.setdefault("read", []).append(time.perf_counter() - t)
            got["sv"] = np.linalg.svd(x, compute_uv=False)

        def grids() -> None:
            own = b.store.feature_set(fsid)  # a fresh object: its shard indexes are read again, as the check's are
            for k in range(0, len(b.sample_rows), cfg.batch):
                own.read_rows(b.sample_rows[k : k + cfg.batch])

        def check() -> None:
            r = check_health(b.store, fsid, cfg)
            assert r.created, "a fresh version was expected"
            made["id"] = r.record.health_id
            made.setdefault("timings", []).append(dict(r.record.timings))
            made["result"] = r

        def again() -> None:
            r = check_health(b.store, fsid, cfg)
            assert not r.created and r.record.health_id == made["id"]

        cases = {"naive": naive, "grids": grids, "check": check, "again": again}
        t = compare(cases, reps, setup={"naive": cold, "grids": cold, "check": fresh_version, "again": cold})

        # The figures are the naive ones, the planted duplicates and the backfill were found.
        r = made["result"]
        rank_naive, rank_check = rankme(got["sv"]), r.figure("rankme")
        rel = abs(rank_check - rank_naive) / rank_naive
        assert rel < 1e-4, (rank_check, rank_naive)
        leak = r.tables["leakage"]
        found = set(zip(leak.column("test_image_id").to_pylist(), leak.column("train_image_id").to_pylist()))
        missed = b.planted - found
        assert not missed, f"planted duplicates not found: {sorted(missed)[:5]}"
        drift = r.tables["drift"].to_pylist()
        assert r.record.images == n and r.record.previous == b.before_id
        assert len(drift) == 1 and (drift[0]["n_before"], drift[0]["n_new"]) == (b.before, n - b.before), drift
        phases = {p: [tm.get(p, 0.0) for tm in made["timings"]] for p in PHASES}
        other = [total - sum(tm.get(p, 0.0) for p in PHASES) for total, tm in zip(t["check"], made["timings"])]
        io = [a + g for a, g in zip(got["read"], t["grids"])]
        where = "warm page cache" if warm else "from disk"
        what = f"{n:,} x {dim} globals in {len(parts):,} parts; {sample:,} grids of {'x'.join(map(str, grid))}; {where}"

        rows.append(time_row(STAGE, f"pyarrow read of the cls column alone (globals' pure I/O) [{what}]", n, got["read"]))
        rows.append(time_row(STAGE, "naive spectrum: that read + numpy SVD (float32, values only)", n, t["naive"]))
        g = time_row(STAGE, f"check_health globals phase (one pass: moments, norms, kept rows) [RankMe diff {rel:.1e}]", n,
                     phases["globals"])  # fmt: skip
        rows.append(with_ratio(g, speedups(t["naive"], phases["globals"]), "naive read + SVD"))
        g2 = time_row(STAGE, "check_health globals phase vs its pure I/O", n, phases["globals"])
        rows.append(with_ratio(g2, speedups(got["read"], phases["globals"]), "cls read alone"))
        rows.append(time_row(STAGE, f"sampled grids read alone (fs.read_rows, batches of {cfg.batch})", sample, t["grids"]))
        p = time_row(STAGE, f"check_health patches phase (rank of {min(rank_images, sample)} images)", sample, phases["patches"])
        rows.append(with_ratio(p, speedups(t["grids"], phases["patches"]), "grids read alone"))
        rows.append(time_row(STAGE, f"check_health leakage phase ({b.n_test:,} test x {b.n_train:,} train, whitened cosine)",
                             f"{b.n_test}x{b.n_train}", phases["leakage"]))  # fmt: skip
        rows.append(time_row(STAGE, "check_health cka phase (pixels, random-vit on the sample)", sample, phases["cka"]))
        rows.append(time_row(STAGE, f"check_health drift phase (backfill of {drift[0]['n_new']:,}, {cfg.permutations} permutations)",
                             min(cfg.drift_sample, drift[0]["n_new"]), phases["drift"]))  # fmt: skip
        rows.append(time_row(STAGE, "check_health rest (committed rows, inputs' hash, tables written)", n, other))
        total = time_row(STAGE, "check_health, first call (created=True)", n, t["check"])
        rows.append(with_ratio(total, speedups(io, t["check"]), "cls + grids read alone", f"< {TARGET_S:.0f} s",
                               total.value < TARGET_S))  # fmt: skip
        rows.append(with_ratio(time_row(STAGE, "check_health again, unchanged inputs (created=False)", n, t["again"]),
                               speedups(t["check"], t["again"]), "first call"))  # fmt: skip
        s = {x["metric"]: x["value"] for x in r.tables["summary"].to_pylist()}
        details.update({
            "seconds": t, "read_seconds": got["read"], "phases": phases, "other": other, "setup_seconds": round(setup_s, 1),
            "setup": b.seconds, "parts": len(parts), "shard_images": fs.spec.shard_images, "grids_written": b.grids_written,
            "store_bytes": sum(f.stat().st_size for f in root.rglob("*") if f.is_file()),
            "n_train": b.n_train, "n_test": b.n_test, "planted": len(b.planted), "leakage_pairs": leak.num_rows,
            "rankme_check": rank_check, "rankme_naive": rank_naive, "flags": r.record.flags,
            "drift": {k: v.isoformat() if isinstance(v, datetime) else v for k, v in drift[0].items()},
            "figures": {k: s[k] for k in ("rankme", "participation_ratio", "anisotropy", "patch_cosine_median",
                                          "patch_rank_median", "cka_pixels", "cka_random-vit") if k in s},
        })  # fmt: skip
        print(f"health: median {summary(t['check'])[0]:.1f} s a check ({', '.join(f'{k} {summary(v)[0]:.1f}' for k, v in phases.items())})")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"stage": STAGE, "rows": rows, "details": details}


def main(argv: list[str] | None = None) -> int:
    """Run this stage alone from the command line; prints its table, writes its results file, exits 0."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="images in the feature set")
    ap.add_argument("--sample", type=int, default=2000, help="HealthConfig.sample: images whose grids the check reads")
    ap.add_argument("--backfill", type=int, default=5000, help="newest images committed after the first health version")
    ap.add_argument("--shard-images", type=int, default=0, help="0: the store's choice (64 for 768x37x37)")
    ap.add_argument("--rank-images", type=int, default=256, help="HealthConfig.rank_images")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warm", action="store_true", help="leave the page cache as it is (default: every case reads from disk)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    res = run(a.n, a.sample, a.backfill, shard_images=a.shard_images, rank_images=a.rank_images, reps=a.reps, warm=a.warm)
    return finish("health", res, a.out)


if __name__ == "__main__":
    raise SystemExit(main())
