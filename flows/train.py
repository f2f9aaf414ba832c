"""Prefect flows ``train-head`` (one head, one task) and ``train-grid`` (heads x tasks x folds).

Thin: each task calls :func:`heads.train.train`, which streams from the store and writes an
immutable run directory.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from featurestore.store import Store
from flows import prefect_env  # noqa: F401
from heads.config import grid_configs
from heads.train import TrainConfig, train


@task(name="train", task_run_name="train-{cfg.task}-{cfg.head}")
def train_task(store: str, feature_set: str, cfg: TrainConfig, manifest: str | None, storage_options: dict | None) -> dict:
    r = train(Store.open(store, storage_options=storage_options), feature_set, cfg, manifest)
    return {
        "run_id": r.run_id,
        "task": cfg.task,
        "head": cfg.head,
        "fold": cfg.fold,
        "epochs": r.epochs,
        "best_epoch": r.best_epoch,
        "seconds": round(r.seconds, 1),
        **{k: round(v, 4) for k, v in r.test.items()},
    }


def _publish(feature_set: str, rows: list[dict]) -> None:
    create_table_artifact(rows, key=f"train-{feature_set}".lower(), description=f"training runs on {feature_set}")


@flow(name="train-head", log_prints=True)
def train_head(
    store: str,
    feature_set: str,
    task: str,
    head: str = "linear",
    manifest: str | None = None,
    config: dict[str, Any] | None = None,
    storage_options: dict | None = None,
) -> str:
    """Train one head; returns the run id. ``config`` holds any other TrainConfig field."""
    cfg = TrainConfig(task=task, head=head, **(config or {}))
    row = train_task(store, feature_set, cfg, manifest, storage_options)
    _publish(feature_set, [row])
    get_run_logger().info("run %s: %s", row["run_id"], {k: v for k, v in row.items() if k != "run_id"})
    return row["run_id"]


@flow(name="train-grid", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def train_grid(
    store: str,
    feature_set: str,
    tasks: list[str] | None = None,
    heads: list[str] | None = None,
    folds: list[int] | None = None,
    manifest: str | None = None,
    config: dict[str, Any] | None = None,
    storage_options: dict | None = None,
) -> list[str]:
    """Train every head x task (x fold) for one feature set; returns the run ids."""
    cfgs = grid_configs(tasks, heads, folds, config)
    futures = [train_task.submit(store, feature_set, c, manifest, storage_options) for c in cfgs]
    rows = [f.result() for f in futures]
    _publish(feature_set, rows)
    for r in rows:
        print(f"{r['task']:18s} {r['head']:16s} fold={r['fold']} -> {r['run_id']}")
    return [r["run_id"] for r in rows]


__all__ = ["grid_configs", "train_grid", "train_head"]
