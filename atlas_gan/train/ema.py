"""Exponential moving average of generator weights, with the decay set by a half-life in images."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, half_life_kimg: float) -> None:
        self.half_life_images = half_life_kimg * 1000.0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay(self, images_per_step: int) -> float:
        """Weight of the old average after one step of `images_per_step` images (0 when the EMA is off)."""
        if self.half_life_images <= 0:
            return 0.0
        return 0.5 ** (images_per_step / self.half_life_images)

    @torch.no_grad()
    def update(self, model: nn.Module, images_per_step: int) -> None:
        beta = self.decay(images_per_step)
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - beta)
        self.copy_buffers(model)

    @torch.no_grad()
    def copy_buffers(self, model: nn.Module) -> None:
        """Batch-norm statistics are not averaged: they follow the live model."""
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)
