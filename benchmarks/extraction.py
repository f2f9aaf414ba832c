"""``radstore extract``'s engine against the pure forward pass.

``featurestore.extract.extract_group`` (what each task of ``radstore extract`` runs: decode
and preprocess in a DataLoader worker, forward, float16 cast, shard writes and commits, into
a fresh store) against ``encoder.embed`` on the same images already decoded and preprocessed
in memory, same model and batch size, rounds interleaved. Encoders: the ``pixels`` control
(at three sizes: the growth check) and ``random-vit``, the real-size ViT-B/14 at 518 with
random weights (one size: ~2-4 s per image on 2 cores).

The cohort is 16 synthetic radiographs (DICOM and PNG, 512-1024 px); a manifest of ``n``
rows cycles over them with distinct image_ids, so every row is decoded and embedded anew
without synthesising hundreds of images. Also reported: decoding + preprocessing alone, in
one process (what a DataLoader worker does per image), to show which stage bounds ``pixels``.

Run alone: ``.venv/bin/python -m benchmarks.extraction [--pixels-sizes 16 48 144 --vit-n 4]``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks.common import Row, compare, finish, rate_row, scratch_dir, speedups, with_ratio
from featurestore.extract import ExtractConfig, encoder_for, extract_group
from featurestore.imageio import read_image
from featurestore.manifest import load_manifest
from featurestore.store import Store
from featurestore.synth.cohort import SynthConfig, synthesize

STAGE = "3 extraction"
DISTINCT = 16


def cycled_manifest(cohort_manifest: Path, n: int) -> Path:
    """A manifest of ``n`` rows beside the cohort's, cycling over its images with new ids."""
    t = pq.read_table(cohort_manifest, columns=["image_id", "path", "format"])
    t = t.take(pa.array(np.arange(n) % t.num_rows))
    t = t.set_column(0, "image_id", pa.array([f"bench-{i:06d}" for i in range(n)]))
    out = cohort_manifest.parent / f"manifest-{n}.parquet"
    pq.write_table(t, out)
    return out


def run(pixels_sizes=(16, 48, 144), vit_n: int = 4, vit_batch: int = 2, pixels_batch: int = 16, reps: int = 3) -> dict:
    """Time ``extract_group`` against the forward pass for each (encoder, size) of the plan, in a
    scratch directory removed afterwards; ``vit_n=0`` leaves the ViT out."""
    root = scratch_dir("extract")
    rows: list[Row] = []
    details: dict = {"torch_threads": torch.get_num_threads()}
    try:
        cohort = synthesize(root / "cohort", SynthConfig(n=DISTINCT, seed=0), progress=False)
        m = load_manifest(str(cohort))
        paths = [m.resolve(p) for p in m.table.column("path").to_pylist()]
        plan = [("pixels", n, pixels_batch) for n in pixels_sizes] + ([("random-vit", vit_n, vit_batch)] if vit_n else [])
        for name, n, bs in plan:
            manifest = cycled_manifest(Path(cohort), n)
            ids = [f"bench-{i:06d}" for i in range(n)]
            cfg = ExtractConfig(name, weights=None if name == "pixels" else "random", batch_size=bs, progress=False)
            enc = encoder_for(cfg)  # built once (cached per process), outside the timings
            x = torch.stack([enc.preprocessing(read_image(p).pixels) for p in paths])
            x = x[torch.arange(n) % len(paths)].contiguous()
            store_dir = root / f"store-{name}"

            def forward():
                with torch.inference_mode():
                    for k in range(0, n, bs):
                        enc.embed(x[k : k + bs])

            def extract():
                extract_group(str(manifest), Store.open(str(store_dir), create=True), cfg, ids)

            def decode():  # as a DataLoader worker runs it: one torch thread
                threads = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    for i in range(n):
                        enc.preprocessing(read_image(paths[i % len(paths)]).pixels)
                finally:
                    torch.set_num_threads(threads)

            cases = {"forward": forward, "extract": extract}
            if name == "random-vit" or n == sorted(pixels_sizes)[len(pixels_sizes) // 2]:
                cases["decode"] = decode
            if name == "pixels":
                extract()  # warm-up: first-call costs (a random-vit run is long enough to absorb them)
            t = compare(cases, reps, setup={"extract": lambda: shutil.rmtree(store_dir, ignore_errors=True)})
            details[f"{name}-{n}"] = {"batch_size": bs, "seconds": t, "grid": list(enc.grid)}
            label = f"{name} (batch {bs})"
            rows.append(rate_row(STAGE, f"{label}: forward on preloaded tensors", n, t["forward"]))
            sp = speedups(t["forward"], t["extract"])
            target, met = (">= 0.9x", sp[0] >= 0.9) if name == "random-vit" else ("", None)
            rows.append(
                with_ratio(
                    rate_row(STAGE, f"{label}: radstore extract (decode+forward+write)", n, t["extract"]), sp, "forward", target, met
                )
            )
            if "decode" in t:
                rows.append(
                    with_ratio(
                        rate_row(STAGE, f"{label}: decode + preprocess alone, 1 thread", n, t["decode"]),
                        speedups(t["forward"], t["decode"]),
                        "forward",
                    )
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"stage": STAGE, "reps": reps, "distinct_images": DISTINCT, "rows": rows, "details": details}


def main(argv: list[str] | None = None) -> int:
    """Run this stage alone from the command line; prints its table, writes its results file, exits 0."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pixels-sizes", type=int, nargs="+", default=[16, 48, 144])
    ap.add_argument("--vit-n", type=int, default=4, help="images for random-vit (0: skip it)")
    ap.add_argument("--vit-batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    res = run(a.pixels_sizes, a.vit_n, a.vit_batch, reps=a.reps)
    return finish("extraction", res, a.out)


if __name__ == "__main__":
    raise SystemExit(main())
