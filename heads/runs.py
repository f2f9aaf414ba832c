"""Training runs in the store: ``runs/<run_id>/`` with head weights, config, curve, predictions.

A run is immutable and exists once its ``run.json`` exists (written last, atomically):
``head.pt`` (state dict), ``predictions.parquet`` (test split: image_id, split, score or value,
label) and, for segmentation, ``masks.zarr`` (predicted probabilities [image, y, x], float16,
one chunk per image, rows in the order of predictions.parquet).
"""

from __future__ import annotations

import io
import subprocess
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import zarr

from featurestore import __version__
from featurestore.errors import RadstoreError
from featurestore.store import Store
from heads.tasks import TaskDef

RUNS_DIR = "runs"
RUN_JSON = "run.json"


@dataclass
class RunRecord:
    task: TaskDef
    config: dict[str, Any]
    feature_set_id: str
    encoder: str
    curve: list[dict]
    best_epoch: int
    test_metrics: dict[str, float]
    splits: dict[str, int]


def code_version() -> str:
    """radstore's version plus the git commit when running from a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def new_run_id(task: str, head: str, feature_set_id: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{feature_set_id}-{task}-{head}-{stamp}-{uuid.uuid4().hex[:6]}"


def write_run(store: Store, rec: RunRecord, model: torch.nn.Module, ids: list[str], pred: np.ndarray, y: np.ndarray) -> str:
    run_id = new_run_id(rec.task.name, rec.config["head"], rec.feature_set_id)
    loc = store.loc.child(RUNS_DIR, run_id)
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buf)
    loc.write_atomic(buf.getvalue(), "head.pt")
    cols: dict[str, Any] = {"image_id": ids, "split": ["test"] * len(ids)}
    if rec.task.kind == "segmentation":
        cols["mask_row"] = np.arange(len(ids))
        cols["positive_pixels"] = (y > 0.5).sum((1, 2)).astype(np.int64)
        cols["predicted_pixels"] = (pred > 0.5).sum((1, 2)).astype(np.int64)
        arr = zarr.create_array(loc.zarr_store("masks.zarr"), shape=pred.shape, chunks=(1, *pred.shape[1:]), dtype="float16",
                                compressors=None, dimension_names=("image", "y", "x"), fill_value=np.nan)
        arr[:] = pred.astype(np.float16)
        truth = zarr.create_array(loc.zarr_store("targets.zarr"), shape=y.shape, chunks=(1, *y.shape[1:]), dtype="uint8",
                                  compressors=None, dimension_names=("image", "y", "x"))
        truth[:] = (y > 0.5).astype(np.uint8)
    else:
        cols["score" if rec.task.kind == "classification" else "value"] = pred.astype(np.float64)
        cols["label"] = y.astype(np.float64)
    loc.write_parquet(pa.table(cols), "predictions.parquet")
    meta = {
        "run_id": run_id,
        "task": rec.task.name,
        "task_kind": rec.task.kind,
        "head": rec.config["head"],
        "feature_set_id": rec.feature_set_id,
        "encoder": rec.encoder,
        "seed": rec.config["seed"],
        "fold": rec.config["fold"],
        "config": rec.config,
        "code_version": code_version(),
        "created_at": datetime.now(timezone.utc).isoformat(),
        "best_epoch": rec.best_epoch,
        "epochs": len(rec.curve),
        "curve": rec.curve,
        "splits": rec.splits,
        "test_metrics": rec.test_metrics,
    }
    loc.write_json(meta, RUN_JSON)  # last: the run exists from here on
    return run_id


def list_runs(store: Store) -> list[dict]:
    return store.committed_records(RUNS_DIR, RUN_JSON)


# Config fields that change how a run is computed, not what it computes.
RUNTIME_ONLY = ("progress", "device")


def find_run(store: Store, feature_set_id: str, config: dict[str, Any], newer_than: datetime | None = None,
             runs: list[dict] | None = None) -> str | None:
    """The latest run of this feature set with the same training config (task, head, fold and
    every hyperparameter), made after ``newer_than`` (e.g. the feature set's last commit, so a
    backfill retrains); None if there is none. What lets a scheduled study skip work.
    ``runs``: the store's run records when the caller already listed them (one listing for a grid)."""
    want = {k: v for k, v in config.items() if k not in RUNTIME_ONLY}
    best = None
    for r in list_runs(store) if runs is None else runs:
        if r["feature_set_id"] != feature_set_id:
            continue
        have = {k: v for k, v in r["config"].items() if k not in RUNTIME_ONLY}
        if have != want:
            continue
        created = datetime.fromisoformat(r["created_at"])
        if newer_than is not None and created < newer_than:
            continue
        if best is None or created > datetime.fromisoformat(best["created_at"]):
            best = r
    return None if best is None else best["run_id"]


def read_run(store: Store, run_id: str) -> dict:
    if not store.loc.exists(RUNS_DIR, run_id, RUN_JSON):
        raise RadstoreError(f"no run {run_id!r} in {store.url} (runs are listed by `radstore runs`)")
    return store.loc.read_json(RUNS_DIR, run_id, RUN_JSON)


def read_predictions(store: Store, run_id: str) -> pa.Table:
    return store.loc.read_parquet([store.loc.path(RUNS_DIR, run_id, "predictions.parquet")])
