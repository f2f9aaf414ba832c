"""Store writes against one ``.npy`` per image (float32) and a plain memory copy.

Writing ``n`` grids of 768x37x37 through the store with the default dtype and codec
(float16, no compressor, shards of 64 images), the [CLS] Parquet part and the commit
included, against (a) ``np.save`` of each float32 grid to its own file plus one ``cls.npy``,
and (b) a plain in-memory copy of the same float32 payload (the ceiling). Rounds are
interleaved and the page cache is flushed (``sync``, untimed) before each timed write, so one
case's dirty pages never slow the next. The grids come from a pool of 64 distinct random
grids, reused: the bytes written are what they would be, without holding ``n`` grids in RAM.

At the middle size, for the record: both writes until the bytes are on the disk (``sync``
inside the timing: the disk, ~0.35 GiB/s here, is then the limit, and bytes count), float16 input (what extraction hands the writer, cast on
the device), the same shards written through zarr (the previous write path), one chunk object
per image (``sharded=False``), and random batch reads.

Run alone: ``.venv/bin/python -m benchmarks.store_io [--sizes 64 256 1024]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import Row, compare, du, finish, rate_row, scratch_dir, speedups, with_ratio
from featurestore.featureset import FeatureSetSpec
from featurestore.store import Store

STAGE = "1 store write"
GRID = (768, 37, 37)
POOL = 64


def _pool(grid=GRID, pool=POOL):
    rng = np.random.default_rng(0)
    return rng.standard_normal((pool, *grid), dtype=np.float32), rng.standard_normal((pool, grid[0]), dtype=np.float32)


def write_npy(d: Path, ids: list[str], patches: np.ndarray, cls: np.ndarray) -> None:
    """The baseline layout: one float32 .npy per image (as the study's code and eva), plus cls.npy."""
    d.mkdir(parents=True)
    p = len(patches)
    for i, image_id in enumerate(ids):
        np.save(d / f"{image_id}.npy", patches[i % p])
    np.save(d / "cls.npy", cls[np.arange(len(ids)) % p])


def write_store(d: Path, ids: list[str], patches: np.ndarray, cls: np.ndarray, batch: int = 16, plain: bool = True, **spec_kw) -> None:
    """Through the public API: open/create the store and feature set, write in batches, commit."""
    st = Store.open(str(d), create=True)
    c = patches.shape[1]
    fs = st.create_feature_set(FeatureSetSpec("bench", "none", tuple(patches.shape[1:]), c, **spec_kw))
    p = len(patches)
    # plain=False: the previous write path, zarr's sharding codec (zarrs pipeline)
    with fs.writer(direct=None if plain else False) as w:
        for k in range(0, len(ids), batch):
            a = k % p  # the pool is a multiple of the batch: contiguous slices
            m = min(batch, len(ids) - k)
            w.write(ids[k : k + m], cls[a : a + m], patches[a : a + m])


def run(sizes=(64, 256, 1024), reps: int = 3, batch: int = 16, sync: bool = True) -> dict:
    """Time store writes against ``np.save`` per image and a memory copy at each size (the extra
    cases at the middle size), plus bytes per image; all files go to a scratch directory."""
    patches, cls = _pool()
    patches16 = torch.from_numpy(patches).half()  # what extraction hands the writer: cast on the device
    dst = np.empty_like(patches)
    root = scratch_dir("store")
    rows: list[Row] = []
    details: dict = {}
    middle = sorted(sizes)[len(sizes) // 2]

    def fresh(d: Path):
        def go():
            shutil.rmtree(d, ignore_errors=True)
            if sync:
                os.sync()

        return go

    try:
        for n in sizes:
            ids = [f"img{i:07d}" for i in range(n)]

            def memcpy():
                for k in range(0, n, POOL):
                    m = min(POOL, n - k)
                    np.copyto(dst[:m], patches[:m])

            cases = {
                "memory copy": memcpy,
                "npy": lambda: write_npy(root / "npy", ids, patches, cls),
                "store": lambda: write_store(root / "store", ids, patches, cls, batch),
            }
            setup = {"npy": fresh(root / "npy"), "store": fresh(root / "store")}
            if n == middle:

                def durable(fn):
                    def go():
                        fn()
                        os.sync()  # until the bytes are on the disk, not just in the page cache

                    return go

                cases["npy durable"] = durable(lambda: write_npy(root / "npy-d", ids, patches, cls))
                cases["store durable"] = durable(lambda: write_store(root / "store-d", ids, patches, cls, batch))
                setup["npy durable"] = fresh(root / "npy-d")
                setup["store durable"] = fresh(root / "store-d")
                cases["store fp16 input"] = lambda: write_store(root / "fp16", ids, patches16, cls, batch)
                setup["store fp16 input"] = fresh(root / "fp16")
                cases["store via zarr"] = lambda: write_store(root / "zarr", ids, patches, cls, batch, plain=False)
                cases["store unsharded"] = lambda: write_store(root / "unsharded", ids, patches, cls, batch, sharded=False)
                cases["store int8"] = lambda: write_store(root / "int8", ids, patches16, cls, batch, dtype="int8")
                setup["store int8"] = fresh(root / "int8")
                setup["store via zarr"] = fresh(root / "zarr")
                setup["store unsharded"] = fresh(root / "unsharded")
            t = compare(cases, reps, setup)
            size = {
                k: du(root / d) / n
                for k, d in (
                    ("npy", "npy"),
                    ("store", "store"),
                    ("store via zarr", "zarr"),
                    ("store unsharded", "unsharded"),
                    ("store int8", "int8"),
                )
                if (root / d).exists()
            }
            details[n] = {"seconds": t, "bytes_per_image": size}
            speed = speedups(t["npy"], t["store"])
            rows.append(rate_row(STAGE, "npy per image, float32 (baseline a)", n, t["npy"]))
            rows.append(
                with_ratio(
                    rate_row(STAGE, "memory copy, float32 (ceiling b)", n, t["memory copy"]), speedups(t["npy"], t["memory copy"]), "npy"
                )
            )
            rows.append(
                with_ratio(
                    rate_row(STAGE, "radstore write (fp16, shards of 64, cls + commit)", n, t["store"]),
                    speed,
                    "npy",
                    ">= 1.5x",
                    speed[0] >= 1.5,
                )
            )
            rows.append(
                with_ratio(
                    rate_row(STAGE, "radstore write vs the ceiling", n, t["store"]), speedups(t["memory copy"], t["store"]), "memory copy"
                )
            )
            if n == max(sizes):  # the same at every size
                b = size["store"] / size["npy"]
                grids = GRID[0] * GRID[1] * GRID[2] * 2
                rows.append(
                    Row(
                        STAGE,
                        f"radstore bytes per image [grids {grids:,} B + cls part and index {size['store'] - grids:,.0f} B]",
                        n,
                        size["store"],
                        "B/img",
                        size["store"],
                        size["store"],
                        "npy bytes",
                        b,
                        b,
                        b,
                        "<= 0.5x",
                        b <= 0.5,
                        extra={"npy_bytes_per_image": size["npy"]},
                    )
                )
            if n == middle:
                rows.append(rate_row(STAGE, "npy per image, float32, then sync (durable)", n, t["npy durable"]))
                durable = speedups(t["npy durable"], t["store durable"])
                rows.append(
                    with_ratio(
                        rate_row(STAGE, "radstore write, then sync (durable)", n, t["store durable"]),
                        durable,
                        "npy durable",
                        ">= 1.0x",
                        durable[0] >= 1.0,
                    )
                )
                fp16 = speedups(t["npy"], t["store fp16 input"])
                rows.append(
                    with_ratio(
                        rate_row(STAGE, "radstore write, float16 input (extraction casts on the device)", n, t["store fp16 input"]),
                        fp16,
                        "npy",
                        ">= 1.5x",
                        fp16[0] >= 1.5,
                    )
                )
                rows.append(
                    with_ratio(
                        rate_row(STAGE, "same shards written through zarr (before)", n, t["store via zarr"]),
                        speedups(t["npy"], t["store via zarr"]),
                        "npy",
                    )
                )
                rows.append(
                    with_ratio(
                        rate_row(STAGE, "one chunk object per image (sharded=False)", n, t["store unsharded"]),
                        speedups(t["npy"], t["store unsharded"]),
                        "npy",
                    )
                )
                rows += _int8_rows(n, t, size)
                rows += _random_reads(root, ids, reps, batch)
            for d in ("npy", "store", "fp16", "zarr", "unsharded", "npy-d", "store-d", "int8"):
                shutil.rmtree(root / d, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"stage": STAGE, "sizes": list(sizes), "reps": reps, "batch": batch, "grid": list(GRID), "rows": rows, "details": details}


def _int8_rows(n: int, t: dict[str, list[float]], size: dict[str, float]) -> list[Row]:
    """The int8 table: its write rate (float16 input, quantised by the writer) against the float32
    ``.npy`` baseline and the float16 store, and its bytes per image against float32."""
    b = size["store int8"] / size["npy"]
    return [
        with_ratio(
            rate_row(STAGE, "radstore write, int8 grids (float16 input, quantised per image and channel)", n, t["store int8"]),
            speedups(t["npy"], t["store int8"]),
            "npy",
        ),  # fmt: skip
        with_ratio(
            rate_row(STAGE, "int8 write vs float16 write (float16 input both)", n, t["store int8"]),
            speedups(t["store fp16 input"], t["store int8"]),
            "float16 store",
        ),  # fmt: skip
        Row(
            STAGE,
            "radstore int8 bytes per image [codes + scales + cls part and index]",
            n,
            size["store int8"],
            "B/img",
            size["store int8"],
            size["store int8"],
            "npy bytes",
            b,
            b,
            b,
            "<= 0.27x",
            b <= 0.27,
            extra={"npy_bytes_per_image": size["npy"]},
        ),  # fmt: skip
    ]


def _random_reads(root: Path, ids: list[str], reps: int, batch: int) -> list[Row]:
    """Random batches of 16 through ``FeatureSet.patches`` against np.load of the same images."""
    n = len(ids)
    fs = Store.open(str(root / "store")).feature_sets()[0]
    fs.index()
    order = list(np.random.default_rng(1).permutation(ids))
    out = np.empty((batch, *GRID), np.float16)

    def store_read():
        for k in range(0, n, batch):
            b = order[k : k + batch]
            fs.patches(b, out=out[: len(b)])

    def npy_read():
        for k in range(0, n, batch):
            np.stack([np.load(root / "npy" / f"{i}.npy") for i in order[k : k + batch]])

    t = compare({"npy": npy_read, "store": store_read}, reps)
    return [
        rate_row("1b random read", "npy per image, batches of 16", n, t["npy"]),
        with_ratio(rate_row("1b random read", "radstore fs.patches, batches of 16", n, t["store"]), speedups(t["npy"], t["store"]), "npy"),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run this stage alone from the command line; prints its table, writes its results file, exits 0."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-sync", action="store_true", help="do not flush the page cache between timed writes")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    a = ap.parse_args(argv)
    res = run(a.sizes, a.reps, sync=not a.no_sync)
    return finish("store_io", res, a.out)


if __name__ == "__main__":
    raise SystemExit(main())
