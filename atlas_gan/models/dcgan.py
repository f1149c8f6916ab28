"""DCGAN (Radford et al. 2015) networks, parametrized by band count and image size.

Generator: latent vector -> 4x4 by a transposed convolution, then one stride-2 transposed convolution per doubling,
batch norm + ReLU between them, tanh out. Discriminator: stride-2 convolutions with LeakyReLU(0.2), batch norm on
every layer but the first, no pooling and no hidden fully connected layer; a final 4x4 convolution gives one logit.
The discriminator's normalization is a parameter so WGAN-GP (none) and SNGAN (spectral norm) reuse the layout.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch
from torch import nn

from atlas_gan.models.base import ModelSpec, init_dcgan_weights


class DCGANGenerator(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        widths = [spec.g_width * 2 ** (spec.levels - 1 - i) for i in range(spec.levels)]  # e.g. 512, 256, 128, 64
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(spec.latent_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in pairwise(widths):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], spec.bands, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


Wrap = Callable[[nn.Module], nn.Module]


def _identity(layer: nn.Module) -> nn.Module:
    return layer


class DCGANDiscriminator(nn.Module):
    """`batch_norm`: DCGAN's; `wrap`: applied to every convolution (spectral norm for SNGAN)."""

    def __init__(self, spec: ModelSpec, batch_norm: bool = True, wrap: Wrap = _identity) -> None:
        super().__init__()
        self.spec = spec
        widths = [spec.d_width * 2**i for i in range(spec.levels)]  # e.g. 64, 128, 256, 512
        layers: list[nn.Module] = [wrap(nn.Conv2d(spec.bands, widths[0], 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        for c_in, c_out in pairwise(widths):
            layers.append(wrap(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not batch_norm)))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, True))
        layers.append(wrap(nn.Conv2d(widths[-1], 1, 4, 1, 0)))
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()  # one logit / critic value per image
