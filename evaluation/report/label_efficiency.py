"""The report's "Label efficiency" section: how many labels does each encoder need?

An encoder whose embeddings separate the classes reaches its plateau with a handful of labelled
images; one whose embeddings need a head to dig the signal out keeps climbing to the last label.
The whole-split results table cannot tell them apart. :mod:`evaluation.label_efficiency` scores
heads trained on nested, patient-level subsets of the training split (tables
``label_efficiency`` and ``label_efficiency_comparisons``); this module shows them: per task a
figure of the primary metric against the training labels (one line per encoder with its
interval band, the spread over subset seeds as thin bars), a table of every point (value
[CI] and the seed sd) and the paired comparisons of the encoders at each size with Holm's p.

Two uncertainties are shown apart on purpose: the band is the test-set interval of the mean over
seeds (which test images happened to be drawn), the bars the range over seeds (which patients
happened to be labelled). With few labels the second usually dominates, and a band alone would
hide it.

As in the rest of the report, everything takes plain rows (no store handle): the figure returns
PNG bytes, the tables :class:`~evaluation.report.tables.Table` data the template renders.
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
from matplotlib.ticker import NullLocator

from evaluation.report.common import PALETTE, finite, fmt, fmt_ci, fmt_p, fold_key, fold_text, label, metric_display, slug, task_order
from evaluation.report.figures import CHANCE, LINESTYLES, render_png, undefined_note
from evaluation.report.tables import Cell, Header, Table

#: How a subset's size is given (featurestore.subsets.REGIMES), in the order panels and columns show them.
REGIMES = ("fraction", "shots")
REGIME_TITLES = {"fraction": "fractions of the training split", "shots": "images per class (shots)"}
#: A comparison whose Holm-corrected p is below this is marked significant.
ALPHA = 0.05
#: The section's note when the evaluation holds no label-efficiency rows: the study trained no
#: subset runs (or the evaluation predates the tables). Says how to turn the curves on.
NOT_CONFIGURED = (
    "No label-efficiency runs in this evaluation. To draw curves, add a label_efficiency: key to the study "
    "config (fractions, shots, seeds, tasks, heads; true for the defaults: fractions 1-100%, 8/16/32 shots, "
    "5 seeds): the study then also trains each head on nested patient-level subsets of the training split, "
    "and radstore evaluate scores them here."
)
#: Points an encoder is shifted sideways by, in decades of the log axis, so that bars at the same
#: training size (every encoder trains on the same subsets) do not hide each other.
DODGE = 0.012


def size_text(regime: str, size: float) -> str:
    """A curve point's size for people: ``fraction`` 0.05 -> "5%", 1.0 -> "100%"; ``shots`` 16 ->
    "16 per class" (anything else as stored)."""
    if regime == "fraction":
        return f"{100 * size:.4g}%"
    if regime == "shots":
        return f"{size:.4g} per class"
    return f"{regime} {size:g}"


def images_text(x: Any) -> str:
    """Training images (a mean over seeds, so possibly fractional): "40", "40.5"; "?" when not recorded."""
    if not finite(x):
        return "?"
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


def value_text(r: Mapping) -> str:
    """A curve point's cell: ``mean [low, high] (sd s)``, the sd over subset seeds ("(1 seed)" where
    there is one seed: no spread to show); why there is no number for a point with too few of a
    class; "n/a" for an undefined value."""
    if r.get("status", "ok") == "insufficient":
        return f"insufficient ({r['n_pos']} pos / {r['n_neg']} neg)"
    text = fmt_ci(r["value"], r["ci_low"], r["ci_high"])
    if text == "n/a":
        return text
    spread = f"sd {fmt(r['seed_sd'])}" if (r.get("seeds") or 0) > 1 else f"{r.get('seeds') or 0} seed"
    return f"{text} ({spread})"


def _regime_key(regime: str) -> tuple:
    return (REGIMES.index(regime) if regime in REGIMES else len(REGIMES), regime)


def primary_rows(rows: Iterable[Mapping], task: str) -> list[Mapping]:
    """A task's rows of its primary metric (the evaluation's ``primary`` flag)."""
    return [r for r in rows if r["task"] == task and r["primary"]]


def primary_metric(rows: Iterable[Mapping], task: str) -> str | None:
    """The metric the evaluation flagged primary for ``task``; None when it has no rows."""
    return next((r["metric"] for r in primary_rows(rows, task)), None)


def shown_rows(rows: Iterable[Mapping]) -> list[Mapping]:
    """The rows the tables show: the held-out split's (fold None) or, for a task evaluated only by
    cross-validation, every fold's (as the results table does)."""
    rows = list(rows)
    held_out = [r for r in rows if r.get("fold") is None]
    return held_out or rows


def figure_fold(rows: Iterable[Mapping]) -> Any:
    """The split the figure draws: the held-out split, or without one the first fold (folds
    would crowd the panel)."""
    return min((r.get("fold") for r in rows), key=fold_key, default=None)


# -- tables -------------------------------------------------------------------------------------


def curve_table(rows: list[dict], task: str) -> Table | None:
    """One task's curve points of its primary metric: a row per head x encoder (x fold), a column
    per (regime, size), each cell the mean over subset seeds [CI] (seed sd). A column's header
    says its training images where every row of it used the same number. None without rows."""
    rs = shown_rows(primary_rows(rows, task))
    if not rs:
        return None
    metric = rs[0]["metric"]
    cells = {(r["head"], r.get("fold"), r["encoder"], r["regime"], r["size"]): r for r in rs}
    columns = sorted({(r["regime"], r["size"]) for r in rs}, key=lambda c: (_regime_key(c[0]), c[1]))
    lines = sorted({(r["head"], r.get("fold"), r["encoder"]) for r in rs}, key=lambda k: (k[0], fold_key(k[1]), k[2]))
    folds = any(k[1] is not None for k in lines)
    header = (Header(("head",)), *((Header(("split",)),) if folds else ()), Header(("encoder",)))
    for regime, size in columns:
        used = {images_text(r["train_images"]) for r in rs if (r["regime"], r["size"]) == (regime, size)}
        extra = (f"{used.pop()} training images",) if len(used) == 1 and "?" not in used else ()
        header += (Header((size_text(regime, size), *extra), f"{metric_display(metric)} [CI] (seed sd)"),)
    body = []
    for head, fold, enc in lines:
        row = [Cell(head), *((Cell(fold_text(fold) or "held-out"),) if folds else ()), Cell(label(enc))]
        for regime, size in columns:
            data = (("task", task), ("head", head), ("fold", "" if fold is None else fold), ("encoder", enc),
                    ("regime", regime), ("size", f"{size:g}"))  # fmt: skip
            r = cells.get((head, fold, enc, regime, size))
            if r is None:
                row.append(Cell("—", "num na", data))
                continue
            ok = r.get("status", "ok") == "ok" and finite(r["value"])
            row.append(Cell(value_text(r), "num" if ok else "num na", data))
        body.append(row)
    return Table(header, body, "label-efficiency")


def comparisons_table(comparisons: list[dict], task: str, metric: str | None, alpha: float = ALPHA) -> Table | None:
    """One task's paired comparisons of the encoders at each size, on its primary ``metric``: the
    difference of the seed means A − B [CI], the seeds each encoder won, p and Holm's p over the
    pairs of one size; a Holm p below ``alpha`` is bold and starred. None without comparisons."""
    rs = shown_rows(r for r in comparisons if r["task"] == task and r["metric"] == metric)
    if not rs:
        return None
    folds = any(r.get("fold") is not None for r in rs)
    header = (Header(("head",)), *((Header(("split",)),) if folds else ()), Header(("size",)), Header(("A",)), Header(("B",)),
              Header(("seeds",)), Header(("A − B",), f"{metric_display(metric)} [CI]"), Header(("seeds won",), "A / B"),
              Header(("p",)), Header(("p Holm",), f"* < {alpha:g}"))  # fmt: skip
    body = []
    for r in sorted(
        rs, key=lambda r: (r["head"], fold_key(r.get("fold")), _regime_key(r["regime"]), r["size"], r["encoder_a"], r["encoder_b"])
    ):
        data = (("task", task), ("head", r["head"]), ("fold", "" if r.get("fold") is None else r["fold"]), ("regime", r["regime"]),
                ("size", f"{r['size']:g}"), ("a", r["encoder_a"]), ("b", r["encoder_b"]))  # fmt: skip
        defined = finite(r["diff"])
        significant = finite(r["p_holm"]) and r["p_holm"] < alpha
        holm = fmt_p(r["p_holm"]) + (" *" if significant else "")
        body.append([
            Cell(r["head"]), *((Cell(fold_text(r.get("fold")) or "held-out"),) if folds else ()),
            Cell(size_text(r["regime"], r["size"])), Cell(label(r["encoder_a"])), Cell(label(r["encoder_b"])),
            Cell(r["seeds"], "num"), Cell(fmt_ci(r["diff"], r["ci_low"], r["ci_high"]), "num" if defined else "num na", (*data, ("column", "diff"))),
            Cell(f"{r['wins_a']} / {r['wins_b']}", "num"), Cell(fmt_p(r["p"]), "num", (*data, ("column", "p"))),
            Cell(holm, "num sig" if significant else "num", (*data, ("column", "p_holm")), bold=significant),
        ])  # fmt: skip
    return Table(header, body, "label-efficiency")


# -- the figure ---------------------------------------------------------------------------------


def curve_figure(task: str, rows: list[dict], colours: Mapping[str, str]) -> bytes | None:
    """The label-efficiency curves of one task's primary metric: a panel per head (rows) and
    regime (columns: fractions of the split, shots per class); in each, one line per encoder
    through its mean over subset seeds against the training images used (log axis; the sizes on
    the top axis), the band its test-set interval, thin bars its min-max over seeds; a dotted line
    in a shots panel is the encoder's whole-split value. Only the held-out split (or, without
    one, the first fold) is drawn. None when the task has no primary rows."""
    rs = primary_rows(rows, task)
    if not rs:
        return None
    fold = figure_fold(rs)
    rs = [r for r in rs if r.get("fold") == fold]
    metric = rs[0]["metric"]
    heads = sorted({r["head"] for r in rs})
    regimes = sorted({r["regime"] for r in rs}, key=_regime_key)
    encoders = sorted({r["encoder"] for r in rs})
    fig, axes = plt.subplots(len(heads), len(regimes), figsize=(6.4 * len(regimes), 4.8 * len(heads) + 0.9), squeeze=False,
                             layout="constrained")  # fmt: skip
    for head, ax_row in zip(heads, axes):
        for regime, ax in zip(regimes, ax_row):
            _panel(ax, [r for r in rs if r["head"] == head and r["regime"] == regime], encoders, colours, regime)
            ax.set_title(f"{head}: {REGIME_TITLES.get(regime, regime)}", fontsize=10)
            ax.set_ylabel(f"{metric_display(metric)} (test)")
            whole = {r["encoder"]: r for r in rs if r["head"] == head and r["regime"] == "fraction" and r["size"] == 1.0}
            if regime != "fraction":  # the whole split is on the fraction curve; in a shots panel, a reference
                for i, enc in enumerate(encoders):
                    w = whole.get(enc)
                    if w is not None and w.get("status", "ok") == "ok" and finite(w["value"]):
                        ax.axhline(w["value"], color=colours.get(enc, PALETTE[i % len(PALETTE)]), ls=":", lw=1.1)
            if metric in CHANCE:
                ax.axhline(CHANCE[metric], color="#777", ls="--", lw=0.8)
    handles = [Line2D([], [], color=colours.get(e, PALETTE[i % len(PALETTE)]), ls=LINESTYLES[i % len(LINESTYLES)], marker="o", lw=1.8,
                      label=label(e)) for i, e in enumerate(encoders)]  # fmt: skip
    handles.append(Line2D([], [], color="#888", lw=6, alpha=0.3, label=f"{round(100 * (rs[0]['confidence'] or 0.95))}% CI (test images)"))
    handles.append(Line2D([], [], color="#555", lw=0.9, marker="_", ms=8, label="min-max over subset seeds"))
    if "shots" in regimes and any(r["regime"] == "fraction" and r["size"] == 1.0 for r in rs):
        handles.append(Line2D([], [], color="#555", ls=":", lw=1.1, label="whole training split"))
    if metric in CHANCE:
        handles.append(Line2D([], [], color="#777", ls="--", lw=0.8, label="chance"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=8.5, frameon=False)
    split = "held-out test split" if fold is None else f"{fold_text(fold)} test split"
    fig.suptitle(f"{task}: {metric_display(metric)} against training labels ({split})", fontsize=12)
    return render_png(fig)


def _panel(ax: plt.Axes, rows: list[Mapping], encoders: list[str], colours: Mapping[str, str], regime: str) -> None:
    """One head x regime: a line per encoder (see :func:`curve_figure`). The x axis is the training
    images where every point recorded them, else the size itself (a run recorded without its
    split sizes)."""
    by_images = all(finite(r["train_images"]) for r in rows)
    xcol = "train_images" if by_images else "size"
    drawn, why = 0, {}
    for i, enc in enumerate(encoders):
        colour = colours.get(enc, PALETTE[i % len(PALETTE)])
        mine = [r for r in rows if r["encoder"] == enc]
        pts = sorted((r for r in mine if r.get("status", "ok") == "ok" and finite(r["value"]) and finite(r[xcol]) and r[xcol] > 0),
                     key=lambda r: r[xcol])  # fmt: skip
        if not pts:
            if mine:
                why.setdefault("too few of a class" if any(r.get("status") == "insufficient" for r in mine) else "undefined", []).append(
                    label(enc)
                )
            continue
        shift = 10 ** (DODGE * (i - (len(encoders) - 1) / 2))
        x = np.array([r[xcol] for r in pts], dtype=float) * shift
        v = np.array([r["value"] for r in pts], dtype=float)
        lo = np.array([r["ci_low"] if finite(r["ci_low"]) else np.nan for r in pts], dtype=float)
        hi = np.array([r["ci_high"] if finite(r["ci_high"]) else np.nan for r in pts], dtype=float)
        ax.fill_between(x, lo, hi, color=colour, alpha=0.18, lw=0)
        ax.plot(x, v, color=colour, ls=LINESTYLES[i % len(LINESTYLES)], lw=1.8, marker="o", ms=5, mec="black", mew=0.5, zorder=3)
        spread = [(xi, r) for xi, r in zip(x, pts) if (r.get("seeds") or 0) > 1 and finite(r["seed_min"]) and finite(r["seed_max"])]
        if spread:
            xs = np.array([xi for xi, _ in spread])
            mid = np.array([r["value"] for _, r in spread])
            err = np.array([[r["value"] - r["seed_min"] for _, r in spread], [r["seed_max"] - r["value"] for _, r in spread]])
            ax.errorbar(xs, mid, yerr=np.clip(err, 0, None), fmt="none", ecolor=colour, elinewidth=0.9, capsize=3, zorder=2)
        drawn += 1
    ax.set_xscale("log")
    sizes: dict[float, list[float]] = {}  # each size's training images (every encoder's, every seed's mean)
    for r in rows:
        if finite(r[xcol]) and r[xcol] > 0:
            sizes.setdefault(r["size"], []).append(r[xcol])
    ticks = [float(np.mean(v)) for v in sizes.values()]
    names = [size_text(regime, s) for s in sizes]
    # Ticks where the points are (log ticks of a range under a decade say nothing); the sizes on top.
    ax.xaxis.set_minor_locator(NullLocator())
    if by_images:
        ax.set_xticks(ticks, [images_text(t) for t in ticks])
        ax.set_xlabel("training images (log scale)")
        top = ax.secondary_xaxis("top")
        top.set_xticks(ticks, names, fontsize=7.5)
        top.xaxis.set_minor_locator(NullLocator())
    else:
        ax.set_xticks(ticks, names)
        what = "fraction of the training split" if regime == "fraction" else "images per class"
        ax.set_xlabel(f"{what} (log scale; training images not recorded)")
    ax.grid(color="#eee", lw=0.6)
    text = "\n".join(textwrap.fill(f"{', '.join(encs)}: {reason}", 48) for reason, encs in why.items())
    if drawn == 0:
        undefined_note(ax, text or "no point to draw")
    elif text:
        ax.text(0.98, 0.02, text, transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5, color="#444")


# -- the section --------------------------------------------------------------------------------


def tasks(rows: list[dict]) -> list[str]:
    """The tasks with label-efficiency rows, in the report's task order."""
    return task_order(rows)


def figure_name(task: str) -> str:
    """The file name (without .png) of a task's label-efficiency figure."""
    return f"label-efficiency-{slug(task)}"


def figure_caption(task: str, rows: list[dict]) -> str:
    """How to read :func:`curve_figure` of ``task``."""
    rs = primary_rows(rows, task)
    metric = metric_display(rs[0]["metric"]) if rs else "primary metric"
    conf = round(100 * (rs[0]["confidence"] or 0.95)) if rs else 95
    return (
        f"{task}: test {metric} against the training images used (log scale; the subset sizes on the top axis), "
        f"per head and regime. One line per encoder through its mean over subset seeds; band: {conf}% bootstrap interval "
        "of that mean over the test images; thin bars: lowest and highest seed (which patients were labelled). "
        "Encoders are shifted slightly sideways so their bars stay apart"
    )
