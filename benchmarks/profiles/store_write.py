"""Where the store write's time goes: 512 float32 grids of 768x37x37 through ``FeatureSet.writer()``.

Run under py-spy (installed separately: ``pip install py-spy``)::

    py-spy record --threads --native -r 500 --format raw -o store_write.raw -- \
        .venv/bin/python benchmarks/profiles/store_write.py
    .venv/bin/python benchmarks/profiles/store_write.py --summarise store_write.raw

2026-11-29 on this machine kind (4,209 samples of the write path, imports left out): 43.7%
in fbgemm's FloatToFloat16 (the float32 -> float16 cast), 28.2% in torch's vectorised sum
(the NaN/Inf check of the float32 input), ~3% in libc memcpy (the page-cache write, mostly on
the writer thread), the rest Python and the commit. The store is CPU-bound on passes over its float32 input, which is why
it falls short of 1.5x ``np.save`` when a core is busy elsewhere (benchmarks/README.md).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def write(n: int = 512, batch: int = 16) -> float:
    """Write ``n`` float32 grids through a fresh store in batches of ``batch``; returns images per
    second (the imports stay outside the timed part, so a profile shows the write path)."""
    import numpy as np

    from featurestore.featureset import FeatureSetSpec
    from featurestore.store import Store

    pool = np.random.default_rng(0).standard_normal((64, 768, 37, 37)).astype(np.float32)
    cls = np.random.default_rng(1).standard_normal((batch, 768)).astype(np.float32)
    store = Store.open(tempfile.mkdtemp() + "/s", create=True)
    fs = store.create_feature_set(FeatureSetSpec(encoder="bench", weights_fingerprint="x", grid=(768, 37, 37), global_dim=768))
    t = time.perf_counter()
    with fs.writer() as w:
        for b in range(n // batch):
            start = (b * batch) % 64
            w.write([f"img-{b * batch + i}" for i in range(batch)], cls, pool[start : start + batch])
    return n / (time.perf_counter() - t)


def summarise(raw: str, top: int = 12) -> None:
    """Leaf frames of the samples inside the write path (py-spy --format raw)."""
    leaf, total = Counter(), 0
    for line in open(raw):
        stack, n = line.rstrip().rsplit(" ", 1)
        frames = stack.split(";")
        if any("_bootstrap" in f for f in frames) or not any("featurestore/featureset/" in f for f in frames):
            continue
        total += int(n)
        leaf[frames[-1][:100]] += int(n)
    print(f"{total} samples in the write path")
    for k, v in leaf.most_common(top):
        print(f"{100 * v / total:5.1f}%  {k}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--summarise"]:
        summarise(sys.argv[2])
    else:
        print(f"{write():.0f} img/s")
