"""Score a super-resolution generator on the held-out tiles of its dataset's validation split.

Each held-out tile's target bands are the truth; its input is made as in training: those bands degraded
(`train.model.degradation`, seeded by the tile's key, so every evaluation of every generator sees the same
inputs), or, for real pairs (the generator reads a coarser co-registered source's bands), those area-downsampled.
Scores are the translation metrics (`translation.py`: PSNR/SSIM/SAM per band and in physical units, FID/KID on the
band triplet) of the generator and, in the same result, of bicubic upscaling (the baseline it must beat) and, when
given, of the pixel-loss model (the generator as its pixel phase left it, which the GAN phase must improve on in FID
without losing much PSNR).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from atlas_gan.config import AtlasConfig, DegradationConfig, SuperResOptions
from atlas_gan.degrade import degrade, key_seed
from atlas_gan.metrics.translation import TranslationEvaluator


def bicubic(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upscaling by `scale`, clamped to the training range."""
    return F.interpolate(images.float(), scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)


def degradation_of(config: AtlasConfig) -> DegradationConfig:
    """The degradation training used (the config's), or plain area downsampling for a config of another family."""
    options = config.train.model
    return options.degradation if isinstance(options, SuperResOptions) else DegradationConfig()


class SuperResEvaluator(TranslationEvaluator):
    """Held-out tiles degraded once; `evaluate(..., references={"pixel": G_pixel})` adds the pixel-loss model."""

    baseline = "bicubic"

    def __init__(
        self, config: AtlasConfig, meta: dict[str, Any], n: int | None = None, device: torch.device | None = None
    ) -> None:
        self.scale = int(meta["spec"]["scale"])
        self.degradation = degradation_of(config)
        super().__init__(config, meta, n, device)

    def make_pairs(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seed = self.config.train.validation.seed
        seeds = [key_seed(key, seed) for key in self.keys]
        if self.inputs != self.targets:  # real pairs: the coarser source's own pixels, area-downsampled
            return degrade(tiles[:, self.inputs], self.scale, DegradationConfig(), seeds), tiles[:, self.targets]
        return degrade(tiles[:, self.targets], self.scale, self.degradation, seeds), tiles[:, self.targets]

    def _baselines(self) -> dict[str, Any]:
        return {"bicubic": self.score(bicubic(self.pairs[0], self.scale))}

    def extra_fields(self) -> dict[str, Any]:
        degradation = "real pairs" if self.inputs != self.targets else self.degradation.model_dump()
        return {"scale": self.scale, "degradation": degradation}
