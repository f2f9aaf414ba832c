"""The ``planted`` positive control: features made from the manifest's own labels and masks.

``pixels`` and ``random-vit`` are negative controls (what a head learns from no model); this
is the spike-in: its features carry a documented, known signal, so every study shows whether
the machinery around the encoders (store, joins of labels to image_ids, training, thresholds,
metrics) recovers it. Its expected metric values are computed at evaluation
(:mod:`evaluation.controls`) from the same model; a value whose interval misses them means
something is broken, on anyone's data.

The model, per image (noise from a generator seeded by the image_id, so a re-extraction gives
the same bytes):

* global vector: one dimension per global task (:data:`GLOBAL_TASKS`, from the task registry).
  Binary labels: ``SHIFT * y + N(0, 1)`` with ``SHIFT = sqrt(2) * Phi^-1(AUROC)``, so that this
  dimension alone separates the classes with AUROC exactly :data:`AUROC`. Numbers (CTR):
  ``NUMBER_SCALE * (v - mid) / width + N(0, 1)`` over the task's value range, so its R^2 is
  ``s^2 var / (s^2 var + 1)`` for the data's variance. Then :data:`NOISE_DIMS` pure N(0, 1)
  dimensions. An empty cell contributes no signal.
* patch grid: one channel per mask column of a segmentation task, the fraction of each grid
  cell the mask covers (the mask through this feature set's geometry, area-averaged to the
  grid) ``+ N(0, MASK_NOISE)``; then :data:`NOISE_CHANNELS` pure N(0, 1) channels.

Since labels are correlated (cardiomegaly is CTR > 0.5), a probe reading every dimension can
do better than one dimension alone: the expected values account for that (evaluation.controls).
"""

from __future__ import annotations

import hashlib
import math
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F

from featurestore.encoders.base import EmbedOutput, Encoder
from featurestore.encoders.preprocess import Preprocessing
from featurestore.encoders.registry import register
from featurestore.tasks import TASKS

AUROC = 0.85
#: Mean shift between the classes of a binary label's dimension: AUROC = Phi(SHIFT / sqrt(2)).
SHIFT = math.sqrt(2.0) * NormalDist().inv_cdf(AUROC)
NUMBER_SCALE = 25.0
MASK_NOISE = 0.1
NOISE_DIMS = 5
NOISE_CHANNELS = 2
SIZE = 256  # the mask geometry: squash to SIZE x SIZE, as the pixels control
GRID = 16  # cells per side (16 x 16 pixels each)

#: Global tasks in registry order, each with its dimension of the global vector.
GLOBAL_TASKS = tuple(t.name for t in TASKS.values() if not t.spec.dense)
#: Mask columns of the segmentation tasks, each with its channel of the grid.
MASK_COLUMNS = tuple(dict.fromkeys(t.column for t in TASKS.values() if t.spec.dense))


def columns() -> tuple[str, ...]:
    """Every manifest column the features are made from."""
    return tuple(dict.fromkeys([*(TASKS[t].column for t in GLOBAL_TASKS), *MASK_COLUMNS]))


def _rng(image_id: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "little"))


def noise(image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The (global, grid) noise of one image exactly as extraction adds it (float64)."""
    rng = _rng(image_id)
    g = rng.standard_normal(len(GLOBAL_TASKS) + NOISE_DIMS)
    p = rng.standard_normal((len(MASK_COLUMNS) + NOISE_CHANNELS, GRID, GRID))
    p[: len(MASK_COLUMNS)] *= MASK_NOISE
    return g, p


def fresh_noise(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` new draws of the same noise model (for the expected values)."""
    g = rng.standard_normal((n, len(GLOBAL_TASKS) + NOISE_DIMS))
    p = rng.standard_normal((n, len(MASK_COLUMNS) + NOISE_CHANNELS, GRID, GRID))
    p[:, : len(MASK_COLUMNS)] *= MASK_NOISE
    return g, p


def global_signal(task: str, value: object) -> float:
    """The noise-free value of ``task``'s dimension for one label cell (0 for an empty one)."""
    t = TASKS[task]
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0.0
    v = t.label(value)
    if t.spec.labels == "binary":
        return SHIFT * float(v)
    lo, hi = (t.value_range.low, t.value_range.high) if t.value_range else (0.0, 1.0)
    return NUMBER_SCALE * (float(v) - (lo + hi) / 2) / (hi - lo)


def label_of(task: str, signal: np.ndarray) -> np.ndarray:
    """The labels a task's noise-free dimension was made from (inverse of :func:`global_signal`)."""
    t = TASKS[task]
    if t.spec.labels == "binary":
        return (np.asarray(signal) > SHIFT / 2).astype(np.float64)
    lo, hi = (t.value_range.low, t.value_range.high) if t.value_range else (0.0, 1.0)
    return np.asarray(signal, np.float64) * (hi - lo) / NUMBER_SCALE + (lo + hi) / 2


class PlantedEncoder(Encoder):
    """The ``planted`` positive control (module docstring). Its input is not the image's pixels
    but the manifest row: :meth:`input_for` builds the whole embedding, :meth:`embed` splits it."""

    manifest_columns = columns()

    def __init__(self, name: str = "planted"):
        self.name = name
        self.preprocessing = Preprocessing(size=SIZE, mean=(0.5,) * 3, std=(0.5,) * 3, resize="squash")
        self.grid = (len(MASK_COLUMNS) + NOISE_CHANNELS, GRID, GRID)
        self.global_dim = len(GLOBAL_TASKS) + NOISE_DIMS
        self.labels = {"weights": "none (positive control)", "control": "positive"}
        self.extra_globals = {}
        self.device = torch.device("cpu")

    def input_for(self, pixels: np.ndarray, row: dict) -> torch.Tensor:
        """The embedding of one image as one flat vector: signal from ``row`` (labels, resolved
        mask paths) plus the image's own noise. ``pixels`` only prove the image reads."""
        from featurestore.imageio import read_image

        g_noise, p_noise = noise(row["image_id"])
        g = np.array([global_signal(t, row.get(TASKS[t].column)) for t in GLOBAL_TASKS] + [0.0] * NOISE_DIMS) + g_noise
        p = p_noise.copy()
        for c, col in enumerate(MASK_COLUMNS):
            uri = row.get(col)
            if uri:
                m = torch.from_numpy(np.ascontiguousarray(read_image(uri).pixels))[None, None]
                m = self.preprocessing.geometry((m > 0.5).float(), "bilinear")
                p[c] += F.interpolate(m, size=(GRID, GRID), mode="area")[0, 0].double().numpy()
        return torch.from_numpy(np.concatenate([g, p.reshape(-1)]).astype(np.float32))

    def embed(self, batch: torch.Tensor) -> EmbedOutput:
        """Split the vectors :meth:`input_for` built into the global vector and the grid."""
        d = self.global_dim
        return EmbedOutput(global_=batch[:, :d], patches=batch[:, d:].reshape(len(batch), *self.grid).contiguous())


@register(
    "planted",
    needs_weights=False,
    control="positive",
    order=5,
    summary=(
        "positive control, from the labels | "
        f"masks squashed to {SIZE} | "
        f"one planted dimension per global task (AUROC {AUROC}) + {NOISE_DIMS} noise ({len(GLOBAL_TASKS) + NOISE_DIMS}) | "
        f"{GRID}x{GRID}: one mask channel per segmentation mask + noise {MASK_NOISE} ({len(MASK_COLUMNS) + NOISE_CHANNELS} channels)"
    ),
)
def load(name: str, source: object = None, size: int | None = None, bits: int | None = None) -> PlantedEncoder:
    """The positive control: no weights; size and bits do not apply (its input is the manifest)."""
    return PlantedEncoder(name)
