"""pix2pix networks (Isola et al. 2017) for any band count in and out: a U-Net generator and a PatchGAN
discriminator that judges (input, output) pairs.

Generator: stride-2 4x4 convolutions down to 1x1 (LeakyReLU 0.2; normalization on every block but the outermost
and the innermost), then stride-2 4x4 transposed convolutions back up (ReLU, normalization, dropout in the three
innermost blocks), each decoder block fed the encoder's features of the same size (skip connections); tanh out.
Widths: `g_width` doubling per level up to 8x. Discriminator: the 70x70 PatchGAN, three stride-2 convolutions then
two stride-1 ones, one logit per overlapping patch of the concatenated input and output bands.

`spec.input_bands` are the bands G reads, `spec.bands` the bands it draws; `spec.norm` is batch or instance
normalization (batch in eval mode normalizes every tile alike, so translated scenes have no per-tile contrast).
"""

from __future__ import annotations

import torch
from torch import nn

from atlas_gan.models.base import ModelSpec, init_dcgan_weights

DROPOUT_BLOCKS = 3  # innermost decoder blocks with dropout, as in the paper


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.BatchNorm2d(channels)


def _check_translation_spec(spec: ModelSpec) -> None:
    if spec.input_bands < 1:
        raise ValueError("an image-to-image network needs spec.input_bands >= 1 (the bands it reads)")
    if spec.norm not in ("batch", "instance"):
        raise ValueError(f"norm must be batch or instance; got {spec.norm!r}")


class UNetGenerator(nn.Module):
    """(n, input_bands, s, s) in [-1, 1] -> (n, bands, s, s) in [-1, 1]."""

    def __init__(self, spec: ModelSpec, dropout: float = 0.5) -> None:
        super().__init__()
        _check_translation_spec(spec)
        self.spec = spec
        depth = spec.levels + 2  # halvings from image_size to 1x1
        widths = [min(spec.g_width * 2**i, spec.g_width * 8) for i in range(depth)]
        self.down = nn.ModuleList()
        channels = spec.input_bands
        for i, width in enumerate(widths):
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(channels, width, 4, 2, 1, bias=i in (0, depth - 1)))
            if 0 < i < depth - 1:
                layers.append(norm_layer(spec.norm, width))
            self.down.append(nn.Sequential(*layers))
            channels = width
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):  # innermost first
            incoming = widths[i] if i == depth - 1 else widths[i] * 2  # skip features concatenated
            outermost = i == 0
            out = spec.bands if outermost else widths[i - 1]
            layers = [nn.ReLU(), nn.ConvTranspose2d(incoming, out, 4, 2, 1, bias=outermost)]
            if outermost:
                layers.append(nn.Tanh())
            else:
                layers.append(norm_layer(spec.norm, out))
                if depth - 1 - i < DROPOUT_BLOCKS:
                    layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        init_dcgan_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skips = []
        x = images
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.up[0](skips.pop())
        for block in self.up[1:]:
            x = block(torch.cat([x, skips.pop()], dim=1))
        return x


class PatchDiscriminator(nn.Module):
    """(input (n, input_bands, s, s), output (n, bands, s, s)) -> patch logits (n, 1, p, p); `paired=False`: one
    image (n, bands, s, s) in (CycleGAN's D judges a domain, not a pair)."""

    def __init__(self, spec: ModelSpec, layers: int = 3, paired: bool = True) -> None:
        super().__init__()
        _check_translation_spec(spec)
        width = spec.d_width
        channels = spec.input_bands + spec.bands if paired else spec.bands
        blocks: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels = width
        for i in range(1, layers + 1):
            out = spec.d_width * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks += [nn.Conv2d(channels, out, 4, stride, 1, bias=False), norm_layer(spec.norm, out)]
            blocks.append(nn.LeakyReLU(0.2))
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)
        init_dcgan_weights(self)

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        """`(inputs, outputs)` of a pair, or one image when not `paired`."""
        return self.net(torch.cat(images, dim=1) if len(images) > 1 else images[0])
