"""The report's "Calibration and operating points" section: can a score be read as a probability,
and what does a threshold chosen in advance do on the test images?

AUROC says whether an encoder ranks positives above negatives; it says nothing about whether a
score of 0.8 means "80% of such images are positive", nor about the sensitivity a reader gets at
the threshold a deployment would fix. :mod:`evaluation.decisions` computes both per
classification run of an evaluation (tables ``calibration``, ``reliability`` and
``operating_points``); this module shows them: a reliability diagram per task (raw scores and
after temperature scaling), a calibration table (Brier and ECE, raw and after each
recalibration) and an operating-points table (the threshold chosen on validation, and the test
sensitivity, specificity, PPV and NPV at it).

As in the rest of the report, everything here takes plain rows (no store handle): the figure
returns PNG bytes, the tables :class:`~evaluation.report.tables.Table` data the template renders.
A row with a status other than ``ok`` carries no numbers (no validation predictions, too few of
a validation class); its cells say why, as an insufficient metric's cell does elsewhere.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never open a window, work on headless machines

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from evaluation.decisions import status_text
from evaluation.report.common import PALETTE, finite, fmt, fmt_ci, fold_key, fold_text, label, slug, task_order
from evaluation.report.figures import LINESTYLES, render_png, undefined_note
from evaluation.report.tables import Cell, Header, Table
from featurestore.tasks import TASK_KINDS

#: The recalibrations in the order the table shows them ("none": the raw scores).
SCALINGS = ("none", "platt", "temperature")
SCALING_NAMES = {"none": "raw", "platt": "Platt", "temperature": "temperature"}
RATES = ("sensitivity", "specificity", "ppv", "npv")
RATE_NAMES = {"sensitivity": "sensitivity", "specificity": "specificity", "ppv": "PPV", "npv": "NPV"}
#: Evaluations written before calibration was computed read these tables as empty.
OLD_EVALUATION = "This evaluation was made before calibration and operating points were computed; re-run radstore evaluate."
NO_CLASSIFICATION = "No classification run in this evaluation: calibration and operating points apply to scored classes only."


def decides(kind: str) -> bool:
    """Whether runs of task kind ``kind`` get calibration and operating points: a global kind
    scored by a class-based metric (what :mod:`evaluation.compute` computes them for). A kind
    this process does not know counts as not deciding."""
    from evaluation.metrics import get_metric

    spec = TASK_KINDS.get(kind)
    if spec is None or spec.dense:
        return False
    try:
        return any(get_metric(m).class_based for m in spec.metrics)
    except KeyError:
        return False


def value_text(r: Mapping, min_class_count: Any = None) -> str:
    """A calibration or operating-point row's cell: ``value [low, high]``, "n/a" for an undefined
    value (e.g. PPV when no test image is called positive), or why there is no number."""
    if r.get("status", "ok") != "ok":
        return status_text(r["status"], min_class_count)
    return fmt_ci(r["value"], r["ci_low"], r["ci_high"])


def rule_text(rule: str) -> str:
    """A threshold rule as the table shows it: ``youden`` -> "Youden's J", ``sensitivity@0.90`` ->
    "sensitivity ≥ 0.90" (anything else as stored)."""
    if rule == "youden":
        return "Youden's J"
    if rule.startswith("sensitivity@"):
        return f"sensitivity ≥ {rule.split('@', 1)[1]}"
    return rule


def _rule_key(rule: str) -> tuple:
    return (0 if rule == "youden" else 1 if rule.startswith("sensitivity@") else 2, rule)


def shown_rows(rows: Iterable[Mapping], task: str) -> list[Mapping]:
    """A task's rows the section shows: the held-out split's (fold None) or, for a task
    evaluated only by cross-validation, every fold's (as the results table does)."""
    rs = [r for r in rows if r["task"] == task]
    held_out = [r for r in rs if r.get("fold") is None]
    return held_out or rs


def _cell(text: str, ok: bool, data: tuple) -> Cell:
    return Cell(text, "num" if ok else "num na", data)


#: Column headings of the calibration metrics (evaluation.decisions.CALIBRATION_METRICS).
METRIC_NAMES = {"brier": "Brier", "ece": "ECE", "sce_debiased": "squared CE, debiased"}


def calibration_table(rows: list[dict], task: str, min_class_count: Any = None) -> Table | None:
    """One task's calibration: per encoder x head (x fold), Brier [CI], ECE [CI] and the debiased
    squared calibration error [CI] of the raw test scores, then ECE [CI] after each recalibration fitted on validation (a cell says why
    where there is none). None when the task has no rows."""
    rs = shown_rows(rows, task)
    if not rs:
        return None
    by: dict[tuple, dict[tuple[str, str], dict]] = {}
    for r in rs:
        by.setdefault((r["encoder"], r["head"], r.get("fold")), {})[(r["scaling"], r["metric"])] = r
    scalings = [s for s in SCALINGS if s != "none" and any(r["scaling"] == s for r in rs)]
    columns = [("none", "brier"), ("none", "ece"), ("none", "sce_debiased"), *((s, "ece") for s in scalings)]
    folds = any(k[2] is not None for k in by)
    header = (Header(("encoder",)), Header(("head",)), *((Header(("split",)),) if folds else ()))
    header += tuple(
        Header((METRIC_NAMES[metric],), "raw [CI]" if s == "none" else f"after {SCALING_NAMES[s]} [CI]") for s, metric in columns
    )
    body = []
    for (enc, head, fold), cells in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1], fold_key(kv[0][2]))):
        row = [Cell(label(enc)), Cell(head), *((Cell(fold_text(fold) or "held-out"),) if folds else ())]
        for s, metric in columns:
            data = (
                ("encoder", enc),
                ("head", head),
                ("task", task),
                ("fold", "" if fold is None else fold),
                ("scaling", s),
                ("metric", metric),
            )
            r = cells.get((s, metric))
            if r is None:
                row.append(Cell("—", "num na", data))
                continue
            row.append(_cell(value_text(r, min_class_count), r["status"] == "ok" and finite(r["value"]), data))
        body.append(row)
    return Table(header, body, "decisions")


def operating_points_table(rows: list[dict], task: str, min_class_count: Any = None) -> Table | None:
    """One task's operating points: per encoder x head (x fold) x rule, the threshold the rule
    chose on validation and the test sensitivity, specificity, PPV and NPV [CI] at it. A rule
    without a threshold says why in the threshold cell, its rates "—". None without rows."""
    rs = shown_rows(rows, task)
    if not rs:
        return None
    by: dict[tuple, dict[str, dict]] = {}
    for r in rs:
        by.setdefault((r["encoder"], r["head"], r.get("fold"), r["rule"]), {})[r["metric"]] = r
    folds = any(k[2] is not None for k in by)
    header = (Header(("encoder",)), Header(("head",)), *((Header(("split",)),) if folds else ()), Header(("rule",), "chosen on validation"))
    header += (Header(("threshold",)), *(Header((RATE_NAMES[m],), "test [CI]") for m in RATES))
    body = []
    for (enc, head, fold, rule), cells in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1], fold_key(kv[0][2]), _rule_key(kv[0][3]))):
        data = (("encoder", enc), ("head", head), ("task", task), ("fold", "" if fold is None else fold), ("rule", rule))
        row = [Cell(label(enc)), Cell(head), *((Cell(fold_text(fold) or "held-out"),) if folds else ()), Cell(rule_text(rule))]
        first = next(iter(cells.values()))
        if first["status"] != "ok":
            row.append(Cell(status_text(first["status"], min_class_count), "na", (*data, ("metric", "threshold"))))
            row += [Cell("—", "num na", (*data, ("metric", m))) for m in RATES]
        else:
            row.append(_cell(fmt(first["threshold"]), finite(first["threshold"]), (*data, ("metric", "threshold"))))
            for m in RATES:
                r = cells.get(m)
                if r is None:
                    row.append(Cell("—", "num na", (*data, ("metric", m))))
                else:
                    row.append(_cell(value_text(r, min_class_count), r["status"] == "ok" and finite(r["value"]), (*data, ("metric", m))))
        body.append(row)
    return Table(header, body, "decisions")


# -- the figure ---------------------------------------------------------------------------------


def recalibrated_scaling(rows: Iterable[Mapping]) -> str | None:
    """The recalibration the diagram's second panel shows: temperature scaling (one parameter,
    the usual choice for a network's scores) where the evaluation fitted it, else Platt, else none."""
    have = {r["scaling"] for r in rows}
    return next((s for s in ("temperature", "platt") if s in have), None)


def reliability_figure(
    task: str,
    reliability: list[dict],
    calibration: list[dict],
    colours: Mapping[str, str],
    min_class_count: Any = None,
) -> bytes | None:
    """Reliability diagrams of one task: one row of panels per head, the raw test scores on the
    left and after the recalibration of :func:`recalibrated_scaling` (fitted on validation) on
    the right; one line per encoder through its non-empty bins, x the bin's mean predicted
    probability, y its observed fraction of positives, marker area the bin's test images; the
    diagonal is a calibrated score. The legend carries each line's ECE. Only the held-out split
    (or, without one, the first fold) is drawn: folds would crowd the panel."""
    rel = [r for r in reliability if r["task"] == task]
    cal = [r for r in calibration if r["task"] == task]
    if not rel and not cal:
        return None
    folds = sorted({r.get("fold") for r in (*rel, *cal)}, key=fold_key)
    fold = folds[0]
    rel = [r for r in rel if r.get("fold") == fold]
    cal = [r for r in cal if r.get("fold") == fold]
    heads = sorted({r["head"] for r in (*rel, *cal)})
    scalings = ["none", *([s] if (s := recalibrated_scaling(cal)) else [])]
    encoders = sorted({r["encoder"] for r in (*rel, *cal)})
    ece = {(r["encoder"], r["head"], r["scaling"]): r for r in cal if r["metric"] == "ece"}
    most = max([r["count"] for r in rel] + [1])
    fig, axes = plt.subplots(
        len(heads), len(scalings), figsize=(5.2 * len(scalings), 5.4 * len(heads)), squeeze=False, layout="constrained"
    )
    for head, ax_row in zip(heads, axes):
        for scaling, ax in zip(scalings, ax_row):
            ax.plot([0, 1], [0, 1], color=PALETTE[-1], ls="--", lw=0.9, label="perfect calibration")
            drawn, why = 0, {}
            for i, enc in enumerate(encoders):
                bins = sorted((r for r in rel if (r["encoder"], r["head"], r["scaling"]) == (enc, head, scaling)), key=lambda r: r["bin"])
                bins = [r for r in bins if r["count"] > 0 and finite(r["mean_predicted"]) and finite(r["fraction_positive"])]
                c = ece.get((enc, head, scaling))
                colour = colours.get(enc, PALETTE[i % len(PALETTE)])
                style = {"color": colour, "ls": LINESTYLES[i % len(LINESTYLES)], "lw": 1.6}
                if not bins:
                    if c is not None and c["status"] != "ok":
                        why.setdefault(status_text(c["status"], min_class_count), []).append(label(enc))
                    ax.plot([], [], label=f"{label(enc)} (not drawn)", **style)
                    continue
                x = np.array([r["mean_predicted"] for r in bins])
                y = np.array([r["fraction_positive"] for r in bins])
                n = np.array([r["count"] for r in bins], dtype=float)
                ece_text = f"ECE {fmt(c['value'])}" if c is not None and c["status"] == "ok" else "ECE n/a"
                ax.plot(x, y, label=f"{label(enc)} ({ece_text})", **style)
                ax.scatter(x, y, s=12 + 220 * n / most, color=colour, edgecolor="black", linewidth=0.5, alpha=0.85, zorder=3, clip_on=False)
                drawn += 1
            if why or drawn == 0:  # say in the panel why an encoder is missing (all of them: why it is empty)
                text = "\n".join(textwrap.fill(f"{', '.join(encs)}: {reason}", 44) for reason, encs in why.items())
                if drawn == 0:
                    undefined_note(ax, text or "no reliability bins")
                else:
                    ax.text(0.98, 0.02, text, transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5, color="#444")
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
            ax.set_aspect("equal")
            ax.set_xlabel("mean predicted probability (bin)")
            ax.set_ylabel("observed fraction positive (bin)")
            what = "raw test scores" if scaling == "none" else f"after {SCALING_NAMES[scaling]} scaling (fitted on validation)"
            ax.set_title(f"{head}: {what}", fontsize=10)
            ax.grid(color="#eee", lw=0.6)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)  # off the data
    sizes = [Line2D([], [], ls="", marker="o", ms=np.sqrt(12 + 220 * k), color="#bbb", mec="black", label=f"{round(k * most)} images")
             for k in (0.1, 0.5, 1.0) if round(k * most) > 0]  # fmt: skip
    if sizes:
        fig.legend(handles=sizes, title="marker area: test images in the bin", loc="outside lower center", ncol=len(sizes), fontsize=8,
                   title_fontsize=8, frameon=False)  # fmt: skip
    split = "held-out test split" if fold is None else f"{fold_text(fold)} test split"
    fig.suptitle(f"{task}: reliability diagram ({split})", fontsize=12)
    return render_png(fig)


# -- the section --------------------------------------------------------------------------------


def decision_tasks(metrics: list[dict], calibration: list[dict]) -> list[str]:
    """The tasks the section covers, in the report's task order: those with calibration rows and
    those of a kind that should have them (an old evaluation's, which get a note)."""
    shown = {r["task"] for r in calibration}
    rows = [m for m in metrics if m["task"] in shown or decides(m["task_kind"])]
    order = task_order(rows)
    return order + sorted(shown - set(order))


def figure_name(task: str) -> str:
    """The file name (without .png) of a task's reliability diagram."""
    return f"reliability-{slug(task)}"


def figure_caption(task: str, reliability: list[dict], calibration: list[dict], bins: Any = None) -> str:
    """How to read :func:`reliability_figure` of ``task``."""
    rs = [r for r in calibration if r["task"] == task]
    second = recalibrated_scaling(rs)
    n_bins = bins or (1 + max((r["bin"] for r in reliability if r["task"] == task), default=9))
    right = f"; right: after {SCALING_NAMES[second]} scaling fitted on the validation split" if second else ""
    return (
        f"{task}: reliability diagram per head, left: raw test scores{right}. One line per encoder through the "
        f"non-empty bins of {n_bins} equal-width probability bins: x = mean predicted probability, y = observed "
        "fraction of positives; marker area = test images in the bin. On the dashed diagonal a score is a "
        "calibrated probability; below it the encoder is over-confident, above it under-confident"
    )
