"""The study's segmentation head: the global embedding cross-attends to CNN-refined patches.

Exact layers (C = grid channels, D = global dim, W = ``refiner_channels``, default (512, 256)):

1. ``LayerNorm(C)`` over the channels of every patch position of the grid [B, C, h, w].
2. Bilinear upsampling of the grid to ``attn_size`` x ``attn_size`` (default 64).
3. Shallow CNN refiner: ``Conv3x3(C -> W0) + BatchNorm + ReLU``, ``Conv3x3(W0 -> W1) + BatchNorm + ReLU``.
4. ``Conv1x1(W1 -> 2*W1)`` giving keys and values for every position.
5. Query: ``LayerNorm(D)`` then ``Linear(D -> W1)`` on the global embedding.
6. ``MultiheadAttention(W1, 8 heads)``: the one query attends over all positions.
7. Fusion: the attended vector is broadcast over the map and added to the refined map
   (``fusion="concat"`` concatenates instead, giving 2*W1 channels).
8. Bilinear upsampling to the target resolution and ``Conv1x1 -> 1`` logit per pixel. (Both
   are linear and the interpolation weights sum to one, so they commute exactly: the 1x1 conv
   runs first, on the small map, and the single logit channel is upsampled.)

Works for any grid size and channel count (37x37x768, 14x14x768, 32x32x1024, the controls').
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featurestore.tasks import TaskKind
from heads.registry import register_head


class CrossAttentionSegHead(nn.Module):
    """The study's segmentation head (layers in the module docstring): one mask logit per pixel at
    ``target_size`` from the patch grid and the global vector."""

    def __init__(
        self,
        channels: int,
        global_dim: int,
        target_size: int,
        attn_size: int = 64,
        refiner_channels: tuple[int, int] = (512, 256),
        heads: int = 8,
        fusion: str = "add",
    ):
        super().__init__()
        if fusion not in ("add", "concat"):
            raise ValueError("fusion must be 'add' or 'concat'")
        w0, w1 = refiner_channels
        if w1 % heads:
            raise ValueError(f"refiner width {w1} must be divisible by {heads} heads")
        self.patch_norm = nn.LayerNorm(channels)
        self.attn_size = attn_size
        self.refiner = nn.Sequential(
            nn.Conv2d(channels, w0, 3, padding=1),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
            nn.Conv2d(w0, w1, 3, padding=1),
            nn.BatchNorm2d(w1),
            nn.ReLU(inplace=True),
        )
        self.kv = nn.Conv2d(w1, 2 * w1, 1)
        self.query = nn.Sequential(nn.LayerNorm(global_dim), nn.Linear(global_dim, w1))
        self.attn = nn.MultiheadAttention(w1, heads, batch_first=True)
        self.fusion = fusion
        self.target_size = target_size
        self.out = nn.Conv2d(w1 * (2 if fusion == "concat" else 1), 1, 1)

    def forward(self, g: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """``g`` [B, D] and ``patches`` [B, C, h, w] -> mask logits [B, target_size, target_size]."""
        x = self.patch_norm(patches.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(self.attn_size, self.attn_size), mode="bilinear", align_corners=False)
        x = self.refiner(x)  # [B, W1, A, A]
        k, v = self.kv(x).flatten(2).transpose(1, 2).chunk(2, dim=-1)  # [B, A*A, W1] each
        q = self.query(g).unsqueeze(1)  # [B, 1, W1]
        attended, _ = self.attn(q, k, v, need_weights=False)  # [B, 1, W1]
        ctx = attended.transpose(1, 2).unsqueeze(-1).expand_as(x)
        x = x + ctx if self.fusion == "add" else torch.cat([x, ctx], dim=1)
        logits = self.out(x)
        return F.interpolate(logits, size=(self.target_size, self.target_size), mode="bilinear", align_corners=False)[:, 0]


@register_head("cross-attention", reads_global=True)
def build_cross_attention(kind: TaskKind, cfg: Any, channels: int, global_dim: int, outputs: int,
                          y_scale: tuple[float, float] | None = None) -> nn.Module:  # fmt: skip
    """The study's segmentation head (mask kinds only; featurestore.tasks says where it applies)."""
    return CrossAttentionSegHead(channels, global_dim, cfg.target_size, cfg.attn_size, cfg.refiner_channels, fusion=cfg.fusion)
