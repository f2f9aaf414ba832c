"""Scheduled deployments of the study, served from one process (``radstore serve``).

- ``backfill/nightly-backfill``: cron from the config (default 02:00 UTC); ingests the manifest
  and embeds its new images with every encoder, then, if there were any, starts
- ``study/after-backfill``: the follow-on run that trains what changed, evaluates and writes
  the report (every stage reuses what the store holds);
- ``evaluate/on-demand``: re-evaluate the store's latest runs (e.g. with other CI settings).

Parameters come from the study config, so the served deployments run exactly what
``radstore study --config`` runs. On a cluster, ``prefect.yaml`` at the repository root
declares the same deployments for a work pool instead (infra/).
"""

from __future__ import annotations

from prefect.schedules import Cron

from flows import prefect_env  # noqa: F401
from flows.config import StudyConfig
from flows.evaluate import evaluate_flow
from flows.study import backfill, study

BACKFILL = "nightly-backfill"
AFTER_BACKFILL = "after-backfill"
ON_DEMAND = "on-demand"
FOLLOW_ON = f"study/{AFTER_BACKFILL}"


def deployments(cfg: StudyConfig) -> list:
    """The RunnerDeployments of one study config (not yet registered)."""
    params = {"config": cfg.to_json()}
    return [
        backfill.to_deployment(
            name=BACKFILL,
            schedule=Cron(cfg.schedule, timezone=cfg.timezone),
            parameters={**params, "follow_on": FOLLOW_ON},
            tags=["radstore", "nightly"],
            description="embed new images with every encoder, then start study/after-backfill",
        ),
        study.to_deployment(
            name=AFTER_BACKFILL,
            parameters=params,
            tags=["radstore"],
            description="train what changed, evaluate, report (started by the nightly backfill)",
        ),
        evaluate_flow.to_deployment(
            name=ON_DEMAND,
            parameters={"store": cfg.store, "storage_options": cfg.storage_options or None},
            tags=["radstore"],
            description="evaluate the latest runs of the store",
        ),
    ]


def serve_all(cfg: StudyConfig, limit: int | None = None) -> None:
    """Register the deployments and execute their runs in this process until interrupted."""
    from prefect import serve

    serve(*deployments(cfg), limit=limit)


__all__ = ["AFTER_BACKFILL", "BACKFILL", "FOLLOW_ON", "ON_DEMAND", "deployments", "serve_all"]
