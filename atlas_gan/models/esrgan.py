"""ESRGAN networks (Wang et al. 2018) for any band count: a residual-in-residual dense block (RRDB) generator that
upscales by 2 or 4, and a spectrally normalized VGG-style discriminator.

Generator: a 3x3 convolution to `g_width` features, `residual_blocks` RRDBs (three dense blocks each: five 3x3
convolutions, each reading every earlier output of its block, adding `growth` channels, LeakyReLU 0.2; block
outputs scaled by 0.2 before the residual sum, as in the paper, with weights initialized at 0.1x Kaiming), a trunk
convolution with a long skip, then one (x2) or two (x4) upsampling stages, two last convolutions. A stage
(`spec.upsampler`) is either a convolution to 4x the channels and pixel shuffle ("shuffle", ICNR-initialized: no
checkerboard at the start, but each pixel of a 2x2 block keeps its own filters, which the GAN phase can push apart
into a lattice with the scale's period), or nearest-neighbour doubling and a convolution ("nearest", the paper's and
Real-ESRGAN's: one set of filters for every output pixel).
The network predicts a residual over the bicubic upscaling of its input, so a fresh generator already draws the
bicubic image and training spends its steps on detail. In eval mode the output is clamped to [-1, 1].

Discriminators (`spec.discriminator`):
- "vgg" (the paper's): 3x3 and stride-2 4x4 convolutions, widths doubling from `d_width` up to 8x, spectral norm on
  every layer, LeakyReLU 0.2, halving the image down to 4x4 (at most four halvings), then one logit per patch.
- "unet" (Real-ESRGAN, Wang et al. 2021): the same spectrally normalized encoder for three halvings, then a decoder
  that doubles back to full size adding the encoder's map of each size, and one logit per pixel: G learns where
  its texture is wrong, not only whether a patch is, which is what a GAN phase without a perceptual loss needs.
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


def _subpixel_init(conv: nn.Conv2d, shuffle: int = 2) -> None:
    """ICNR (Aitken et al. 2017): the `shuffle**2` output channels that pixel shuffle spreads over one output pixel's
    neighbours start with equal weights, so a fresh stage upsamples like nearest neighbour, with no checkerboard
    pattern for training to unlearn."""
    out_channels = conv.weight.shape[0] // shuffle**2
    kernel = torch.empty(out_channels, *conv.weight.shape[1:])
    nn.init.kaiming_normal_(kernel, a=0.2)
    with torch.no_grad():
        conv.weight.copy_(kernel.repeat_interleave(shuffle**2, dim=0))
        if conv.bias is not None:
            conv.bias.zero_()


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


UPSAMPLERS = ("nearest", "shuffle")


def _upsampling_stage(kind: str, width: int) -> nn.Sequential:
    """One x2 stage of `width` features: a convolution then pixel shuffle, or nearest neighbour then a convolution."""
    if kind == "shuffle":  # ICNR-initialized by the generator, after its tail (the draws' order of earlier runs)
        return nn.Sequential(nn.Conv2d(width, width * 4, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.2))
    if kind == "nearest":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, 1, 1), nn.LeakyReLU(0.2)
        )
    raise ValueError(f"ESRGAN's upsampler must be one of {', '.join(UPSAMPLERS)}; got {kind!r}")


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
            _upsampling_stage(spec.upsampler, width) for _ in range(spec.scale.bit_length() - 1)
        )
        self.tail = nn.Sequential(
            nn.Conv2d(width, width, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(width, spec.bands, 3, 1, 1)
        )
        _scaled_kaiming(self.tail[-1])  # a small first residual: the fresh generator draws (nearly) bicubic
        if spec.upsampler == "shuffle":
            for stage in self.upsample:
                _subpixel_init(stage[0])

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
        self.halving_ends: list[int] = []  # indexes in `net` of each halving's last activation (feature matching)
        for i in range(halvings):
            out = spec.d_width * min(2 ** (i + 1), 8)
            layers += [spectral_norm(nn.Conv2d(channels, out, 4, 2, 1)), nn.LeakyReLU(0.2)]
            layers += [spectral_norm(nn.Conv2d(out, out, 3, 1, 1)), nn.LeakyReLU(0.2)]
            self.halving_ends.append(len(layers) - 1)
            channels = out
        layers.append(spectral_norm(nn.Conv2d(channels, 1, 3, 1, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, the activations after each halving) for feature matching."""
        features, x = [], images
        for i, layer in enumerate(self.net):
            x = layer(x)
            if i in self.halving_ends:
                features.append(x)
        return x, features


UNET_HALVINGS = 3


class UNetDiscriminator(nn.Module):
    """(n, bands, s, s) -> per-pixel logits (n, 1, s, s); s must be a multiple of 8."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        widths = [spec.d_width * 2**i for i in range(UNET_HALVINGS + 1)]
        self.head = nn.Conv2d(spec.bands, widths[0], 3, 1, 1)
        self.down = nn.ModuleList(
            spectral_norm(nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1, bias=False)) for i in range(UNET_HALVINGS)
        )
        self.up = nn.ModuleList(
            spectral_norm(nn.Conv2d(widths[i + 1], widths[i], 3, 1, 1, bias=False))
            for i in reversed(range(UNET_HALVINGS))
        )
        self.refine = nn.Sequential(
            spectral_norm(nn.Conv2d(widths[0], widths[0], 3, 1, 1, bias=False)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(widths[0], widths[0], 3, 1, 1, bias=False)),
            nn.LeakyReLU(0.2),
            nn.Conv2d(widths[0], 1, 3, 1, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images)[0]

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(per-pixel logits, the encoder's halved maps and the decoder's maps) for feature matching."""
        skips = [F.leaky_relu(self.head(images), 0.2)]
        for conv in self.down:
            skips.append(F.leaky_relu(conv(skips[-1]), 0.2))
        features = skips[1:]
        x = skips.pop()
        for conv in self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = F.leaky_relu(conv(x), 0.2) + skips.pop()
            features.append(x)
        return self.refine(x), features


def discriminator(spec: ModelSpec) -> nn.Module:
    """The D `spec.discriminator` names: "unet" or "vgg"."""
    if spec.discriminator == "unet":
        return UNetDiscriminator(spec)
    if spec.discriminator == "vgg":
        return VGGStyleDiscriminator(spec)
    raise ValueError(f"esrgan's discriminator must be unet or vgg; got {spec.discriminator!r}")
