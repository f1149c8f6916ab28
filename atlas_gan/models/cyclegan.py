"""CycleGAN's generator (Zhu et al. 2017, after Johnson et al. 2016) for any band count: a ResNet that keeps the
image size. Its discriminators are pix2pix's PatchGAN on a single image (`PatchDiscriminator(paired=False)`).

Generator: a 7x7 convolution (reflection padding) to `g_width` channels, two stride-2 convolutions down (x2, x4),
`spec.residual_blocks` residual blocks (two 3x3 convolutions with reflection padding), two stride-2 transposed
convolutions up, a 7x7 convolution to the output bands, tanh. Normalization after every convolution but the last
(`spec.norm`; instance norm in the paper). Input and output band counts may differ (`spec.input_bands`, `spec.bands`).
"""

from __future__ import annotations

import torch
from torch import nn

from atlas_gan.models.base import ModelSpec, init_dcgan_weights
from atlas_gan.models.pix2pix import norm_layer


def residual_blocks_for(image_size: int) -> int:
    """The paper's choice: 9 blocks at 256 px and above, 6 below."""
    return 9 if image_size >= 256 else 6


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=False),
            norm_layer(norm, channels),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=False),
            norm_layer(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetGenerator(nn.Module):
    """(n, input_bands, h, w) in [-1, 1] -> (n, bands, h, w) in [-1, 1]; h, w multiples of 4."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.input_bands < 1:
            raise ValueError("an image-to-image network needs spec.input_bands >= 1 (the bands it reads)")
        width, norm = spec.g_width, spec.norm
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(spec.input_bands, width, 7, bias=False),
            norm_layer(norm, width),
            nn.ReLU(),
        ]
        for factor in (1, 2):
            layers += [
                nn.Conv2d(width * factor, width * factor * 2, 3, 2, 1, bias=False),
                norm_layer(norm, width * factor * 2),
                nn.ReLU(),
            ]
        blocks = spec.residual_blocks or residual_blocks_for(spec.image_size)
        layers += [ResidualBlock(width * 4, norm) for _ in range(blocks)]
        for factor in (4, 2):
            layers += [
                nn.ConvTranspose2d(width * factor, width * factor // 2, 3, 2, 1, output_padding=1, bias=False),
                norm_layer(norm, width * factor // 2),
                nn.ReLU(),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, spec.bands, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
