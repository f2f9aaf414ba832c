"""Linear probes, as in the study: one linear layer on the global embedding; one 1x1 convolution
on the patch grid with logits upsampled bilinearly to the target resolution.

Inputs are standardised by a :class:`Standardiser` with FIXED per-channel statistics of the
training split (computed once before training, :func:`heads.train.fit_standardisers`, stored as
buffers so ``head.pt`` is self-contained). A BatchNorm's running statistics kept moving while
the probe trained, so the validation loss swung by more than an epoch's gain and early stopping
fired on noise. The probe stays an affine map of the frozen embedding, and its last layer starts
at zero (a constant prediction: the prior for regression, p = 0.5 otherwise), so training only
ever moves it towards the signal.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featurestore.tasks import TaskKind
from heads.registry import register_head


class Standardiser(nn.Module):
    """``(x - mean) / std`` per channel (dim 1) with fixed buffers: a BatchNorm that never updates,
    so validation losses of successive epochs are comparable and the saved head is self-contained.

    ``input`` names the embedding it standardises ("global" or "patches"), which is what
    :func:`heads.train.fit_standardisers` reads to compute its statistics.
    """

    def __init__(self, channels: int, input: str):
        super().__init__()
        self.input = input
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def set_stats(self, mean, std) -> None:
        """Fix the statistics (per channel); a std of (near) zero becomes 1 (a constant channel)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        with torch.no_grad():
            self.mean.copy_(mean)
            self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, C, ...] standardised channel by channel."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


class LinearProbe(nn.Module):
    """``out`` logits (classification) or one value (regression, on the target's own scale:
    the layer predicts the standardised target, ``y_mean``/``y_std`` of the training split
    map it back, so the bias need not crawl to e.g. CTR ~0.47 at lr 1e-4)."""

    def __init__(self, dim: int, out: int, y_mean: float = 0.0, y_std: float = 1.0):
        super().__init__()
        self.norm = Standardiser(dim, "global")
        self.fc = nn.Linear(dim, out)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.register_buffer("y_mean", torch.tensor(float(y_mean)))
        self.register_buffer("y_std", torch.tensor(float(y_std)))

    def forward(self, g: torch.Tensor, patches: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, out], or values on the target's own scale, from the global vector ``g``; ``patches``
        is ignored."""
        return self.fc(self.norm(g)) * self.y_std + self.y_mean


class LinearSegProbe(nn.Module):
    """The linear segmentation probe: a 1x1 convolution of the standardised patch grid, its logits
    upsampled bilinearly to ``target_size``."""

    def __init__(self, channels: int, target_size: int):
        super().__init__()
        self.norm = Standardiser(channels, "patches")
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.target_size = target_size

    def forward(self, g: torch.Tensor | None, patches: torch.Tensor) -> torch.Tensor:
        """Mask logits [B, target_size, target_size] from ``patches`` [B, C, h, w]; ``g`` is ignored."""
        logits = self.conv(self.norm(patches))
        return F.interpolate(logits, size=(self.target_size, self.target_size), mode="bilinear", align_corners=False)[:, 0]


@register_head("linear", linear_readout=True)
def build_linear(kind: TaskKind, cfg: Any, channels: int, global_dim: int, outputs: int,
                 y_scale: tuple[float, float] | None = None) -> nn.Module:  # fmt: skip
    """The study's linear probe: a linear layer on the global vector, or a 1x1 convolution on
    the patch grid for a mask kind."""
    if kind.dense:
        return LinearSegProbe(channels, cfg.target_size)
    return LinearProbe(global_dim, outputs, *(y_scale or (0.0, 1.0)))
