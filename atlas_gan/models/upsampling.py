"""Nearest-neighbour 2x upsampling followed by a 3x3 convolution, computed as one stride-2 transposed convolution.

After 2x repetition, the 3x3 window around output pixel (2i + a, 2j + b) covers only a 2x2 window of the input, and
each of its four input pixels is weighted by a sum of the kernel's taps (for rows: parity 0 sees input rows i - 1,
i with weights w0, w1 + w2; parity 1 sees rows i, i + 1 with w0 + w1, w2). That is exactly a transposed
convolution with stride 2, padding 1 and the 4x4 kernel whose rows and columns are those tap sums. Same output to
float rounding, with zero padding at every border; 16 instead of 36 multiply-adds per input pixel and channel pair,
and no 4x larger input map is ever materialized. `bench/upsampling.py` measures it.

The families whose generators upsample by repetition (FastGAN, BigGAN, PGGAN) keep their parameters as before: only
the arithmetic changes, so earlier checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _four_taps(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """The 3 taps along `dim` -> the 4 taps of the transposed kernel (tap k lands at output offset k - 1 from 2i)."""
    w0, w1, w2 = weight.unbind(dim)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)


def transposed_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A (out, in, 3, 3) convolution kernel -> the (in, out, 4, 4) stride-2 transposed kernel equal to upsampling by
    2 (nearest) and then convolving with it. Built from the kernel alone (no constant tensor to copy to the device
    on every call, which would make the host wait for the GPU)."""
    if not torch.jit.is_tracing() and (weight.dim() != 4 or weight.shape[-2:] != (3, 3)):  # traced: shapes fixed
        raise ValueError(f"expected a (out, in, 3, 3) kernel; got shape {tuple(weight.shape)}")
    return _four_taps(_four_taps(weight, 2), 3).transpose(0, 1)


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`, computed directly."""
    return F.conv_transpose2d(x, transposed_kernel(weight), bias, stride=2, padding=1)
