"""A model trained under bf16 autocast must compute, in fp32, the function it learned.

On some CPUs a bf16 kernel is not just rounded but wrong (torch 2.13's bf16 convolution with an 8 x 8
kernel on an AMX CPU: 110 % off). Every model family is checked here on the machine that runs the
tests: its bf16-autocast output stays within bf16 rounding of its fp32 output.
"""

import pytest
import torch
import torch.nn.functional as F

from genflow.models import AdaLNMLPVelocityField
from genflow.models.dit import DiT, PatchEmbedding
from genflow_recipes.mmnist_wm.model import SimpleVideoTransformer


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere (adaLN-Zero layers start at exactly zero, which would hide everything)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _relative_error(run) -> float:
    with torch.no_grad():
        full = run().float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = run().float()
    return float((half - full).norm() / full.norm())


def test_patch_embedding_is_the_strided_convolution():
    embed = PatchEmbedding(in_channels=8, hidden_size=32, patch_size=8)
    x = torch.randn(3, 8, 64, 64)
    conv = F.conv2d(x, embed.weight, embed.bias, stride=8).flatten(2).transpose(1, 2)
    torch.testing.assert_close(embed(x), conv, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("patch_size", [4, 8])
def test_dit_in_bf16_computes_what_it_computes_in_fp32(patch_size):
    model = _perturbed(DiT(in_channels=8, out_channels=1, image_size=64, patch_size=patch_size, hidden_size=64, depth=2,
                           num_heads=4))
    x, t = torch.randn(4, 8, 64, 64), torch.rand(4)
    assert _relative_error(lambda: model(x, t)) < 0.05


def test_point_velocity_field_in_bf16_computes_what_it_computes_in_fp32():
    model = _perturbed(AdaLNMLPVelocityField(point_dim=2, cond_dim=16, hidden=64, depth=2, time_dim=16))
    x, t, c = torch.randn(4, 100, 2), torch.rand(4), torch.randn(4, 16)
    assert _relative_error(lambda: model(x, t, c)) < 0.05


def test_video_transformer_in_bf16_computes_what_it_computes_in_fp32():
    model = _perturbed(SimpleVideoTransformer(num_frames=4, height=8, width=8, embed_dim=32, num_layers=1, num_heads=2))
    tokens, actions = torch.randint(0, 16, (2, 4, 8, 8)), torch.randn(2, 4, 2)
    assert _relative_error(lambda: model(tokens, actions)) < 0.05
