"""Head modules: shapes for every encoder's grid, the exact layers, gradients."""

from __future__ import annotations

import pytest
import torch

from heads.cross_attention import CrossAttentionSegHead
from heads.linear import LinearProbe, LinearSegProbe


@pytest.mark.parametrize("grid,dim", [((768, 37, 37), 768), ((768, 14, 14), 512), ((1024, 32, 32), 1024), ((16, 32, 32), 274)])
def test_cross_attention_works_for_every_grid(grid, dim):
    torch.manual_seed(0)
    head = CrossAttentionSegHead(grid[0], dim, target_size=48, attn_size=16, refiner_channels=(16, 8))
    g, p = torch.randn(2, dim), torch.randn(2, *grid)
    out = head(g, p)
    assert out.shape == (2, 48, 48)
    out.mean().backward()
    assert head.query[1].weight.grad is not None and head.refiner[0].weight.grad is not None


def test_cross_attention_layers_as_the_study():
    head = CrossAttentionSegHead(768, 768, target_size=128)
    assert isinstance(head.patch_norm, torch.nn.LayerNorm) and head.attn_size == 64
    convs = [m for m in head.refiner if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(768, 512, (3, 3)), (512, 256, (3, 3))]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in head.refiner) == 2
    assert head.kv.kernel_size == (1, 1) and head.kv.out_channels == 512
    assert head.attn.num_heads == 8 and head.attn.embed_dim == 256
    assert head.out.kernel_size == (1, 1)
    cat = CrossAttentionSegHead(16, 8, target_size=32, attn_size=8, refiner_channels=(16, 8), fusion="concat")
    assert cat.out.in_channels == 16 and cat(torch.randn(2, 8), torch.randn(2, 16, 4, 4)).shape == (2, 32, 32)


def test_global_context_changes_the_map():
    """The attended global vector is added everywhere: another [CLS] gives another mask."""
    torch.manual_seed(1)
    head = CrossAttentionSegHead(8, 6, target_size=16, attn_size=8, refiner_channels=(16, 8)).eval()
    p = torch.randn(1, 8, 4, 4)
    assert not torch.allclose(head(torch.randn(1, 6), p), head(torch.randn(1, 6), p))


def test_linear_probes():
    probe = LinearProbe(10, 2)
    assert probe(torch.randn(4, 10)).shape == (4, 2)
    reg = LinearProbe(10, 1, y_mean=0.47, y_std=0.05).eval()
    with torch.no_grad():
        reg.fc.weight.zero_()
        reg.fc.bias.zero_()
    assert torch.allclose(reg(torch.randn(3, 10)), torch.full((3, 1), 0.47))
    seg = LinearSegProbe(16, 64)
    assert seg(None, torch.randn(2, 16, 8, 8)).shape == (2, 64, 64)
    assert sum(p.numel() for p in seg.parameters()) == 17  # one 1x1 conv: 16 weights + bias
