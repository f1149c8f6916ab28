"""The progressive-growing recipe (Karras et al. 2018): WGAN-GP with the drift term, on networks that grow.

- The schedule (`GrowthSchedule`) is a function of real images shown alone: 4x4 trains for `stable_kimg`, then
  every next level fades in over `fade_kimg` (alpha linear in images) and trains at full strength for
  `stable_kimg`. Images shown live in the checkpoint, so a resume mid-fade continues at the same level and alpha.
- During a fade the real images are blended like G's output: alpha x the images at the new resolution + (1 - alpha)
  x the images at the previous resolution upsampled; D reads both at the level's resolution (reals are average-pooled
  down from the tiles).
- Adam's moments (and step counts) are reset whenever a new level starts.
- D's loss: WGAN-GP (lambda 10, the penalty's interpolation points drawn on their own, never from alpha) plus the
  drift term epsilon E[D(real)^2] (0.001). lr 1e-3, betas (0, 0.99).
- Batch size per level (`batch_sizes`, by resolution), taken from the loader's batches through a small buffer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from atlas_gan.config import PGGANOptions, TrainConfig
from atlas_gan.losses import gradient_penalty
from atlas_gan.models.base import GANFamily, ModelSpec
from atlas_gan.recipes.adversarial import AdversarialRecipe
from atlas_gan.recipes.base import Batch, Progress, Update, frozen
from atlas_gan.runtime.distributed import DistributedContext

log = logging.getLogger("atlas_gan.train")


@dataclass(frozen=True)
class GrowthSchedule:
    """Level (0: 4x4) and fade-in alpha as functions of real images shown."""

    levels: int  # the final level (image_size = 4 x 2^levels)
    stable_images: int
    fade_images: int

    def at(self, images: int) -> tuple[int, float]:
        shown = images - self.stable_images
        if shown < 0:
            return 0, 1.0
        phase = self.fade_images + self.stable_images
        level = 1 + shown // phase
        if level > self.levels:
            return self.levels, 1.0
        within = shown - (level - 1) * phase
        return level, min(1.0, within / self.fade_images)

    def phases(self) -> list[tuple[int, int]]:
        """(level, images) of every phase up to the final level at full strength."""
        return [(0, self.stable_images)] + [
            (level, images) for level in range(1, self.levels + 1) for images in (self.fade_images, self.stable_images)
        ]


def level_batch_sizes(options: PGGANOptions, levels: int, default: int) -> list[int]:
    """Per-rank batch size of every level: `batch_sizes[resolution]`, else the next lower resolution's, else
    `default` (train.batch_size)."""
    given = options.batch_sizes or {}
    sizes, current = [], default
    for level in range(levels + 1):
        current = given.get(4 * 2**level, current)
        sizes.append(current)
    return sizes


def reals_at(images: torch.Tensor, level: int, alpha: float) -> torch.Tensor:
    """Tiles average-pooled to the level's resolution, blended during a fade with the previous resolution's
    (upsampled, nearest) as G's output is."""
    resolution = 4 * 2**level
    factor = images.shape[-1] // resolution
    pooled = F.avg_pool2d(images, factor) if factor > 1 else images
    if level == 0 or alpha >= 1.0:
        return pooled
    lower = F.interpolate(F.avg_pool2d(pooled, 2), scale_factor=2.0, mode="nearest")
    return torch.lerp(lower, pooled, alpha)


class PGGANRecipe(AdversarialRecipe):
    name = "pggan"

    def __init__(
        self,
        family: GANFamily,
        spec: ModelSpec,
        cfg: TrainConfig,
        ctx: DistributedContext,
        autocast_dtype: torch.dtype | None,
        memory_format: torch.memory_format | None,
    ) -> None:
        super().__init__(family, spec, cfg, ctx, autocast_dtype, memory_format)
        options = cfg.model
        assert isinstance(options, PGGANOptions)
        if options.r1_gamma:
            raise ValueError("train.model.r1_gamma: pggan regularizes D with WGAN-GP's penalty and the drift term")
        self.schedule = GrowthSchedule(spec.levels, round(options.stable_kimg * 1000), round(options.fade_kimg * 1000))
        self.batch_sizes = level_batch_sizes(options, spec.levels, cfg.batch_size)
        self.drift_weight = options.drift_weight
        self.active_level: int | None = None  # the level the optimizers' moments belong to
        self._buffer: list[torch.Tensor] = []  # loader images not used yet (the level's batch size differs)
        self._warn_if_short(cfg.steps)

    def _warn_if_short(self, steps: int) -> None:
        images_per_step = [size * self.ctx.world_size * self.n_critic for size in self.batch_sizes]
        needed = sum(math.ceil(images / images_per_step[level]) for level, images in self.schedule.phases()[:-1])
        if steps <= needed and self.ctx.is_main:
            log.warning(
                "pggan's final level (%d px) is fully faded in after about %d steps; train.steps is %d: the "
                "generator will draw coarser (or half-faded) images (lower train.model.stable_kimg / fade_kimg or "
                "raise train.steps)",
                self.spec.image_size,
                needed,
                steps,
            )

    # ---- state ------------------------------------------------------------------------------------------------------

    @property
    def images_per_step(self) -> int:
        return self.batch_sizes[self.active_level or 0]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "active_level": self.active_level}

    def rank_state_dict(self) -> dict[str, Any]:
        """The parent's, with the loader tiles drawn but not used yet: a resumed run trains on them first, as an
        uninterrupted one would."""
        return {**(super().rank_state_dict() or {}), "unused_tiles": [part.cpu() for part in self._buffer]}

    def load_state_dict(self, shared: dict[str, Any], own: dict[str, Any] | None) -> None:
        super().load_state_dict(shared, own)
        self.active_level = shared.get("active_level")
        self._buffer = list((own or {}).get("unused_tiles", []))

    def log_values(self) -> dict[str, float | None]:
        level, alpha = self.G.growth()
        return {**super().log_values(), "level": level, "resolution": 4 * 2**level, "alpha": alpha}

    # ---- one step ---------------------------------------------------------------------------------------------------

    def grow(self, images_seen: int) -> tuple[int, float]:
        """Set both networks' level and alpha for `images_seen`; a new level resets every optimizer's moments."""
        level, alpha = self.schedule.at(images_seen)
        if level != self.active_level:
            if self.active_level is not None:
                for optimizer in self.optimizers.values():
                    optimizer.state.clear()
            self.active_level = level
        self.G.set_growth(level, alpha)
        self.D.set_growth(level, alpha)
        return level, alpha

    def _take(self, batches: Iterator[Batch], count: int) -> torch.Tensor:
        """`count` real tiles on the device (a level's batch may span loader batches)."""
        while sum(len(part) for part in self._buffer) < count:
            self._buffer.append(next(batches)["image"])
        images = torch.cat(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        rest = images[count:]
        self._buffer = [rest] if len(rest) else []
        return self.on_device(images[:count])

    def step(self, batches: Iterator[Batch], update: Update, progress: Progress) -> dict[str, torch.Tensor] | None:
        level, alpha = self.grow(progress.images_seen)
        batch, world = self.batch_sizes[level], self.ctx.world_size
        loss_d_total = torch.zeros((), device=self.ctx.device)
        for critic_step in range(self.n_critic):
            real = reals_at(self._take(batches, batch), level, alpha)
            with torch.set_grad_enabled(critic_step == self.n_critic - 1), self.autocast():
                latents = self._latents(batch)
                fake = self.G.forward_level(latents)
            detached = fake.detach()
            with self.autocast():
                real_scores = self.discriminate(real, None)
                loss_d = self.regularized_d_loss(real_scores, self.discriminate(detached, None))
            loss_d = loss_d + self.drift_weight * real_scores.float().square().mean()
            critic = partial(self.discriminate, labels=None)
            loss_d = loss_d + self.defaults.gp_weight * gradient_penalty(critic, real, detached)
            if not update(loss_d, self.D, self.optimizers["D"]):
                return None
            loss_d_total += loss_d.detach().float()
            progress.images_seen += batch * world
        with frozen(self.D):
            with self.autocast():
                loss_g = self.regularized_g_loss(fake, latents, None)
            if not update(loss_g, self.G, self.optimizers["G"]):
                return None
        return {"loss_d": loss_d_total / self.n_critic, "loss_g": loss_g.detach()}
