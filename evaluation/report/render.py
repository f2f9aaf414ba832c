"""The page: figures chosen per task kind, tables, and the autoescaped Jinja2 template that
holds them, written to ``out_dir/index.html`` with every figure also in ``out_dir/figures/``.

Sections follow the task kinds (featurestore.tasks) in their display order, and the figures
of a kind follow what it predicts: a score gets ROC and precision-recall curves, a value a
predicted-vs-true scatter, a mask per-image Dice and overlays. A kind predicting anything else
is in the results tables and the forest plot, with no figure of its own.
"""

from __future__ import annotations

import base64
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from evaluation.report import decisions as D
from evaluation.report import health as H
from evaluation.report import label_efficiency as LE
from evaluation.report import subgroups as SG
from evaluation.report import tables as T
from evaluation.report.common import (
    colours,
    finite,
    fmt,
    headline_rows,
    kind_metrics,
    label,
    metric_display,
    primary_metrics,
    runs_by_split,
    slug,
    task_order,
)
from evaluation.report.figures import forest_figure, pvalue_figure, roc_pr_figure, scatter_figure
from evaluation.report.gather import ReportData, gather
from evaluation.report.masks import dice_figure, overlay_figure
from featurestore.errors import RadstoreError
from featurestore.tasks import MASK, TASK_KINDS, TASKS, kind_order

if TYPE_CHECKING:
    from featurestore.store import Store

CORRECTIONS = {"bonferroni": "p_bonferroni", "holm": "p_holm", "none": "p"}
CORRECTION_NAMES = {"bonferroni": "Bonferroni-corrected p", "holm": "Holm-corrected p", "none": "uncorrected p"}


@dataclass(frozen=True)
class Block:
    """A figure of the page (``png`` None: "nothing to plot"), or, with ``note``, a note in its place."""

    name: str = ""
    caption: str = ""
    png: bytes | None = None
    note: str | None = None

    @property
    def b64(self) -> str:
        """The PNG as base64 text, for embedding in the page as a data URI (empty without a figure)."""
        return base64.b64encode(self.png or b"").decode("ascii")


@dataclass
class Section:
    """A numbered section of figures (or notes) of one task kind."""

    number: int
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass(frozen=True)
class Context:
    """What every section's figures need besides the data: one colour and label per encoder."""

    data: ReportData
    colours: dict[str, str]
    values: dict[tuple[str, str], float]  # (run_id, metric) -> value
    labels: dict[str, str]  # run_id -> encoder label of the evaluation


@cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment of the report templates: autoescaping on, so every name that
    comes from the store (task, encoder, run id) reaches the page as text, never as markup."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("evaluation.report", "templates"),
        autoescape=jinja2.select_autoescape(("html", "j2"), default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def results_table_html(rows: list[dict]) -> str:
    """The results table (headline rows, see :func:`~evaluation.report.tables.results_table`) as HTML."""
    return str(environment().get_template("macros.html.j2").module.table(T.results_table(rows)))


# -- figure sections per prediction of a task kind ----------------------------------------------


def _scores(ctx: Context, kind: str, tasks: list[str]) -> list[tuple[str, list[Block]]]:
    blocks = [
        Block(
            f"roc-pr-{slug(t)}",
            f"{t}: ROC and precision-recall curves per encoder and split (AUROC / AP from the evaluation)",
            roc_pr_figure(t, runs_by_split(ctx.data.runs, t), ctx.data.predictions, ctx.values, ctx.labels, ctx.colours),
        )
        for t in tasks
    ]
    return [(f"{kind.capitalize()}: ROC and precision-recall", blocks)]


def _values(ctx: Context, kind: str, tasks: list[str]) -> list[tuple[str, list[Block]]]:
    blocks = []
    for t in tasks:
        runs = [r for rs in runs_by_split(ctx.data.runs, t).values() for r in rs]
        quantity = TASKS[t].column.upper() if t in TASKS else "value"
        png = scatter_figure(t, runs, ctx.data.predictions, ctx.values, ctx.labels, ctx.colours, quantity, kind_metrics(kind))
        blocks.append(Block(f"regression-{slug(t)}", f"{t}: predicted vs true per encoder; dashed = identity", png))
    return [(f"{kind.capitalize()}: predicted vs true", blocks)]


def _masks(ctx: Context, kind: str, tasks: list[str]) -> list[tuple[str, list[Block]]]:
    dice = [
        Block(f"dice-{slug(t)}", f"{t}: Dice per test image per encoder / head", dice_figure(t, ctx.data.per_image, ctx.colours))
        for t in tasks
    ]
    overlays = []
    for t in tasks:
        ov = ctx.data.overlays.get(t)
        png = overlay_figure(ov, ctx.data.threshold(ov.run_id)) if ov is not None else None
        if png is None:
            overlays.append(Block(note=f"{t}: no overlay (overlays=0 or no finite Dice)."))
            continue
        shown = "; ".join(f"{im.name} {im.row['image_id']} (Dice {fmt(im.row['dice'])})" for im in ov.images)
        overlays.append(
            Block(
                f"overlay-{slug(t)}",
                png=png,
                caption=(
                    f"{t}: {ov.encoder} / {ov.head} (best mean Dice {fmt(ov.mean_dice)}, run {ov.run_id}): {shown}. "
                    "Blue contour: true mask; orange: predicted mask"
                ),
            )
        )
    return [(f"{kind.capitalize()}: per-image Dice", dice), (f"{kind.capitalize()} overlays", overlays)]


#: The figure sections of a task kind, by the prediction it makes (TaskKind.prediction).
SECTIONS: dict[str, Callable[[Context, str, list[str]], list[tuple[str, list[Block]]]]] = {"score": _scores, "value": _values, MASK: _masks}


def kind_sections(ctx: Context, tasks: list[str], first: int) -> list[Section]:
    """The figure sections of every kind with figures, registered or evaluated, in display
    order; a kind with no task in this evaluation says so rather than vanish."""
    kinds = {m["task"]: m["task_kind"] for m in ctx.data.metrics}
    out = []
    for kind in sorted(set(TASK_KINDS) | set(kinds.values()), key=lambda k: (kind_order(k), k)):
        build = SECTIONS.get(TASK_KINDS[kind].prediction) if kind in TASK_KINDS else None
        if build is None:
            continue
        kind_tasks = [t for t in tasks if kinds[t] == kind]
        for title, blocks in build(ctx, kind, kind_tasks):
            out.append(Section(first + len(out), title, blocks or [Block(note=f"No {kind} task in this evaluation.")]))
    return out


# -- calibration and operating points ----------------------------------------------------------


def decisions_section(data: ReportData, palette: dict[str, str], number: int) -> dict[str, Any]:
    """The "Calibration and operating points" section: per classification task a reliability
    diagram, a calibration table and an operating-points table (:mod:`evaluation.report.decisions`).
    Always on the page, like the health section, so the sections after it keep their numbers: an
    evaluation without classification runs says so, one made before these tables existed says to
    re-run it. ``palette``: the report's encoder colours."""
    cfg = data.config
    least = cfg.get("min_class_count")
    tasks = D.decision_tasks(data.metrics, data.calibration)
    note = None
    if not tasks:
        note = D.NO_CLASSIFICATION
    elif not data.calibration and not data.operating_points:
        note = D.OLD_EVALUATION
    shown = []
    if note is None:
        for t in tasks:
            cal = D.calibration_table(data.calibration, t, least)
            ops = D.operating_points_table(data.operating_points, t, least)
            png = D.reliability_figure(t, data.reliability, data.calibration, palette, least)
            caption = D.figure_caption(t, data.reliability, data.calibration, cfg.get("calibration_bins"))
            figure = Block(D.figure_name(t), caption, png) if png is not None else Block(note=f"{t}: no calibration rows for this task.")
            shown.append({"task": t, "figure": figure, "calibration": cal, "operating": ops})
    conf = round(100 * (data.metrics[0]["confidence"] if data.metrics else cfg.get("confidence", 0.95)))  # as the page's other intervals
    return {"number": number, "note": note, "tasks": shown, "conf": conf, "bins": cfg.get("calibration_bins", 10)}


def decisions_section_html(section: dict[str, Any]) -> str:
    """The section of :func:`decisions_section` as an HTML fragment (what the page holds)."""
    return str(environment().get_template("macros.html.j2").module.decisions_section(section))


# -- label efficiency and subgroups -------------------------------------------------------------


def _confidence(data: ReportData) -> int:
    """The evaluation's interval level in percent, as the page's other intervals print it."""
    return round(100 * (data.metrics[0]["confidence"] if data.metrics else data.config.get("confidence", 0.95)))


def label_efficiency_section(data: ReportData, palette: dict[str, str], number: int) -> dict[str, Any]:
    """The "Label efficiency" section: per task with curve points a figure of its primary metric
    against the training labels, a table of the points and one of the encoders' comparisons at
    each size (:mod:`evaluation.report.label_efficiency`). Always on the page, like the
    calibration and health sections, so the sections after it keep their numbers: an evaluation
    without label-efficiency runs says how to plan them. ``palette``: the report's encoder colours."""
    rows = data.label_efficiency
    shown = []
    for t in LE.tasks(rows):
        png = LE.curve_figure(t, rows, palette)
        figure = (
            Block(LE.figure_name(t), LE.figure_caption(t, rows), png) if png is not None else Block(note=f"{t}: no primary-metric rows.")
        )
        shown.append({
            "task": t,
            "metric": metric_display(LE.primary_metric(rows, t) or ""),
            "figure": figure,
            "table": LE.curve_table(rows, t),
            "comparisons": LE.comparisons_table(data.label_efficiency_comparisons, t, LE.primary_metric(rows, t)),
        })  # fmt: skip
    conf = round(100 * rows[0]["confidence"]) if rows and finite(rows[0]["confidence"]) else _confidence(data)
    return {"number": number, "note": None if rows else LE.NOT_CONFIGURED, "tasks": shown, "conf": conf, "alpha": f"{LE.ALPHA:g}"}


def label_efficiency_section_html(section: dict[str, Any]) -> str:
    """The section of :func:`label_efficiency_section` as an HTML fragment (what the page holds)."""
    return str(environment().get_template("macros.html.j2").module.label_efficiency_section(section))


def subgroups_section(data: ReportData, palette: dict[str, str], number: int) -> dict[str, Any]:
    """The "Subgroups" section: per task with subgroup rows a forest plot of its primary metric
    per subgroup and encoder, and the subgroups that differ from the rest after Holm's correction
    (:mod:`evaluation.report.subgroups`). Always on the page (numbering stays stable): an
    evaluation without subgroup rows says why there may be none. ``palette``: the report's
    encoder colours."""
    rows = data.subgroups
    note = SG.section_note(rows, data.config)
    primary = SG.primary_by_task(rows, data.metrics, data.config)
    conf = _confidence(data)
    shown = []
    for t in SG.tasks(rows) if note is None else []:
        metric = primary.get(t)
        subset = SG.task_rows(rows, t, metric)
        png = SG.forest_figure(t, subset, SG.whole_value(data.metrics, metric), palette, conf)
        figure = (Block(SG.figure_name(t), SG.figure_caption(t, metric, conf), png) if png is not None
                  else Block(note=f"{t}: no subgroup with a value of {metric_display(metric or '')}."))  # fmt: skip
        table = SG.significant_table(rows, t, metric)
        empty = SG.unknown_columns(subset)
        shown.append({
            "task": t,
            "metric": metric_display(metric or ""),
            "figure": figure,
            "significant": table,
            "none": SG.no_difference_note(rows, t, metric) if table is None else None,
            "unknown": f"{t}: no test image has a value in {', '.join(empty)} (left out)." if empty and png is not None else None,
        })  # fmt: skip
    return {"number": number, "note": note, "tasks": shown, "conf": conf, "alpha": f"{SG.ALPHA:g}"}


def subgroups_section_html(section: dict[str, Any]) -> str:
    """The section of :func:`subgroups_section` as an HTML fragment (what the page holds)."""
    return str(environment().get_template("macros.html.j2").module.subgroups_section(section))


# -- embedding health ---------------------------------------------------------------------------


def health_section(health: list[H.HealthData], runs: list[dict], store_url: str, palette: dict[str, str], number: int) -> dict[str, Any]:
    """The "Embedding health" section: the latest health version of each feature set the runs
    read (tables and figures of :mod:`evaluation.report.health`), and which feature sets have
    none yet, with the command that checks them. ``palette``: the report's encoder colours."""
    shown = {h.feature_set_id for h in health}
    missing = sorted({(r["encoder"], r["feature_set_id"]) for r in runs if r["feature_set_id"] not in shown})
    return {
        "number": number,
        "missing": [f"{label(e)} ({fsid})" for e, fsid in missing],
        "command": shlex.join(["radstore", "health", "--store", store_url, *(a for _, fsid in missing for a in ("--feature-set", fsid))]),
        "summary": H.summary_table(health) if health else None,
        "blocks": [Block(name, caption, png) for name, caption, png in H.health_figures(health, palette)] if health else [],
        "leakage": H.leakage_table(health),
        "leakage_notes": H.leakage_notes(health),
        "leakage_rule": H.leakage_rule(health),
        "drift": H.drift_table(health),
    }


def health_section_html(section: dict[str, Any]) -> str:
    """The section of :func:`health_section` as an HTML fragment (what the page holds)."""
    return str(environment().get_template("macros.html.j2").module.health_section(section))


# -- the page -----------------------------------------------------------------------------------


def render_report(data: ReportData, out_dir: str | Path, correction: str = "bonferroni", *, started: float | None = None) -> Path:
    """Draw every figure of ``data``, write them to ``out_dir/figures/`` and the page to
    ``out_dir/index.html`` (replaced atomically); returns the page's path. ``started``: the
    ``time.perf_counter()`` the page's "generated in" counts from (default: now)."""
    t0 = time.perf_counter() if started is None else started
    _check_correction(correction)
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    metrics = data.metrics
    tasks = task_order(metrics)
    primary = primary_metrics(metrics)
    ctx = Context(
        data,
        colours(m["encoder"] for m in metrics),
        {(m["run_id"], m["metric"]): m["value"] for m in metrics},
        {m["run_id"]: m["encoder"] for m in metrics},
    )
    conf = round(100 * (metrics[0]["confidence"] if metrics else data.config.get("confidence", 0.95)))
    headline = headline_rows(metrics)
    sections = kind_sections(ctx, tasks, first=3)
    what = CORRECTION_NAMES[correction]
    has_folds = bool(data.folds)
    page = {
        "eval_id": data.eval_id,
        "encoders": sorted(ctx.colours),
        "tasks": tasks,
        "conf": conf,
        "meta": T.meta_table(data.record, data.store_url, correction),
        "primary": [(t, metric_display(m)) for t, m in primary.items()],
        "has_folds": has_folds,
        "results": T.results_table(headline) if headline else None,
        "all_metrics": T.all_metrics_table(metrics, tasks),
        "runs": T.runs_table(data.runs),
        "provenance": T.provenance_table(data.provenance),
        "cohort_hash": data.cohort_hash,
        "previous": data.previous,
        "changes": data.changes,
        "forest": Block(
            "forest",
            f"Forest plot: primary metric and {conf}% CI per encoder / head (and fold), one panel per task",
            forest_figure([m for m in metrics if m["primary"]], ctx.colours),
        ),
        "sections": sections,
        "comparisons": {
            "number": 3 + len(sections),
            "what": what,
            "table": T.comparisons_table(data.comparisons, tasks),
            "pvalues": Block(
                "pvalues-paired-bootstrap",
                f"{what} of the paired bootstrap, primary metric, encoders x encoders",
                pvalue_figure(
                    data.comparisons,
                    "paired-bootstrap",
                    CORRECTIONS[correction],
                    what,
                    primary,
                    f"{what}, paired bootstrap of the difference",
                ),
            ),
            "folds": T.folds_table(data.folds) if has_folds else None,
            "nemenyi": Block(
                "pvalues-nemenyi",
                "Nemenyi post-hoc p-values after Friedman's test across folds, primary metric",
                pvalue_figure(
                    data.comparisons,
                    "nemenyi",
                    "p",
                    "Nemenyi p (family-wise)",
                    primary,
                    "Nemenyi post-hoc p after Friedman's test across folds",
                ),
            )
            if has_folds
            else None,
        },
    }
    page["decisions"] = decisions_section(data, ctx.colours, page["comparisons"]["number"] + 1)
    page["label_efficiency"] = label_efficiency_section(data, ctx.colours, page["decisions"]["number"] + 1)
    page["subgroups"] = subgroups_section(data, ctx.colours, page["label_efficiency"]["number"] + 1)
    page["health"] = health_section(data.health, data.runs, data.store_url, ctx.colours, page["subgroups"]["number"] + 1)
    for block in _blocks(page):
        if block.png is not None:
            (out / "figures" / f"{block.name}.png").write_bytes(block.png)
    page["seconds"] = time.perf_counter() - t0
    text = environment().get_template("report.html.j2").render(page)
    index = out / "index.html"
    tmp = out / ".index.html.partial"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(index)  # a reader never sees half a report
    return index


def _blocks(page: dict[str, Any]) -> list[Block]:
    """Every block of the page, in page order (those with a figure are written to figures/)."""
    c = page["comparisons"]
    blocks = [page["forest"], *(b for s in page["sections"] for b in s.blocks), c["pvalues"], c["nemenyi"]]
    blocks += [t["figure"] for name in ("decisions", "label_efficiency", "subgroups") for t in page[name]["tasks"]]
    blocks += page["health"]["blocks"]
    return [b for b in blocks if b is not None]


def _check_correction(correction: str) -> None:
    if correction not in CORRECTIONS:
        raise RadstoreError(f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")


def write_report(
    store: Store, out_dir: str | Path, eval_id: str | None = None, overlays: int = 3, *, correction: str = "bonferroni"
) -> Path:
    """Write ``out_dir/index.html`` (self-contained) and ``out_dir/figures/*.png`` for one
    evaluation version (default: the latest). ``overlays``: images per segmentation task shown
    with their masks (3 = best, median, worst; 0 = none). ``correction``: the p-values the
    matrices show ("bonferroni", "holm" or "none"; the table always has all three).
    Returns the path of index.html."""
    _check_correction(correction)  # before any read: a typo fails at once
    if overlays < 0:
        raise RadstoreError(f"overlays must be >= 0, got {overlays}")
    t0 = time.perf_counter()
    return render_report(gather(store, eval_id, overlays), out_dir, correction, started=t0)
