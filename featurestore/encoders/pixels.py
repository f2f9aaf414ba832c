"""The ``pixels`` control: no weights, no learning, a floor for every comparison.

The preprocessed image (512x512 by default) is cut into a grid of 32x32 patches of 16x16
pixels; each patch, average-pooled to 4x4, gives 16 channels. The global embedding is coarse
image statistics: the image average-pooled to 16x16 (256), a 16-bin histogram, mean and std.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from featurestore.encoders.base import EmbedOutput, Encoder
from featurestore.encoders.preprocess import Preprocessing
from featurestore.encoders.registry import register

PATCH = 16
POOLED = 4


class PixelsEncoder(Encoder):
    """The weight-free ``pixels`` control (see the module docstring): deterministic, so every feature
    set it makes has the fingerprint "none"."""

    def __init__(self, name: str = "pixels", size: int = 512, bits: int = 8):
        self.name = name
        self.preprocessing = Preprocessing(size=size, mean=(0.5,) * 3, std=(0.5,) * 3, resize="squash", bits=bits)
        side = size // PATCH
        self.grid = (POOLED * POOLED, side, side)
        self.global_dim = 16 * 16 + 16 + 2
        self.labels = {"weights": "none (deterministic control)"}
        self.extra_globals = {}
        self.device = torch.device("cpu")

    def embed(self, batch: torch.Tensor) -> EmbedOutput:
        """Pooled pixel blocks as the patch grid and coarse image statistics as the global vector; only the
        first channel is read (the three are copies)."""
        x = batch[:, :1]  # the three channels are copies
        b, _, s, _ = x.shape
        side = s // PATCH
        pooled = F.avg_pool2d(x, PATCH // POOLED)  # [B, 1, side*4, side*4]
        patches = pooled.reshape(b, side, POOLED, side, POOLED).permute(0, 2, 4, 1, 3).reshape(b, POOLED * POOLED, side, side)
        coarse = F.adaptive_avg_pool2d(x, 16).reshape(b, 256)
        v = x.reshape(b, -1)
        lo, hi = -1.0, 1.0  # the normalised range of [0, 1] input with mean/std 0.5
        hist = torch.stack([torch.histc(row, bins=16, min=lo, max=hi) for row in v]) / v.shape[1]
        stats = torch.stack([v.mean(1), v.std(1)], 1)
        return EmbedOutput(global_=torch.cat([coarse, hist, stats], 1), patches=patches.contiguous())


@register(
    "pixels",
    needs_weights=False,
    control="negative",
    order=3,
    summary=(
        "control, no weights | "
        "512 squash | "
        "16x16 pooled image + 16-bin histogram + mean, std (274) | "
        "32x32 patches of 16x16 px pooled to 4x4 (16 channels)"
    ),
)
def load(name: str, source: object = None, size: int | None = None, bits: int | None = None) -> PixelsEncoder:
    """The pixel control: no weights, the image itself pooled to a grid."""
    return PixelsEncoder(name, size=size or 512, bits=bits or 8)
