"""BigGAN networks (Brock et al. 2019), for any band count at 32-512 px, class-conditional or not.

Generator: z is split into one chunk per block plus one for the input layer (the hierarchical latent). The first
chunk becomes the 4x4 features through a linear layer; each residual up-block (BN, ReLU, nearest x2, 3x3 conv, BN,
ReLU, 3x3 conv, with a 1x1-conv shortcut) normalizes with batch norms whose gains and biases are linear functions of
[shared class embedding, its own z chunk]. An unconditional generator is the one-class case: one learned embedding.
Then BN, ReLU, 3x3 conv to the bands, tanh. Self-attention (SAGAN's block) after the block whose output has
`spec.attention_resolution` px. Spectral norm on every weight; orthogonal initialization.

Discriminator: residual down-blocks (the first without a leading ReLU), self-attention at the same resolution,
ReLU, sum over space, a linear output plus the projection <embed(y), h> (Miyato & Koyama 2018) when conditional;
spectral norm everywhere.

Truncation (eval only): with `truncation_psi` < 1 every z component is mapped onto the normal truncated at the
threshold t that keeps a share psi of its mass (t = Phi^-1((1 + psi) / 2); psi 0.68 is the paper's t = 1, psi 0 gives
z = 0). The map z -> sqrt(2) erfinv(psi erf(z / sqrt(2))) sends N(0, 1) exactly onto that truncated normal and is
deterministic, so a seed still picks the same tile, only more typical.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from atlas_gan.models.base import ModelSpec, check_labels
from atlas_gan.models.layers import SelfAttention
from atlas_gan.models.upsampling import upsample_conv3x3

MAX_WIDTH_FACTOR = 16  # the widest features have 16 x g_width (d_width) channels, as in the paper's 128 px nets
SHARED_DIM = 128  # the shared class embedding's size (the paper's)


def _orthogonal(layer: nn.Module) -> nn.Module:
    """Orthogonal init of a conv / linear / embedding weight, then spectral norm (the paper's G and D)."""
    nn.init.orthogonal_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return spectral_norm(layer)


def _conv(c_in: int, c_out: int, kernel: int) -> nn.Module:
    return _orthogonal(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2))


def _linear(c_in: int, c_out: int, bias: bool = True) -> nn.Module:
    return _orthogonal(nn.Linear(c_in, c_out, bias=bias))


def generator_widths(spec: ModelSpec) -> list[int]:
    """Channels at 4, 8, ..., image_size px: halving per doubling down to g_width, at most 16 x g_width."""
    return [spec.g_width * min(MAX_WIDTH_FACTOR, 2 ** max(0, spec.levels - 1 - i)) for i in range(spec.levels + 1)]


def discriminator_widths(spec: ModelSpec) -> list[int]:
    """Channels at image_size / 2, ..., 4 px: doubling per halving from d_width, at most 16 x d_width."""
    return [spec.d_width * min(MAX_WIDTH_FACTOR, 2**i) for i in range(spec.levels)]


class HierarchicalBatchNorm(nn.Module):
    """Batch norm whose per-channel gain (1 + ...) and bias are linear in the block's conditioning vector."""

    def __init__(self, channels: int, condition_dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = _linear(condition_dim, channels, bias=False)
        self.bias = _linear(condition_dim, channels, bias=False)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        gain = 1.0 + self.gain(condition).to(x.dtype)
        return self.norm(x) * gain[:, :, None, None] + self.bias(condition).to(x.dtype)[:, :, None, None]


class GeneratorBlock(nn.Module):
    """BN-ReLU-up-conv-BN-ReLU-conv, plus up + 1x1 conv; doubles the resolution."""

    def __init__(self, c_in: int, c_out: int, condition_dim: int) -> None:
        super().__init__()
        self.norm1 = HierarchicalBatchNorm(c_in, condition_dim)
        self.conv1 = _conv(c_in, c_out, 3)
        self.norm2 = HierarchicalBatchNorm(c_out, condition_dim)
        self.conv2 = _conv(c_out, c_out, 3)
        self.shortcut = _conv(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        # up-then-conv as one transposed convolution; the 1x1 shortcut commutes with nearest upsampling, so it
        # runs at the input's resolution (both exactly as written in the docstring, for less work)
        h = upsample_conv3x3(F.relu(self.norm1(x, condition)), self.conv1.weight, self.conv1.bias)
        h = self.conv2(F.relu(self.norm2(h, condition)))
        return h + F.interpolate(self.shortcut(x), scale_factor=2.0, mode="nearest")


class BigGANGenerator(nn.Module):
    """`G(z, labels=None)`; `truncation_psi` (1: off) applies in eval mode."""

    max_truncation_psi = 1.0  # psi is the share of z's mass kept: above 1 means nothing
    truncation_in_onnx = False  # erfinv has no ONNX operator

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        widths = generator_widths(spec)
        self.chunks = spec.levels + 1  # one z chunk for the input layer, one per block
        if spec.latent_dim < self.chunks:
            raise ValueError(
                f"biggan splits z into {self.chunks} chunks at {spec.image_size} px: latent_dim must be at least "
                f"{self.chunks}; got {spec.latent_dim}"
            )
        sizes = [len(part) for part in torch.arange(spec.latent_dim).tensor_split(self.chunks)]
        self.shared = nn.Embedding(max(1, spec.num_classes), SHARED_DIM)  # no spectral norm (as the paper's)
        nn.init.orthogonal_(self.shared.weight)
        self.input = _linear(sizes[0], widths[0] * 16)
        self.blocks = nn.ModuleList(
            GeneratorBlock(c_in, c_out, SHARED_DIM + chunk)
            for c_in, c_out, chunk in zip(widths[:-1], widths[1:], sizes[1:], strict=True)
        )
        self.attention = nn.ModuleDict(
            {
                str(index): SelfAttention(widths[index + 1], spectral_norm)
                for index in range(spec.levels)
                if 8 * 2**index == spec.attention_resolution
            }
        )
        self.output_norm = nn.BatchNorm2d(widths[-1])
        self.output = _conv(widths[-1], spec.bands, 3)
        self.truncation_psi = 1.0

    def truncated(self, z: torch.Tensor) -> torch.Tensor:
        """z mapped onto the normal truncated to keep a share `truncation_psi` of its mass (see the module doc)."""
        psi = self.truncation_psi
        if psi == 1.0:
            return z
        scaled = psi * torch.erf(z.double() / math.sqrt(2.0))
        return (math.sqrt(2.0) * torch.erfinv(scaled)).to(z.dtype)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = check_labels(labels, self.spec, z.shape[0])
        if labels is None:
            labels = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        if not self.training:
            z = self.truncated(z)
        parts = z.flatten(1).tensor_split(self.chunks, dim=1)
        shared = self.shared(labels)
        h = self.input(parts[0]).view(z.shape[0], -1, 4, 4)
        for index, (block, part) in enumerate(zip(self.blocks, parts[1:], strict=True)):
            h = block(h, torch.cat([shared, part], dim=1))
            if str(index) in self.attention:
                h = self.attention[str(index)](h)
        return torch.tanh(self.output(F.relu(self.output_norm(h))))


class DiscriminatorBlock(nn.Module):
    """(ReLU)-conv-ReLU-conv-avgpool, plus a 1x1-conv shortcut; halves the resolution."""

    def __init__(self, c_in: int, c_out: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.conv1 = _conv(c_in, c_out, 3)
        self.conv2 = _conv(c_out, c_out, 3)
        self.shortcut = _conv(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x if self.first else F.relu(x))
        h = F.avg_pool2d(self.conv2(F.relu(h)), 2)
        if self.first:  # the paper's first block pools before its shortcut conv (cheaper, same function)
            return h + self.shortcut(F.avg_pool2d(x, 2))
        return h + F.avg_pool2d(self.shortcut(x), 2)


class BigGANDiscriminator(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        widths = discriminator_widths(spec)
        channels = [spec.bands, *widths]
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(c_in, c_out, first=index == 0) for index, (c_in, c_out) in enumerate(pairwise(channels))
        )
        self.attention = nn.ModuleDict(
            {
                str(index): SelfAttention(widths[index], spectral_norm)
                for index in range(spec.levels)
                if spec.image_size // 2 ** (index + 1) == spec.attention_resolution
            }
        )
        self.output = _linear(widths[-1], 1)
        self.embed = _orthogonal(nn.Embedding(spec.num_classes, widths[-1])) if spec.conditional else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = check_labels(labels, self.spec, x.shape[0])
        h = x
        for index, block in enumerate(self.blocks):
            h = block(h)
            if str(index) in self.attention:
                h = self.attention[str(index)](h)
        features = F.relu(h).sum(dim=(2, 3))
        logits = self.output(features).flatten()
        if self.embed is not None:
            logits = logits + (self.embed(labels).to(features.dtype) * features).sum(dim=1)
        return logits
