"""ESRGAN networks (Wang et al. 2018) for any band count: a residual-in-residual dense block (RRDB) generator that
upscales by 2 or 4, and a spectrally normalized VGG-style discriminator.

Generator: a 3x3 convolution to `g_width` features, `residual_blocks` RRDBs (three dense blocks each: five 3x3
convolutions, each reading every earlier output of its block, adding `growth` channels, LeakyReLU 0.2; block
outputs scaled by 0.2 before the residual sum, as in the paper, with weights initialized at 0.1x Kaiming), a trunk
convolution with a long skip, then one (x2) or two (x4) pixel-shuffle upsampling stages, two last convolutions.
The network predicts a residual over the bicubic upscaling of its input, so a fresh generator already draws the
bicubic image and training spends its steps on detail. In eval mode the output is clamped to [-1, 1].

Discriminator: 3x3 and stride-2 4x4 convolutions, widths doubling from `d_width` up to 8x, spectral norm on every
layer, LeakyReLU 0.2, halving the image down to 4x4 (at most four halvings), then one logit per patch of that map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from atlas_gan.models.base import ModelSpec

RESIDUAL_SCALE = 0.2  # the paper's residual scaling inside and around dense blocks
DENSE_LAYERS = 5


def _scaled_kaiming(module: nn.Module, factor: float = 0.1) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, a=0.2)
            layer.weight.data.mul_(factor)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class DenseBlock(nn.Module):
    """Five convolutions, each on the concatenation of the block's input and every earlier layer's output."""

    def __init__(self, width: int, growth: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(width + i * growth, growth if i < DENSE_LAYERS - 1 else width, 3, 1, 1)
            for i in range(DENSE_LAYERS)
        )
        _scaled_kaiming(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs[:-1]:
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), 0.2))
        return x + RESIDUAL_SCALE * self.convs[-1](torch.cat(features, 1))


class RRDB(nn.Module):
    """Three dense blocks in sequence, with a scaled residual around them."""

    def __init__(self, width: int, growth: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(DenseBlock(width, growth) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.blocks(x)


def _check_superres_spec(spec: ModelSpec) -> None:
    if spec.input_bands != spec.bands:
        raise ValueError(f"super-resolution draws the bands it reads; got {spec.input_bands} in, {spec.bands} out")
    if spec.scale not in (2, 4):
        raise ValueError(f"super-resolution scale must be 2 or 4; got {spec.scale}")


class RRDBGenerator(nn.Module):
    """(n, bands, h, w) in [-1, 1] -> (n, bands, h x scale, w x scale)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        _check_superres_spec(spec)
        self.spec, width = spec, spec.g_width
        self.head = nn.Conv2d(spec.bands, width, 3, 1, 1)
        self.trunk = nn.Sequential(*(RRDB(width, spec.growth or 32) for _ in range(spec.residual_blocks or 4)))
        self.trunk_out = nn.Conv2d(width, width, 3, 1, 1)
        self.upsample = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width * 4, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.2))
            for _ in range(spec.scale.bit_length() - 1)
        )
        self.tail = nn.Sequential(
            nn.Conv2d(width, width, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(width, spec.bands, 3, 1, 1)
        )
        _scaled_kaiming(self.tail[-1])  # a small first residual: the fresh generator draws (nearly) bicubic

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.head(images)
        x = features + self.trunk_out(self.trunk(features))
        for stage in self.upsample:
            x = stage(x)
        base = F.interpolate(images, scale_factor=self.spec.scale, mode="bicubic", align_corners=False)
        out = base + self.tail(x)
        return out if self.training else out.clamp(-1.0, 1.0)


class VGGStyleDiscriminator(nn.Module):
    """(n, bands, s, s) -> patch logits (n, 1, p, p), p = max(4, s / 16)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        halvings = min(4, spec.levels)  # down to 4x4 for small tiles
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(spec.bands, spec.d_width, 3, 1, 1)), nn.LeakyReLU(0.2)]
        channels = spec.d_width
        for i in range(halvings):
            out = spec.d_width * min(2 ** (i + 1), 8)
            layers += [spectral_norm(nn.Conv2d(channels, out, 4, 2, 1)), nn.LeakyReLU(0.2)]
            layers += [spectral_norm(nn.Conv2d(out, out, 3, 1, 1)), nn.LeakyReLU(0.2)]
            channels = out
        layers.append(spectral_norm(nn.Conv2d(channels, 1, 3, 1, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
