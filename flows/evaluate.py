"""Prefect flow ``evaluate``: one immutable metric version, published as Prefect artifacts.

Thin: the task calls :func:`evaluation.artifacts.evaluate`. The table and markdown artifacts
have stable keys (``evaluation`` and ``evaluation-summary``), so a scheduled deployment's
history of results is one series in Prefect's UI.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from evaluation.artifacts import EvalConfig, evaluate, read_evaluation, results_table
from evaluation.controls import ControlCheck, markdown, missed
from featurestore.store import Store
from flows import prefect_env  # noqa: F401

ARTIFACT_KEY = "evaluation"


@task(name="evaluate-runs")
def evaluate_task(store: str, run_ids: list[str] | None, cfg: EvalConfig, storage_options: dict | None) -> dict:
    ev = evaluate(Store.open(store, storage_options=storage_options), run_ids, cfg)
    return {"eval_id": ev.eval_id, "path": ev.path, "created": ev.created}


def markdown_summary(meta: dict, rows: list[dict], comparisons: list[dict]) -> str:
    """The evaluation as markdown: headline metrics with CIs, then significant differences."""
    lines = [
        f"# Evaluation `{meta['eval_id']}`",
        "",
        f"{len(meta['runs'])} run(s), {meta['config']['resamples']} bootstrap resamples (seed {meta['config']['seed']}, "
        f"{meta['config']['method']}), code {meta['code_version']}, created {meta['created_at']}.",
        "",
        "| task | head | encoder | fold | metric | value [95% CI] | n |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['task']} | {r['head']} | {r['encoder']} | {r['fold']} | {r['metric']} | {r['value [95% CI]']} | {r['n']} |" for r in rows
    ]
    sig = [c for c in comparisons if c["p_bonferroni"] is not None and c["p_bonferroni"] < 0.05]
    lines += ["", f"## Differences significant after Bonferroni correction ({len(sig)} of {len(comparisons)})", ""]
    lines += [
        f"- {c['task']} / {c['head']} / {c['metric']} ({c['test']}): {c['encoder_a']} - {c['encoder_b']} = "
        f"{c['diff']:+.3f}, p = {c['p']:.2g}, corrected p = {c['p_bonferroni']:.2g}"
        for c in sig
    ] or ["- none"]
    return "\n".join(lines) + "\n"


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    store: str, run_ids: list[str] | None = None, config: dict[str, Any] | None = None, storage_options: dict[str, Any] | None = None
) -> dict:
    """Evaluate runs (default: the latest of each task x head x fold x feature set); returns
    ``{"eval_id", "path", "created", "config", "controls", "controls_missed"}``. A positive-control
    metric that misses its expected value is a warning and an artifact (``evaluation-positive-control``)."""
    cfg = EvalConfig(**(config or {}))
    out = evaluate_task(store, run_ids, cfg, storage_options)
    meta, tables = read_evaluation(Store.open(store, storage_options=storage_options), out["eval_id"])
    rows = results_table(tables["metrics"])
    create_table_artifact(rows, key=ARTIFACT_KEY, description=f"headline metrics of {out['eval_id']}")
    create_markdown_artifact(
        markdown_summary(meta, rows, tables["comparisons"].to_pylist()),
        key=f"{ARTIFACT_KEY}-summary",
        description=f"evaluation {out['eval_id']}",
    )
    log = get_run_logger()
    log.info("evaluation %s (%s) at %s", out["eval_id"], "new" if out["created"] else "unchanged inputs: existing version", out["path"])
    if meta.controls:
        create_markdown_artifact(markdown(meta.controls), key=f"{ARTIFACT_KEY}-positive-control", description="positive control checks")
        for c in missed(meta.controls):
            log.warning("%s: the pipeline lost (or leaked) signal it was given", ControlCheck(**c).line())
    return {**out, "config": asdict(cfg), "controls": list(meta.controls), "controls_missed": len(missed(meta.controls))}


__all__ = ["ARTIFACT_KEY", "evaluate_flow", "markdown_summary"]
