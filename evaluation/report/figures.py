"""The report's figures as pure functions: table rows and arrays in, PNG bytes out.

Nothing here reads a store (:mod:`evaluation.report.gather` does), so every figure can be
drawn, and tested, from hand-made rows. Each returns None when there is nothing to draw.
The figures of mask kinds (Dice distributions, overlays) are in :mod:`evaluation.report.masks`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never open a window, work on headless machines

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from evaluation.report.common import (
    PALETTE,
    finite,
    fmt,
    fmt_p,
    fold_text,
    label,
    metric_display,
    row_key,
    task_order,
    undefined_comparison,
)

LINESTYLES = ("-", "--", ":", "-.")  # overlapping curves stay distinguishable without colour
HEAD_MARKERS = {"linear": "o", "cross-attention": "s"}
DPI = 100
# Axis hints of the forest plot: metrics bounded by [0, 1] get that axis, and a chance level
# gets a dashed line. A metric in neither set gets an axis fitted to its intervals.
UNIT_INTERVAL = frozenset({"auroc", "auprc", "dice", "iou"})
CHANCE = {"auroc": 0.5, "r2": 0.0}

Predictions = Mapping[str, tuple[np.ndarray, np.ndarray]]  # run_id -> (true label, prediction) of the test split
Values = Mapping[tuple[str, str], float]  # (run_id, metric) -> the evaluation's value


def render_png(fig: plt.Figure) -> bytes:
    """PNG bytes of a figure; the figure is closed whatever happens (no leak over many reports)."""
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        return buf.getvalue()
    finally:
        plt.close(fig)


def undefined_note(ax: plt.Axes, text: str) -> None:
    """Say in the panel itself why it holds no data (rather than leave a blank box)."""
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=9,
        color="#444",
        wrap=True,
        bbox={"boxstyle": "round", "fc": "#f4f4f4", "ec": "#bbb"},
    )


def _symlog_axis(ax: plt.Axes, lo: float, hi: float) -> None:
    """A symmetric-log x axis over [lo, hi] with at most ~4 labelled decades a side (no overlaps)."""
    ax.set_xscale("symlog", linthresh=1)
    xlo, xhi = (lo * 1.6 if lo < 0 else -0.5), (hi * 1.6 if hi > 0 else 0.5)
    top = math.ceil(math.log10(max(abs(xlo), abs(xhi), 10.0)))
    step = max(1, math.ceil(top / 4))
    mags = [10**d for d in range(step, top + 1, step)]
    ticks = sorted([-m for m in mags if -m >= xlo] + [0] + [m for m in mags if m <= xhi])
    ax.set_xticks(
        ticks, [f"$-10^{{{round(math.log10(-t))}}}$" if t < 0 else f"$10^{{{round(math.log10(t))}}}$" if t > 0 else "0" for t in ticks]
    )
    ax.set_xlim(xlo, xhi)


def forest_figure(rows: list[dict], colours: dict[str, str]) -> bytes | None:
    """Each headline metric with its CI, one panel per task: overlapping bars mean the data
    cannot tell the encoders apart, whatever the point estimates say."""
    tasks = task_order(rows)
    if not tasks:
        return None
    per_task = {t: sorted((r for r in rows if r["task"] == t), key=row_key) for t in tasks}
    ncols = 1 if len(tasks) == 1 else 2
    nrows = -(-len(tasks) // ncols)
    # Each row of panels as tall as its longest panel needs (a 9-row task next to a 3-row one).
    heights = [0.4 * max(len(per_task[t]) for t in tasks[i * ncols : (i + 1) * ncols]) + 1.4 for i in range(nrows)]
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(6.4 * ncols, sum(heights) + 0.6), squeeze=False, layout="constrained", gridspec_kw={"height_ratios": heights}
    )
    for ax in axes.flat[len(tasks) :]:
        ax.axis("off")
    for ax, task in zip(axes.flat, tasks):
        rs = per_task[task]
        metric = rs[0]["metric"]
        ys = np.arange(len(rs))[::-1]  # first row on top
        bounds = []
        for y, r in zip(ys, rs):
            c = colours[r["encoder"]]
            if not finite(r["value"]):
                ax.text(0.01, y, "n/a", transform=ax.get_yaxis_transform(), va="center", fontsize=9, color="#444")
                continue
            lo, hi = r["ci_low"], r["ci_high"]
            if finite(lo) and finite(hi):
                ax.plot([lo, hi], [y, y], color=c, lw=2.2, solid_capstyle="butt")
                ax.plot([lo, hi], [y, y], "|", color=c, ms=9)
                bounds += [lo, hi]
            ax.plot(r["value"], y, HEAD_MARKERS.get(r["head"], "D"), color=c, ms=7, mec="black", mew=0.6)
            bounds.append(r["value"])
        ax.set_yticks(ys, [label(r["encoder"], r["head"], r["fold"]) for r in rs], fontsize=9)
        ax.set_ylim(-0.7, len(rs) - 0.3)
        if metric in UNIT_INTERVAL:
            ax.set_xlim(-0.02, 1.02)
        elif bounds and max(abs(b) for b in bounds) > 5:  # a wild R² interval: keep the small ones visible
            _symlog_axis(ax, min(bounds + [0.0]), max(bounds + [0.0]))
        elif not bounds:
            ax.set_xlim(0, 1)
        if metric in CHANCE:
            ax.axvline(CHANCE[metric], color="#777", ls="--", lw=0.8)
        if not bounds:
            undefined_note(ax, f"{metric_display(metric)} undefined for every run\n(e.g. one class in the test split)")
        ax.set_xlabel(f"{metric_display(metric)} ({round(100 * (rs[0]['confidence'] or 0.95))}% CI)")
        ax.set_title(task, fontsize=11)
        ax.grid(axis="x", color="#ddd", lw=0.6)
    heads = sorted({r["head"] for r in rows})
    handles = [Line2D([], [], color=colours[e], lw=2.2, label=e) for e in colours]
    handles += [Line2D([], [], ls="", marker=HEAD_MARKERS.get(h, "D"), color="#888", mec="black", label=h) for h in heads]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    fig.suptitle("Primary metric per task with bootstrap confidence intervals", fontsize=12)
    return render_png(fig)


def roc_pr_figure(
    task: str,
    splits: Mapping[Any, list[Mapping]],
    predictions: Predictions,
    values: Values,
    labels: Mapping[str, str],
    colours: Mapping[str, str],
) -> bytes | None:
    """ROC and precision-recall curves of one scored task, one row per split (held-out, then
    each fold): the AUROC of the table summarises a curve; the curve shows at which operating
    points encoders differ. ``splits``: fold -> runs (rows of the evaluation record)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    if not splits:
        return None
    auroc_name, ap_name = metric_display("auroc"), metric_display("auprc")
    # No fixed aspect (constrained layout then clips titles): the size keeps the panels about square.
    fig, axes = plt.subplots(len(splits), 2, figsize=(10.0, 5.7 * len(splits)), squeeze=False, layout="constrained")
    for (fold, runs), (ax_roc, ax_pr) in zip(splits.items(), axes):
        drawn, n, note = 0, 0, ""
        several_heads = len({x["head"] for x in runs}) > 1
        for i, r in enumerate(runs):
            lab = labels.get(r["run_id"], r["encoder"])
            name = f"{lab} / {r['head']}" if several_heads else lab
            style = {"color": colours.get(lab, PALETTE[i % len(PALETTE)]), "ls": LINESTYLES[i % len(LINESTYLES)], "lw": 1.8}
            truth, s = predictions[r["run_id"]]
            y = np.asarray(truth, dtype=float) > 0.5
            s = np.asarray(s, dtype=float)
            n = len(y)
            auroc, ap = values.get((r["run_id"], "auroc")), values.get((r["run_id"], "auprc"))
            if 0 < y.sum() < len(y):
                fpr, tpr, _ = roc_curve(y, s)
                prec, rec, _ = precision_recall_curve(y, s)
                ax_roc.plot(fpr, tpr, label=f"{name} ({auroc_name} {fmt(auroc)})", drawstyle="steps-post", **style)
                ax_pr.plot(rec, prec, label=f"{name} ({ap_name} {fmt(ap)})", drawstyle="steps-post", **style)
                if drawn == 0:
                    ax_pr.axhline(y.mean(), color="#777", ls="--", lw=0.8, label=f"prevalence {y.mean():.2f}")
                drawn += 1
            else:
                note = f"undefined: this test split has only {'positives' if y.all() else 'negatives'} (n={len(y)})"
                ax_roc.plot([], [], label=f"{name} ({auroc_name} n/a)", **style)
                ax_pr.plot([], [], label=f"{name} ({ap_name} n/a)", **style)
        ax_roc.plot([0, 1], [0, 1], color="#777", ls="--", lw=0.8, label="chance")
        split = "held-out test split" if fold is None else f"fold {fold} test split"
        for ax, title, xl, yl in (
            (ax_roc, "ROC", "false positive rate (1 − specificity)", "true positive rate (sensitivity)"),
            (ax_pr, "precision-recall", "recall (sensitivity)", "precision (positive predictive value)"),
        ):
            ax.set_xlim(-0.01, 1.01)
            ax.set_ylim(-0.01, 1.03)
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.set_title(f"{task}: {title}\n{split}, n={n}", fontsize=10)
            ax.grid(color="#eee", lw=0.6)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
            if drawn == 0 and note:
                undefined_note(ax, note)
    return render_png(fig)


def scatter_figure(
    task: str,
    runs: list[Mapping],
    predictions: Predictions,
    values: Values,
    labels: Mapping[str, str],
    colours: Mapping[str, str],
    quantity: str = "value",
    metrics: tuple[str, ...] = ("r2", "mae"),
) -> bytes | None:
    """Predicted vs true per encoder: R² alone hides whether a head is biased, compressed
    towards the mean or wrong on a few images; the identity line shows which. ``metrics``:
    the evaluation's values printed above each panel (the task kind's metrics)."""
    if not runs:
        return None
    data = [(r, *(np.asarray(a, dtype=float) for a in predictions[r["run_id"]])) for r in runs]
    allv = np.concatenate([np.concatenate([y, v]) for _, y, v in data])
    allv = allv[np.isfinite(allv)]
    lo, hi = (float(allv.min()), float(allv.max())) if len(allv) else (0.0, 1.0)
    pad = 0.06 * (hi - lo) if hi > lo else 0.05
    lo, hi = lo - pad, hi + pad
    ncols = min(3, len(data))
    nrows = -(-len(data) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 4.9 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(data) :]:
        ax.axis("off")
    for i, (ax, (r, y, v)) in enumerate(zip(axes.flat, data)):
        lab = labels.get(r["run_id"], r["encoder"])
        ax.plot([lo, hi], [lo, hi], color="#777", ls="--", lw=0.9, label="identity (perfect)")
        ax.scatter(
            y,
            v,
            s=28,
            color=colours.get(lab, PALETTE[i % len(PALETTE)]),
            edgecolor="black",
            linewidth=0.4,
            label=f"test images (n={len(y)})",
        )
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"true {quantity}")
        ax.set_ylabel(f"predicted {quantity}")
        scores = ", ".join(f"{metric_display(m)} {fmt(values.get((r['run_id'], m)))}" for m in metrics)
        ax.set_title(f"{label(lab, r['head'], r.get('fold'))}\n{scores}", fontsize=10)
        ax.grid(color="#eee", lw=0.6)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{task}: predicted vs true {quantity} (test split)", fontsize=12)
    return render_png(fig)


def pvalue_figure(comparisons: list[dict], test: str, column: str, what: str, primary: Mapping[str, str], title: str) -> bytes | None:
    """Matrices of p-values, encoders x encoders, one per (task, head, fold) of the primary
    metric: which pairs of encoders differ once multiplicity is accounted for."""
    groups: dict[tuple, list[dict]] = {}
    for r in comparisons:
        if r["test"] == test and r["metric"] == primary.get(r["task"]):
            groups.setdefault((r["task"], r["head"], r["fold"]), []).append(r)
    if not groups:
        return None
    order = {t: i for i, t in enumerate(primary)}
    keys = sorted(groups, key=lambda k: (order.get(k[0], 99), k[0], k[1], -1 if k[2] is None else k[2]))
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    size = max(len({e for r in groups[k] for e in (r["encoder_a"], r["encoder_b"])}) for k in keys)
    side = max(3.2, 0.7 * size + 1.6)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(6.5, side * ncols + 1.2), side * nrows + 0.4), squeeze=False, layout="constrained")
    for ax in axes.flat[len(keys) :]:
        ax.axis("off")
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e6e6e6")
    im = None
    for ax, k in zip(axes.flat, keys):
        rs = groups[k]
        enc = sorted({e for r in rs for e in (r["encoder_a"], r["encoder_b"])})
        idx = {e: i for i, e in enumerate(enc)}
        mat = np.full((len(enc), len(enc)), np.nan)
        for r in rs:
            p = np.nan if undefined_comparison(r) else r[column]
            mat[idx[r["encoder_a"]], idx[r["encoder_b"]]] = mat[idx[r["encoder_b"]], idx[r["encoder_a"]]] = p
        im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=0, vmax=1)
        for i in range(len(enc)):
            for j in range(len(enc)):
                v = mat[i, j]
                text = "—" if i == j else fmt_p(v) + ("*" if finite(v) and v < 0.05 else "")
                dark = finite(v) and v < 0.6  # viridis is dark at the low end: white text there
                ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
        ax.set_xticks(range(len(enc)), enc, rotation=30, ha="right", fontsize=9)
        ax.set_yticks(range(len(enc)), enc, fontsize=9)
        ax.set_title(f"{k[0]} / {k[1]}{' / ' + fold_text(k[2]) if k[2] is not None else ''}\n{metric_display(primary[k[0]])}", fontsize=10)
    fig.colorbar(im, ax=axes, shrink=0.8, label=what)
    fig.suptitle(f"{title}\n* p < 0.05; grey: undefined comparison", fontsize=11)
    return render_png(fig)
