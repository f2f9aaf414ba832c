"""The report's "Subgroups" section: does an encoder that is good on average fail one scanner,
one view, one sex or one age band?

:mod:`evaluation.subgroups` scores every run on each subgroup of its test images (table
``subgroups``: the value with its interval and the difference from the rest of the test
images with a bootstrap p, Holm-corrected over the subgroups of one run and column). This
module shows, per task and for its primary metric, a forest plot (a row per column: subgroup,
a point and interval per encoder, the encoder's whole-test-set value as a dashed line in its
colour) and the table of the subgroups whose difference from the rest survives Holm's
correction. Too-small subgroups carry no number (``status`` too-small); the plot says so with
their size, since a subgroup too small to measure is itself a finding.

As in the rest of the report, everything takes plain rows (no store handle).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import SimpleNamespace
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never open a window, work on headless machines

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from evaluation.report.common import (
    PALETTE,
    finite,
    fmt_ci,
    fmt_counts,
    fmt_p,
    fold_key,
    fold_text,
    label,
    metric_display,
    primary_metrics,
    slug,
    task_order,
)
from evaluation.report.figures import CHANCE, UNIT_INTERVAL, render_png, undefined_note
from evaluation.report.tables import Cell, Header, Table
from evaluation.subgroups import AGE_BANDS, SUBGROUP_COLUMNS, UNKNOWN
from featurestore.tasks import TASK_KINDS

#: A difference from the rest whose Holm-corrected p is below this is listed as significant.
ALPHA = 0.05
#: The columns in the order evaluation.subgroups declares them (others after, by name).
COLUMN_ORDER = tuple(SUBGROUP_COLUMNS)
#: Age bands youngest first, not by their text ("40-59" sorts before "<40").
AGE_ORDER = tuple(name for _, name in AGE_BANDS)
#: The section's notes when there is nothing to plot: no columns configured, no rows (an evaluation
#: made before subgroups were computed), or rows but no test image with a value in any column.
NOT_CONFIGURED = (
    "No subgroup columns configured: list them under evaluation: subgroups: in the study config (e.g. [manufacturer, "
    f"view_position, patient_sex, age_band]; choose from {', '.join(COLUMN_ORDER)}) and re-run radstore evaluate."
)
NO_SUBGROUPS = (
    "No subgroup results in this evaluation: it was made before subgroups were computed, or without the image index; "
    "re-run radstore evaluate."
)
NO_METADATA = (
    "No test image has a value in any subgroup column ({columns}): the images carry no metadata to form subgroups from "
    "(manufacturer, view position, patient sex and age are the DICOM attributes recorded at ingest; PNG and JPEG files have none)."
)


def section_note(rows: list[dict], config: Mapping[str, Any]) -> str | None:
    """Why the section shows no task, or None when it shows some (see :data:`NOT_CONFIGURED`,
    :data:`NO_SUBGROUPS`, :data:`NO_METADATA`)."""
    if not rows:
        return NOT_CONFIGURED if "subgroups" in config and not config["subgroups"] else NO_SUBGROUPS
    empty = unknown_columns(rows)
    if len(empty) == len({r["column"] for r in rows}):
        return NO_METADATA.format(columns=", ".join(empty))
    return None


def unknown_columns(rows: Iterable[Mapping]) -> list[str]:
    """The columns in which every row's subgroup is "unknown": no test image had a value, so there
    are no subgroups to compare (the plot leaves them out and the section names them)."""
    seen: dict[str, bool] = {}
    for r in rows:
        seen[r["column"]] = seen.get(r["column"], True) and r["subgroup"] == UNKNOWN
    return sorted((c for c, empty in seen.items() if empty), key=column_key)


def primary_by_task(subgroups: list[dict], metrics: list[dict], config: Mapping[str, Any]) -> dict[str, str]:
    """Task -> the metric the section shows: the one the evaluation's metrics table flags primary,
    else the kind's headline under the evaluation's config (:func:`evaluation.compute.primary_metric`),
    else (a kind this process does not know) the first metric of the task's rows."""
    from evaluation.compute import primary_metric

    out = primary_metrics(metrics)
    cfg = SimpleNamespace(primary=dict(config.get("primary") or {}))
    for r in subgroups:
        t = r["task"]
        if t in out:
            continue
        spec = TASK_KINDS.get(r["task_kind"])
        out[t] = primary_metric(spec, cfg) if spec is not None else r["metric"]
    return out


def task_rows(rows: Iterable[Mapping], task: str, metric: str | None) -> list[Mapping]:
    """The rows of ``task`` on ``metric`` the section shows: the held-out split's (fold None) or,
    for a task evaluated only by cross-validation, every fold's."""
    rs = [r for r in rows if r["task"] == task and r["metric"] == metric]
    held_out = [r for r in rs if r.get("fold") is None]
    return held_out or rs


def column_key(column: str) -> tuple:
    """Sort key of a subgroup column: the declared order, then by name."""
    return (COLUMN_ORDER.index(column) if column in COLUMN_ORDER else len(COLUMN_ORDER), column)


def slot_key(slot: tuple[str, str]) -> tuple:
    """Sort key of a (column, subgroup): by column, then subgroup (age bands youngest first,
    others by name) with "unknown" last."""
    column, subgroup = slot
    rank = AGE_ORDER.index(subgroup) if column == "age_band" and subgroup in AGE_ORDER else len(AGE_ORDER)
    return (column_key(column), subgroup == UNKNOWN, rank, subgroup)


def ok(r: Mapping) -> bool:
    """Whether a subgroup row carries a number (not too small, a finite value)."""
    return r.get("status", "ok") == "ok" and finite(r["value"])


def significant(r: Mapping, alpha: float = ALPHA) -> bool:
    """Whether the row's difference from the rest survives Holm's correction at ``alpha``."""
    return r.get("status", "ok") == "ok" and finite(r["p_holm"]) and r["p_holm"] < alpha


# -- the table ----------------------------------------------------------------------------------


def significant_table(rows: list[dict], task: str, metric: str | None, alpha: float = ALPHA) -> Table | None:
    """The subgroups of ``task`` whose difference from the rest of the test images has a Holm p
    below ``alpha`` on ``metric``, smallest Holm p first: encoder, head (split), the subgroup, its
    images, its value [CI], subgroup − rest [CI], p and Holm's p (with the size of its family).
    None when there is none."""
    rs = [r for r in task_rows(rows, task, metric) if significant(r, alpha)]
    if not rs:
        return None
    folds = any(r.get("fold") is not None for r in rs)
    name = metric_display(metric)
    header = (Header(("head",)), *((Header(("split",)),) if folds else ()), Header(("encoder",)), Header(("column",)),
              Header(("subgroup",)), Header(("n (pos/neg)",)), Header(("subgroup",), f"{name} [CI]"),
              Header(("subgroup − rest",), f"{name} [CI]"), Header(("p",)), Header(("p Holm",), "(family)"))  # fmt: skip
    body = []
    for r in sorted(
        rs, key=lambda r: (r["p_holm"], r["head"], fold_key(r.get("fold")), slot_key((r["column"], r["subgroup"])), r["encoder"])
    ):
        data = (("task", task), ("head", r["head"]), ("fold", "" if r.get("fold") is None else r["fold"]), ("encoder", r["encoder"]),
                ("column", r["column"]), ("subgroup", r["subgroup"]))  # fmt: skip
        body.append([
            Cell(r["head"]), *((Cell(fold_text(r.get("fold")) or "held-out"),) if folds else ()), Cell(label(r["encoder"])),
            Cell(r["column"]), Cell(r["subgroup"]), Cell(fmt_counts(r), "num"),
            Cell(fmt_ci(r["value"], r["ci_low"], r["ci_high"]), "num", (*data, ("what", "value"))),
            Cell(fmt_ci(r["diff_vs_rest"], r["diff_ci_low"], r["diff_ci_high"]), "num", (*data, ("what", "diff"))),
            Cell(fmt_p(r["p"]), "num", (*data, ("what", "p"))),
            Cell(f"{fmt_p(r['p_holm'])} ({r['family_size']})", "num sig", (*data, ("what", "p_holm")), bold=True),
        ])  # fmt: skip
    return Table(header, body, "subgroups")


def no_difference_note(rows: list[dict], task: str, metric: str | None) -> str:
    """What the section says for a task without a significant subgroup: none differs, or none
    could be tested (every subgroup too small, or a column with one subgroup: no rest)."""
    rs = task_rows(rows, task, metric)
    if not any(r.get("status", "ok") == "ok" and finite(r["p_holm"]) for r in rs):
        return f"{task}: no subgroup could be tested against the rest (too small, or a column with a single subgroup)."
    return f"{task}: no subgroup differs from the rest after Holm correction."


# -- the figure ---------------------------------------------------------------------------------


def forest_figure(task: str, rows: list[dict], whole: Mapping[str, float], colours: Mapping[str, str], conf: int = 95,
                  alpha: float = ALPHA) -> bytes | None:  # fmt: skip
    """The subgroup forest plot of one task and metric (``rows``: its subgroup rows of one metric):
    a panel per head, a row per column: subgroup (its test images in brackets), in each row one
    point with its interval per encoder, offset vertically, in the encoder's palette colour; a
    dashed vertical line per encoder at its whole-test-set value (``whole``: run_id -> value); a
    too-small subgroup is the text "too small (n=..)" in place of its point, a star marks a
    difference from the rest with Holm p below ``alpha``; ``conf``: the intervals' level (%). A
    column no test image has a value in (:func:`unknown_columns`) is left out. Only the held-out
    split (or, without one, the first fold) is drawn. None when nothing is left to draw."""
    rs = [r for r in rows if r["task"] == task]
    empty = set(unknown_columns(rs))
    rs = [r for r in rs if r["column"] not in empty]
    if not rs:
        return None
    fold = min((r.get("fold") for r in rs), key=fold_key)
    rs = [r for r in rs if r.get("fold") == fold]
    metric = rs[0]["metric"]
    heads = sorted({r["head"] for r in rs})
    encoders = sorted({r["encoder"] for r in rs})
    slots = sorted({(r["column"], r["subgroup"]) for r in rs}, key=slot_key)
    ys, y, previous = {}, 0.0, None
    for s in slots:  # top to bottom, a gap between columns
        if previous is not None:
            y -= 1.0 + (0.6 if s[0] != previous else 0.0)
        ys[s], previous = y, s[0]
    spread = 0.5 if len(encoders) > 1 else 0.0  # within a row: closer than to the next row
    offset = {e: spread / 2 - spread * j / max(len(encoders) - 1, 1) for j, e in enumerate(encoders)}
    colour = {e: colours.get(e, PALETTE[j % len(PALETTE)]) for j, e in enumerate(encoders)}
    height = 0.34 * len(slots) * max(1.0, 0.55 * len(encoders)) + 2.2
    fig, axes = plt.subplots(1, len(heads), figsize=(5.8 * len(heads) + 2.2, height), squeeze=False, sharey=True, layout="constrained")
    for head, ax in zip(heads, axes[0]):
        mine = [r for r in rs if r["head"] == head]
        bounds = []
        for r in mine:
            yy = ys[(r["column"], r["subgroup"])] + offset[r["encoder"]]
            c = colour[r["encoder"]]
            if not ok(r):
                why = f"too small (n={r['n']})" if r.get("status") == "too-small" else "n/a"
                ax.text(0.01, yy, why, transform=ax.get_yaxis_transform(), va="center", fontsize=7.5, color=c)
                continue
            lo, hi = r["ci_low"], r["ci_high"]
            if finite(lo) and finite(hi):
                ax.plot([lo, hi], [yy, yy], color=c, lw=1.8, solid_capstyle="butt")
                bounds += [lo, hi]
            ax.plot(r["value"], yy, "o", color=c, ms=5.5, mec="black", mew=0.5, zorder=3)
            bounds.append(r["value"])
            if significant(r, alpha):
                ax.annotate("*", (hi if finite(hi) else r["value"], yy), xytext=(4, 0), textcoords="offset points", va="center",
                            fontsize=12, fontweight="bold", color=c)  # fmt: skip
        for enc in encoders:
            run = next((r["run_id"] for r in mine if r["encoder"] == enc), None)
            if run is not None and finite(whole.get(run)):
                ax.axvline(whole[run], color=colour[enc], ls="--", lw=1.1, zorder=1)
                bounds.append(whole[run])
        for k, (a, b) in enumerate(zip(slots, [*slots[1:], None])):
            if k % 2 == 0:  # every other row shaded: which points belong to which subgroup
                ax.axhspan(ys[a] - 0.42, ys[a] + 0.42, color="#f3f3f3", lw=0, zorder=0)
            if b is not None and a[0] != b[0]:
                ax.axhline((ys[a] + ys[b]) / 2, color="#ccc", lw=0.8)
        if bounds:
            lo, hi = min(bounds), max(bounds)
            pad = 0.08 * (hi - lo) if hi > lo else 0.05
            lo, hi = lo - pad, hi + pad
            if metric in UNIT_INTERVAL:
                lo, hi = max(lo, -0.02), min(hi, 1.02)
            ax.set_xlim(lo - 0.25 * (hi - lo), hi)  # room on the left for "too small" texts
            if metric in CHANCE and lo <= CHANCE[metric] <= hi:
                ax.axvline(CHANCE[metric], color="#777", ls=":", lw=0.8)
        else:
            undefined_note(ax, "no subgroup with a number\n(every one too small or undefined)")
        ax.set_title(head, fontsize=10)
        ax.set_xlabel(f"{metric_display(metric)} ({conf}% CI)")
        ax.grid(axis="x", color="#eee", lw=0.6)
    ns = {s: sorted({r["n"] for r in rs if (r["column"], r["subgroup"]) == s}) for s in slots}
    axes[0][0].set_yticks([ys[s] for s in slots], [f"{s[0]}: {s[1]}" + (f" (n={ns[s][0]})" if len(ns[s]) == 1 else "") for s in slots],
                          fontsize=8.5)  # fmt: skip
    axes[0][0].set_ylim(min(ys.values()) - 0.7, 0.7)
    handles = [Line2D([], [], color=colour[e], marker="o", mec="black", mew=0.5, lw=1.8, label=label(e)) for e in encoders]
    handles.append(Line2D([], [], color="#555", ls="--", lw=1.1, label="whole test set (encoder's colour)"))
    handles.append(Line2D([], [], ls="", marker="$*$", color="#555", ms=9, label=f"differs from the rest (Holm p < {alpha:g})"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 2 if len(heads) == 1 else 4), fontsize=8.5,
               frameon=False)  # fmt: skip
    split = "held-out test split" if fold is None else f"{fold_text(fold)} test split"
    fig.suptitle(f"{task}: {metric_display(metric)} per subgroup ({split})", fontsize=12)
    return render_png(fig)


# -- the section --------------------------------------------------------------------------------


def tasks(rows: list[dict]) -> list[str]:
    """The tasks with subgroup rows, in the report's task order."""
    return task_order(rows)


def figure_name(task: str) -> str:
    """The file name (without .png) of a task's subgroup forest plot."""
    return f"subgroups-{slug(task)}"


def figure_caption(task: str, metric: str | None, conf: int, alpha: float = ALPHA) -> str:
    """How to read :func:`forest_figure` of ``task``."""
    return (
        f"{task}: test {metric_display(metric) if metric else 'primary metric'} per subgroup of the test images, a panel per head. "
        f"Per row (column: subgroup, its test images in brackets) one point and {conf}% bootstrap interval per encoder; "
        f"dashed: each encoder's value on the whole test set, in its colour; * its difference from the rest of the test images "
        f"has Holm p < {alpha:g}; too small: fewer images (or of a class) than the evaluation scores"
    )


def whole_value(metrics: Iterable[Mapping], metric: str | None) -> dict[str, float]:
    """run_id -> the run's whole-test-set value of ``metric`` (the metrics table), for the dashed lines."""
    return {m["run_id"]: m["value"] for m in metrics if m["metric"] == metric and finite(m["value"])}
