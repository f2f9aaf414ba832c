"""An HTML report of one evaluation version: the study's tables and figures in one file.

``write_report(store, out_dir)`` reads ``metrics/<eval_id>/`` (and, for the curves, scatter
plots and overlays, the evaluated runs' predictions) and writes::

    out_dir/index.html        self-contained: CSS inline, every figure embedded as a data URI
    out_dir/figures/*.png     the same figures as files (for slides and papers)

Why one static file: a study's result is reviewed, archived and attached to a paper's
supplement; a page without scripts, fonts or CDNs opens the same in ten years and can be
checked against the Parquet tables it came from (eval_id, config and run ids are printed).

Sections: the results table (primary metric with its CI per encoder x head x task, best of each
column in bold) and every metric; a forest plot of the CIs; ROC and PR curves; predicted vs true
for regression; per-image Dice distributions; segmentation overlays (best, median and worst test
image of the best encoder); corrected p-value matrices of the paired bootstrap, the table of all
comparisons, and Friedman + Nemenyi across cross-validation folds. Undefined numbers (an AUROC
on a test split with one class) are shown as "n/a", never as a crash or a fake 0.
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
import re
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never open a window, work on headless machines

import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from evaluation.artifacts import HIGHER_IS_BETTER, KIND_METRICS, read_evaluation
from featurestore.errors import RadstoreError
from featurestore.store import Store

# Okabe & Ito's colour-blind-safe palette (black last: it is the identity/chance line colour too).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
LINESTYLES = ("-", "--", ":", "-.")  # overlapping curves stay distinguishable without colour
HEAD_MARKERS = {"linear": "o", "cross-attention": "s"}
TRUE_COLOUR, PRED_COLOUR = "#56B4E9", "#E69F00"  # sky blue / orange: both readable on grey X-rays
METRIC_NAMES = {"auroc": "AUROC", "auprc": "AP", "r2": "R²", "mae": "MAE", "dice": "Dice", "iou": "IoU"}
KIND_ORDER = {"classification": 0, "regression": 1, "segmentation": 2}
CORRECTIONS = {"bonferroni": "p_bonferroni", "holm": "p_holm", "none": "p"}
DPI = 100


# -- formatting ------------------------------------------------------------------------------

def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _finite(x: Any) -> bool:
    return isinstance(x, numbers.Real) and math.isfinite(x)


def fmt(x: Any, digits: int = 3) -> str:
    """A metric for people: fixed decimals, "n/a" for an undefined (None/NaN) value."""
    if not isinstance(x, numbers.Real) or math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.{digits}f}"


def fmt_ci(value: Any, low: Any, high: Any) -> str:
    """The results-table cell: ``value [low, high]`` (the rounding of ``results_table``), or
    "n/a" alone for an undefined value."""
    return "n/a" if fmt(value) == "n/a" else f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def fmt_p(p: Any) -> str:
    if not _finite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def _fold_text(fold: Any) -> str:
    return "" if fold is None else f"fold {fold}"


def _label(encoder: str, head: str | None = None, fold: Any = None) -> str:
    return " / ".join(x for x in (encoder, head, _fold_text(fold)) if x)


def _slug(*parts: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(str(p) for p in parts if p not in (None, ""))).strip("-") or "x"


def _colours(encoders: Iterable[str]) -> dict[str, str]:
    """One colour per encoder for the whole report, so a colour means the same thing everywhere."""
    return {e: PALETTE[i % len(PALETTE)] for i, e in enumerate(sorted(set(encoders)))}


def _task_order(rows: list[dict]) -> list[str]:
    kind = {r["task"]: r["task_kind"] for r in rows}
    return sorted(kind, key=lambda t: (KIND_ORDER.get(kind[t], 9), t))


def _row_key(r: dict) -> tuple:
    return (r["encoder"], r["head"], -1 if r.get("fold") is None else r["fold"])


def _render(fig: plt.Figure) -> bytes:
    """PNG bytes of a figure; the figure is closed whatever happens (no leak over many reports)."""
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        return buf.getvalue()
    finally:
        plt.close(fig)


def _undefined(ax: plt.Axes, text: str) -> None:
    """Say in the panel itself why it holds no data (rather than leave a blank box)."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="#444",
            wrap=True, bbox={"boxstyle": "round", "fc": "#f4f4f4", "ec": "#bbb"})


# -- selection -------------------------------------------------------------------------------

def headline_rows(metrics: list[dict]) -> list[dict]:
    """The primary-metric rows the study's table shows: the held-out split (fold None) of each
    task, or, for a task evaluated only by cross-validation, each of its folds."""
    prim = [m for m in metrics if m["primary"]]
    has_split = {m["task"] for m in prim if m["fold"] is None}
    return [m for m in prim if m["fold"] is None or m["task"] not in has_split]


def _runs_by_split(meta: dict, task: str) -> dict[Any, list[dict]]:
    """A task's runs per split: None (the held-out split) first, then each cross-validation fold."""
    runs = [r for r in meta["runs"] if r["task"] == task]
    folds = sorted({r.get("fold") for r in runs}, key=lambda f: -1 if f is None else f)
    return {f: sorted((r for r in runs if r.get("fold") == f), key=lambda r: (r["encoder"], r["head"])) for f in folds}


def _test_predictions(store: Store, run_id: str) -> pa.Table:
    from heads.runs import read_predictions

    p = read_predictions(store, run_id)
    return p.filter(pc.equal(p.column("split"), "test")) if "split" in p.column_names else p


# -- figures ---------------------------------------------------------------------------------

def _symlog_axis(ax: plt.Axes, lo: float, hi: float) -> None:
    """A symmetric-log x axis over [lo, hi] with at most ~4 labelled decades a side (no overlaps)."""
    ax.set_xscale("symlog", linthresh=1)
    xlo, xhi = (lo * 1.6 if lo < 0 else -0.5), (hi * 1.6 if hi > 0 else 0.5)
    top = math.ceil(math.log10(max(abs(xlo), abs(xhi), 10.0)))
    step = max(1, math.ceil(top / 4))
    mags = [10 ** d for d in range(step, top + 1, step)]
    ticks = sorted([-m for m in mags if -m >= xlo] + [0] + [m for m in mags if m <= xhi])
    ax.set_xticks(ticks, [f"$-10^{{{round(math.log10(-t))}}}$" if t < 0 else f"$10^{{{round(math.log10(t))}}}$" if t > 0 else "0"
                          for t in ticks])
    ax.set_xlim(xlo, xhi)


def forest_figure(rows: list[dict], colours: dict[str, str]) -> bytes | None:
    """Each headline metric with its CI, one panel per task: overlapping bars mean the data
    cannot tell the encoders apart, whatever the point estimates say."""
    tasks = _task_order(rows)
    if not tasks:
        return None
    per_task = {t: sorted((r for r in rows if r["task"] == t), key=_row_key) for t in tasks}
    ncols = 1 if len(tasks) == 1 else 2
    nrows = -(-len(tasks) // ncols)
    # Each row of panels as tall as its longest panel needs (a 9-row task next to a 3-row one).
    heights = [0.4 * max(len(per_task[t]) for t in tasks[i * ncols:(i + 1) * ncols]) + 1.4 for i in range(nrows)]
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, sum(heights) + 0.6), squeeze=False,
                             layout="constrained", gridspec_kw={"height_ratios": heights})
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    for ax, task in zip(axes.flat, tasks):
        rs = per_task[task]
        metric = rs[0]["metric"]
        ys = np.arange(len(rs))[::-1]  # first row on top
        bounds = []
        for y, r in zip(ys, rs):
            c = colours[r["encoder"]]
            if not _finite(r["value"]):
                ax.text(0.01, y, "n/a", transform=ax.get_yaxis_transform(), va="center", fontsize=9, color="#444")
                continue
            lo, hi = r["ci_low"], r["ci_high"]
            if _finite(lo) and _finite(hi):
                ax.plot([lo, hi], [y, y], color=c, lw=2.2, solid_capstyle="butt")
                ax.plot([lo, hi], [y, y], "|", color=c, ms=9)
                bounds += [lo, hi]
            ax.plot(r["value"], y, HEAD_MARKERS.get(r["head"], "D"), color=c, ms=7, mec="black", mew=0.6)
            bounds.append(r["value"])
        ax.set_yticks(ys, [_label(r["encoder"], r["head"], r["fold"]) for r in rs], fontsize=9)
        ax.set_ylim(-0.7, len(rs) - 0.3)
        if metric in ("auroc", "auprc", "dice", "iou"):
            ax.set_xlim(-0.02, 1.02)
        elif bounds and max(abs(b) for b in bounds) > 5:  # a wild R² interval: keep the small ones visible
            _symlog_axis(ax, min(bounds + [0.0]), max(bounds + [0.0]))
        elif not bounds:
            ax.set_xlim(0, 1)
        ref = {"auroc": 0.5, "r2": 0.0}.get(metric)
        if ref is not None:
            ax.axvline(ref, color="#777", ls="--", lw=0.8)
        if not bounds:
            _undefined(ax, f"{_metric_name(metric)} undefined for every run\n(e.g. one class in the test split)")
        ax.set_xlabel(f"{_metric_name(metric)} ({round(100 * (rs[0]['confidence'] or 0.95))}% CI)")
        ax.set_title(task, fontsize=11)
        ax.grid(axis="x", color="#ddd", lw=0.6)
    heads = sorted({r["head"] for r in rows})
    handles = [Line2D([], [], color=colours[e], lw=2.2, label=e) for e in colours]
    handles += [Line2D([], [], ls="", marker=HEAD_MARKERS.get(h, "D"), color="#888", mec="black", label=h) for h in heads]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    fig.suptitle("Primary metric per task with bootstrap confidence intervals", fontsize=12)
    return _render(fig)


def roc_pr_figure(store: Store, task: str, splits: dict[Any, list[dict]], values: dict[tuple[str, str], float],
                  labels: dict[str, str], colours: dict[str, str]) -> bytes | None:
    """ROC and precision-recall curves of one classification task, one row per split (held-out,
    then each fold): the AUROC of the table summarises a curve; the curve shows at which
    operating points encoders differ."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    if not splits:
        return None
    # No fixed aspect (constrained layout then clips titles): the size keeps the panels about square.
    fig, axes = plt.subplots(len(splits), 2, figsize=(10.0, 5.7 * len(splits)), squeeze=False, layout="constrained")
    for (fold, runs), (ax_roc, ax_pr) in zip(splits.items(), axes):
        drawn, n, note = 0, 0, ""
        several_heads = len({x["head"] for x in runs}) > 1
        for i, r in enumerate(runs):
            lab = labels.get(r["run_id"], r["encoder"])
            name = f"{lab} / {r['head']}" if several_heads else lab
            style = {"color": colours.get(lab, PALETTE[i % len(PALETTE)]), "ls": LINESTYLES[i % len(LINESTYLES)], "lw": 1.8}
            p = _test_predictions(store, r["run_id"])
            y = p.column("label").to_numpy().astype(float) > 0.5
            s = p.column("score").to_numpy().astype(float)
            n = len(y)
            auroc, ap = values.get((r["run_id"], "auroc")), values.get((r["run_id"], "auprc"))
            if 0 < y.sum() < len(y):
                fpr, tpr, _ = roc_curve(y, s)
                prec, rec, _ = precision_recall_curve(y, s)
                ax_roc.plot(fpr, tpr, label=f"{name} (AUROC {fmt(auroc)})", drawstyle="steps-post", **style)
                ax_pr.plot(rec, prec, label=f"{name} (AP {fmt(ap)})", drawstyle="steps-post", **style)
                if drawn == 0:
                    ax_pr.axhline(y.mean(), color="#777", ls="--", lw=0.8, label=f"prevalence {y.mean():.2f}")
                drawn += 1
            else:
                note = f"undefined: this test split has only {'positives' if y.all() else 'negatives'} (n={len(y)})"
                ax_roc.plot([], [], label=f"{name} (AUROC n/a)", **style)
                ax_pr.plot([], [], label=f"{name} (AP n/a)", **style)
        ax_roc.plot([0, 1], [0, 1], color="#777", ls="--", lw=0.8, label="chance")
        split = "held-out test split" if fold is None else f"fold {fold} test split"
        for ax, title, xl, yl in ((ax_roc, "ROC", "false positive rate (1 − specificity)", "true positive rate (sensitivity)"),
                                  (ax_pr, "precision-recall", "recall (sensitivity)", "precision (positive predictive value)")):
            ax.set_xlim(-0.01, 1.01)
            ax.set_ylim(-0.01, 1.03)
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.set_title(f"{task}: {title}\n{split}, n={n}", fontsize=10)
            ax.grid(color="#eee", lw=0.6)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
            if drawn == 0 and note:
                _undefined(ax, note)
    return _render(fig)


def regression_figure(store: Store, task: str, runs: list[dict], values: dict[tuple[str, str], float],
                      labels: dict[str, str], colours: dict[str, str]) -> bytes:
    """Predicted vs true per encoder: R² alone hides whether a head is biased, compressed
    towards the mean or wrong on a few images; the identity line shows which."""
    from heads.tasks import TASKS

    quantity = TASKS[task].column.upper() if task in TASKS else "value"
    data = []
    for r in runs:
        p = _test_predictions(store, r["run_id"])
        data.append((r, p.column("label").to_numpy().astype(float), p.column("value").to_numpy().astype(float)))
    allv = np.concatenate([np.concatenate([y, v]) for _, y, v in data]) if data else np.array([0.0, 1.0])
    allv = allv[np.isfinite(allv)]
    lo, hi = (float(allv.min()), float(allv.max())) if len(allv) else (0.0, 1.0)
    pad = 0.06 * (hi - lo) if hi > lo else 0.05
    lo, hi = lo - pad, hi + pad
    ncols = min(3, max(1, len(data)))
    nrows = -(-max(1, len(data)) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 4.9 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(data):]:
        ax.axis("off")
    for i, (ax, (r, y, v)) in enumerate(zip(axes.flat, data)):
        lab = labels.get(r["run_id"], r["encoder"])
        ax.plot([lo, hi], [lo, hi], color="#777", ls="--", lw=0.9, label="identity (perfect)")
        ax.scatter(y, v, s=28, color=colours.get(lab, PALETTE[i % len(PALETTE)]), edgecolor="black", linewidth=0.4,
                   label=f"test images (n={len(y)})")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"true {quantity}")
        ax.set_ylabel(f"predicted {quantity}")
        ax.set_title(f"{_label(lab, r['head'], r.get('fold'))}\nR² {fmt(values.get((r['run_id'], 'r2')))}, "
                     f"MAE {fmt(values.get((r['run_id'], 'mae')))}", fontsize=10)
        ax.grid(color="#eee", lw=0.6)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{task}: predicted vs true {quantity} (test split)", fontsize=12)
    return _render(fig)


def dice_figure(task: str, per_image: list[dict], colours: dict[str, str]) -> bytes | None:
    """Per-image Dice per encoder x head: a mean Dice can hide a bimodal head (perfect on
    most images, failing on some); the box and the points show the spread."""
    groups: dict[tuple, list[float]] = {}
    for r in per_image:
        if r["task"] == task:
            groups.setdefault((r["encoder"], r["head"], r["fold"]), []).append(r["dice"])
    if not groups:
        return None
    keys = sorted(groups, key=lambda k: (k[0], k[1], -1 if k[2] is None else k[2]))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.35 * len(keys) + 1.5), 4.6), layout="constrained")
    rng = np.random.default_rng(0)
    for x, k in enumerate(keys):
        d = np.array(groups[k], dtype=float)
        d = d[np.isfinite(d)]
        c = colours[k[0]]
        if len(d) == 0:
            ax.text(x, 0.5, "n/a", ha="center", va="center", fontsize=9, color="#444")
            continue
        bp = ax.boxplot([d], positions=[x], widths=0.55, showfliers=False, patch_artist=True,
                        medianprops={"color": "black", "lw": 1.4})
        for box in bp["boxes"]:
            box.set(facecolor=c, alpha=0.3, edgecolor=c)
        ax.scatter(x + rng.uniform(-0.17, 0.17, len(d)), d, s=20, color=c, edgecolor="black", linewidth=0.4, zorder=3)
        ax.plot(x, d.mean(), marker="D", color="white", mec="black", ms=6, zorder=4)
    ax.set_xticks(range(len(keys)), ["\n".join(x for x in (k[0], k[1], _fold_text(k[2])) if x) for k in keys], fontsize=9)
    ax.set_xlim(-0.6, len(keys) - 0.4)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("Dice per test image")
    ax.set_xlabel("encoder / head")
    ax.set_title(f"{task}: Dice distribution over test images (box: quartiles; ◇ mean)", fontsize=11)
    ax.grid(axis="y", color="#eee", lw=0.6)
    return _render(fig)


def _best_segmentation_run(task: str, per_image: list[dict]) -> tuple[str, list[dict]] | None:
    """The run with the highest mean Dice on the task (held-out split preferred; ties by name)."""
    rows = [r for r in per_image if r["task"] == task]
    if any(r["fold"] is None for r in rows):
        rows = [r for r in rows if r["fold"] is None]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["run_id"], []).append(r)
    scored = []
    for rid, rs in by.items():
        d = np.array([r["dice"] for r in rs], float)
        if np.isfinite(d).any():
            scored.append((-float(np.nanmean(d)), rs[0]["encoder"], rs[0]["head"], rid))
    if not scored:
        return None
    rid = min(scored)[3]
    return rid, by[rid]


def _pick_images(rows: list[dict], n: int) -> list[tuple[str, dict]]:
    """``n`` images spread over the Dice ranking: best, median, worst for n = 3."""
    rs = sorted((r for r in rows if _finite(r["dice"])), key=lambda r: (-r["dice"], r["image_id"]))
    if not rs or n <= 0:
        return []
    pos = sorted(set(np.linspace(0, len(rs) - 1, min(n, len(rs))).round().astype(int).tolist()))
    out = []
    for p in pos:
        name = ("best" if p == 0 else "worst" if p == len(rs) - 1
                else "median" if 2 * p == len(rs) - 1 else f"rank {p + 1}/{len(rs)}")
        out.append((name, rs[p]))
    return out


def _aligned_image(store: Store, image_id: str, uris: dict[str, str], feature_set_id: str, size: int) -> np.ndarray | None:
    """The image as the encoder saw it (the feature set's resize/crop), so the masks, which went
    through the same geometry, lie on the right pixels; None when it cannot be read."""
    import torch
    import torch.nn.functional as F

    from featurestore.encoders.preprocess import Preprocessing
    from featurestore.imageio import read_image

    if image_id not in uris:
        return None
    try:
        pixels = read_image(uris[image_id]).pixels
    except (RadstoreError, OSError):  # a moved or unreadable file must not sink the whole report
        return None
    t = torch.from_numpy(np.ascontiguousarray(pixels))[None, None]
    try:
        spec = store.feature_set(feature_set_id).spec.preprocessing
        t = Preprocessing.from_json(spec).geometry(t, "bilinear")
    except (RadstoreError, TypeError, ValueError):  # no feature set / no preprocessing recorded: plain resize
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t[0, 0].clamp(0, 1).numpy()


def _upsample(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay_figure(store: Store, task: str, per_image: list[dict], n: int, threshold: float) -> tuple[bytes, dict] | None:
    """The best encoder's masks on its best, median and worst test image: a Dice number does
    not say whether a failure is a missed region, a spill-over or a wrong side."""
    import zarr

    from heads.runs import RUNS_DIR

    best = _best_segmentation_run(task, per_image)
    if best is None or n <= 0:
        return None
    run_id, rows = best
    picks = _pick_images(rows, n)
    if not picks:
        return None
    loc = store.loc.child(RUNS_DIR, run_id)
    prob = zarr.open_array(loc.zarr_store("masks.zarr", read_only=True))
    true = zarr.open_array(loc.zarr_store("targets.zarr", read_only=True))
    images = store.images()
    uris = dict(zip(images.column("image_id").to_pylist(), images.column("uri").to_pylist()))
    first = rows[0]
    mean = float(np.nanmean([r["dice"] for r in rows]))
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 4.9), squeeze=False, layout="constrained")
    for ax, (name, r) in zip(axes.flat, picks):
        p = np.asarray(prob[r["mask_row"]], dtype=np.float32)
        t = np.asarray(true[r["mask_row"]]) > 0
        img = _aligned_image(store, r["image_id"], uris, r["feature_set_id"], 16 * p.shape[-1])
        shape = img.shape if img is not None else (16 * p.shape[0], 16 * p.shape[1])
        if img is not None:
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(np.zeros(shape), cmap="gray", vmin=0, vmax=1)
            ax.text(0.5, 0.04, "image not readable from the store index", transform=ax.transAxes,
                    ha="center", color="white", fontsize=8)
        pred_up = _upsample(np.nan_to_num(p) > threshold, shape)
        true_up = _upsample(t, shape)
        fill = np.zeros((*shape, 4), np.float32)
        fill[..., :3] = matplotlib.colors.to_rgb(PRED_COLOUR)
        fill[..., 3] = 0.35 * (pred_up > 0.5)
        ax.imshow(fill, interpolation="nearest")
        if (pred_up > 0.5).any() and not (pred_up > 0.5).all():
            ax.contour(pred_up, levels=[0.5], colors=[PRED_COLOUR], linewidths=1.4, linestyles="--")
        if (true_up > 0.5).any() and not (true_up > 0.5).all():
            ax.contour(true_up, levels=[0.5], colors=[TRUE_COLOUR], linewidths=1.8)
        empty = " (empty true mask)" if not t.any() else ""
        ax.set_title(f"{name}: {r['image_id']}\nDice {fmt(r['dice'])} (true {r['true_pixels']} px{empty}, "
                     f"predicted {r['predicted_pixels']} px)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=TRUE_COLOUR, lw=2, label="true mask (contour)"),
               Patch(facecolor=PRED_COLOUR, alpha=0.5, edgecolor=PRED_COLOUR, ls="--",
                     label=f"predicted mask (p > {threshold:g})")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=9, frameon=False)
    fig.suptitle(f"{task}: {_label(first['encoder'], first['head'], first['fold'])} "
                 f"(best mean Dice {fmt(mean)})", fontsize=11)
    info = {"run_id": run_id, "encoder": first["encoder"], "head": first["head"], "mean_dice": mean,
            "images": [(name, r["image_id"], r["dice"]) for name, r in picks]}
    return _render(fig), info


def _undefined_comparison(r: dict) -> bool:
    """A comparison of two undefined metrics (AUROC on a one-class split): its stored p (1.0)
    carries no information, so it is reported as n/a."""
    return r["test"] != "nemenyi" and not (_finite(r["value_a"]) and _finite(r["value_b"]))


def pvalue_figure(comparisons: list[dict], test: str, column: str, what: str, primary: dict[str, str],
                  title: str) -> bytes | None:
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
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(6.5, side * ncols + 1.2), side * nrows + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e6e6e6")
    im = None
    for ax, k in zip(axes.flat, keys):
        rs = groups[k]
        enc = sorted({e for r in rs for e in (r["encoder_a"], r["encoder_b"])})
        idx = {e: i for i, e in enumerate(enc)}
        mat = np.full((len(enc), len(enc)), np.nan)
        for r in rs:
            p = np.nan if _undefined_comparison(r) else r[column]
            mat[idx[r["encoder_a"]], idx[r["encoder_b"]]] = mat[idx[r["encoder_b"]], idx[r["encoder_a"]]] = p
        im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=0, vmax=1)
        for i in range(len(enc)):
            for j in range(len(enc)):
                v = mat[i, j]
                text = "—" if i == j else fmt_p(v) + ("*" if _finite(v) and v < 0.05 else "")
                dark = _finite(v) and v < 0.6  # viridis is dark at the low end: white text there
                ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
        ax.set_xticks(range(len(enc)), enc, rotation=30, ha="right", fontsize=9)
        ax.set_yticks(range(len(enc)), enc, fontsize=9)
        ax.set_title(f"{k[0]} / {k[1]}{' / ' + _fold_text(k[2]) if k[2] is not None else ''}\n"
                     f"{_metric_name(primary[k[0]])}", fontsize=10)
    fig.colorbar(im, ax=axes, shrink=0.8, label=what)
    fig.suptitle(f"{title}\n* p < 0.05; grey: undefined comparison", fontsize=11)
    return _render(fig)


# -- HTML ------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:0 auto;max-width:1320px;
padding:16px 24px;color:#1a1a1a;line-height:1.4}
h1{font-size:1.6em;margin:0.2em 0}h2{font-size:1.25em;border-bottom:2px solid #0072B2;padding-bottom:3px;margin-top:1.8em}
h3{font-size:1.05em;margin:1.2em 0 0.4em}
table{border-collapse:collapse;font-size:0.85em;margin:0.4em 0 1em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef3f8}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.best{font-weight:bold;background:#fff6d9}td.na{color:#888}
.scroll{overflow-x:auto}.meta td:first-child{font-weight:600;background:#f7f7f7}
figure{margin:0.6em 0 1.4em}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:0.85em;color:#444;margin-top:4px}
code{font-size:0.9em;background:#f3f3f3;padding:0 3px}.runs td,.comparisons td{white-space:nowrap}.note{font-size:0.85em;color:#555}
"""


def _table(header: list[str] | None, rows: list[list[tuple[str, str]]], cls: str = "") -> str:
    """header: escaped html per column (None: no header row); rows: cells of (html attributes,
    already-escaped html content)."""
    head = "" if header is None else "<thead><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead>"
    body = "".join("<tr>" + "".join(f"<td{a}>{c}</td>" for a, c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table class="{cls}">{head}<tbody>{body}</tbody></table></div>'


def _figure_html(name: str, png: bytes, caption: str) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return (f'<figure id="fig-{_e(name)}"><a href="figures/{_e(name)}.png">'
            f'<img src="data:image/png;base64,{b64}" alt="{_e(caption)}"></a>'
            f"<figcaption>{_e(caption)} (<code>figures/{_e(name)}.png</code>)</figcaption></figure>")


def _results_table(rows: list[dict]) -> str:
    """Rows encoder x head, columns task; the best finite value of each column in bold."""
    cols = sorted({(r["task"], r["fold"]) for r in rows},
                  key=lambda k: (_task_order(rows).index(k[0]), -1 if k[1] is None else k[1]))
    lines = sorted({(r["encoder"], r["head"]) for r in rows})
    cell = {(r["encoder"], r["head"], r["task"], r["fold"]): r for r in rows}
    metric = {(r["task"], r["fold"]): r["metric"] for r in rows}
    best = {}
    for c in cols:
        vals = [r["value"] for r in rows if (r["task"], r["fold"]) == c and _finite(r["value"])]
        if vals:
            best[c] = (max if HIGHER_IS_BETTER.get(metric[c], True) else min)(vals)
    header = ["encoder", "head"] + [f"{_e(t)}{'<br>' + _e(_fold_text(f)) if f is not None else ''}<br>"
                                    f"<small>{_e(_metric_name(metric[(t, f)]))} [CI]</small>" for t, f in cols]
    body = []
    for enc, head in lines:
        row = [("", _e(enc)), ("", _e(head))]
        for t, f in cols:
            r = cell.get((enc, head, t, f))
            attrs = (f' data-encoder="{_e(enc)}" data-head="{_e(head)}" data-task="{_e(t)}"'
                     f' data-fold="{"" if f is None else _e(f)}"')
            if r is None:
                row.append((f' class="na"{attrs}', "—"))
                continue
            is_best = (t, f) in best and _finite(r["value"]) and abs(r["value"] - best[(t, f)]) <= 1e-12
            klass = "num best" if is_best else ("num" if _finite(r["value"]) else "num na")
            text = _e(fmt_ci(r["value"], r["ci_low"], r["ci_high"]))
            row.append((f' class="{klass}"{attrs}', f"<b>{text}</b>" if is_best else text))
        body.append(row)
    return _table(header, body, "results")


def _all_metrics_table(metrics: list[dict], tasks: list[str]) -> str:
    def key(m):
        return (tasks.index(m["task"]) if m["task"] in tasks else 99, m["head"], -1 if m["fold"] is None else m["fold"],
                KIND_METRICS.get(m["task_kind"], ()).index(m["metric"]) if m["metric"] in KIND_METRICS.get(m["task_kind"], ()) else 9,
                m["encoder"])
    rows = []
    for m in sorted(metrics, key=key):
        na = "" if _finite(m["value"]) else " na"
        rows.append([("", _e(m["task"])), ("", _e(m["head"])), ("", _e(_fold_text(m["fold"]) or "held-out")),
                     ("", _e(m["encoder"])), ("", _e(_metric_name(m["metric"])) + (" (primary)" if m["primary"] else "")),
                     (f' class="num{na}"', _e(fmt(m["value"]))), (f' class="num{na}"', _e(f"[{fmt(m['ci_low'])}, {fmt(m['ci_high'])}]")),
                     (' class="num"', _e(m["n"])), ("", _e(m["method"]))])
    return _table(["task", "head", "split", "encoder", "metric", "value", "CI", "n", "CI method"], rows)


def _comparisons_table(comparisons: list[dict], tasks: list[str]) -> str:
    def key(r):
        return (r["test"], tasks.index(r["task"]) if r["task"] in tasks else 99, r["head"],
                -1 if r["fold"] is None else r["fold"], r["metric"], r["encoder_a"], r["encoder_b"])
    rows = []
    for r in sorted(comparisons, key=key):
        undef = _undefined_comparison(r)
        ps = ["n/a" if undef else fmt_p(r[c]) for c in ("p", "p_bonferroni", "p_holm")]
        diff = "n/a" if undef else (f"{fmt(r['diff'])}" + ("" if not _finite(r["ci_low"]) else f" [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"))
        rows.append([("", _e(r["test"])), ("", _e(r["task"])), ("", _e(r["head"])), ("", _e(_fold_text(r["fold"]) or "held-out")),
                     ("", _e(_metric_name(r["metric"]))), ("", _e(r["encoder_a"])), ("", _e(r["encoder_b"])),
                     (' class="num"', _e(fmt(r["value_a"]))), (' class="num"', _e(fmt(r["value_b"]))), (' class="num"', _e(diff)),
                     *[(' class="num"', _e(p)) for p in ps], (' class="num"', _e(r["family_size"])), (' class="num"', _e(r["n"]))])
    return _table(["test", "task", "head", "split", "metric", "A", "B", "A value", "B value",
                   "A − B [CI]¹", "p", "p Bonferroni", "p Holm", "family", "n"], rows, "comparisons") + (
        '<p class="note">¹ nemenyi rows: difference of mean ranks (lower rank = better); values are fold medians.</p>')


def _folds_table(folds: list[dict]) -> str:
    rows = []
    for f in sorted(folds, key=lambda r: (r["task"], r["head"], r["metric"], r["encoder"])):
        rows.append([("", _e(f["task"])), ("", _e(f["head"])), ("", _e(_metric_name(f["metric"]))), ("", _e(f["encoder"])),
                     (' class="num"', _e(f["folds"])), (' class="num"', _e(fmt(f["median"]))),
                     (' class="num"', _e(fmt_ci(f["mean"], f["ci_low"], f["ci_high"]))), (' class="num"', _e(fmt(f["mean_rank"], 2))),
                     (' class="num"', _e(fmt(f["friedman_statistic"]))), (' class="num"', _e(fmt_p(f["friedman_p"])))])
    return _table(["task", "head", "metric", "encoder", "folds", "median", "mean [t-interval]", "mean rank",
                   "Friedman χ²", "Friedman p"], rows)


def _runs_table(runs: list[dict]) -> str:
    rows = [[("", f"<code>{_e(r['run_id'])}</code>"), ("", _e(r["task"])), ("", _e(r["head"])), ("", _e(r["encoder"])),
             ("", f"<code>{_e(r['feature_set_id'])}</code>"), ("", _e(_fold_text(r.get("fold")) or "held-out")),
             ("", _e(r.get("run_code_version") or "")), ("", f"<code>{_e((r.get('predictions_sha256') or '')[:12])}</code>")]
            for r in sorted(runs, key=lambda r: (r["task"], r["head"], -1 if r.get("fold") is None else r["fold"], r["encoder"]))]
    return _table(["run id", "task", "head", "encoder", "feature set", "split", "run code", "predictions sha256"], rows, "runs")


def _meta_table(meta: dict, store: Store, correction: str) -> str:
    cfg = meta.get("config", {})
    items = [("eval_id", meta.get("eval_id")), ("created at", meta.get("created_at")),
             ("code version", meta.get("code_version")), ("radstore version", meta.get("radstore_version")),
             ("metric definitions (eval_version)", meta.get("eval_version")),
             ("store", store.url), ("store format version", meta.get("store_format_version")),
             ("bootstrap resamples", cfg.get("resamples")), ("seed", cfg.get("seed")),
             ("CI method", cfg.get("method")), ("confidence", cfg.get("confidence")),
             ("Dice of an empty true and empty predicted mask", cfg.get("empty_both")),
             ("segmentation threshold", cfg.get("threshold")),
             ("multiple-comparison correction in the figures", correction),
             ("runs", len(meta.get("runs", []))),
             ("report generated", datetime.now(timezone.utc).replace(microsecond=0).isoformat())]
    return _table(None, [[("", _e(k)), ("", _e("" if v is None else v))] for k, v in items], "meta")


# -- entry point -----------------------------------------------------------------------------

def write_report(store: Store, out_dir: str | Path, eval_id: str | None = None, overlays: int = 3,
                 *, correction: str = "bonferroni") -> Path:
    """Write ``out_dir/index.html`` (self-contained) and ``out_dir/figures/*.png`` for one
    evaluation version (default: the latest). ``overlays``: images per segmentation task shown
    with their masks (3 = best, median, worst; 0 = none). ``correction``: the p-values the
    matrices show ("bonferroni", "holm" or "none"; the table always has all three).
    Returns the path of index.html."""
    if correction not in CORRECTIONS:
        raise RadstoreError(f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    if overlays < 0:
        raise RadstoreError(f"overlays must be >= 0, got {overlays}")
    t0 = time.perf_counter()
    meta, tables = read_evaluation(store, eval_id)
    metrics = tables["metrics"].to_pylist()
    comparisons = tables["comparisons"].to_pylist()
    per_image = tables["per_image"].to_pylist()
    folds = tables["folds"].to_pylist()
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)

    tasks = _task_order(metrics)
    kinds = {m["task"]: m["task_kind"] for m in metrics}
    primary = {t: KIND_METRICS[kinds[t]][0] for t in tasks if kinds[t] in KIND_METRICS}
    colours = _colours([m["encoder"] for m in metrics])
    values = {(m["run_id"], m["metric"]): m["value"] for m in metrics}
    labels = {m["run_id"]: m["encoder"] for m in metrics}
    headline = headline_rows(metrics)
    eid = meta["eval_id"]
    conf = round(100 * (metrics[0]["confidence"] if metrics else meta.get("config", {}).get("confidence", 0.95)))

    def figure(name: str, png: bytes | None, caption: str) -> str:
        if png is None:
            return f'<p class="note">{_e(caption)}: nothing to plot.</p>'
        (out / "figures" / f"{name}.png").write_bytes(png)
        return _figure_html(name, png, caption)

    parts = [(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
              f'<meta name="viewport" content="width=device-width, initial-scale=1">'
              f"<title>radstore evaluation {_e(eid)}</title><style>{CSS}</style></head><body>"),
             f"<h1>Evaluation <code>{_e(eid)}</code></h1>",
             (f'<p class="note">Encoders: {_e(", ".join(sorted(colours)))}. Tasks: {_e(", ".join(tasks))}. '
              f"Every number below is read from <code>metrics/{_e(eid)}/</code>; intervals are {conf}% bootstrap CIs.</p>"),
             _meta_table(meta, store, correction)]

    parts.append("<h2>1. Results</h2>")
    parts.append(f'<p class="note">Primary metric per task ({_e(", ".join(f"{t}: {_metric_name(m)}" for t, m in primary.items()))}): '
                 f"value [{conf}% CI lower, upper] on the held-out test split. Bold: the best value of each column "
                 f"(ties all bold). n/a: undefined (e.g. AUROC when the test split holds one class)."
                 + (" Cross-validation folds: in the forest plot, the table of all metrics and section 7." if folds else "")
                 + "</p>")
    parts.append(_results_table(headline) if headline else '<p class="note">No metrics in this evaluation.</p>')
    parts.append("<h3>All metrics</h3>" + _all_metrics_table(metrics, tasks))
    parts.append("<h3>Runs evaluated</h3>" + _runs_table(meta.get("runs", [])))

    parts.append("<h2>2. Confidence intervals</h2>")
    parts.append(figure("forest", forest_figure([m for m in metrics if m["primary"]], colours),
                        f"Forest plot: primary metric and {conf}% CI per encoder / head (and fold), one panel per task"))

    cls_tasks = [t for t in tasks if kinds[t] == "classification"]
    parts.append("<h2>3. Classification: ROC and precision-recall</h2>")
    for t in cls_tasks:
        parts.append(figure(f"roc-pr-{_slug(t)}", roc_pr_figure(store, t, _runs_by_split(meta, t), values, labels, colours),
                            f"{t}: ROC and precision-recall curves per encoder and split (AUROC / AP from the evaluation)"))
    if not cls_tasks:
        parts.append('<p class="note">No classification task in this evaluation.</p>')

    reg_tasks = [t for t in tasks if kinds[t] == "regression"]
    parts.append("<h2>4. Regression: predicted vs true</h2>")
    for t in reg_tasks:
        runs = [r for rs in _runs_by_split(meta, t).values() for r in rs]
        parts.append(figure(f"regression-{_slug(t)}", regression_figure(store, t, runs, values, labels, colours) if runs else None,
                            f"{t}: predicted vs true per encoder; dashed = identity"))
    if not reg_tasks:
        parts.append('<p class="note">No regression task in this evaluation.</p>')

    seg_tasks = [t for t in tasks if kinds[t] == "segmentation"]
    parts.append("<h2>5. Segmentation: per-image Dice</h2>")
    for t in seg_tasks:
        parts.append(figure(f"dice-{_slug(t)}", dice_figure(t, per_image, colours), f"{t}: Dice per test image per encoder / head"))
    if not seg_tasks:
        parts.append('<p class="note">No segmentation task in this evaluation.</p>')

    parts.append("<h2>6. Segmentation overlays</h2>")
    threshold = float(meta.get("config", {}).get("threshold", 0.5))
    for t in seg_tasks:
        res = overlay_figure(store, t, per_image, overlays, threshold)
        if res is None:
            parts.append(f'<p class="note">{_e(t)}: no overlay (overlays=0 or no finite Dice).</p>')
            continue
        png, info = res
        shown = "; ".join(f"{n} {i} (Dice {fmt(d)})" for n, i, d in info["images"])
        parts.append(figure(f"overlay-{_slug(t)}", png,
                            f"{t}: {info['encoder']} / {info['head']} (best mean Dice {fmt(info['mean_dice'])}, run "
                            f"{info['run_id']}): {shown}. Blue contour: true mask; orange: predicted mask"))
    if not seg_tasks:
        parts.append('<p class="note">No segmentation task in this evaluation.</p>')

    column = CORRECTIONS[correction]
    what = {"bonferroni": "Bonferroni-corrected p", "holm": "Holm-corrected p", "none": "uncorrected p"}[correction]
    parts.append("<h2>7. Comparisons between encoders</h2>")
    parts.append(f'<p class="note">Paired bootstrap of the difference on the same test images; {_e(what)} over the family '
                 "of comparisons with the same test and metric. A comparison of two undefined metrics is n/a.</p>")
    parts.append(figure("pvalues-paired-bootstrap", pvalue_figure(comparisons, "paired-bootstrap", column, what, primary,
                                                                      f"{what}, paired bootstrap of the difference"),
                        f"{what} of the paired bootstrap, primary metric, encoders x encoders"))
    parts.append("<h3>All comparisons (raw, Bonferroni and Holm p)</h3>" + _comparisons_table(comparisons, tasks))
    parts.append("<h3>Across cross-validation folds: Friedman and Nemenyi</h3>")
    if folds:
        parts.append(_folds_table(folds))
        parts.append(figure("pvalues-nemenyi", pvalue_figure(comparisons, "nemenyi", "p", "Nemenyi p (family-wise)", primary,
                                                             "Nemenyi post-hoc p after Friedman's test across folds"),
                            "Nemenyi post-hoc p-values after Friedman's test across folds, primary metric"))
    else:
        parts.append('<p class="note">No cross-validation folds in this evaluation.</p>')
    parts.append(f'<p class="note">Generated by radstore in {time.perf_counter() - t0:.1f} s.</p></body></html>')

    index = out / "index.html"
    tmp = out / ".index.html.partial"
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(index)  # a reader never sees half a report
    return index
