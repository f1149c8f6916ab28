"""Exponential moving average of generator weights, with the decay set by a half-life in images."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """`rampup` (as in StyleGAN2-ADA): the half-life is at most `rampup` x images seen so far, so early in a run
    the average follows the generator instead of staying near its random initialization."""

    def __init__(self, model: nn.Module, half_life_kimg: float, rampup: float | None = None) -> None:
        self.half_life_images = half_life_kimg * 1000.0
        self.rampup = rampup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._stateful = [  # modules with extra state (a growing network's level): found once, not every step
            name
            for name, module in self.model.named_modules()
            if type(module).get_extra_state is not nn.Module.get_extra_state
        ]

    def decay(self, images_per_step: int, images_seen: int) -> float:
        """Weight of the old average after one step of `images_per_step` images (0 when the EMA is off)."""
        half_life = self.half_life_images
        if self.rampup:
            half_life = min(half_life, images_seen * self.rampup)
        if half_life <= 0:
            return 0.0
        return 0.5 ** (images_per_step / half_life)

    @torch.no_grad()
    def update(self, model: nn.Module, images_per_step: int, images_seen: int) -> None:
        beta = self.decay(images_per_step, images_seen)
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - beta)
        self.copy_buffers(model)

    @torch.no_grad()
    def copy_buffers(self, model: nn.Module) -> None:
        """Batch-norm statistics and modules' extra state (a growing network's level) are not averaged: they
        follow the live model."""
        ema_buffers, buffers = list(self.model.buffers()), list(model.buffers())
        if len(ema_buffers) != len(buffers):
            raise ValueError(f"EMA copy has {len(ema_buffers)} buffers, the model {len(buffers)}")
        if buffers:
            torch._foreach_copy_(ema_buffers, buffers)  # one launch for all, not one per buffer
        for name in self._stateful:
            self.model.get_submodule(name).set_extra_state(model.get_submodule(name).get_extra_state())
