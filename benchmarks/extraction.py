"""Extraction throughput against the pure forward pass of the same model and batch size.

``radstore extract``'s engine (decode, preprocess in a DataLoader worker, forward, commit) on a
synthetic cohort, against ``encoder.embed`` on the same images already preprocessed in memory,
measured side by side in one run. Target (issue #7): >= 0.9x the forward pass for the
real-size random ViT-B/14 at 518, i.e. decode and writes hidden behind compute.

Run: ``.venv/bin/python -m benchmarks.extraction`` (``--encoders pixels random-vit``).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from benchmarks.common import median_time, write_results
from featurestore.extract import ExtractConfig, encoder_for, extract_group
from featurestore.imageio import read_image
from featurestore.manifest import load_manifest
from featurestore.store import Store
from featurestore.synth.cohort import SynthConfig, synthesize

DEFAULT_N = {"pixels": 128, "random-vit": 16}



def run(encoders=("pixels", "random-vit"), reps: int = 3, batch_size: int = 8, workdir: str | None = None) -> dict:
    root = Path(workdir or tempfile.mkdtemp(prefix="radstore-bench-extract-"))
    n_max = max(DEFAULT_N.get(e, 32) for e in encoders)
    manifest = synthesize(root / "cohort", SynthConfig(n=n_max, seed=0), progress=False)
    m = load_manifest(str(manifest))
    out = {}
    for name in encoders:
        n = DEFAULT_N.get(name, 32)
        ids = m.table.column("image_id").to_pylist()[:n]
        weights = None if name == "pixels" else "random"  # real-size random weights
        cfg = ExtractConfig(name, weights=weights, batch_size=batch_size, progress=False, num_workers=1)
        enc = encoder_for(cfg)  # built once, outside the timings
        rows = {r["image_id"]: r for r in m.table.to_pylist()}
        x = torch.stack([enc.preprocessing(read_image(m.resolve(rows[i]["path"])).pixels) for i in ids])

        def forward():
            with torch.inference_mode():
                for k in range(0, n, batch_size):
                    enc.embed(x[k : k + batch_size])

        def full():
            d = root / f"store-{name}"
            shutil.rmtree(d, ignore_errors=True)
            extract_group(str(manifest), Store.open(str(d), create=True), cfg, ids)

        fwd = median_time(forward, reps)
        ext = median_time(full, reps)
        out[name] = {
            "images": n,
            "batch_size": batch_size,
            "forward_images_per_s": n / fwd[0],
            "extract_images_per_s": n / ext[0],
            "ratio_extract_vs_forward": fwd[0] / ext[0],
            "forward_seconds": fwd,
            "extract_seconds": ext,
            "grid": list(enc.grid),
        }
    shutil.rmtree(root, ignore_errors=True)
    return {"reps": reps, "torch_threads": torch.get_num_threads(), "results": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--encoders", nargs="+", default=["pixels", "random-vit"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    res = run(a.encoders, a.reps, a.batch_size)
    print(f"{'encoder':12s} {'grid':>12s} {'n':>4s} {'forward img/s':>14s} {'extract img/s':>14s} {'ratio':>6s}  spread extract s")
    for k, v in res["results"].items():
        lo, hi = v["extract_seconds"][1:]
        print(f"{k:12s} {'x'.join(map(str, v['grid'])):>12s} {v['images']:>4d} {v['forward_images_per_s']:14.2f} "
              f"{v['extract_images_per_s']:14.2f} {v['ratio_extract_vs_forward']:6.2f}  {lo:.2f}-{hi:.2f}")
    path = write_results("extraction", res, a.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
