"""Nearest 2x upsampling + 3x3 convolution as one transposed convolution: the same values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from atlas_gan.models import ModelSpec
from atlas_gan.models.fastgan import FastGANGenerator
from atlas_gan.models.upsampling import transposed_kernel, upsample_conv3x3


def _written_out(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


@pytest.mark.parametrize(("shape", "c_out", "with_bias"), [((2, 3, 4, 4), 5, True), ((1, 8, 7, 5), 4, False)])
def test_values_and_gradients_match_upsampling_then_convolving(
    shape: tuple[int, ...], c_out: int, with_bias: bool
) -> None:
    torch.manual_seed(0)
    inputs = [torch.randn(shape, dtype=torch.float64), torch.randn(c_out, shape[1], 3, 3, dtype=torch.float64)]
    if with_bias:
        inputs.append(torch.randn(c_out, dtype=torch.float64))
    for tensor in inputs:
        tensor.requires_grad_(True)
    bias = inputs[2] if with_bias else None

    direct = upsample_conv3x3(inputs[0], inputs[1], bias)
    written = _written_out(inputs[0], inputs[1], bias)
    assert direct.shape == (shape[0], c_out, 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(direct, written, rtol=0, atol=1e-12)

    upstream = torch.randn_like(direct)
    grads_direct = torch.autograd.grad(direct, inputs, upstream)
    grads_written = torch.autograd.grad(written, inputs, upstream)
    for mine, theirs in zip(grads_direct, grads_written, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-10)


def test_only_3x3_kernels_are_accepted() -> None:
    with pytest.raises(ValueError, match=r"\(out, in, 3, 3\)"):
        transposed_kernel(torch.zeros(4, 4, 5, 5))


def test_fastgan_up_blocks_compute_what_their_layers_say() -> None:
    """The block runs its upsample + conv fused; applying its layers one by one gives the same features (the noise
    inputs start at strength 0, so two calls agree)."""
    torch.manual_seed(0)
    generator = FastGANGenerator(ModelSpec(bands=4, image_size=64, latent_dim=16, g_width=4)).double().eval()
    x = torch.randn(2, generator.ups[0][1].in_channels, 4, 4, dtype=torch.float64)
    for block in generator.ups:
        layer_by_layer = x
        for layer in block:
            layer_by_layer = layer(layer_by_layer)
        fused = block(x)
        torch.testing.assert_close(fused, layer_by_layer, rtol=1e-10, atol=1e-10)
        x = fused
