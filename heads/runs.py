"""Training runs: turning a trained head into a committed run, and finding a run to reuse.

The run's files and record are laid out by :mod:`featurestore.layout.records`; this module
decides what goes in them (the training config, the curve, the test predictions).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from featurestore.errors import RadstoreError
from featurestore.layout.paths import new_run_id
from featurestore.layout.records import RUNTIME_ONLY, RunRecord, code_version, list_runs, predictions_table, write_run
from featurestore.store import Store
from featurestore.subsets import WHOLE_SPLIT
from featurestore.tasks import TaskDef, get_task
from heads.config import TrainConfig
from heads.lineage import data_hash
from heads.registry import get_head


def save_run(store: Store, task: TaskDef, config: dict[str, Any], feature_set_id: str, encoder: str, curve: list[dict],
             best_epoch: int, test_metrics: dict[str, float], splits: dict[str, int], model: torch.nn.Module,
             ids: list[str], pred: np.ndarray, y: np.ndarray, operating_points: dict[str, float] | None = None,
             val_counts: dict[str, int] | None = None, warnings: dict[str, str] | None = None,
             lineage: pa.Table | None = None, val: tuple[list[str], np.ndarray, np.ndarray] | None = None) -> str:  # fmt: skip
    """Commit a trained head with its test predictions; returns the new run id. ``operating_points``
    (e.g. the mask threshold chosen on validation), ``val_counts`` and ``warnings`` go into the
    record; ``lineage`` (:func:`heads.lineage.lineage_table`) is stored with it and its hash is
    what :func:`find_run` matches. ``val`` (ids, predictions, labels of the validation split) of a
    global kind is stored beside the test predictions for the evaluation's operating points."""
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
        data_hash=None if lineage is None else data_hash(lineage, feature_set_id),
    )  # fmt: skip
    threshold = float(rec.operating_points.get("threshold", 0.5))
    masks = (pred, (y > 0.5).astype(np.uint8)) if kind.dense else None
    return write_run(store, rec, buf.getvalue(), predictions_table(kind, ids, pred, y, threshold, val), masks, lineage)


def comparable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """What :func:`find_run` compares of a training config: every key but the runtime-only ones,
    and a training-subset key that is absent read as its whole-split value
    (:data:`featurestore.subsets.WHOLE_SPLIT`): configs record those keys only when set, and
    runs recorded before they existed trained on the whole split."""
    return {k: v for k, v in {**WHOLE_SPLIT, **config}.items() if k not in RUNTIME_ONLY}


def find_run(store: Store, feature_set_id: str, config: dict[str, Any], newer_than: datetime | None = None,
             runs: list[RunRecord] | None = None, data: str | None = None) -> str | None:  # fmt: skip
    """The latest run of this feature set with the same training config (task, head, fold and
    every hyperparameter) and, when ``data`` is given, the same data hash
    (:func:`heads.lineage.data_hash`: every image, split, label and mask), made after
    ``newer_than``; None if there is none. What lets a scheduled study skip work.
    ``runs``: the store's run records when the caller already listed them (one listing for a grid)."""
    want = comparable_config(config)
    best = None
    for r in list_runs(store) if runs is None else runs:
        if r.feature_set_id != feature_set_id or (data is not None and r.data_hash != data):
            continue
        have = comparable_config(r.config)
        if have != want:
            continue
        if newer_than is not None and r.created < newer_than:
            continue
        if best is None or r.created > best.created:
            best = r
    return None if best is None else best.run_id


def plan_runs(store: Store, feature_set_id: str, configs: list[TrainConfig], manifest: str | list[str] | None = None,
              runs: list[RunRecord] | None = None) -> tuple[list[tuple[TrainConfig, str]], list[TrainConfig]]:  # fmt: skip
    """Split a grid into (config, run id) pairs to reuse and configs to train: a run is reused only
    when its config and its data hash are those the config would train on now. The data hash
    is computed as training computes it (labels from ``manifest``, else the store's ingested
    manifests; the split or fold; mask files hashed once per task), so a relabelled image, an
    edited mask, a re-split patient or a new labelled image retrains exactly the runs whose
    task sees it."""
    from heads.data import load_labels, split_indices
    from heads.lineage import lineage_table, mask_hashes

    fs = store.feature_set(feature_set_id)
    runs = list_runs(store) if runs is None else runs
    labels_of: dict[str, tuple] = {}
    reuse, todo = [], []
    for c in configs:
        task = get_task(c.task)
        if task.name not in labels_of:
            labels = load_labels(task, fs, manifest, store)
            labels_of[task.name] = (labels, mask_hashes(labels.mask_uris) if labels.mask_uris is not None else None)
        labels, masks = labels_of[task.name]
        try:
            splits = split_indices(labels, c.fold, c.folds, c.seed, c.subset)
        except RadstoreError as e:  # e.g. too few images of a class for k shots: say which task
            raise RadstoreError(f"{c.task}: {e}") from None
        table = lineage_table(labels, splits, masks)
        rid = find_run(store, fs.id, c.to_json(), runs=runs, data=data_hash(table, fs.id))  # fs.id: an alias resolved
        if rid:
            reuse.append((c, rid))
        else:
            todo.append(c)
    return reuse, todo
