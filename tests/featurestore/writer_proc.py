"""A writer process for the fault and concurrency tests (run with ``python -m``).

Writes the oracle embeddings (tests.conftest.embedding_for) of image ids ``--start..--stop``
into one feature set. ``--kill-at-commit K`` SIGKILLs the process at its K-th commit, after
the shard's grids were written and before its cls part is: the worst moment.
``--sleep`` pauses between batches so a test can kill it at a random point.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from featurestore.featureset import FeatureSet, FeatureSetSpec
from featurestore.store import Store
from tests.oracle import batch_for


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--options", default="null")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--prefix", default="img")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--stop", type=int, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--kill-at-commit", type=int, default=0)
    ap.add_argument("--sleep", type=float, default=0.0)
    a = ap.parse_args()
    store = Store.open(a.store, create=True, storage_options=json.loads(a.options))
    fs = store.create_feature_set(FeatureSetSpec.from_json(json.loads(a.spec)))
    if a.kill_at_commit:
        original = FeatureSet.commit_cls_part
        count = {"n": 0}

        def dying_commit(self, shard, table):
            count["n"] += 1
            if count["n"] == a.kill_at_commit:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, shard, table)

        FeatureSet.commit_cls_part = dying_commit
    ids = [f"{a.prefix}{i:04d}" for i in range(a.start, a.stop)]
    with fs.writer() as w:
        for k in range(0, len(ids), a.batch):
            w.write(ids[k : k + a.batch], *batch_for(ids[k : k + a.batch]))
            print(f"wrote {k + a.batch}", flush=True)
            if a.sleep:
                time.sleep(a.sleep)
    print(f"done written={w.written} skipped={w.skipped}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
