"""DiffAugment (Zhao et al. 2020): random, differentiable augmentations of every image the discriminator sees.

Real and generated images are both augmented, in the D update and in the G update, so D never learns the
augmentations as a feature of the real data and G's gradients flow through them. Each call draws new parameters
per image. Inputs are in the training range [-1, 1], any number of bands, shape (n, bands, h, w).

Policies, applied in this order:
- `color`, three operations defined for any band count:
  - brightness: add one offset in [-0.5, 0.5) to every band of the image (a uniform change of illumination);
  - saturation: scale each pixel's deviation from its own mean over the bands by a factor in [0, 2) (flattens or
    exaggerates the spectral signature; the per-pixel band mean is kept; a no-op for one band);
  - contrast: scale each value's deviation from the image mean (all bands, all pixels) by a factor in [0.5, 1.5)
    (the image mean is kept).
  Color may leave [-1, 1] (as in the paper); D sees values a real sensor at another gain could produce.
- `translation`: shift by up to 1/8 of the image size in x and y, filling with 0 (the middle of the range);
  values stay within [min(x, 0), max(x, 0)].
- `cutout`: set a square of half the image size, centred anywhere (it may extend past the border), to 0; same range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def _uniform(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) * (high - low) + low


def brightness(x: torch.Tensor) -> torch.Tensor:
    return x + _uniform(x, -0.5, 0.5)


def saturation(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * _uniform(x, 0.0, 2.0) + mean


def contrast(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(x, 0.5, 1.5) + mean


def color(x: torch.Tensor) -> torch.Tensor:
    return contrast(saturation(brightness(x)))


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    max_y, max_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    shift_y = torch.randint(-max_y, max_y + 1, (n, 1, 1), device=x.device)
    shift_x = torch.randint(-max_x, max_x + 1, (n, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device)[None, :, None] - shift_y + max_y  # output (i, j) <- input (i-dy, j-dx)
    cols = torch.arange(w, device=x.device)[None, None, :] - shift_x + max_x
    padded = F.pad(x, [max_x, max_x, max_y, max_y]).permute(0, 2, 3, 1)  # n, h', w', c
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h, (n, 1, 1), device=x.device) - size_y // 2
    left = torch.randint(0, w, (n, 1, 1), device=x.device) - size_x // 2
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_OPERATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "color": color,
    "translation": translation,
    "cutout": cutout,
}


class DiffAugment:
    """`DiffAugment(["color", "translation", "cutout"])(images)`; an empty policy list is the identity."""

    def __init__(self, policies: Sequence[str] = ()) -> None:
        unknown = [p for p in policies if p not in _OPERATIONS]
        if unknown:
            raise ValueError(f"unknown DiffAugment policies {unknown}; known: {list(POLICIES)}")
        self.policies = [p for p in POLICIES if p in policies]  # the paper's order, whatever the config's

    def __bool__(self) -> bool:
        return bool(self.policies)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for policy in self.policies:
            x = _OPERATIONS[policy](x)
        return x
