"""A planted feature set: embeddings whose signal is known exactly, for known-answer tests.

:func:`plant` writes, through the public API (``Store.create_feature_set`` and the feature
set's writer), one row per image of a cohort manifest:

* global vector: dimension ``k`` (k = 0, 1, ... for each name in ``CLASS_LABELS``) is
  ``d * label + N(0, 1)`` with ``d = sqrt(2) * Phi^-1(auroc)``, so that the best possible
  AUROC is ``auroc`` (two unit-variance Gaussians d apart: AUROC = Phi(d / sqrt(2)));
  dimension ``CTR_DIM`` is ``sqrt(r2) * z(ctr) + sqrt(1 - r2) * N(0, 1)`` (z: CTR
  standardised over the cohort), so a linear fit explains ``r2`` of CTR's variance; the other
  dimensions are pure N(0, 1) noise. (Cardiomegaly is CTR > 0.5 in the synthetic cohort, so
  the CTR dimension predicts it too: its best AUROC from all dimensions is well above
  ``auroc``; pneumothorax is independent of CTR and sits at ``auroc``);
* patch grid: channel 0 is the heart mask, channel 1 the pneumothorax mask, each the training
  target at ``target_size`` (exactly what ``heads.data.mask_targets`` builds) area-averaged to
  the grid, plus N(0, ``mask_noise``); the other channels are N(0, 1) noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import norm

from featurestore.encoders.preprocess import Preprocessing
from featurestore.featureset import FeatureSetSpec
from featurestore.imageio import read_image
from featurestore.manifest import load_manifest
from featurestore.store import Store

CLASS_LABELS = ("pneumothorax", "cardiomegaly")  # global dims 0 and 1
CTR_DIM = 2
MASK_CHANNELS = {"heart_mask": 0, "pneumothorax_mask": 1}


@dataclass
class Planted:
    """What :func:`plant` wrote: the feature set id and the planted truths, by image id."""

    feature_set_id: str
    image_ids: list[str]
    d: float  # the class shift
    targets: dict[str, np.ndarray]  # mask column -> uint8 [n, T, T] training targets
    grids: dict[str, np.ndarray]  # mask column -> float [n, h, w] area-averaged masks (no noise)
    preprocessing: Preprocessing


def class_shift(auroc: float) -> float:
    """The mean shift between unit-variance Gaussians whose AUROC is ``auroc``."""
    return math.sqrt(2.0) * float(norm.ppf(auroc))


def target_masks(uris: list[str], pre: Preprocessing, target_size: int) -> np.ndarray:
    """uint8 [n, T, T]: the masks as training sees them (the feature set's geometry, area
    resize to ``target_size``, > 0.5), the same steps as ``heads.data.mask_targets``."""
    out = np.zeros((len(uris), target_size, target_size), np.uint8)
    for i, uri in enumerate(uris):
        m = torch.from_numpy(read_image(uri).pixels)[None, None]
        m = pre.geometry((m > 0.5).float(), "bilinear")
        m = F.interpolate(m, size=(target_size, target_size), mode="area")
        out[i] = (m[0, 0] > 0.5).numpy().astype(np.uint8)
    return out


def area_to_grid(masks: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """float [n, h, w]: the fraction of each grid cell the mask covers."""
    t = torch.from_numpy(np.asarray(masks, np.float32))[:, None]
    return F.interpolate(t, size=grid_hw, mode="area")[:, 0].numpy()


def plant(store: Store, manifest: str, *, target_size: int = 32, grid: tuple[int, int, int] = (8, 16, 16), global_dim: int = 16,
          auroc: float = 0.85, r2: float = 0.8, mask_noise: float = 0.05, seed: int = 0, size: int = 64) -> Planted:  # fmt: skip
    """Write the planted feature set for every image of ``manifest`` into ``store`` (see the
    module docstring); ``size``: the squash resolution the masks go through first."""
    m = load_manifest(manifest, required=("image_id", "ctr", *CLASS_LABELS, *MASK_CHANNELS))
    rows = m.table.to_pylist()
    ids = [r["image_id"] for r in rows]
    n = len(ids)
    rng = np.random.default_rng(seed)
    pre = Preprocessing(size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="squash")
    d = class_shift(auroc)
    g = rng.standard_normal((n, global_dim))
    for k, col in enumerate(CLASS_LABELS):
        g[:, k] += d * np.array([float(r[col]) for r in rows])
    ctr = np.array([float(r["ctr"]) for r in rows])
    z = (ctr - ctr.mean()) / ctr.std()
    g[:, CTR_DIM] = math.sqrt(r2) * z + math.sqrt(1 - r2) * rng.standard_normal(n)
    patches = rng.standard_normal((n, *grid))
    targets, grids = {}, {}
    for col, ch in MASK_CHANNELS.items():
        targets[col] = target_masks([m.resolve(r[col]) for r in rows], pre, target_size)
        grids[col] = area_to_grid(targets[col], grid[1:])
        patches[:, ch] = grids[col] + mask_noise * rng.standard_normal((n, *grid[1:]))
    spec = FeatureSetSpec(encoder="planted", weights_fingerprint=f"planted-{seed}-{auroc}-{r2}-{mask_noise}-{target_size}",
                          grid=grid, global_dim=global_dim, preprocessing=pre.to_json(), dtype="float32",
                          shard_images=64)  # fmt: skip
    fs = store.create_feature_set(spec)
    with fs.writer() as w:
        for k in range(0, n, 64):
            w.write(ids[k : k + 64], g[k : k + 64].astype(np.float32), patches[k : k + 64].astype(np.float32))
    return Planted(fs.id, ids, d, targets, grids, pre)
