"""Regression alerts of a scheduled study: compare each evaluation the study publishes with the one
it published before (``published.json``, evaluation.diff) and publish every headline metric that
got significantly worse.

Each regression is logged as a warning, listed in the ``regressions`` table artifact (published
on every run, empty when there is none, so the series shows the current state) and emitted as
the Prefect event ``radstore.metric.regressed`` (resource ``radstore.metric.<task>.<head>.
<fold>.<encoder>.<metric>``, payload: both values, the paired difference with its interval, q,
the reasons), so a Prefect automation can notify (README, "Why did this number change?").
Changes within noise raise nothing. The baseline is the study's own previous publication, not
the store's newest evaluation, so an ad-hoc ``radstore evaluate`` does not become the baseline,
and a study that returns to an older version (a reverted label) is still compared.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event

from evaluation.diff import diff, regressions
from featurestore.layout.records import evaluation_exists, read_published, write_published
from featurestore.store import Store

EVENT = "radstore.metric.regressed"
ARTIFACT_KEY = "regressions"


def _resource(c) -> dict[str, str]:
    fold = "all" if c.fold is None else f"fold{c.fold}"
    name = f"{c.task}.{c.head}.{fold}.{c.encoder}.{c.metric}".replace(" ", "_")
    return {"prefect.resource.id": f"radstore.metric.{name}", "prefect.resource.name": f"{c.task} {c.head} {c.encoder} {c.metric}"}


def check(store: Store, eval_id: str, alpha: float = 0.05) -> tuple[str | None, list]:
    """(baseline, regressions of ``eval_id`` against it); publishes ``eval_id`` as the new baseline.
    No baseline (the first publication), the same evaluation again, or a baseline that was
    deleted: nothing to compare."""
    baseline = read_published(store)
    write_published(store, eval_id)
    if baseline is None or baseline == eval_id or not evaluation_exists(store, baseline):
        return None, []
    return baseline, regressions(diff(store, baseline, eval_id, alpha=alpha))


@task(name="regressions")
def regressions_task(store: str, eval_id: str, storage_options: dict | None = None, alpha: float = 0.05) -> list[dict]:
    """Alert on every regression of ``eval_id`` against the study's previous publication; returns
    them as JSON rows. A failure of the check is logged, never fails the study."""
    log = get_run_logger()
    try:
        prev, found = check(Store.open(store, storage_options=storage_options), eval_id, alpha)
    except Exception as e:  # noqa: BLE001 - an alert check must not lose the night's results
        log.warning("regression check of %s failed: %s: %s", eval_id, type(e).__name__, e)
        return []
    rows = [c.to_json() | {"previous_eval": prev, "eval_id": eval_id} for c in found]
    for c, row in zip(found, rows):
        log.warning(
            "REGRESSION %s/%s %s %s: %.4g -> %.4g (delta %.4g [%.4g, %.4g], q=%.3g) since %s; radstore diff %s %s",
            c.task, c.head, c.encoder, c.metric, c.value_a, c.value_b, c.delta, c.ci_low, c.ci_high, c.q, prev, prev, eval_id,
        )  # fmt: skip
        emit_event(event=EVENT, resource=_resource(c), payload=row)
    table = [{k: (", ".join(v) if isinstance(v, list) else v) for k, v in r.items()} for r in rows]
    create_table_artifact(
        table or [{"eval_id": eval_id, "previous_eval": prev, "regressions": 0}],
        key=ARTIFACT_KEY,
        description=f"headline metrics significantly worse in {eval_id} than in {prev}" if rows else f"no regression in {eval_id}",
    )
    return rows
