"""Building blocks the families share: label conditioning (one-hot planes, conditional batch norm) and
self-attention (Zhang et al. 2018), the minibatch standard deviation (Karras et al. 2018).

Layers that need the class labels derive from `LabelAware`; `LabelSequential` hands the labels to those layers and
only the input to the rest, so a conditional network is still one `nn.Sequential` (and an unconditional one keeps
its plain state-dict keys).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LabelAware(nn.Module):
    """Marker: `forward(x, labels)`."""


class LabelSequential(nn.Sequential):
    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, labels) if isinstance(layer, LabelAware) else layer(x)
        return x


def one_hot_planes(labels: torch.Tensor, num_classes: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """(n,) class indexes -> (n, num_classes, size, size) one-hot planes, concatenated to the image channels."""
    hot = F.one_hot(labels, num_classes).to(dtype)
    return hot[:, :, None, None].expand(-1, -1, size, size)


class ConditionalBatchNorm2d(LabelAware):
    """Batch norm whose scale and shift are looked up per class (de Vries et al. 2017; Miyato & Koyama 2018).

    Scales start at 1 and shifts at 0, so an untrained conditional generator behaves like the unconditional one.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.scale = nn.Embedding(num_classes, channels)
        self.shift = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError("conditional batch norm needs class labels")
        y = self.norm(x)
        return y * self.scale(labels)[:, :, None, None] + self.shift(labels)[:, :, None, None]


class SelfAttention(nn.Module):
    """SAGAN's non-local block: every position attends to every other one; out = x + gamma * attention(x).

    Queries and keys have C/8 channels, values C/2 (then projected back to C). gamma starts at 0, so the block is
    the identity at initialisation and the network learns how much non-local evidence to use.
    """

    def __init__(self, channels: int, wrap=lambda layer: layer) -> None:
        super().__init__()
        inner = max(1, channels // 8)
        self.query = wrap(nn.Conv2d(channels, inner, 1, bias=False))
        self.key = wrap(nn.Conv2d(channels, inner, 1, bias=False))
        self.value = wrap(nn.Conv2d(channels, max(1, channels // 2), 1, bias=False))
        self.out = wrap(nn.Conv2d(max(1, channels // 2), channels, 1, bias=False))
        self.gamma = nn.Parameter(torch.zeros(()))

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """(n, HW, HW): row i is how query position i weighs every key position (each row sums to 1)."""
        q = self.query(x).flatten(2)  # n, c', HW
        k = self.key(x).flatten(2)
        return torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        attention = self.attention_map(x)
        v = self.value(x).flatten(2)  # n, c/2, HW
        attended = torch.bmm(v, attention.transpose(1, 2)).view(n, -1, h, w)
        return x + self.gamma * self.out(attended)


MBSTD_GROUP = 4


class MinibatchStd(nn.Module):
    """Appends the standard deviation of each feature over groups of up to 4 images, averaged to one map: lets D
    see a batch's lack of variety (mode collapse). The group shrinks to a divisor of the batch size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        group = min(MBSTD_GROUP, n)
        while n % group:
            group -= 1
        y = x.to(torch.promote_types(x.dtype, torch.float32)).reshape(group, -1, c, h, w)  # bf16 -> fp32
        y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # (n / group, c, h, w)
        y = y.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1).repeat(group, 1, h, w)
        return torch.cat([x, y.to(x.dtype)], dim=1)
