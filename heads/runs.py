"""Training runs: turning a trained head into a committed run, and finding a run to reuse.

The run's files and record are laid out by :mod:`featurestore.layout.records`; this module
decides what goes in them (the training config, the curve, the test predictions).
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from featurestore.layout.paths import new_run_id
from featurestore.layout.records import RunRecord, code_version, list_runs, predictions_table, write_run
from featurestore.store import Store
from featurestore.tasks import TaskDef
from heads.registry import get_head

# Config fields that change how a run is computed, not what it computes.
RUNTIME_ONLY = ("progress", "device")


def save_run(store: Store, task: TaskDef, config: dict[str, Any], feature_set_id: str, encoder: str, curve: list[dict],
             best_epoch: int, test_metrics: dict[str, float], splits: dict[str, int], model: torch.nn.Module,
             ids: list[str], pred: np.ndarray, y: np.ndarray, operating_points: dict[str, float] | None = None,
             val_counts: dict[str, int] | None = None, warnings: dict[str, str] | None = None) -> str:  # fmt: skip
    """Commit a trained head with its test predictions; returns the new run id. ``operating_points``
    (e.g. the mask threshold chosen on validation), ``val_counts`` and ``warnings`` go into the record."""
    kind = task.spec
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buf)
    rec = RunRecord(
        run_id=new_run_id(task.name, config["head"], feature_set_id), task=task.name, task_kind=task.kind,
        head=config["head"], feature_set_id=feature_set_id, encoder=encoder, seed=config["seed"], fold=config["fold"],
        config=config, code_version=code_version(), created_at=datetime.now(UTC).isoformat(),
        best_epoch=best_epoch, epochs=len(curve), curve=curve, splits=splits, test_metrics=test_metrics,
        operating_points=dict(operating_points or {}), val_counts=dict(val_counts or {}), warnings=dict(warnings or {}),
        linear_readout=get_head(config["head"]).linear_readout,
    )  # fmt: skip
    threshold = float(rec.operating_points.get("threshold", 0.5))
    masks = (pred, (y > 0.5).astype(np.uint8)) if kind.dense else None
    return write_run(store, rec, buf.getvalue(), predictions_table(kind, ids, pred, y, threshold), masks)


def find_run(store: Store, feature_set_id: str, config: dict[str, Any], newer_than: datetime | None = None,
             runs: list[RunRecord] | None = None) -> str | None:  # fmt: skip
    """The latest run of this feature set with the same training config (task, head, fold and
    every hyperparameter), made after ``newer_than`` (e.g. the feature set's last commit, so a
    backfill retrains); None if there is none. What lets a scheduled study skip work.
    ``runs``: the store's run records when the caller already listed them (one listing for a grid)."""
    want = {k: v for k, v in config.items() if k not in RUNTIME_ONLY}
    best = None
    for r in list_runs(store) if runs is None else runs:
        if r.feature_set_id != feature_set_id:
            continue
        have = {k: v for k, v in r.config.items() if k not in RUNTIME_ONLY}
        if have != want:
            continue
        if newer_than is not None and r.created < newer_than:
            continue
        if best is None or r.created > best.created:
            best = r
    return None if best is None else best.run_id
