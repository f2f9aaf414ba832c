"""Prefect flow ``study``: ingest -> extract (every encoder) -> embedding health -> train (encoders x
tasks x heads x folds) -> evaluate -> report, from one :class:`flows.config.StudyConfig`.

Each stage reuses what the store holds, so a scheduled rerun with nothing new is cheap:
ingest is idempotent, extraction is a backfill of uncommitted images, a training run is
skipped when a run with the same config exists and is newer than its feature set's last
commit, and an evaluation of identical inputs returns the existing version.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner

from featurestore.store import Store
from flows import prefect_env  # noqa: F401
from flows.config import StudyConfig, load_config
from flows.evaluate import evaluate_flow
from flows.extract import run_extraction, task_runner_for
from flows.health import health_task
from flows.regressions import regressions_task
from flows.train import train_task
from heads.runs import plan_runs
from heads.train import TrainConfig


@task(name="ingest")
def ingest_task(manifest: str, store: str, storage_options: dict | None) -> dict:
    from featurestore.ingest import ingest

    r = ingest(
        manifest, Store.open(store, create=True, storage_options=storage_options), progress=False, log=lambda m: get_run_logger().error(m)
    )
    return {"summary": r.summary(), "failed": len(r.failed)}


@task(name="choose-weights")
def weights_task(name: str, weights: str | None, fallback: str) -> str | None:
    from featurestore.encoders import choose_weights

    chosen, warning = choose_weights(name, weights, fallback)
    if warning:
        get_run_logger().warning(warning)
        print("\n" + "*" * 100 + f"\n{warning}\n" + "*" * 100 + "\n")
    return chosen


@task(name="plan-training")
def plan_training_task(store: str, feature_set_id: str, cfgs: list[TrainConfig], manifest: str | None,
                       storage_options: dict | None) -> tuple[list, list]:  # fmt: skip
    """Split the grid into runs to reuse (same config, same data: heads.runs.plan_runs, labels from
    ``manifest``) and to train."""
    return plan_runs(Store.open(store, storage_options=storage_options), feature_set_id, cfgs, manifest=manifest)


@task(name="report")
def report_task(store: str, out: str, eval_id: str, storage_options: dict | None) -> str:
    from evaluation.report import write_report

    return str(write_report(Store.open(store, storage_options=storage_options), out, eval_id))


def _extract(cfg: StudyConfig, chosen: dict[str, str | None]) -> dict:
    """Every encoder in one extraction: each image is read and decoded once for all of them."""
    configs = [cfg.extract_config(enc, chosen[enc.name]).to_json() for enc in cfg.encoders]
    state = run_extraction(cfg.runner, manifest=cfg.manifest, store=cfg.store, configs=configs, storage_options=cfg.storage_options or None)
    out = state.result(raise_on_failure=False)
    if isinstance(out, BaseException):
        raise out
    return out


def _embed_all(cfg: StudyConfig, timings: dict[str, float]) -> tuple[dict[str, str], dict[str, dict]]:
    """Ingest the manifest, then backfill every encoder's feature set (the shared first stages)."""
    log = get_run_logger()
    so = cfg.storage_options or None
    t = time.perf_counter()
    ing = ingest_task(cfg.manifest, cfg.store, so)
    timings["ingest"] = time.perf_counter() - t
    log.info("ingest: %s", ing["summary"])
    t = time.perf_counter()
    chosen = {enc.name: weights_task(enc.name, enc.weights, cfg.missing_weights) for enc in cfg.encoders}
    out = _extract(cfg, chosen)
    feature_sets: dict[str, str] = {}
    extracted: dict[str, dict] = {}
    for enc, r in zip(cfg.encoders, out["results"]):
        feature_sets[enc.name] = r["feature_set_id"]
        extracted[enc.name] = {"done": r["done"], "skipped": r["skipped"], "failed": len(r["failed"]), "weights": chosen[enc.name]}
        log.info("%s -> %s: %d new, %d already in the store, %d failed", enc.name, r["feature_set_id"], r["done"], r["skipped"],
                 len(r["failed"]))  # fmt: skip
    timings["extract"] = time.perf_counter() - t
    return feature_sets, extracted


def _health(cfg: StudyConfig, feature_sets: dict[str, str], timings: dict[str, float]) -> list[dict]:
    """The embedding health of every encoder's feature set (skipped when the config's ``health`` is None)."""
    if cfg.health is None:
        return []
    t = time.perf_counter()
    out = health_task(cfg.store, list(feature_sets.values()), cfg.health, cfg.storage_options or None)
    timings["health"] = time.perf_counter() - t
    return out


def _config(config: dict[str, Any] | None, config_file: str | None) -> StudyConfig:
    if config_file:
        return load_config(config_file, **(config or {}))
    return StudyConfig.from_dict(config or {})


@flow(name="backfill", log_prints=True)
def backfill(config: dict[str, Any] | None = None, follow_on: str | None = None, config_file: str | None = None) -> dict:
    """Nightly: embed the manifest's new images with every encoder; when there were any, start
    a run of the ``follow_on`` deployment (e.g. ``study/after-backfill``) to train and evaluate.
    ``config_file``: a study YAML read when the run starts (``config`` then overrides its keys)."""
    from prefect.deployments import run_deployment

    cfg = _config(config, config_file)
    timings: dict[str, float] = {}
    feature_sets, extracted = _embed_all(cfg, timings)
    health = _health(cfg, feature_sets, timings)
    new = sum(e["done"] for e in extracted.values())
    follow = None
    if new and follow_on:
        fr = run_deployment(follow_on, parameters={"config": cfg.to_json()}, timeout=0)
        follow = str(fr.id)
        get_run_logger().info("%d new embedding(s): started %s (flow run %s)", new, follow_on, follow)
    return {
        "feature_sets": feature_sets,
        "extracted": extracted,
        "new": new,
        "health": health,
        "follow_on_run": follow,
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }


@flow(name="study", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def study(config: dict[str, Any] | None = None, config_file: str | None = None) -> dict:
    """The whole grid; returns {timings per stage, feature_sets, runs, trained, reused, eval_id, report}.
    ``config``: a StudyConfig as a dict (JSON, as deployments pass it); or ``config_file``, a
    study YAML read when the run starts (``config`` then overrides its keys)."""
    cfg = _config(config, config_file)
    log = get_run_logger()
    so = cfg.storage_options or None
    timings: dict[str, float] = {}
    feature_sets, extracted = _embed_all(cfg, timings)
    health = _health(cfg, feature_sets, timings)

    t = time.perf_counter()
    run_ids, trained, reused = [], 0, 0
    runner = task_runner_for(cfg.runner)
    for enc in cfg.encoders:
        fsid = feature_sets[enc.name]
        cfgs = cfg.train_grid()
        keep, todo = plan_training_task(cfg.store, fsid, cfgs, cfg.manifest, so)
        run_ids += [rid for _, rid in keep]
        reused += len(keep)
        if todo and runner is not None:
            run_ids += _train_on(runner, cfg.store, fsid, todo, cfg.manifest, so)
        else:
            run_ids += [f.result()["run_id"] for f in [train_task.submit(cfg.store, fsid, c, cfg.manifest, so) for c in todo]]
        trained += len(todo)
    timings["train"] = time.perf_counter() - t
    log.info("training: %d run(s) trained, %d reused", trained, reused)

    t = time.perf_counter()
    ev = evaluate_flow(cfg.store, run_ids, cfg.evaluation, so)
    alerts = regressions_task(cfg.store, ev["eval_id"], so)
    timings["evaluate"] = time.perf_counter() - t

    report = None
    if cfg.report_dir:
        t = time.perf_counter()
        report = report_task(cfg.store, cfg.report_dir, ev["eval_id"], so)
        timings["report"] = time.perf_counter() - t
        log.info("report: %s", report)
    return {
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "feature_sets": feature_sets,
        "extracted": extracted,
        "health": health,
        "runs": run_ids,
        "trained": trained,
        "reused": reused,
        "eval_id": ev["eval_id"],
        "eval_path": ev["path"],
        "new_eval": ev["created"],
        "controls": ev.get("controls", []),
        "regressions": alerts,
        "report": report,
    }


def _train_on(runner, store: str, fsid: str, cfgs: list[TrainConfig], manifest: str | None, so: dict | None) -> list[str]:
    """Fan the training runs of one feature set out on a Dask cluster (a subflow with that runner)."""

    @flow(name="train-fan-out", task_runner=runner)
    def fan_out() -> list[str]:
        return [f.result()["run_id"] for f in [train_task.submit(store, fsid, c, manifest, so) for c in cfgs]]

    return fan_out()


def run_study(cfg: StudyConfig) -> dict:
    """Run the study flow from a typed config (what the CLI and the tests call)."""
    return study(cfg.to_json())


__all__ = ["backfill", "run_study", "study"]
