"""Regression alerts of a scheduled study: after each new evaluation, compare it with the previous
one (evaluation.diff) and publish every headline metric that got significantly worse.

Each regression is logged as a warning, listed in the ``regressions`` table artifact and emitted
as the Prefect event ``radstore.metric.regressed`` (resource ``radstore.metric.<task>.<head>.
<encoder>.<metric>``, payload: both values, the paired difference with its interval, q), so a
Prefect automation can notify (README, "Why did this number change?"). Changes within noise
raise nothing; an unchanged rerun makes no new evaluation and compares nothing.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event

from evaluation.diff import diff, previous_eval_id, regressions
from featurestore.store import Store

EVENT = "radstore.metric.regressed"
ARTIFACT_KEY = "regressions"


def _resource(c) -> dict[str, str]:
    name = f"{c.task}.{c.head}.{c.encoder}.{c.metric}".replace(" ", "_")
    return {"prefect.resource.id": f"radstore.metric.{name}", "prefect.resource.name": f"{c.task} {c.head} {c.encoder} {c.metric}"}


@task(name="regressions")
def regressions_task(store: str, eval_id: str, created: bool, storage_options: dict | None = None, alpha: float = 0.05) -> list[dict]:
    """Alert on every regression of ``eval_id`` against the evaluation before it; returns them as
    JSON rows. Nothing to compare when the evaluation is not new or is the store's first."""
    log = get_run_logger()
    st = Store.open(store, storage_options=storage_options)
    prev = previous_eval_id(st, eval_id) if created else None
    if prev is None:
        return []
    found = regressions(diff(st, prev, eval_id, alpha=alpha))
    rows = [c.to_json() | {"previous_eval": prev, "eval_id": eval_id} for c in found]
    for c, row in zip(found, rows):
        log.warning(
            "REGRESSION %s/%s %s %s: %.4g -> %.4g (delta %.4g [%.4g, %.4g], q=%.3g) since %s; radstore diff %s %s",
            c.task, c.head, c.encoder, c.metric, c.value_a, c.value_b, c.delta, c.ci_low, c.ci_high, c.q, prev, prev, eval_id,
        )  # fmt: skip
        emit_event(event=EVENT, resource=_resource(c), payload={k: row[k] for k in row if k != "reasons"} | {"reasons": c.reasons})
    if rows:
        create_table_artifact(
            [{k: (", ".join(v) if isinstance(v, list) else v) for k, v in r.items()} for r in rows],
            key=ARTIFACT_KEY,
            description=f"headline metrics significantly worse in {eval_id} than in {prev}",
        )
    return rows
