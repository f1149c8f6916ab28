"""Training recipes: the maths of each kind of GAN (losses, update order, augmentation, regularizers).

`build_recipe` picks the recipe of the configured family (`GANFamily.recipe`); the loop in `atlas_gan/train/`
runs any of them. A new recipe subclasses `Recipe` (`base.py`) and is added to `RECIPES`.
"""

from __future__ import annotations

import torch

from atlas_gan.config import TrainConfig
from atlas_gan.models import get_family
from atlas_gan.models.base import ModelSpec
from atlas_gan.recipes.adversarial import AdversarialRecipe, attention_resolution
from atlas_gan.recipes.base import Batch, Progress, Recipe, Update
from atlas_gan.recipes.fastgan import FastGANRecipe
from atlas_gan.runtime.distributed import DistributedContext

RECIPES: dict[str, type[AdversarialRecipe]] = {recipe.name: recipe for recipe in (AdversarialRecipe, FastGANRecipe)}


def model_spec(cfg: TrainConfig, bands: int, image_size: int, num_classes: int) -> ModelSpec:
    """The networks' shape for this config and dataset."""
    family = get_family(cfg.model.family)
    return ModelSpec(
        bands,
        image_size,
        cfg.latent_dim,
        cfg.g_width,
        cfg.d_width,
        num_classes=num_classes,
        attention_resolution=attention_resolution(family, cfg.model, image_size),
    )


def build_recipe(
    cfg: TrainConfig,
    spec: ModelSpec,
    ctx: DistributedContext,
    autocast_dtype: torch.dtype | None,
    memory_format: torch.memory_format | None,
) -> Recipe:
    """The configured family's recipe with freshly initialized networks (seed the global RNG first)."""
    family = get_family(cfg.model.family)
    return RECIPES[family.recipe](family, spec, cfg, ctx, autocast_dtype, memory_format)


__all__ = ["RECIPES", "Batch", "Progress", "Recipe", "Update", "build_recipe", "model_spec"]
