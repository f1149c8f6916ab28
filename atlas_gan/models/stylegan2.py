"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN") in pure PyTorch.

No custom CUDA/C++ ops, so it runs, trains and exports (TorchScript, ONNX) wherever PyTorch does, for any band count
and 64-256 px images.

Generator:
- Mapping network: z (and a label embedding, if conditional), each normalized to unit second moment, through 8
  fully connected layers with a learning-rate multiplier of 0.01, gives w. A running mean of w (`w_avg`) is
  tracked during training for the truncation trick.
- Synthesis network: a learned 4x4 constant, then per resolution two modulated 3x3 convolutions with weight
  demodulation, per-layer noise inputs (scaled by learned strengths) and a skip-connection output: every
  resolution adds its own 1x1 `ToRGB` image (any band count) to the upsampled image so far.
- Style mixing regularization (training only): with probability 0.9 a second latent's w drives the layers after a
  random crossover point.
- Truncation trick (eval only): w <- w_avg + psi (w - w_avg), psi = `generator.truncation_psi`.
- Train mode draws fresh noise per image; eval mode uses fixed noise buffers (`noise_const`), so the same latent
  always gives the same image, and clamps the output to the training range [-1, 1].

Discriminator: residual blocks (two 3x3 convolutions + a 1x1 skip, both paths scaled by 1/sqrt(2)), a minibatch
standard deviation feature over groups of 4, then a 3x3 convolution and two fully connected layers. Conditional:
the output is projected onto a learned embedding of the label (the projection discriminator of Miyato & Koyama).

Every weight uses the equalized learning rate: stored N(0, 1) (divided by the learning-rate multiplier) and scaled
by He's constant at run time, so Adam's per-parameter steps are the same size across layers.

Resampling differs from NVIDIA's only in the filter implementation: the [1, 3, 3, 1] binomial filter is applied
as bilinear upsampling (which is exactly that filter, with edge replication instead of zero padding) and as a
depthwise convolution before 2x decimation, instead of the `upfirdn2d` CUDA kernel. Modulation is applied to the
activations rather than to per-sample grouped weights ("non-fused" in NVIDIA's terms; the same arithmetic), so
every convolution is an ordinary cuDNN convolution that works with channels_last and any batch size.
"""

from __future__ import annotations

from math import log2, sqrt

import torch
import torch.nn.functional as F
from torch import nn

from atlas_gan.models.base import ModelSpec, check_labels
from atlas_gan.models.layers import MinibatchStd

LRELU_SLOPE = 0.2
LRELU_GAIN = sqrt(2.0)  # keeps the activations' second moment through leaky ReLU
MAPPING_LAYERS = 8
MAPPING_LR_MULTIPLIER = 0.01
W_AVG_BETA = 0.995
STYLE_MIXING_PROBABILITY = 0.9
MIN_IMAGE_SIZE = 64


def channels_at(width: int, image_size: int, resolution: int) -> int:
    """Feature maps at `resolution`: `width` at full size, doubling per halving, at most 8 x `width`
    (64 gives StyleGAN2 config-f's 512 ... 64 at 256 px)."""
    return min(width * image_size // resolution, width * 8)


def check_image_size(spec: ModelSpec) -> None:
    if spec.image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"stylegan2 needs image_size 64, 128 or 256; got {spec.image_size}")


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN


def _binomial_kernel(channels: int, like: torch.Tensor) -> torch.Tensor:
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=like.dtype, device=like.device)
    kernel = torch.outer(taps, taps) / 64.0
    return kernel.expand(channels, 1, 4, 4)


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Halve the resolution: [1, 3, 3, 1] low-pass filter, then keep every other pixel."""
    return F.conv2d(x, _binomial_kernel(x.shape[1], x), stride=2, padding=1, groups=x.shape[1])


def upsample(x: torch.Tensor) -> torch.Tensor:
    """Double the resolution with the [1, 3, 3, 1] filter (bilinear with half-pixel centres is exactly that)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class EqualLinear(nn.Module):
    """Fully connected layer with the equalized learning rate (and an optional learning-rate multiplier)."""

    def __init__(
        self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mul: float = 1.0, activation: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.weight_gain, self.lr_mul, self.activation = lr_mul / sqrt(in_features), lr_mul, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return _lrelu(x) if self.activation else x


class EqualConv2d(nn.Module):
    """Convolution with the equalized learning rate, 'same' padding, optional bias and leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, activation: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain, self.activation = 1.0 / sqrt(in_channels * kernel * kernel), activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.weight.shape[-1] // 2)
        return _lrelu(x) if self.activation else x


class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled by a style from w, and whose output channels are then
    demodulated: divided by the norm the style-scaled weights would give a unit-variance input, so outputs have
    unit variance again (the paper's weight demodulation, replacing AdaIN)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, w_dim: int, demodulate: bool = True):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.weight_gain, self.demodulate = 1.0 / sqrt(in_channels * kernel * kernel), demodulate

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)  # (n, in)
        weight = self.weight * self.weight_gain
        x = x * styles.to(x.dtype)[:, :, None, None]
        x = F.conv2d(x, weight.to(x.dtype), padding=self.weight.shape[-1] // 2)
        if self.demodulate:
            # sum over in-channels and taps of (weight * style)^2, per sample and out-channel
            demod = (styles.square() @ weight.square().sum(dim=(2, 3)).T + 1e-8).rsqrt()
            x = x * demod.to(x.dtype)[:, :, None, None]
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally after 2x upsampling), noise, bias, leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False) -> None:
        super().__init__()
        self.up, self.resolution = up, resolution
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = upsample(x)
        x = self.conv(x, w)
        if self.training:
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
        else:
            noise = self.noise_const.to(x.dtype)
        x = x + noise * self.noise_strength.to(x.dtype)
        return _lrelu(x + self.bias.to(x.dtype)[None, :, None, None])


class ToImage(nn.Module):
    """Modulated 1x1 convolution to the image's bands (no demodulation, no activation): StyleGAN's ToRGB."""

    def __init__(self, in_channels: int, bands: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, bands, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(bands))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias.to(x.dtype)[None, :, None, None]


class MappingNetwork(nn.Module):
    """z (+ label) -> w, and the running mean of w used for truncation."""

    def __init__(self, z_dim: int, w_dim: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed = EqualLinear(num_classes, w_dim) if num_classes else None
        in_dim = z_dim + (w_dim if num_classes else 0)
        self.layers = nn.Sequential(
            *(
                EqualLinear(in_dim if i == 0 else w_dim, w_dim, lr_mul=MAPPING_LR_MULTIPLIER, activation=True)
                for i in range(MAPPING_LAYERS)
            )
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        x = normalize_2nd_moment(z)
        if self.embed is not None and labels is not None:
            one_hot = F.one_hot(labels, self.num_classes).to(x.dtype)
            x = torch.cat([x, normalize_2nd_moment(self.embed(one_hot))], dim=1)
        w = self.layers(x)
        if self.training:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(dim=0).lerp(self.w_avg, W_AVG_BETA))
        return w


class SynthesisNetwork(nn.Module):
    """ws (n, num_ws, w_dim) -> images (n, bands, size, size), skip-connection architecture."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        size, w_dim = spec.image_size, spec.latent_dim
        resolutions = [2**i for i in range(2, int(log2(size)) + 1)]  # 4 .. size
        channels = {r: channels_at(spec.g_width, size, r) for r in resolutions}
        self.const = nn.Parameter(torch.randn(channels[4], 4, 4))
        self.layers = nn.ModuleList([SynthesisLayer(channels[4], channels[4], w_dim, 4)])
        self.to_images = nn.ModuleList([ToImage(channels[4], spec.bands, w_dim)])
        for resolution in resolutions[1:]:
            in_ch, out_ch = channels[resolution // 2], channels[resolution]
            self.layers.append(SynthesisLayer(in_ch, out_ch, w_dim, resolution, up=True))
            self.layers.append(SynthesisLayer(out_ch, out_ch, w_dim, resolution))
            self.to_images.append(ToImage(out_ch, spec.bands, w_dim))
        # each ToImage shares its w with the next resolution's first convolution, as in the paper's code
        self.num_ws = len(self.layers) + 1

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        x = self.const.to(ws.dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        x = self.layers[0](x, ws[:, 0])
        image = self.to_images[0](x, ws[:, 1])
        for block, to_image in enumerate(self.to_images[1:]):
            first = 1 + 2 * block  # index of this resolution's first convolution (and of its w)
            x = self.layers[first](x, ws[:, first])
            x = self.layers[first + 1](x, ws[:, first + 1])
            image = upsample(image) + to_image(x, ws[:, first + 2])
        return image


class StyleGAN2Generator(nn.Module):
    """`G(z, labels=None)`; w has `spec.latent_dim` dimensions, like z. `truncation_psi` applies in eval mode."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        check_image_size(spec)
        self.spec = spec
        self.mapping = MappingNetwork(spec.latent_dim, spec.latent_dim, spec.num_classes)
        self.synthesis = SynthesisNetwork(spec)
        self.num_ws = self.synthesis.num_ws
        self.truncation_psi = 1.0
        self.style_mixing_probability = STYLE_MIXING_PROBABILITY

    def styles(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Per-layer w's (n, num_ws, w_dim): style mixing in training, truncation in eval."""
        labels = check_labels(labels, self.spec, z.shape[0])  # not len(z): exports keep the batch size symbolic
        w = self.mapping(z, labels)
        if not self.training and self.truncation_psi != 1.0:
            w = self.mapping.w_avg.to(w.dtype).lerp(w, self.truncation_psi)
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        # the draws are on the CPU generator (no device sync); the rank-specific RNG state is checkpointed
        if self.training and float(torch.rand(())) < self.style_mixing_probability:
            crossover = int(torch.randint(1, self.num_ws, ()))
            mixed = self.mapping(torch.randn_like(z), labels)
            ws = torch.cat([ws[:, :crossover], mixed.unsqueeze(1).expand(-1, self.num_ws - crossover, -1)], 1)
        return ws

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        image = self.synthesis(self.styles(z, labels))
        return image if self.training else image.clamp(-1.0, 1.0)


class DiscriminatorBlock(nn.Module):
    """Residual block: 3x3 conv, downsample, 3x3 conv; skip: downsample, 1x1 conv; sum / sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(downsample(x))
        x = self.conv1(downsample(self.conv0(x)))
        return (x + skip) * sqrt(0.5)


class StyleGAN2Discriminator(nn.Module):
    """`D(x, labels=None)` -> one logit per image."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        check_image_size(spec)
        self.spec = spec
        size = spec.image_size
        resolutions = [2**i for i in range(int(log2(size)), 2, -1)]  # size .. 8
        channels = {r: channels_at(spec.d_width, size, r) for r in [*resolutions, 4]}
        self.from_image = EqualConv2d(spec.bands, channels[size], 1)
        self.blocks = nn.Sequential(*(DiscriminatorBlock(channels[r], channels[r // 2]) for r in resolutions))
        top = channels[4]
        self.mbstd = MinibatchStd()
        self.conv = EqualConv2d(top + 1, top, 3)
        self.fc = EqualLinear(top * 16, top, activation=True)
        self.out = EqualLinear(top, top if spec.conditional else 1)
        self.embed = EqualLinear(spec.num_classes, top) if spec.conditional else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = check_labels(labels, self.spec, x.shape[0])
        x = self.blocks(self.from_image(x))
        x = self.fc(self.conv(self.mbstd(x)).flatten(1))
        out = self.out(x)
        if self.embed is not None and labels is not None:
            class_map = normalize_2nd_moment(self.embed(F.one_hot(labels, self.spec.num_classes).to(out.dtype)))
            out = (out * class_map.to(out.dtype)).sum(dim=1, keepdim=True) / sqrt(class_map.shape[1])
        return out.flatten()
