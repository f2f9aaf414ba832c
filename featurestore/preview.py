"""A contact sheet of a cohort: images as the pipeline reads them, with mask outlines.

Reads through :func:`featurestore.imageio.read_image`, so it shows what the encoders will see
(windowing applied, MONOCHROME1 inverted), not the raw stored values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featurestore.imageio import read_image
from featurestore.manifest import load_manifest

OUTLINES = (("lung_mask", "#3ddc84", "lungs"), ("heart_mask", "#ff5a5a", "heart"), ("pneumothorax_mask", "#ffd000", "pneumothorax"))


def contact_sheet(manifest_url: str, out: str | Path, n: int = 8, cols: int = 4) -> Path:
    """Write a PNG of the first ``n`` images (positives first) with lung, heart and PTX outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    m = load_manifest(manifest_url)
    rows = m.table.to_pylist()
    # Show some of each finding so a person can judge them.
    rows.sort(key=lambda r: (not r.get("pneumothorax", False), not r.get("cardiomegaly", False)))
    pick = rows[: n // 2] + [r for r in rows[n // 2 :] if not r.get("pneumothorax")][: n - n // 2]
    rows_n = -(-len(pick) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(cols * 3.2, rows_n * 3.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, pick):
        img = read_image(m.resolve(r["path"]), format=r.get("format"))
        ax.imshow(img.pixels, cmap="gray", vmin=0, vmax=1, interpolation="lanczos")
        for col, colour, _ in OUTLINES:
            if r.get(col):
                mask = read_image(m.resolve(r[col])).pixels > 0.5
                if mask.any():
                    ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=0.8)
        labels = []
        if "ctr" in r and r["ctr"] is not None:
            labels.append(f"CTR {r['ctr']:.2f}" + (" cardiomegaly" if r.get("cardiomegaly") else ""))
        if r.get("pneumothorax"):
            labels.append("pneumothorax")
        meta = f"{img.meta.format} {img.meta.bits_stored}-bit {img.meta.photometric}"
        ax.set_title(f"{r['image_id']}\n{meta}\n{'; '.join(labels)}", fontsize=7)
    handles = [Line2D([0], [0], color=c, lw=2, label=lbl) for _, c, lbl in OUTLINES]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
