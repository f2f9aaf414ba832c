"""The shuffled streaming training loader against RAM and per-image .npy reads.

On the same 768x37x37 grids (float16 in the store, float32 in the .npy files), side by side:

- one shuffled epoch of :class:`heads.data.StreamingLoader` streaming from the store (shard
  by shard, through the shuffle buffer, float32 batches of 16);
- the same loader with ``in_memory=True``: the split held in RAM, indexed (the ceiling);
- ``np.load`` of one ``.npy`` per image in shuffled order, stacked into float32 batches of 16;
- at one size, a training epoch of the linear segmentation head (the cheapest head, so the
  most sensitive to I/O) streaming from the store against the same epoch from RAM.

Run alone: ``.venv/bin/python -m benchmarks.training [--sizes 64 256 1024]``.
"""

from __future__ import annotations

import argparse
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import Row, compare, finish, rate_row, scratch_dir, speedups, summary, with_ratio
from benchmarks.store_io import GRID, _pool, write_npy, write_store
from featurestore.store import Store
from heads.data import StreamingLoader
from heads.linear import LinearSegProbe

STAGE = "2 training read"


def run(sizes=(64, 256, 1024), epoch_size: int = 256, reps: int = 3, batch: int = 16, target: int = 64) -> dict:
    """Time a shuffled epoch of the streaming loader against RAM and per-image ``.npy`` reads at
    each size, and the linear head's epoch at ``epoch_size``; ``target`` is the mask side."""
    patches, cls = _pool()
    rows: list[Row] = []
    details: dict = {}
    root = scratch_dir("train")
    try:
        for n in sizes:
            ids = [f"img{i:07d}" for i in range(n)]
            write_store(root / "store", ids, patches, cls, batch)
            write_npy(root / "npy", ids, patches, cls)
            os.sync()  # untimed: no writeback of these files competes with the reads below
            fs = Store.open(str(root / "store")).feature_sets()[0]
            y = (np.random.default_rng(0).random((n, target, target)) > 0.9).astype(np.float32)
            kw = dict(batch_size=batch, shuffle=True, need_global=False, need_patches=True)
            stream = StreamingLoader(fs, ids, y, **kw)
            memory = StreamingLoader(fs, ids, y, in_memory=True, **kw)
            rng = np.random.default_rng(1)

            def drain(loader):
                for _b in loader:
                    pass

            def npy_epoch():
                order = rng.permutation(n)
                for k in range(0, n, batch):
                    torch.from_numpy(np.stack([np.load(root / "npy" / f"{ids[i]}.npy") for i in order[k : k + batch]]))

            t = compare({"npy": npy_epoch, "stream": lambda: drain(stream), "memory": lambda: drain(memory)}, reps)
            details[n] = {"seconds": t, "max_buffered": stream.max_buffered}
            rows.append(rate_row(STAGE, "npy per image, shuffled, float32 batches", n, t["npy"]))
            rows.append(rate_row(STAGE, "loader in RAM (in_memory=True, ceiling)", n, t["memory"]))
            sp = speedups(t["npy"], t["stream"])
            rows.append(with_ratio(rate_row(STAGE, "loader streaming from the store", n, t["stream"]), sp, "npy", ">= 1.0x", sp[0] >= 1.0))
            rows.append(
                with_ratio(rate_row(STAGE, "loader streaming vs in RAM", n, t["stream"]), speedups(t["memory"], t["stream"]), "in RAM")
            )
            if n == epoch_size:
                rows += _epochs(stream, memory, n, reps, target, details)
            stream = memory = None  # free the in-RAM copy before the next size
            shutil.rmtree(root / "store", ignore_errors=True)
            shutil.rmtree(root / "npy", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "stage": STAGE,
        "sizes": list(sizes),
        "epoch_size": epoch_size,
        "reps": reps,
        "batch": batch,
        "grid": list(GRID),
        "rows": rows,
        "details": details,
    }


def _epochs(stream, memory, n: int, reps: int, target: int, details: dict) -> list[Row]:
    torch.manual_seed(0)
    head = LinearSegProbe(GRID[0], target)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-4)

    def train_epoch(loader):
        for b in loader:
            loss = F.binary_cross_entropy_with_logits(head(None, b.patches), b.y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    train_epoch(memory)  # warm-up: first-call allocations of autograd and the optimiser
    t = compare({"memory": lambda: train_epoch(memory), "stream": lambda: train_epoch(stream)}, reps)
    details[f"epoch_{n}"] = {"seconds": t}
    over = summary([s / m for s, m in zip(t["stream"], t["memory"])])
    row = rate_row(STAGE, "linear seg head epoch, streaming (time / time in RAM)", n, t["stream"])
    row.ratio, row.ratio_lo, row.ratio_hi = over
    row.baseline, row.target, row.met = "epoch in RAM", "<= 1.1x", over[0] <= 1.1
    return [rate_row(STAGE, "linear seg head epoch, in RAM", n, t["memory"]), row]


def main(argv: list[str] | None = None) -> int:
    """Run this stage alone from the command line; prints its table, writes its results file, exits 0."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--epoch-size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    res = run(a.sizes, a.epoch_size, a.reps)
    return finish("training", res, a.out)


if __name__ == "__main__":
    raise SystemExit(main())
