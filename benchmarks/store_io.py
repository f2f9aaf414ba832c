"""Store write/read throughput against per-image .npy files and an in-memory copy, side by side.

Run: ``.venv/bin/python -m benchmarks.store_io --n 200`` (``make bench`` runs every benchmark).
Each figure is the median of ``--reps`` repetitions with min-max spread; ratios are against
baselines measured in the same run, since this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import median_time, write_results
from featurestore.featureset import FeatureSetSpec
from featurestore.store import Store



def run(n: int = 200, reps: int = 3, grid=(768, 37, 37), batch: int = 16, workdir: str | None = None) -> dict:
    rng = np.random.default_rng(0)
    c, h, w = grid
    patches = rng.standard_normal((n, c, h, w), dtype=np.float32)
    cls = rng.standard_normal((n, c), dtype=np.float32)
    ids = [f"img{i:06d}" for i in range(n)]
    payload_mb = patches.nbytes / 1e6  # float32 payload, the encoder's output
    root = Path(workdir or tempfile.mkdtemp(prefix="radstore-bench-"))
    results: dict[str, dict] = {}

    def record(name: str, t: tuple[float, float, float], nbytes: int | None = None) -> None:
        med, lo, hi = t
        results[name] = {
            "images_per_s": n / med,
            "mb_per_s_fp32_payload": payload_mb / med,
            "seconds_median": med,
            "seconds_min": lo,
            "seconds_max": hi,
            **({"bytes_per_image": nbytes / n} if nbytes is not None else {}),
        }

    # (b) the ceiling: a plain in-memory copy (with the float16 cast the store does)
    dst = np.empty((n, c, h, w), np.float16)
    record("memory copy (fp16 cast)", median_time(lambda: np.copyto(dst, patches, casting="same_kind"), reps))

    # (a) one .npy file per image, float32: the layout of the study's code and of eva
    def npy_write():
        d = root / "npy"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        for i, x in zip(ids, patches):
            np.save(d / f"{i}.npy", x)
        np.save(d / "cls.npy", cls)

    record("npy per image fp32", median_time(npy_write, reps), sum(f.stat().st_size for f in (root / "npy").iterdir()))

    def store_write(sharded: int):
        def go():
            d = root / f"store{sharded}"
            shutil.rmtree(d, ignore_errors=True)
            st = Store.open(str(d), create=True)
            fs = st.create_feature_set(FeatureSetSpec("bench", "none", grid, c, sharded=bool(sharded)))
            with fs.writer() as wr:
                for k in range(0, n, batch):
                    wr.write(ids[k : k + batch], cls[k : k + batch], patches[k : k + batch])

        return go

    for label, s in (("radstore sharded (default)", 1), ("radstore one chunk per image", 0)):
        t = median_time(store_write(s), reps)
        d = root / f"store{s}"
        record(f"{label} write", t, sum(f.stat().st_size for f in d.rglob("*") if f.is_file()))

    # reads: random order single images
    order = list(rng.permutation(ids))
    st = Store.open(str(root / "store1"))
    fs = st.feature_sets()[0]
    out = np.empty((batch, c, h, w), np.float16)

    def store_read():
        for k in range(0, n, batch):
            b = order[k : k + batch]
            fs.patches(b, out=out[: len(b)])

    def npy_read():
        for i in order:
            np.load(root / "npy" / f"{i}.npy")

    fs.index()
    record("radstore sharded random read (batches of 16)", median_time(store_read, reps))
    record("npy per image random read", median_time(npy_read, reps))
    st1 = Store.open(str(root / "store0"))
    fs1 = st1.feature_sets()[0]
    fs1.index()

    def store1_read():
        for k in range(0, n, batch):
            b = order[k : k + batch]
            fs1.patches(b, out=out[: len(b)])

    record("radstore chunked random read (batches of 16)", median_time(store1_read, reps))
    shutil.rmtree(root, ignore_errors=True)
    base_w = results["npy per image fp32"]["images_per_s"]
    base_r = results["npy per image random read"]["images_per_s"]
    for k, v in results.items():
        if "read" in k:
            v["ratio_vs_npy"] = v["images_per_s"] / base_r
        else:
            v["ratio_vs_npy"] = v["images_per_s"] / base_w
    return {"n": n, "grid": list(grid), "reps": reps, "batch": batch, "results": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    res = run(args.n, args.reps)
    print(f"{'benchmark':48s} {'img/s':>8s} {'MB/s*':>8s} {'x npy':>6s} {'spread s':>14s} {'B/img':>10s}")
    for k, v in res["results"].items():
        b = f"{v['bytes_per_image']:.0f}" if "bytes_per_image" in v else ""
        print(
            f"{k:48s} {v['images_per_s']:8.0f} {v['mb_per_s_fp32_payload']:8.0f} {v['ratio_vs_npy']:6.2f} "
            f"{v['seconds_min']:6.3f}-{v['seconds_max']:6.3f} {b:>10s}"
        )
    print("* MB/s of float32 payload (what the encoder emits), whatever the stored dtype")
    path = write_results("store_io", res, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
