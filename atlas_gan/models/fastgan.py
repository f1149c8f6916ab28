"""FastGAN (Liu et al., ICLR 2021, "Towards Faster and Stabilized GAN Training for High-fidelity Few-shot Image
Synthesis") for any band count and 64-512 px: the family made for hundreds to thousands of images.

Generator:
- z (plus a one-hot label when conditional) -> a 4x4 map by a transposed convolution, batch norm and GLU.
- One up block per doubling: nearest 2x upsampling, 3x3 convolution to twice the channels (the two computed as one
  transposed convolution, `atlas_gan/models/upsampling.py`), batch norm, GLU (gated linear unit: half the
  channels gate the other half). Every other block (the 8, 32, 128 and 512 px ones, as in the
  paper) is the *compound* block: two such convolutions, each followed by a learned-strength noise input.
- Skip-layer excitation (SLE): a low-resolution feature map (r px) is pooled to 4x4, turned into one sigmoid gate
  per channel (4x4 convolution, swish, 1x1 convolution) and multiplies the feature map at 8r px. It carries global
  structure (how much field, forest or water) straight to the fine layers and costs almost nothing.
- A 3x3 convolution to the bands and tanh.

Discriminator:
- A 3x3 stem, then down blocks to 8x8 features: each averages a strided path (4x4 stride-2 convolution, batch norm,
  leaky ReLU, 3x3 convolution, batch norm, leaky ReLU) and a pooled path (2x2 average pool, 1x1 convolution, batch
  norm, leaky ReLU). SLE here too, from the first feature maps to the ones 8x smaller.
- Logits: a 1x1 then a 4x4 convolution on the 8x8 features: a 5x5 map of patch logits per image (its mean is the
  image's score). Conditional: plus the projection of the pooled features onto a label embedding.
- Self-supervision (`reconstruct`): two small decoders (up blocks from an 8x8 map) reconstruct, from D's features
  of a real image, (a) the whole image and (b) a random quarter of it from the matching quarter of the 16x16
  features, both at half the image size (at most 128 px). Minimizing the reconstruction error on real images makes D
  keep a description of the image rather than a few memorized cues: the paper's remedy for D overfitting on small
  datasets. The paper measures the error with LPIPS (VGG features); atlas-gan never downloads weights, so it uses
  the mean absolute error on every band (defined for any band count).

Spectral norm on every convolution of both networks and N(0, 0.02) initial weights, as in the authors' code.
"""

from __future__ import annotations

from math import log2

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from atlas_gan.models.base import ModelSpec, check_labels
from atlas_gan.models.upsampling import upsample_conv3x3

MIN_IMAGE_SIZE = 64
MAX_WIDTH_MULTIPLE = 16  # feature maps have at most 16 x width channels (at 4x4 and 8x8)


def channels(width: int, image_size: int, resolution: int) -> int:
    """Channels at `resolution`: `width` at full size, doubling per halving, at most 16 x width."""
    return width * min(MAX_WIDTH_MULTIPLE, image_size // resolution)


def check_image_size(spec: ModelSpec) -> None:
    if spec.image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"fastgan needs image_size 64, 128, 256 or 512; got {spec.image_size}")


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = False) -> nn.Module:
    return spectral_norm(nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=bias))


def _init_weights(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            parametrized = getattr(layer, "parametrizations", None)
            weight = parametrized.weight.original if parametrized is not None else layer.weight
            nn.init.normal_(weight, 0.0, 0.02)
        elif isinstance(layer, nn.BatchNorm2d) and layer.affine:
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)


class NoiseInjection(nn.Module):
    """x + strength * per-pixel Gaussian noise (strength learned, starting at 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        return x + self.strength * noise


class _UpBlock(nn.Sequential):
    """Its layers in order; the leading nearest upsampling and 3x3 convolution run as one transposed convolution
    (`upsample_conv3x3`: the same output for less than half the work)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _upsample, conv, *rest = self
        x = upsample_conv3x3(x, conv.weight, conv.bias)
        for layer in rest:
            x = layer(x)
        return x


def _up_block(c_in: int, c_out: int, compound: bool) -> _UpBlock:
    layers: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="nearest"), _conv(c_in, c_out * 2, 3, 1, 1)]
    if compound:
        layers.append(NoiseInjection())
    layers += [nn.BatchNorm2d(c_out * 2), nn.GLU(dim=1)]
    if compound:
        layers += [_conv(c_out, c_out * 2, 3, 1, 1), NoiseInjection(), nn.BatchNorm2d(c_out * 2), nn.GLU(dim=1)]
    return _UpBlock(*layers)


class SkipLayerExcitation(nn.Module):
    """Per-channel gates for a high-resolution map from a low-resolution one (any sizes)."""

    def __init__(self, c_small: int, c_big: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(4),
            _conv(c_small, c_big, 4),
            nn.SiLU(),
            _conv(c_big, c_big, 1),
            nn.Sigmoid(),
        )

    def forward(self, small: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
        return big * self.gate(small)


def _sle_pairs(image_size: int) -> list[tuple[int, int]]:
    """(source, target) resolutions of the skip-layer excitations: each map gates the one 8x larger."""
    return [(r, r * 8) for r in (2**i for i in range(2, int(log2(image_size)) - 2))]


class FastGANGenerator(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        check_image_size(spec)
        self.spec = spec
        size, width = spec.image_size, spec.g_width
        latent = spec.latent_dim + spec.num_classes
        c4 = channels(width, size, 4)
        self.init = nn.Sequential(
            spectral_norm(nn.ConvTranspose2d(latent, c4 * 2, 4, 1, 0, bias=False)), nn.BatchNorm2d(c4 * 2), nn.GLU(1)
        )
        self.resolutions = [2**i for i in range(3, int(log2(size)) + 1)]  # 8 .. size
        self.ups = nn.ModuleList(
            _up_block(channels(width, size, r // 2), channels(width, size, r), compound=int(log2(r)) % 2 == 1)
            for r in self.resolutions
        )
        self.sle_pairs = _sle_pairs(size)
        self.sles = nn.ModuleDict(
            {
                str(target): SkipLayerExcitation(channels(width, size, source), channels(width, size, target))
                for source, target in self.sle_pairs
            }
        )
        self.to_image = _conv(channels(width, size, size), spec.bands, 3, 1, 1, bias=True)
        _init_weights(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = check_labels(labels, self.spec, z.shape[0])
        if labels is not None:
            z = torch.cat([z.flatten(1), F.one_hot(labels, self.spec.num_classes).to(z.dtype)], dim=1)
        x = self.init(z.reshape(z.shape[0], -1, 1, 1))
        features = {4: x}
        for resolution, up in zip(self.resolutions, self.ups, strict=True):
            x = up(x)
            if str(resolution) in self.sles:
                x = self.sles[str(resolution)](features[resolution // 8], x)
            features[resolution] = x
        images = torch.tanh(self.to_image(x))
        return images if self.training else images.clamp(-1.0, 1.0)


class _DownBlock(nn.Module):
    """The mean of a strided-convolution path and an average-pooling path: half the resolution."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            _conv(c_in, c_out, 4, 2, 1),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.2, inplace=True),
            _conv(c_out, c_out, 3, 1, 1),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.2),
        )
        self.direct = nn.Sequential(nn.AvgPool2d(2, 2), _conv(c_in, c_out, 1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.main(x) + self.direct(x)) / 2


class _Decoder(nn.Module):
    """An 8x8 feature map -> an image at `size` px (up blocks, then 3x3 convolution and tanh)."""

    def __init__(self, c_in: int, bands: int, size: int, width: int) -> None:
        super().__init__()
        steps = int(log2(size)) - 3
        widths = [c_in] + [max(width, c_in // 2 ** (i + 1)) for i in range(steps)]
        self.net = nn.Sequential(
            nn.AdaptiveAvgPool2d(8),
            *(_up_block(widths[i], widths[i + 1], compound=False) for i in range(steps)),
            _conv(widths[-1], bands, 3, 1, 1, bias=True),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FastGANDiscriminator(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        check_image_size(spec)
        self.spec = spec
        size, width = spec.image_size, spec.d_width
        self.stem = nn.Sequential(_conv(spec.bands, channels(width, size, size), 3, 1, 1), nn.LeakyReLU(0.2))
        self.resolutions = [2**i for i in range(int(log2(size)) - 1, 2, -1)]  # size/2 .. 8
        self.downs = nn.ModuleList(
            _DownBlock(channels(width, size, r * 2), channels(width, size, r)) for r in self.resolutions
        )
        self.sles = nn.ModuleDict(
            {
                str(r): SkipLayerExcitation(channels(width, size, r * 8), channels(width, size, r))
                for r in self.resolutions
                if r * 8 <= size // 2
            }
        )
        c8 = channels(width, size, 8)
        self.logits = nn.Sequential(
            _conv(c8, c8 // 2, 1), nn.BatchNorm2d(c8 // 2), nn.LeakyReLU(0.2), _conv(c8 // 2, 1, 4, bias=True)
        )
        self.embed = spectral_norm(nn.Embedding(spec.num_classes, c8)) if spec.conditional else None
        self.reconstruction_size = min(128, size // 2)
        self.decode_whole = _Decoder(c8, spec.bands, self.reconstruction_size, width)
        self.decode_part = _Decoder(channels(width, size, 16), spec.bands, self.reconstruction_size, width)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """D's feature maps by resolution (size/2 .. 8)."""
        x = self.stem(x)
        found = {self.spec.image_size: x}
        for resolution, down in zip(self.resolutions, self.downs, strict=True):
            x = down(x)
            if str(resolution) in self.sles:
                x = self.sles[str(resolution)](found[resolution * 8], x)
            found[resolution] = x
        return found

    def score(self, features: dict[int, torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        """One logit per image: the mean of the patch logits (plus the label projection)."""
        last = features[8]
        logits = self.logits(last).flatten(1).mean(dim=1)
        if self.embed is None:
            return logits
        return logits + (self.embed(labels).to(last.dtype) * last.sum(dim=(2, 3))).sum(dim=1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = check_labels(labels, self.spec, x.shape[0])
        return self.score(self.features(x), labels)

    def forward_with_reconstruction(
        self, x: torch.Tensor, labels: torch.Tensor | None, quarter: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, reconstruction loss) for real images `x`: the mean absolute error of the two decoders against
        `x` and its `quarter` (0..3: top-left, top-right, bottom-left, bottom-right), both at
        `reconstruction_size` px."""
        labels = check_labels(labels, self.spec, x.shape[0])
        features = self.features(x)
        size = self.reconstruction_size
        whole = self.decode_whole(features[8])
        f16 = features[16]
        row, col = divmod(quarter, 2)
        half16, half = f16.shape[-1] // 2, x.shape[-1] // 2
        part = self.decode_part(f16[:, :, row * half16 : (row + 1) * half16, col * half16 : (col + 1) * half16])
        crop = x[:, :, row * half : (row + 1) * half, col * half : (col + 1) * half]
        target_whole = F.interpolate(x, size=(size, size), mode="area")
        target_part = F.interpolate(crop, size=(size, size), mode="area")
        loss = (whole.float() - target_whole.float()).abs().mean() + (part.float() - target_part.float()).abs().mean()
        return self.score(features, labels), loss
