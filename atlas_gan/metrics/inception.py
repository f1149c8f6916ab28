"""The FID Inception-v3: TensorFlow's 2015-12-05 graph, as the reference FID implementations use it, in plain PyTorch.

It differs from torchvision's Inception-v3 where TensorFlow's graph did: batch norm without a learned scale
(eps 1e-3), average pools that ignore padding, and a max pool in the last block's pool branch. Layer names follow
NVIDIA's TorchScript port (`conv`, `mixed_3.tower_1.conv_2`, ...), so those weight files load directly; other
layouts are translated by `atlas_gan.metrics.weights`.

Input: RGB in [-1, 1] at 299 x 299 (see `preprocess`). Output: pool3 features (N, 2048) and, when the weights
have the classifier head, logits over its 1008 classes.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 299
FEATURES = 2048
CLASSES = 1008


class ConvBN(nn.Module):
    """Convolution without bias, batch norm with TensorFlow's defaults (no scale unless given, eps 1e-3), ReLU."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0
    ) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride, self.padding = stride, padding
        self.register_buffer("weight", torch.zeros(c_out, c_in, kh, kw))
        self.register_buffer("gamma", torch.ones(c_out))
        self.register_buffer("beta", torch.zeros(c_out))
        self.register_buffer("mean", torch.zeros(c_out))
        self.register_buffer("var", torch.ones(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, self.gamma, self.beta, False, 0.0, 1e-3)
        return F.relu(x)


def _seq(**layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


def _avg_pool() -> nn.Module:
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.conv = ConvBN(c_in, 64, 1)
        self.tower = _seq(conv=ConvBN(c_in, 48, 1), conv_1=ConvBN(48, 64, 5, padding=2))
        self.tower_1 = _seq(
            conv=ConvBN(c_in, 64, 1), conv_1=ConvBN(64, 96, 3, padding=1), conv_2=ConvBN(96, 96, 3, padding=1)
        )
        self.tower_2 = _seq(pool=_avg_pool(), conv=ConvBN(c_in, pool_features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionB(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.conv = ConvBN(c_in, 384, 3, stride=2)
        self.tower = _seq(
            conv=ConvBN(c_in, 64, 1), conv_1=ConvBN(64, 96, 3, padding=1), conv_2=ConvBN(96, 96, 3, stride=2)
        )
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class InceptionC(nn.Module):
    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        self.conv = ConvBN(c_in, 192, 1)
        self.tower = _seq(
            conv=ConvBN(c_in, c7, 1),
            conv_1=ConvBN(c7, c7, (1, 7), padding=(0, 3)),
            conv_2=ConvBN(c7, 192, (7, 1), padding=(3, 0)),
        )
        self.tower_1 = _seq(
            conv=ConvBN(c_in, c7, 1),
            conv_1=ConvBN(c7, c7, (7, 1), padding=(3, 0)),
            conv_2=ConvBN(c7, c7, (1, 7), padding=(0, 3)),
            conv_3=ConvBN(c7, c7, (7, 1), padding=(3, 0)),
            conv_4=ConvBN(c7, 192, (1, 7), padding=(0, 3)),
        )
        self.tower_2 = _seq(pool=_avg_pool(), conv=ConvBN(c_in, 192, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionD(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.tower = _seq(conv=ConvBN(c_in, 192, 1), conv_1=ConvBN(192, 320, 3, stride=2))
        self.tower_1 = _seq(
            conv=ConvBN(c_in, 192, 1),
            conv_1=ConvBN(192, 192, (1, 7), padding=(0, 3)),
            conv_2=ConvBN(192, 192, (7, 1), padding=(3, 0)),
            conv_3=ConvBN(192, 192, 3, stride=2),
        )
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class InceptionE(nn.Module):
    """`max_pool`: the last block's pool branch max-pools in TensorFlow's graph (a quirk FID depends on)."""

    def __init__(self, c_in: int, max_pool: bool) -> None:
        super().__init__()
        self.conv = ConvBN(c_in, 320, 1)
        self.tower_conv = ConvBN(c_in, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(c_in, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = nn.MaxPool2d(3, stride=1, padding=1) if max_pool else _avg_pool()
        self.tower_2_conv = ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat(
            [
                self.conv(x),
                self.tower_mixed_conv(a),
                self.tower_mixed_conv_1(a),
                self.tower_1_mixed_conv(b),
                self.tower_1_mixed_conv_1(b),
                self.tower_2_conv(self.tower_2_pool(x)),
            ],
            1,
        )


class FIDInception(nn.Module):
    """pool3 features (and logits when `head`) of the FID Inception-v3."""

    def __init__(self, head: bool = False) -> None:
        super().__init__()
        self.layers = _seq(
            conv=ConvBN(3, 32, 3, stride=2),
            conv_1=ConvBN(32, 32, 3),
            conv_2=ConvBN(32, 64, 3, padding=1),
            pool0=nn.MaxPool2d(3, stride=2),
            conv_3=ConvBN(64, 80, 1),
            conv_4=ConvBN(80, 192, 3),
            pool1=nn.MaxPool2d(3, stride=2),
            mixed=InceptionA(192, 32),
            mixed_1=InceptionA(256, 64),
            mixed_2=InceptionA(288, 64),
            mixed_3=InceptionB(288),
            mixed_4=InceptionC(768, 128),
            mixed_5=InceptionC(768, 160),
            mixed_6=InceptionC(768, 160),
            mixed_7=InceptionC(768, 192),
            mixed_8=InceptionD(768),
            mixed_9=InceptionE(1280, max_pool=False),
            mixed_10=InceptionE(2048, max_pool=True),
            pool2=nn.AvgPool2d(8),
        )
        self.output = nn.Linear(FEATURES, CLASSES) if head else None

    @property
    def has_head(self) -> bool:
        return self.output is not None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (N, 3, 299, 299) in [-1, 1] -> (features (N, 2048), logits (N, 1008) or None)."""
        if x.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) input, got {tuple(x.shape)}")
        features = self.layers(x).flatten(1)
        logits = self.output(features) if self.output is not None else None
        return features, logits


def preprocess(images: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """RGB images in [0, 1] (any size) -> the network's input: optionally rounded to 8 bits as the reference
    implementations see images, scaled to [-1, 1], resized to 299 x 299 with bilinear interpolation
    (align_corners=False, as pytorch-fid and torchmetrics do)."""
    x = images.float().clamp(0.0, 1.0)
    if quantize:
        x = torch.round(x * 255.0) / 255.0
    x = x * 2.0 - 1.0
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return x


RESIZE_METHOD = "torch-bilinear-299-align_corners=False, uint8-quantized"
