"""A small trained grid whose data can be changed: the known inputs of the lineage and diff tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.extract import ExtractConfig, extract
from featurestore.ingest import ingest
from featurestore.store import Store
from featurestore.synth.cohort import SynthConfig, synthesize
from heads.config import TrainConfig
from heads.train import train

COHORT = SynthConfig(n=40, seed=3, min_side=256, max_side=320, split=(0.5, 0.25, 0.25))
GRID = [("pneumothorax-cls", "linear"), ("ctr-reg", "linear"), ("heart-seg", "linear")]


def configs(**kw) -> list[TrainConfig]:
    """The grid's training configs (fast: L-BFGS probes, two epochs for the mask head)."""
    common = dict(max_epochs=2, min_epochs=1, patience=1, progress=False, target_size=16, solver="lbfgs", device="cpu")
    return [TrainConfig(task=t, head=h, **{**common, **kw}) for t, h in GRID]


def build(root: Path, encoder: str = "pixels", n: int = COHORT.n) -> tuple[Path, Store, str, dict[tuple[str, str], str]]:
    """(manifest, store, feature set id, run id per (task, head)) of a fresh grid under ``root``."""
    manifest = synthesize(root / "cohort", dataclasses.replace(COHORT, n=n), progress=False)
    store = Store.open(str(root / "store"), create=True)
    ingest(str(manifest), store, progress=False)
    fsid = extract(str(manifest), store, ExtractConfig(encoder, progress=False, num_workers=0)).feature_set_id
    runs = {(c.task, c.head): train(store, fsid, c).run_id for c in configs()}
    return manifest, store, fsid, runs


def edit_manifest(manifest: Path, column: str, values: dict[str, object]) -> None:
    """Set ``column`` of the rows of ``values``' image ids, in place."""
    t = pq.read_table(manifest)
    col = t.column(column).to_pylist()
    for i, image_id in enumerate(t.column("image_id").to_pylist()):
        if image_id in values:
            col[i] = values[image_id]
    pq.write_table(t.set_column(t.schema.get_field_index(column), column, pa.array(col, t.schema.field(column).type)), manifest)
