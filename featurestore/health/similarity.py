"""Linear CKA: how much of one representation another one shares.

Centered kernel alignment with linear kernels (Kornblith et al., ICML 2019) compares two
embeddings of the same images, of any widths: with ``X`` and ``Y`` column-centred,
``CKA = |Y^T X|_F^2 / (|X^T X|_F |Y^T Y|_F)``. It is 1 when one is an orthogonal transform and
scaling of the other, and is invariant to isotropic scaling. Against the controls (``pixels``:
pooled raw pixels; ``random-vit``: an untrained ViT) it tells how far an encoder's geometry
moved from what the image itself, or an architecture without training, already gives.
"""

from __future__ import annotations

import numpy as np


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between ``x`` (n x p) and ``y`` (n x q), rows the same images; NaN when either
    has no variance."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same images on both sides, got {x.shape[0]} and {y.shape[0]} rows")
    x = x - x.mean(0)
    y = y - y.mean(0)
    xy = np.linalg.norm(y.T @ x) ** 2
    xx = np.linalg.norm(x.T @ x)
    yy = np.linalg.norm(y.T @ y)
    return float(xy / (xx * yy)) if xx > 0 and yy > 0 else float("nan")
