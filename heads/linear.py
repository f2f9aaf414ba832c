"""Linear probes, as in the study: one linear layer on the global embedding; one 1x1 convolution
on the patch grid with logits upsampled bilinearly to the target resolution.

Inputs are standardised by a BatchNorm without affine parameters (running statistics of the
training data), so the probe stays an affine map of the frozen embedding at inference while
training does not depend on the embedding's scale.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featurestore.tasks import TaskKind
from heads.registry import register_head


class LinearProbe(nn.Module):
    """``out`` logits (classification) or one value (regression, on the target's own scale:
    the layer predicts the standardised target, ``y_mean``/``y_std`` of the training split
    map it back, so the bias need not crawl to e.g. CTR ~0.47 at lr 1e-4)."""

    def __init__(self, dim: int, out: int, y_mean: float = 0.0, y_std: float = 1.0):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.fc = nn.Linear(dim, out)
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
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)
        self.target_size = target_size

    def forward(self, g: torch.Tensor | None, patches: torch.Tensor) -> torch.Tensor:
        """Mask logits [B, target_size, target_size] from ``patches`` [B, C, h, w]; ``g`` is ignored."""
        logits = self.conv(self.norm(patches))
        return F.interpolate(logits, size=(self.target_size, self.target_size), mode="bilinear", align_corners=False)[:, 0]


@register_head("linear")
def build_linear(kind: TaskKind, cfg: Any, channels: int, global_dim: int, outputs: int,
                 y_scale: tuple[float, float] | None = None) -> nn.Module:  # fmt: skip
    """The study's linear probe: a linear layer on the global vector, or a 1x1 convolution on
    the patch grid for a mask kind."""
    if kind.dense:
        return LinearSegProbe(channels, cfg.target_size)
    return LinearProbe(global_dim, outputs, *(y_scale or (0.0, 1.0)))
