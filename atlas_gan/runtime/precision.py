"""Numeric precision settings (`train.precision`, `evaluate.precision`) resolved for a device."""

from __future__ import annotations

import torch


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """`bf16`, `fp32` or `auto` (bf16 on GPU, fp32 elsewhere) -> the autocast dtype; None means fp32."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if use_bf16 else None
