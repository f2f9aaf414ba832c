"""Figures of mask kinds, as pure functions: per-image Dice distributions, and overlays of
the best run's masks on its best, median and worst test image.

Which run and images an overlay shows is chosen here, from the per-image rows alone, so that
:mod:`evaluation.report.gather` reads only the few masks and images the figure shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never open a window, work on headless machines

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from evaluation.report.common import finite, fmt, fold_text, label
from evaluation.report.figures import render_png

TRUE_COLOUR, PRED_COLOUR = "#56B4E9", "#E69F00"  # sky blue / orange: both readable on grey X-rays


@dataclass(frozen=True)
class OverlayImage:
    """One panel: a test image with its true and predicted mask."""

    name: str  # where it ranks: "best", "median", "worst" or "rank k/n"
    row: dict[str, Any]  # its per_image row (image_id, dice, true_pixels, predicted_pixels, ...)
    probabilities: np.ndarray  # [y, x] predicted probabilities at the target resolution
    truth: np.ndarray  # [y, x] true mask, same grid
    image: np.ndarray | None  # the image as the encoder saw it, in [0, 1]; None when unreadable


@dataclass(frozen=True)
class Overlay:
    """The overlays of one mask task: the best run and the images picked from its ranking."""

    task: str
    run_id: str
    encoder: str
    head: str
    fold: int | None
    mean_dice: float
    images: list[OverlayImage]


def best_mask_run(task: str, per_image: list[dict]) -> tuple[str, list[dict]] | None:
    """The run with the highest mean Dice on the task (held-out split preferred; ties by name)
    and its per-image rows; None when no run has a finite Dice."""
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


def pick_images(rows: list[dict], n: int) -> list[tuple[str, dict]]:
    """``n`` images spread over the Dice ranking: best, median, worst for n = 3."""
    rs = sorted((r for r in rows if finite(r["dice"])), key=lambda r: (-r["dice"], r["image_id"]))
    if not rs or n <= 0:
        return []
    pos = sorted(set(np.linspace(0, len(rs) - 1, min(n, len(rs))).round().astype(int).tolist()))
    out = []
    for p in pos:
        name = "best" if p == 0 else "worst" if p == len(rs) - 1 else "median" if 2 * p == len(rs) - 1 else f"rank {p + 1}/{len(rs)}"
        out.append((name, rs[p]))
    return out


def dice_figure(task: str, per_image: list[dict], colours: Mapping[str, str]) -> bytes | None:
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
        bp = ax.boxplot([d], positions=[x], widths=0.55, showfliers=False, patch_artist=True, medianprops={"color": "black", "lw": 1.4})
        for box in bp["boxes"]:
            box.set(facecolor=c, alpha=0.3, edgecolor=c)
        ax.scatter(x + rng.uniform(-0.17, 0.17, len(d)), d, s=20, color=c, edgecolor="black", linewidth=0.4, zorder=3)
        ax.plot(x, d.mean(), marker="D", color="white", mec="black", ms=6, zorder=4)
    ax.set_xticks(range(len(keys)), ["\n".join(x for x in (k[0], k[1], fold_text(k[2])) if x) for k in keys], fontsize=9)
    ax.set_xlim(-0.6, len(keys) - 0.4)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("Dice per test image")
    ax.set_xlabel("encoder / head")
    ax.set_title(f"{task}: Dice distribution over test images (box: quartiles; ◇ mean)", fontsize=11)
    ax.grid(axis="y", color="#eee", lw=0.6)
    return render_png(fig)


def upsample(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A mask resized bilinearly to the image's grid (contours at 0.5 are then smooth)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay_figure(overlay: Overlay, threshold: float) -> bytes | None:
    """The best encoder's masks on its best, median and worst test image: a Dice number does
    not say whether a failure is a missed region, a spill-over or a wrong side."""
    picks = overlay.images
    if not picks:
        return None
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 4.9), squeeze=False, layout="constrained")
    for ax, im in zip(axes.flat, picks):
        r = im.row
        p = np.asarray(im.probabilities, dtype=np.float32)
        t = np.asarray(im.truth) > 0
        shape = im.image.shape if im.image is not None else (16 * p.shape[0], 16 * p.shape[1])
        if im.image is not None:
            ax.imshow(im.image, cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(np.zeros(shape), cmap="gray", vmin=0, vmax=1)
            ax.text(0.5, 0.04, "image not readable from the store index", transform=ax.transAxes, ha="center", color="white", fontsize=8)
        pred_up = upsample(np.nan_to_num(p) > threshold, shape)
        true_up = upsample(t, shape)
        fill = np.zeros((*shape, 4), np.float32)
        fill[..., :3] = matplotlib.colors.to_rgb(PRED_COLOUR)
        fill[..., 3] = 0.35 * (pred_up > 0.5)
        ax.imshow(fill, interpolation="nearest")
        if (pred_up > 0.5).any() and not (pred_up > 0.5).all():
            ax.contour(pred_up, levels=[0.5], colors=[PRED_COLOUR], linewidths=1.4, linestyles="--")
        if (true_up > 0.5).any() and not (true_up > 0.5).all():
            ax.contour(true_up, levels=[0.5], colors=[TRUE_COLOUR], linewidths=1.8)
        empty = " (empty true mask)" if not t.any() else ""
        ax.set_title(
            f"{im.name}: {r['image_id']}\nDice {fmt(r['dice'])} (true {r['true_pixels']} px{empty}, predicted {r['predicted_pixels']} px)",
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        Line2D([], [], color=TRUE_COLOUR, lw=2, label="true mask (contour)"),
        Patch(facecolor=PRED_COLOUR, alpha=0.5, edgecolor=PRED_COLOUR, ls="--", label=f"predicted mask (p > {threshold:g})"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=9, frameon=False)
    fig.suptitle(
        f"{overlay.task}: {label(overlay.encoder, overlay.head, overlay.fold)} (best mean Dice {fmt(overlay.mean_dice)})", fontsize=11
    )
    return render_png(fig)
