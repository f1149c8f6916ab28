"""DCGAN-layout networks (Radford et al. 2015), parametrized by band count and image size, and the options the
later families add to the same layout.

Generator: latent vector -> 4x4 by a transposed convolution, then one stride-2 transposed convolution per doubling,
batch norm + ReLU between them, tanh out. Discriminator: stride-2 convolutions with LeakyReLU(0.2), batch norm on
every layer but the first, no pooling and no hidden fully connected layer; a final 4x4 convolution gives one logit.

Options, set by the family (see `families.py`):
- `wrap`: applied to every convolution (spectral norm for SNGAN's critic, both SAGAN networks);
- `spec.attention_resolution`: a self-attention block after the layer whose feature maps have that size (SAGAN);
- `spec.num_classes` > 0, conditional: `concat` (Mirza & Osindero 2014) appends the one-hot label to G's latent
  and as constant planes to D's input; `projection` uses class-conditional batch norm in G and the projection
  discriminator of Miyato & Koyama 2018, D(x, y) = psi(h) + <embed(y), h> with h the summed last features.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from atlas_gan.models.base import ModelSpec, check_labels, init_dcgan_weights
from atlas_gan.models.layers import ConditionalBatchNorm2d, LabelSequential, SelfAttention, one_hot_planes

Wrap = Callable[[nn.Module], nn.Module]
Conditioning = Literal["concat", "projection"]


def _identity(layer: nn.Module) -> nn.Module:
    return layer


class DCGANGenerator(nn.Module):
    def __init__(self, spec: ModelSpec, conditioning: Conditioning = "concat", wrap: Wrap = _identity) -> None:
        super().__init__()
        self.spec = spec
        self.concat = spec.conditional and conditioning == "concat"
        use_cbn = spec.conditional and conditioning == "projection"

        def norm(channels: int) -> nn.Module:
            return ConditionalBatchNorm2d(channels, spec.num_classes) if use_cbn else nn.BatchNorm2d(channels)

        widths = [spec.g_width * 2 ** (spec.levels - 1 - i) for i in range(spec.levels)]  # e.g. 512, 256, 128, 64
        latent = spec.latent_dim + (spec.num_classes if self.concat else 0)
        layers: list[nn.Module] = [
            wrap(nn.ConvTranspose2d(latent, widths[0], 4, 1, 0, bias=False)),
            norm(widths[0]),
            nn.ReLU(inplace=True),
        ]
        size = 4
        for c_in, c_out in pairwise(widths):
            layers += [wrap(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)), norm(c_out), nn.ReLU(True)]
            size *= 2
            if size == spec.attention_resolution:
                layers.append(SelfAttention(c_out, wrap))
        layers += [wrap(nn.ConvTranspose2d(widths[-1], spec.bands, 4, 2, 1, bias=False)), nn.Tanh()]
        self.net = LabelSequential(*layers)
        init_dcgan_weights(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = check_labels(labels, self.spec, z.shape[0])
        if self.concat:
            z = torch.cat([z.flatten(1), F.one_hot(labels, self.spec.num_classes).to(z.dtype)], dim=1)
        return self.net(z.view(z.shape[0], -1, 1, 1), labels)


class DCGANDiscriminator(nn.Module):
    """`batch_norm`: DCGAN's; `wrap`: applied to every convolution (spectral norm for SNGAN)."""

    def __init__(
        self,
        spec: ModelSpec,
        batch_norm: bool = True,
        wrap: Wrap = _identity,
        conditioning: Conditioning = "concat",
    ) -> None:
        super().__init__()
        self.spec = spec
        self.concat = spec.conditional and conditioning == "concat"
        widths = [spec.d_width * 2**i for i in range(spec.levels)]  # e.g. 64, 128, 256, 512
        channels_in = spec.bands + (spec.num_classes if self.concat else 0)
        layers: list[nn.Module] = [wrap(nn.Conv2d(channels_in, widths[0], 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        size = spec.image_size // 2
        if size == spec.attention_resolution:
            layers.append(SelfAttention(widths[0], wrap))
        for c_in, c_out in pairwise(widths):
            layers.append(wrap(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not batch_norm)))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, True))
            size //= 2
            if size == spec.attention_resolution:
                layers.append(SelfAttention(c_out, wrap))
        layers.append(wrap(nn.Conv2d(widths[-1], 1, 4, 1, 0)))
        self.net = nn.Sequential(*layers)
        self.embed = None
        if spec.conditional and conditioning == "projection":
            self.embed = wrap(nn.Embedding(spec.num_classes, widths[-1]))
        init_dcgan_weights(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = check_labels(labels, self.spec, x.shape[0])
        if self.concat:
            x = torch.cat([x, one_hot_planes(labels, self.spec.num_classes, x.shape[-1], x.dtype)], dim=1)
        if self.embed is None:
            return self.net(x).flatten()  # one logit / critic value per image
        features = self.net[:-1](x)
        projection = (self.embed(labels).to(features.dtype) * features.sum(dim=(2, 3))).sum(dim=1)
        return self.net[-1](features).flatten() + projection
