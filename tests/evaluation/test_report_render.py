"""The report's layers apart: figures from hand-made arrays, the page from a hand-made
ReportData (no store), names that look like markup rendered as text, and task kinds the
report has never heard of."""

from __future__ import annotations

import dataclasses
import html
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from evaluation.report import (
    Overlay,
    OverlayImage,
    ReportData,
    dice_figure,
    forest_figure,
    overlay_figure,
    pvalue_figure,
    render_report,
    roc_pr_figure,
    scatter_figure,
)
from evaluation.report import figures as figures_module
from evaluation.report import masks as masks_module
from evaluation.report.masks import best_mask_run, pick_images
from featurestore.layout.records import EvaluationRecord
from featurestore.tasks import TASK_KINDS, TASKS, TaskDef, TaskKind
from tests.evaluation.report_checks import real_png as _png

EVIL = "<b>x</b>"
ENCODERS = (EVIL, "enc & co", "plain")
CONFIG = {"resamples": 200, "seed": 1, "method": "percentile", "confidence": 0.95, "threshold": 0.5, "empty_both": "one"}


def synthetic(tasks: dict[str, str], n: int = 20, seed: int = 0) -> ReportData:
    """A ReportData built by hand: every encoder x task (kind as given) with a linear head,
    paired-bootstrap comparisons, per-image rows and overlays for mask kinds, and folds for
    the first task. Names carry markup on purpose."""
    rng = np.random.default_rng(seed)
    metrics, comparisons, per_image, runs, predictions, overlays = [], [], [], [], {}, {}
    for task, kind in tasks.items():
        spec = TASK_KINDS[kind]
        values = {}
        for j, enc in enumerate(ENCODERS):
            rid = f"run-{task}-{j}-<i>"
            runs.append(
                {
                    "run_id": rid,
                    "task": task,
                    "task_kind": kind,
                    "head": "linear",
                    "encoder": enc,
                    "feature_set_id": f"fs-{j}",
                    "fold": None,
                    "predictions_sha256": "ab" * 32,
                    "run_code_version": "0.1",
                }
            )
            for k, m in enumerate(spec.metrics):
                v = values[(enc, m)] = float(rng.uniform(0.5, 0.9))
                metrics.append(
                    {
                        "task": task,
                        "task_kind": kind,
                        "head": "linear",
                        "encoder": enc,
                        "fold": None,
                        "metric": m,
                        "primary": k == 0,
                        "value": v,
                        "ci_low": v - 0.1,
                        "ci_high": v + 0.1,
                        "confidence": 0.95,
                        "run_id": rid,
                        "feature_set_id": f"fs-{j}",
                        "n": n,
                        "method": "percentile",
                    }
                )
            if spec.dense:
                for i in range(n):
                    d = float(rng.uniform(0, 1))
                    per_image.append(
                        {
                            "run_id": rid,
                            "task": task,
                            "head": "linear",
                            "encoder": enc,
                            "feature_set_id": f"fs-{j}",
                            "fold": None,
                            "image_id": f"img-{i}<u>",
                            "mask_row": i,
                            "dice": d,
                            "iou": d / (2 - d),
                            "true_pixels": 30,
                            "predicted_pixels": 25,
                        }
                    )
            else:
                y = (rng.uniform(size=n) > 0.5).astype(float) if spec.prediction == "score" else rng.normal(size=n)
                predictions[rid] = (y, y + rng.normal(scale=0.7, size=n))
        for a in range(len(ENCODERS)):
            for b in range(a + 1, len(ENCODERS)):
                for m in spec.metrics:
                    ea, eb = ENCODERS[a], ENCODERS[b]
                    p = float(rng.uniform(0, 0.2))
                    comparisons.append(
                        {
                            "test": "paired-bootstrap",
                            "task": task,
                            "head": "linear",
                            "fold": None,
                            "metric": m,
                            "encoder_a": ea,
                            "encoder_b": eb,
                            "value_a": values[(ea, m)],
                            "value_b": values[(eb, m)],
                            "diff": values[(ea, m)] - values[(eb, m)],
                            "ci_low": -0.1,
                            "ci_high": 0.1,
                            "p": p,
                            "p_bonferroni": min(1.0, 3 * p),
                            "p_holm": min(1.0, 2 * p),
                            "family_size": 3,
                            "n": n,
                        }
                    )
        if spec.dense:
            rid, rows = best_mask_run(task, per_image)
            images = [
                OverlayImage(
                    name,
                    r,
                    rng.uniform(size=(8, 8)).astype(np.float32),
                    (rng.uniform(size=(8, 8)) > 0.5).astype(np.uint8),
                    None if i == 0 else rng.uniform(size=(128, 128)).astype(np.float32),
                )
                for i, (name, r) in enumerate(pick_images(rows, 3))
            ]
            overlays[task] = Overlay(task, rid, rows[0]["encoder"], "linear", None, float(np.mean([r["dice"] for r in rows])), images)
    first = next(iter(tasks))
    primary = TASK_KINDS[tasks[first]].primary
    folds = [
        {
            "task": first,
            "head": "linear",
            "metric": primary,
            "encoder": e,
            "folds": 3,
            "median": 0.7,
            "mean": 0.7,
            "ci_low": 0.6,
            "ci_high": 0.8,
            "mean_rank": 1.0 + i,
            "friedman_statistic": 4.0,
            "friedman_p": 0.1,
        }
        for i, e in enumerate(ENCODERS)
    ]
    comparisons += [
        {
            "test": "nemenyi",
            "task": first,
            "head": "linear",
            "fold": None,
            "metric": primary,
            "encoder_a": a,
            "encoder_b": b,
            "value_a": 0.7,
            "value_b": 0.6,
            "diff": 1.0,
            "ci_low": None,
            "ci_high": None,
            "p": 0.3,
            "p_bonferroni": 0.3,
            "p_holm": 0.3,
            "family_size": 3,
            "n": 3,
        }
        for a, b in ((ENCODERS[0], ENCODERS[1]), (ENCODERS[0], ENCODERS[2]), (ENCODERS[1], ENCODERS[2]))
    ]
    record = EvaluationRecord(eval_id="eval-<b>x</b>", created_at="2025-01-01T00:00:00+00:00", config=CONFIG, runs=runs)
    return ReportData(record, "file:///tmp/<b>store</b>", metrics, comparisons, per_image, folds, predictions, overlays)


DEFAULT_TASKS = {"cls<script>alert(1)</script>": "classification", "ctr-reg": "regression", "heart-seg": "segmentation"}


def _figure_names(text: str) -> set[str]:
    return {Path(f).stem for f in re.findall(r'<a href="(figures/[^"]+\.png)"><img src="data:image/png;base64,', text)}


def test_names_from_the_data_are_escaped_everywhere(tmp_path):
    index = render_report(synthetic(DEFAULT_TASKS), tmp_path)
    text = index.read_text(encoding="utf-8")
    assert EVIL not in text and html.escape(EVIL) in text
    assert "<script" not in text.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<i>" not in text and "run-ctr-reg-0-&lt;i&gt;" in text  # run ids
    assert "<u>" not in text and "img-" in text  # image ids in the overlay caption
    assert "enc &amp; co" in text and "eval-&lt;b&gt;x&lt;/b&gt;" in text and "&lt;b&gt;store&lt;/b&gt;" in text
    # Figure files are named from slugs of the names, never from the raw text.
    names = _figure_names(text)
    assert names == {
        "forest",
        "roc-pr-cls-script-alert-1-script",
        "regression-ctr-reg",
        "dice-heart-seg",
        "overlay-heart-seg",
        "pvalues-paired-bootstrap",
        "pvalues-nemenyi",
    }
    for name in names:
        _png((tmp_path / "figures" / f"{name}.png").read_bytes(), name)
    # Sections in kind order, numbered; the results note points at the comparisons section.
    heads = re.findall(r"<h2>(.*?)</h2>", text)
    assert heads == [
        "1. Results",
        "2. Confidence intervals",
        "3. Classification: ROC and precision-recall",
        "4. Regression: predicted vs true",
        "5. Segmentation: per-image Dice",
        "6. Segmentation overlays",
        "7. Comparisons between encoders",
        "8. Calibration and operating points",
        "9. Label efficiency",
        "10. Subgroups",
        "11. Embedding health",
    ]
    assert "the table of all metrics and section 7." in text


def test_kinds_without_tasks_say_so_and_lower_is_better_is_bold(tmp_path, monkeypatch):
    # A kind whose headline is lower-is-better: the smallest value is the best of its column.
    monkeypatch.setitem(TASK_KINDS, "error", TaskKind("error", "global", "value", "regression", ("mae", "r2"), ("linear",)))
    data = synthetic({"err-task": "error"})
    text = render_report(data, tmp_path).read_text(encoding="utf-8")
    assert "No classification task in this evaluation." in text and "No segmentation task in this evaluation." in text
    maes = {m["encoder"]: m["value"] for m in data.metrics if m["metric"] == "mae"}
    best = min(maes, key=maes.get)
    cell = re.search(rf'<td class="num best" data-encoder="{re.escape(html.escape(best))}"[^>]*>(.*?)</td>', text)
    assert cell and cell.group(1).startswith("<b>"), text[:2000]
    assert text.count('class="num best"') == 1


def test_made_up_kinds_render(tmp_path, monkeypatch):
    """A registered kind predicting a value gets the scatter; one predicting a column the report
    has no figure for is still in the tables and the forest plot."""
    monkeypatch.setitem(TASK_KINDS, "severity", TaskKind("severity", "global", "value", "regression", ("r2", "mae"), ("linear",)))
    monkeypatch.setitem(TASK_KINDS, "count", TaskKind("count", "global", "count", "regression", ("mae",), ("linear",)))
    monkeypatch.setitem(TASKS, "severity-reg", TaskDef("severity-reg", "severity", "severity"))
    data = synthetic({"cardio": "classification", "severity-reg": "severity", "lesions": "count"})
    index = render_report(data, tmp_path, correction="holm")
    text = index.read_text(encoding="utf-8")
    assert _figure_names(text) == {"forest", "roc-pr-cardio", "regression-severity-reg", "pvalues-paired-bootstrap", "pvalues-nemenyi"}
    assert (
        "<h2>7. Severity: predicted vs true</h2>" in text
        and "<h2>8. Comparisons between encoders</h2>" in text
        and "No regression task in this evaluation." in text
    )
    for task in ("cardio", "severity-reg", "lesions"):
        assert f'data-task="{task}" data-fold="">' in text, task
    assert "lesions: MAE" in text  # the count kind's headline, named by the metric table
    assert "Holm-corrected p" in text


def test_figure_functions_take_no_store():
    for module in (figures_module, masks_module):
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__:
                assert "store" not in inspect.signature(fn).parameters, f"{module.__name__}.{name}"


def test_figures_from_arrays():
    data = synthetic(DEFAULT_TASKS)
    cols = {e: c for e, c in zip(ENCODERS, ("#0072B2", "#E69F00", "#009E73"))}
    values = {(m["run_id"], m["metric"]): m["value"] for m in data.metrics}
    labels = {m["run_id"]: m["encoder"] for m in data.metrics}
    runs = [r for r in data.runs if r["task"] == "ctr-reg"]
    _png(scatter_figure("ctr-reg", runs, data.predictions, values, labels, cols, "CTR"), "scatter")
    cls = [r for r in data.runs if r["task_kind"] == "classification"]
    _png(roc_pr_figure("c", {None: cls}, data.predictions, values, labels, cols), "roc")
    # A one-class split: curves undefined, the panel says so instead of failing.
    one_class = {r["run_id"]: (np.ones(10), np.linspace(0, 1, 10)) for r in cls}
    _png(roc_pr_figure("c", {None: cls, 0: cls}, one_class, values, labels, cols), "roc one class")
    _png(dice_figure("heart-seg", data.per_image, cols), "dice")
    _png(forest_figure([m for m in data.metrics if m["primary"]], cols), "forest")
    primary = {"ctr-reg": "r2"}
    _png(pvalue_figure(data.comparisons, "paired-bootstrap", "p_holm", "Holm p", primary, "t"), "pvalues")
    im = _png(overlay_figure(data.overlays["heart-seg"], 0.5), "overlay")
    assert im.width > 2 * im.height
    assert dice_figure("nope", data.per_image, cols) is None and forest_figure([], cols) is None
    assert scatter_figure("ctr-reg", [], {}, values, labels, cols) is None
    assert overlay_figure(dataclasses.replace(data.overlays["heart-seg"], images=[]), 0.5) is None


@pytest.mark.slow
def test_session_report_with_markup_in_names(evaluated_store, tmp_path):
    """The real pipeline's data, with an encoder and a task renamed to markup after gathering."""
    from evaluation.report import gather
    from featurestore.store import Store

    url, eval_id, _ = evaluated_store
    data = gather(Store.open(url), eval_id, overlays=3)
    rename = {"pixels": EVIL, "heart-seg": "<script>heart</script>"}

    def fix(rows):
        return [{k: rename.get(v, v) if isinstance(v, str) else v for k, v in r.items()} for r in rows]

    overlays = {
        rename.get(t, t): dataclasses.replace(o, task=rename.get(t, t), encoder=rename.get(o.encoder, o.encoder))
        for t, o in data.overlays.items()
    }
    data = dataclasses.replace(
        data,
        record=dataclasses.replace(data.record, runs=fix(data.runs)),
        metrics=fix(data.metrics),
        comparisons=fix(data.comparisons),
        per_image=fix(data.per_image),
        folds=fix(data.folds),
        overlays=overlays,
    )
    text = render_report(data, tmp_path).read_text(encoding="utf-8")
    assert EVIL not in text and html.escape(EVIL) in text
    assert "<script" not in text.lower() and "&lt;script&gt;heart&lt;/script&gt;" in text
    assert {"dice-script-heart-script", "overlay-script-heart-script"} <= _figure_names(text)
