"""Prefect task ``health``: the embedding health of the feature sets a study or backfill just
extracted (:func:`featurestore.health.check_health`), with each flag logged as a warning.

A set whose check fails (non-finite embeddings, say) is logged as an error and returned with
its error: health informs the study, it does not stop it from training and evaluating."""

from __future__ import annotations

from prefect import get_run_logger, task

from featurestore.store import Store


@task(name="health")
def health_task(store: str, feature_set_ids: list[str], config: dict, storage_options: dict | None) -> list[dict]:
    """Check each feature set (a stored version is reused when nothing changed); returns one
    summary per set: its health id, whether it was computed now, its flags."""
    from featurestore.errors import RadstoreError
    from featurestore.health import HealthConfig, check_health
    from featurestore.health.text import detail_lines

    log = get_run_logger()
    st = Store.open(store, storage_options=storage_options)
    cfg = HealthConfig.from_dict(config)
    out = []
    for fsid in feature_set_ids:
        try:
            h = check_health(st, fsid, cfg)
        except RadstoreError as e:
            log.error("health of %s failed: %s", fsid, e)
            out.append({"feature_set_id": fsid, "error": str(e), "flags": []})
            continue
        for line in detail_lines(h, pairs=5):
            (log.warning if line.lstrip().startswith(("flag:", "leakage:")) else log.info)(line)
        out.append({"feature_set_id": h.record.feature_set_id, "encoder": h.record.encoder, "health_id": h.record.health_id,
                    "created": h.created, "flags": list(h.record.flags)})  # fmt: skip
    return out
