"""What a run trained and was tested on, as content: the data half of a run's identity.

A run is reused only when its training config, its feature set and this lineage all match:
every labelled image_id with its split (the fold assignment, for cross-validation), its label
(or, for a mask task, the sha256 of its mask file's bytes). A relabelled image, an edited mask,
a patient moved to another split or a new labelled image changes the lineage of exactly the
runs whose task labels it, so those retrain and nothing else does. The table is stored with
the run (``lineage.parquet``), so ``radstore diff`` can say which images changed, not only that
something did.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from featurestore.imageio import read_bytes, sha256_of
from featurestore.layout.schemas import LINEAGE_SCHEMA
from heads.data import SPLITS, Labels


def mask_hashes(uris: list[str]) -> list[str]:
    """sha256 of each mask file's bytes (threads: reading is I/O and hashing releases the GIL)."""
    with ThreadPoolExecutor(8) as ex:
        return list(ex.map(lambda u: sha256_of(read_bytes(u)), uris))


def lineage_table(labels: Labels, splits: dict[str, np.ndarray], masks: list[str] | None = None) -> pa.Table:
    """One row per image a run uses: image_id, split, label (null for a mask task), mask_sha256
    (null for a global task), sorted by split then image_id. ``masks``: the mask hashes in
    ``labels`` order, when the caller has them already."""
    if labels.mask_uris is not None and masks is None:
        masks = mask_hashes(labels.mask_uris)
    rows = []
    for split in SPLITS:
        for i in splits.get(split, []):
            rows.append(
                {
                    "image_id": labels.image_ids[i],
                    "split": split,
                    "label": None if masks is not None else float(labels.values[i]),
                    "mask_sha256": masks[i] if masks is not None else None,
                }
            )
    rows.sort(key=lambda r: (SPLITS.index(r["split"]), r["image_id"]))
    return pa.Table.from_pylist(rows, schema=LINEAGE_SCHEMA)


def data_hash(table: pa.Table, feature_set_id: str) -> str:
    """The content hash of a lineage table and the feature set it reads: what :func:`find_run`
    compares. Labels are hashed by their float64 ``repr``, so 1 and 1.0 agree and any change of
    value does not."""
    h = hashlib.sha256(f"feature_set {feature_set_id}\n".encode())
    cols = [table.column(c).to_pylist() for c in ("split", "image_id", "label", "mask_sha256")]
    for split, image_id, label, mask in zip(*cols):
        h.update(f"{split}\t{image_id}\t{'' if label is None else repr(float(label))}\t{mask or ''}\n".encode())
    return h.hexdigest()[:16]
