"""Training-read throughput: the streaming loader against embeddings in RAM and per-image .npy.

Three figures on the same random 768x37x37 grids, side by side in one run:
- loader only: images/s of one shuffled epoch through :class:`heads.data.StreamingLoader`
  (store, shard by shard), of the same loader with ``in_memory=True``, and of reading one
  ``.npy`` file per image in shuffled order;
- one training epoch of the linear segmentation head (the cheapest compute, so the most
  sensitive to I/O) streaming from the store against the same epoch from RAM.

Run: ``.venv/bin/python -m benchmarks.training --n 256``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import median_time, write_results
from featurestore.featureset import FeatureSetSpec
from featurestore.store import Store
from heads.data import StreamingLoader
from heads.linear import LinearSegProbe


def run(n: int = 256, reps: int = 3, grid=(768, 37, 37), batch: int = 16, target: int = 64) -> dict:
    root = Path(tempfile.mkdtemp(prefix="radstore-bench-train-"))
    rng = np.random.default_rng(0)
    ids = [f"img{i:06d}" for i in range(n)]
    store = Store.open(str(root / "store"), create=True)
    fs = store.create_feature_set(FeatureSetSpec("bench", "none", grid, grid[0]))
    (root / "npy").mkdir()
    with fs.writer() as w:
        for k in range(0, n, batch):
            p = rng.standard_normal((min(batch, n - k), *grid), dtype=np.float32)
            w.write(ids[k : k + batch], rng.standard_normal((len(p), grid[0]), dtype=np.float32), p)
            for i, x in zip(ids[k : k + batch], p):
                np.save(root / "npy" / f"{i}.npy", x)
    y = (rng.random((n, target, target)) > 0.9).astype(np.float32)
    stream = StreamingLoader(fs, ids, y, batch_size=batch, shuffle=True, need_global=False, need_patches=True)
    memory = StreamingLoader(fs, ids, y, batch_size=batch, shuffle=True, need_global=False, need_patches=True, in_memory=True)

    def drain(loader):
        for _ in loader:
            pass

    def npy_epoch():
        order = rng.permutation(n)
        for k in range(0, n, batch):
            np.stack([np.load(root / "npy" / f"{ids[i]}.npy") for i in order[k : k + batch]])

    torch.manual_seed(0)
    head = LinearSegProbe(grid[0], target)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-4)

    def train_epoch(loader):
        for b in loader:
            loss = F.binary_cross_entropy_with_logits(head(None, b.patches), b.y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    res = {
        "loader_stream": median_time(lambda: drain(stream), reps),
        "loader_in_memory": median_time(lambda: drain(memory), reps),
        "npy_shuffled_read": median_time(npy_epoch, reps),
        "epoch_stream": median_time(lambda: train_epoch(stream), reps),
        "epoch_in_memory": median_time(lambda: train_epoch(memory), reps),
    }
    shutil.rmtree(root, ignore_errors=True)
    out = {k: {"seconds": v, "images_per_s": n / v[0]} for k, v in res.items()}
    out["ratios"] = {
        "loader_stream_vs_npy": res["npy_shuffled_read"][0] / res["loader_stream"][0],
        "loader_stream_vs_in_memory": res["loader_in_memory"][0] / res["loader_stream"][0],
        "epoch_stream_over_in_memory": res["epoch_stream"][0] / res["epoch_in_memory"][0],
    }
    return {"n": n, "grid": list(grid), "batch": batch, "reps": reps, "results": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    res = run(a.n, a.reps)
    for k, v in res["results"].items():
        if k == "ratios":
            continue
        med, lo, hi = v["seconds"]
        print(f"{k:22s} {v['images_per_s']:8.1f} img/s   {med:.2f} s ({lo:.2f}-{hi:.2f})")
    for k, v in res["results"]["ratios"].items():
        print(f"{k:32s} {v:.2f}")
    print(f"wrote {write_results('training', res, a.out)}")


if __name__ == "__main__":
    main()
