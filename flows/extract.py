"""Prefect flow ``extract-embeddings``: plan the backfill, one task per shard-sized group.

Thin by design: each task calls a plain function of :mod:`featurestore.extract`. The flow
plans the groups; each task claims the shards it commits (an atomic create of the shard's
claim object, on every backend), so tasks of this flow run, of other flow runs and of other
processes never share a shard.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from featurestore.errors import RadstoreError
from featurestore.extract import ExtractConfig, ExtractResult, MultiPlan, extract_many, plan_many, record_rejected, stack_results
from featurestore.manifest import load_manifest, printable
from featurestore.store import Store
from flows import prefect_env  # noqa: F401  (sets Prefect defaults before prefect is imported)


def _transient(task, task_run, state) -> bool:
    """Retry I/O hiccups, not user errors (missing weights, bad manifest, wrong shapes)."""
    try:
        state.result()
    except RadstoreError:
        return False
    except Exception:  # noqa: BLE001
        return True
    return False


@task(name="plan-extraction", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def plan_task(manifest: str, store: str, cfgs: list[ExtractConfig], storage_options: dict | None) -> MultiPlan:
    """Prefect task: plan the extraction for every encoder (creating the store and the feature
    sets if needed, once the manifest has been read: a manifest that cannot be read creates nothing)."""
    m = load_manifest(manifest)
    return plan_many(m, Store.open(store, create=True, storage_options=storage_options), cfgs)


@task(name="extract-group", retries=2, retry_delay_seconds=5, retry_condition_fn=_transient, task_run_name="extract-group-{group}")
def extract_group_task(
    manifest: str, store: str, cfgs: list[ExtractConfig], image_ids: list[str], group: int, storage_options: dict | None
) -> list[ExtractResult]:
    """Prefect task: one shard-sized group, decoded once for every encoder; each writer claims the
    shards it commits. A retry redoes only what is not committed."""
    st = Store.open(store, storage_options=storage_options)
    return extract_many(manifest, st, cfgs, image_ids, desc=f"group {group}")


def _publish(result: ExtractResult, cfg: ExtractConfig) -> None:
    key = f"extract-{result.feature_set_id}".lower()
    rows = [
        {
            "feature_set": result.feature_set_id,
            "encoder": cfg.encoder,
            "weights": cfg.weights or "default",
            "done": result.done,
            "skipped": result.skipped,
            "failed": len(result.failed),
            "images_per_s": round(result.images_per_s, 2),
            "seconds": round(result.seconds, 1),
            "input_wait_s": round(result.wait_s, 1),
            "forward_s": round(result.forward_s, 1),
            "commit_s": round(result.commit_s, 1),
        }
    ]
    create_table_artifact(rows, key=key, description=f"extraction summary for {result.feature_set_id}")
    failed = (
        "\n".join(f"- `{printable(i) or '?'}` (path `{printable(p) or '?'}`): {printable(r)}" for i, p, r in result.rejected[:50]) or "none"
    )
    create_markdown_artifact(
        f"# Extraction {result.feature_set_id}\n\n{result.summary()}\n\n{result.profile_line()}\n\n## Failed images\n{failed}\n",
        key=f"{key}-report",
        description="extraction report",
    )


def _summary(result: ExtractResult) -> dict[str, Any]:
    return {
        "feature_set_id": result.feature_set_id,
        "encoder": result.encoder,
        "done": result.done,
        "skipped": result.skipped,
        "failed": result.failed,  # (image_id, reason)
        "rejected": result.rejected,  # (image_id, path in the manifest, reason)
        "images_per_s": result.images_per_s,
        "seconds": result.seconds,
        "wait_s": result.wait_s,
        "forward_s": result.forward_s,
        "commit_s": result.commit_s,
        "profile": result.profile_line(),
    }


def extract_configs(encoder: str | None = None, configs: list[dict] | None = None, **options: Any) -> list[ExtractConfig]:
    """The configurations of one extraction: ``configs`` (one dict per encoder, as the study
    passes them), else one per name of the comma-separated ``encoder``, each with ``options``."""
    if configs:
        return [ExtractConfig(**c) for c in configs]
    names = [n.strip() for n in (encoder or "").split(",") if n.strip()]
    if not names:
        raise RadstoreError("no encoder given: --encoder NAME[,NAME...]")
    return [ExtractConfig(encoder=n, **options) for n in names]


# Locally, groups run one after another: each already keeps both cores busy (decode + forward).
@flow(name="extract-embeddings", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def extract_embeddings(
    manifest: str,
    store: str,
    encoder: str | None = None,
    weights: str | None = None,
    size: int | None = None,
    bits: int | None = None,
    intensity: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    num_workers: int | None = None,
    shard_images: int = 0,
    dtype: str = "float16",
    profile: bool = False,
    storage_options: dict[str, Any] | None = None,
    configs: list[dict[str, Any]] | None = None,
) -> Any:
    """Embed every image of ``manifest`` not yet in each encoder's feature set, decoding each
    image once for all of them. ``encoder``: one name or several, comma-separated, sharing the
    other options; ``configs``: one ExtractConfig dict per encoder instead (the study's way).
    Returns the summary dict: one entry per encoder in ``results`` (the first one's fields also
    at the top, as for a single encoder)."""
    logger = get_run_logger()
    cfgs = extract_configs(
        encoder, configs, weights=weights, size=size, bits=bits, intensity=intensity, batch_size=batch_size, device=device,
        num_workers=num_workers, shard_images=shard_images, dtype=dtype, profile=profile, progress=True,
    )  # fmt: skip
    p = plan_task(manifest, store, cfgs, storage_options)
    t0 = time.perf_counter()  # after planning (which loads the models): the extraction's own time
    for c, sub in zip(cfgs, p.plans):
        logger.info("%s -> feature set %s: %d image(s) to extract, %d already committed", c.encoder, sub.feature_set_id,
                    sum(map(len, sub.groups)), sub.skipped)  # fmt: skip
    futures = [extract_group_task.submit(manifest, store, cfgs, g, k, storage_options) for k, g in enumerate(p.groups)]
    per_group = [f.result() for f in futures]
    wall = time.perf_counter() - t0
    results = []
    for n, (c, sub) in enumerate(zip(cfgs, p.plans)):
        mine = [g[n] for g in per_group]
        # Groups one after another: the sum of their own times (no task scheduling in it);
        # groups at once (Dask): the wall time, which is then the smaller.
        seconds = min(wall, sum(r.seconds for r in mine))
        result = stack_results(mine, wall_seconds=seconds) if mine else ExtractResult(sub.feature_set_id, encoder=c.encoder)
        result.feature_set_id, result.encoder = sub.feature_set_id, c.encoder
        result.skipped += sub.skipped
        if sub.rejected:  # the manifest's bad rows: rejected by the plan, recorded here once
            record_rejected(Store.open(store, storage_options=storage_options).feature_set(sub.feature_set_id), sub.rejected)
            result.rejected[:0] = sub.rejected
        _publish(result, c)
        results.append(result)
        if c.profile:
            print(result.profile_line())
    summary = {**_summary(results[0]), "results": [_summary(r) for r in results]}
    message = "; ".join(r.summary() for r in results)
    failed = [r for r in results if r.failed]
    if failed:
        for r in failed:
            for image_id, path, reason in r.rejected:
                logger.error("%s: image_id=%s path=%s failed: %s", r.encoder, printable(image_id) or "?", printable(path) or "?",
                             printable(reason))  # fmt: skip
        return Failed(message=f"{sum(len(r.failed) for r in failed)} image(s) failed ({message})", data=summary)
    return Completed(message=message, data=summary)


def task_runner_for(runner: str):
    """``local`` (tasks one after another in this process), ``dask`` (a local cluster: one worker
    per GPU on a host with several, else two), ``dask:ADDRESS`` (an existing cluster) or
    ``dask-devices:0,1,...`` (one worker per listed device, each seeing only its own:
    :mod:`flows.devices`)."""
    if runner == "local":
        return None
    if runner.startswith("dask-devices:"):
        from prefect_dask import DaskTaskRunner

        from flows.devices import per_device_cluster

        devices = [d.strip() for d in runner.split(":", 1)[1].split(",") if d.strip()]
        if not devices:
            raise ValueError("--runner dask-devices:LIST needs devices, e.g. dask-devices:0,1")
        return DaskTaskRunner(cluster_class=per_device_cluster, cluster_kwargs={"devices": devices})
    if runner == "dask" or runner.startswith("dask:"):
        from prefect_dask import DaskTaskRunner

        address = runner.split(":", 1)[1] if ":" in runner else None
        if address:
            return DaskTaskRunner(address=address)
        from flows.devices import per_device_cluster, visible_gpus

        gpus = visible_gpus()
        if len(gpus) > 1:
            return DaskTaskRunner(cluster_class=per_device_cluster, cluster_kwargs={"devices": gpus})
        return DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})
    raise ValueError(f"--runner must be local, dask, dask:ADDRESS or dask-devices:LIST, got {runner!r}")


def run_extraction(runner: str = "local", **params: Any):
    """Run the flow with the chosen task runner; returns the final Prefect state."""
    tr = task_runner_for(runner)
    f = extract_embeddings if tr is None else extract_embeddings.with_options(task_runner=tr)
    return f(**params, return_state=True)
