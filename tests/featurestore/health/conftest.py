"""Feature sets with known geometry, written straight through the store's writer."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from featurestore import layout
from featurestore.featureset import FeatureSetSpec
from featurestore.store import Store


def register_images(store: Store, ids: list[str], splits: list[str], patients: list[str]) -> None:
    """Add ``ids`` to the image index with their split and patient (what the leakage audit joins)."""
    n = len(ids)
    now = layout.now_ms()
    store.append_images(pa.table({
        "image_id": ids, "patient_id": patients, "split": splits, "uri": [f"mem://{i}" for i in ids],
        "format": ["png"] * n, "sha256": ["0" * 64] * n, "size_bytes": [1] * n, "height": [8] * n, "width": [8] * n,
        "bits_stored": [8] * n, "photometric": ["MONOCHROME2"] * n, "ingested_at": [now] * n, "manifest": [None] * n,
        "bits_rule": [None] * n, "view_position": [None] * n, "manufacturer": [None] * n, "patient_sex": [None] * n,
        "patient_age": [None] * n,
    }).cast(layout.IMAGES_SCHEMA))  # fmt: skip


def write_set(store: Store, ids: list[str], globals_: np.ndarray, grids: np.ndarray, *, encoder: str = "synthetic",
              tag: str = "0", dtype: str = "float32") -> str:  # fmt: skip
    """A feature set of ``encoder`` holding exactly these embeddings; returns its id."""
    spec = FeatureSetSpec(encoder=encoder, weights_fingerprint=f"health-{tag}", grid=tuple(grids.shape[1:]),
                          global_dim=globals_.shape[1], dtype=dtype, shard_images=16)  # fmt: skip
    fs = store.create_feature_set(spec)
    with fs.writer() as w:
        for k in range(0, len(ids), 16):
            w.write(ids[k : k + 16], globals_[k : k + 16].astype(np.float32), grids[k : k + 16].astype(np.float32))
    return fs.id


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(str(tmp_path / "store"), create=True)
