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
from featurestore.extract import ExtractConfig, ExtractResult, Plan, extract_group, plan, record_rejected, stack_results
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
def plan_task(manifest: str, store: str, cfg: ExtractConfig, storage_options: dict | None) -> Plan:
    """Prefect task: plan the extraction (creating the store and the feature set if needed, once
    the manifest has been read: a manifest that cannot be read creates nothing)."""
    m = load_manifest(manifest)
    return plan(m, Store.open(store, create=True, storage_options=storage_options), cfg)


@task(name="extract-group", retries=2, retry_delay_seconds=5, retry_condition_fn=_transient, task_run_name="extract-group-{group}")
def extract_group_task(
    manifest: str, store: str, cfg: ExtractConfig, image_ids: list[str], group: int, storage_options: dict | None
) -> ExtractResult:
    """Prefect task: extract one shard-sized group; its writer claims the shard it commits."""
    st = Store.open(store, storage_options=storage_options)
    return extract_group(manifest, st, cfg, image_ids, desc=f"group {group}")


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
        }
    ]
    create_table_artifact(rows, key=key, description=f"extraction summary for {result.feature_set_id}")
    failed = (
        "\n".join(f"- `{printable(i) or '?'}` (path `{printable(p) or '?'}`): {printable(r)}" for i, p, r in result.rejected[:50]) or "none"
    )
    create_markdown_artifact(
        f"# Extraction {result.feature_set_id}\n\n{result.summary()}\n\n## Failed images\n{failed}\n",
        key=f"{key}-report",
        description="extraction report",
    )


# Locally, groups run one after another: each already keeps both cores busy (decode + forward).
@flow(name="extract-embeddings", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def extract_embeddings(
    manifest: str,
    store: str,
    encoder: str,
    weights: str | None = None,
    size: int | None = None,
    bits: int | None = None,
    intensity: str | None = None,
    batch_size: int = 16,
    device: str = "auto",
    num_workers: int = 1,
    shard_images: int = 0,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """Embed every image of ``manifest`` not yet in the feature set; returns the summary dict."""
    logger = get_run_logger()
    cfg = ExtractConfig(
        encoder=encoder,
        weights=weights,
        size=size,
        bits=bits,
        intensity=intensity,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        shard_images=shard_images,
        progress=True,
    )
    t0 = time.perf_counter()
    p = plan_task(manifest, store, cfg, storage_options)
    logger.info(
        "feature set %s: %d image(s) to extract in %d group(s), %d already committed",
        p.feature_set_id,
        sum(map(len, p.groups)),
        len(p.groups),
        p.skipped,
    )
    futures = [extract_group_task.submit(manifest, store, cfg, g, k, storage_options) for k, g in enumerate(p.groups)]
    results = [f.result() for f in futures]
    result = stack_results(results, wall_seconds=time.perf_counter() - t0) if results else ExtractResult(p.feature_set_id)
    result.feature_set_id = p.feature_set_id
    result.skipped += p.skipped
    if p.rejected:  # the manifest's bad rows: rejected by the plan, recorded here once
        record_rejected(Store.open(store, storage_options=storage_options).feature_set(p.feature_set_id), p.rejected)
        result.rejected[:0] = p.rejected
    _publish(result, cfg)
    summary = {
        "feature_set_id": p.feature_set_id,
        "done": result.done,
        "skipped": result.skipped,
        "failed": result.failed,  # (image_id, reason)
        "rejected": result.rejected,  # (image_id, path in the manifest, reason)
        "images_per_s": result.images_per_s,
        "seconds": result.seconds,
    }
    if result.failed:
        for image_id, path, reason in result.rejected:
            logger.error("image_id=%s path=%s failed: %s", printable(image_id) or "?", printable(path) or "?", printable(reason))
        return Failed(message=f"{len(result.failed)} image(s) failed ({result.summary()})", data=summary)
    return Completed(message=result.summary(), data=summary)


def task_runner_for(runner: str):
    """``local`` (tasks one after another in this process) or ``dask[:ADDRESS]``."""
    if runner == "local":
        return None
    if runner == "dask" or runner.startswith("dask:"):
        from prefect_dask import DaskTaskRunner

        address = runner.split(":", 1)[1] if ":" in runner else None
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})
    raise ValueError(f"--runner must be local, dask or dask:ADDRESS, got {runner!r}")


def run_extraction(runner: str = "local", **params: Any):
    """Run the flow with the chosen task runner; returns the final Prefect state."""
    tr = task_runner_for(runner)
    f = extract_embeddings if tr is None else extract_embeddings.with_options(task_runner=tr)
    return f(**params, return_state=True)
