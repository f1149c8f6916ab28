"""Progressive growing of GANs (Karras et al. 2018): networks that grow from 4x4 to `spec.image_size`, for any band
count at 32-512 px. Unconditional, as in the paper.

Both networks hold every level from the start; which one is trained is the `level` (0: 4x4, 1: 8x8, ...) and the
fade-in weight `alpha` of that level, kept as the modules' extra state so checkpoints, the EMA copy and exports
carry them. The
recipe (`atlas_gan/recipes/pggan.py`) sets them from the images shown.

- Generator: z -> pixel norm -> dense to 4x4 -> 3x3 conv; per level: nearest x2, two 3x3 convs; leaky ReLU (0.2)
  and pixel normalization after every conv; a 1x1 "to image" conv per level (linear). While a level fades in, its
  image is alpha x its own + (1 - alpha) x the previous level's image upsampled. `forward` returns the current
  level's image upsampled (nearest) to `spec.image_size`, clamped to [-1, 1] in eval mode: what evaluation,
  sampling and export see (the final level once training reached it); `forward_level` the image at the current
  resolution, unclamped (linear output, as the paper's), for training.
- Discriminator: a 1x1 "from image" conv per level, then per level two 3x3 convs and 2x2 average pooling; while a
  level fades in, its features are blended with those of the image average-pooled to the previous level's input.
  At 4x4: minibatch standard deviation, 3x3 conv, dense, dense to one value. It reads images at any level's
  resolution (the level is their size).
- Equalized learning rate everywhere: weights ~ N(0, 1), scaled at run time by He's constant sqrt(2 / fan_in)
  (1 / sqrt(fan_in) for the linear "to image" and output layers); biases start at 0.
- Channels: `g_width` (`d_width`) at full size, doubling per halving, at most 8 x that (64 gives the paper's 512 at
  its low resolutions).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from atlas_gan.models.base import ModelSpec, check_labels
from atlas_gan.models.layers import MinibatchStd
from atlas_gan.models.upsampling import upsample_conv3x3

LRELU_SLOPE = 0.2
HE_GAIN = math.sqrt(2.0)


def channels_at(width: int, image_size: int, resolution: int) -> int:
    return width * min(8, image_size // resolution)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each pixel's feature vector scaled to unit root mean square (the paper's local response normalization)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class EqualizedConv2d(nn.Module):
    """'same' convolution whose weights are scaled by gain / sqrt(fan_in) at every call (equalized learning rate)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, gain: float = HE_GAIN) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scale = gain / math.sqrt(c_in * kernel * kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.weight.shape[-1] // 2)

    def forward_upsampled(self, x: torch.Tensor) -> torch.Tensor:
        """`forward(nearest 2x upsampling of x)` for a 3x3 kernel, as one transposed convolution."""
        return upsample_conv3x3(x, self.weight * self.scale, self.bias)


class EqualizedLinear(nn.Module):
    def __init__(self, c_in: int, c_out: int, gain: float = HE_GAIN) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scale = gain / math.sqrt(c_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


def _up(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    return x if factor == 1 else F.interpolate(x, scale_factor=float(factor), mode="nearest")


class Growing(nn.Module):
    """The level being trained (0: 4x4) and its fade-in weight: plain numbers (constants to tracing and export,
    no device sync per call), saved as the module's extra state."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.conditional:
            raise ValueError("pggan is unconditional (as the paper): leave train.condition off")
        self.spec = spec
        self.level, self.alpha = spec.levels, 1.0  # the final level until a recipe says otherwise

    def set_growth(self, level: int, alpha: float) -> None:
        if not 0 <= level <= self.spec.levels or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"level must lie in [0, {self.spec.levels}] and alpha in [0, 1]; got {level}, {alpha}")
        self.level, self.alpha = int(level), float(alpha)

    def growth(self) -> tuple[int, float]:
        return self.level, self.alpha

    def get_extra_state(self) -> dict[str, float]:
        return {"level": self.level, "alpha": self.alpha}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.set_growth(int(state["level"]), float(state["alpha"]))


class PGGANGenerator(Growing):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        widths = [channels_at(spec.g_width, spec.image_size, 4 * 2**level) for level in range(spec.levels + 1)]
        self.dense = EqualizedLinear(spec.latent_dim, widths[0] * 16, gain=HE_GAIN / 4)  # the paper's 4x4 dense
        self.base_conv = EqualizedConv2d(widths[0], widths[0], 3)
        self.blocks = nn.ModuleList(
            nn.ModuleList([EqualizedConv2d(c_in, c_out, 3), EqualizedConv2d(c_out, c_out, 3)])
            for c_in, c_out in itertools.pairwise(widths)
        )
        self.to_image = nn.ModuleList(EqualizedConv2d(width, spec.bands, 1, gain=1.0) for width in widths)

    def forward_level(self, z: torch.Tensor) -> torch.Tensor:
        """The image at the current level's resolution (4 x 2^level px), faded in by alpha."""
        level, alpha = self.growth()
        h = self.dense(pixel_norm(z.flatten(1))).view(z.shape[0], -1, 4, 4)
        h = pixel_norm(_lrelu(self.base_conv(pixel_norm(_lrelu(h)))))
        previous = h
        for block in self.blocks[:level]:
            previous = h
            first, second = block
            h = pixel_norm(_lrelu(first.forward_upsampled(h)))
            h = pixel_norm(_lrelu(second(h)))
        image = self.to_image[level](h)
        if level > 0 and alpha < 1.0:
            image = torch.lerp(_up(self.to_image[level - 1](previous)), image, alpha)
        return image

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(labels, self.spec, z.shape[0])
        image = _up(self.forward_level(z), self.spec.image_size // (4 * 2**self.level))
        return image if self.training else image.clamp(-1.0, 1.0)


class PGGANDiscriminator(Growing):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        widths = [channels_at(spec.d_width, spec.image_size, 4 * 2**level) for level in range(spec.levels + 1)]
        self.from_image = nn.ModuleList(EqualizedConv2d(spec.bands, width, 1) for width in widths)
        self.blocks = nn.ModuleList(  # blocks[level - 1]: level's resolution down to the one below
            nn.ModuleList([EqualizedConv2d(c_out, c_out, 3), EqualizedConv2d(c_out, c_in, 3)])
            for c_in, c_out in itertools.pairwise(widths)
        )
        self.mbstd = MinibatchStd()
        self.final_conv = EqualizedConv2d(widths[0] + 1, widths[0], 3)
        self.final_dense = EqualizedLinear(widths[0] * 16, widths[0])
        self.output = EqualizedLinear(widths[0], 1, gain=1.0)

    def _block(self, level: int, h: torch.Tensor) -> torch.Tensor:
        for conv in self.blocks[level - 1]:
            h = _lrelu(conv(h))
        return F.avg_pool2d(h, 2)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(labels, self.spec, x.shape[0])
        level = int(math.log2(x.shape[-1])) - 2
        if not 0 <= level <= self.spec.levels or x.shape[-1] != 4 * 2**level:
            raise ValueError(f"pggan's D reads 4 to {self.spec.image_size} px images; got {x.shape[-1]} px")
        _, alpha = self.growth()
        h = _lrelu(self.from_image[level](x))
        if level > 0:
            h = self._block(level, h)
            if alpha < 1.0:
                h = torch.lerp(_lrelu(self.from_image[level - 1](F.avg_pool2d(x, 2))), h, alpha)
        for lower in range(level - 1, 0, -1):
            h = self._block(lower, h)
        h = _lrelu(self.final_conv(self.mbstd(h)))
        return self.output(_lrelu(self.final_dense(h.flatten(1)))).flatten()
