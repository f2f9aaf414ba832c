"""Where the store write's time goes: 512 float32 (or float16) grids of 768x37x37 through ``FeatureSet.writer()``.

Run under py-spy (installed separately: ``pip install py-spy``)::

    py-spy record --threads --native -r 100 --format raw -o store_write.raw -- \
        .venv/bin/python benchmarks/profiles/store_write.py
    .venv/bin/python benchmarks/profiles/store_write.py --summarise store_write.raw

(A higher rate stops the process often enough to distort the writes it samples.) Add ``--half``
to write float16 input (what extraction hands the writer). The summary splits
the samples into the caller's write loop and the writer's background threads, and marks samples
of a thread blocked on a lock or queue as waiting (py-spy counts those as active). Before and
after profiles, with their shares, are in benchmarks/README.md ("Writer throughput").
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def write(n: int = 512, batch: int = 16, half: bool = False) -> float:
    """Write ``n`` grids (float32, or float16 with ``half``) through a fresh store in batches of
    ``batch``; returns images per second (the imports stay outside the timed part, and
    :func:`summarise` keeps only the write loop and the writer's thread)."""
    import numpy as np
    import torch

    from featurestore.featureset import FeatureSetSpec
    from featurestore.store import Store

    pool = np.random.default_rng(0).standard_normal((64, 768, 37, 37), dtype=np.float32)
    pool = torch.from_numpy(pool).half() if half else pool
    cls = np.random.default_rng(1).standard_normal((batch, 768)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="radstore-profile-") as d:
        store = Store.open(d + "/s", create=True)
        fs = store.create_feature_set(FeatureSetSpec(encoder="bench", weights_fingerprint="x", grid=(768, 37, 37), global_dim=768))
        t = time.perf_counter()
        with fs.writer() as w:
            for b in range(n // batch):
                start = (b * batch) % 64
                w.write([f"img-{b * batch + i}" for i in range(batch)], cls, pool[start : start + batch])
        return n / (time.perf_counter() - t)


#: Frames of the untimed setup and cleanup around the write loop, left out of the summary.
_SETUP = ("importlib", "standard_normal", "create_feature_set", "rmtree", "TemporaryDirectory")
#: Frames of a thread blocked on a lock, queue or condition (py-spy counts those as active).
_WAITS = ("PyThread_acquire_lock_timed", "pthread_cond_", "sem_wait", "futex")


def summarise(raw: str, top: int = 12) -> None:
    """Leaf frames of the samples of the write path (py-spy --threads --format raw): the caller's
    write loop (the ``with fs.writer()`` block of :func:`write`) and the writer's background
    threads (named ``radstore-*``), each share of all those samples, per thread."""
    leaf, threads, total = Counter(), Counter(), 0
    for line in open(raw):
        stack, n = line.rstrip().rsplit(" ", 1)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if ": " in frames[0] else frames[0]
        in_loop = thread == "MainThread" and any(re.match(r"write \(.*store_write\.py:(\d+)\)", f) for f in frames)
        in_loop = in_loop and not any(s in f for f in frames for s in _SETUP)
        if not (in_loop or thread.startswith("radstore-")):
            continue
        name = "caller" if thread == "MainThread" else "writer thread"
        if any(w in f for f in frames[-4:] for w in _WAITS):
            name += ", waiting"  # blocked on a lock or a queue: not CPU
        total += int(n)
        threads[name] += int(n)
        leaf[f"[{name}] {frames[-1][:100]}"] += int(n)
    print(f"{total} samples in the write path: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in threads.items()))
    for k, v in leaf.most_common(top):
        print(f"{100 * v / total:5.1f}%  {k}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--summarise"]:
        summarise(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 12)
    else:
        print(f"{write(half='--half' in sys.argv):.0f} img/s")
