"""Training recipes: the maths of each kind of GAN (losses, update order, augmentation, regularizers).

`build_recipe` picks the recipe of the configured family (`GANFamily.recipe`); the loop in `atlas_gan/train/`
runs any of them: `adversarial` (latent generators, dcgan ... stylegan2), `biggan`, `pggan`, `fastgan`, and the
image-to-image `pix2pix` and `cyclegan`, whose generators read bands chosen by `band_roles` (`roles.py`), and
`superres` (ESRGAN), whose generator reads every band at a coarser resolution. A new recipe subclasses
`Recipe` (`base.py`) and is added to `RECIPES`.
"""

from __future__ import annotations

import torch

from atlas_gan.config import CycleGANOptions, SuperResOptions, TrainConfig
from atlas_gan.labels import LabelVocabulary
from atlas_gan.models import get_family
from atlas_gan.models.base import ModelSpec
from atlas_gan.recipes.adversarial import AdversarialRecipe, attention_resolution
from atlas_gan.recipes.base import Batch, Progress, Recipe, Update
from atlas_gan.recipes.biggan import BigGANRecipe
from atlas_gan.recipes.cyclegan import CycleGANRecipe, domain_classes
from atlas_gan.recipes.fastgan import FastGANRecipe
from atlas_gan.recipes.pggan import PGGANRecipe
from atlas_gan.recipes.pix2pix import Pix2PixRecipe
from atlas_gan.recipes.roles import BandRoles, band_roles
from atlas_gan.recipes.superres import SuperResRecipe
from atlas_gan.runtime.distributed import DistributedContext

RECIPES: dict[str, type[Recipe]] = {
    recipe.name: recipe
    for recipe in (
        AdversarialRecipe,
        BigGANRecipe,
        PGGANRecipe,
        FastGANRecipe,
        Pix2PixRecipe,
        CycleGANRecipe,
        SuperResRecipe,
    )
}


def model_spec(cfg: TrainConfig, roles: BandRoles, image_size: int, num_classes: int) -> ModelSpec:
    """The networks' shape for this config and dataset (`roles`: the bands G reads and draws)."""
    options = cfg.model
    shape = (len(roles.outputs), image_size, cfg.latent_dim, cfg.g_width, cfg.d_width)
    if isinstance(options, SuperResOptions):
        return ModelSpec(
            *shape,
            input_bands=len(roles.inputs or roles.outputs),
            residual_blocks=options.blocks,
            scale=options.scale,
            growth=options.growth,
            discriminator=options.discriminator,
            upsampler=options.upsampler,
        )
    if roles.inputs is not None:  # translations are not conditioned on labels (CycleGAN's only pick its domains)
        return ModelSpec(
            *shape,
            input_bands=len(roles.inputs),
            norm=getattr(options, "norm", "batch"),
            residual_blocks=getattr(options, "residual_blocks", None) or 0,
        )
    family = get_family(options.family)
    return ModelSpec(
        *shape, num_classes=num_classes, attention_resolution=attention_resolution(family, options, image_size)
    )


def build_recipe(
    cfg: TrainConfig,
    spec: ModelSpec,
    ctx: DistributedContext,
    autocast_dtype: torch.dtype | None,
    memory_format: torch.memory_format | None,
    roles: BandRoles,
    vocabulary: LabelVocabulary | None = None,
) -> Recipe:
    """The configured family's recipe with freshly initialized networks (seed the global RNG first); `vocabulary`:
    the labels of `train.condition`, which CycleGAN's domains are made of."""
    family = get_family(cfg.model.family)
    recipe = RECIPES[family.recipe]
    if issubclass(recipe, Pix2PixRecipe | SuperResRecipe):
        return recipe(family, spec, cfg, ctx, autocast_dtype, memory_format, roles)
    if issubclass(recipe, CycleGANRecipe):
        assert isinstance(cfg.model, CycleGANOptions)
        domains = domain_classes(cfg.model, vocabulary)
        return recipe(family, spec, cfg, ctx, autocast_dtype, memory_format, domains)
    return recipe(family, spec, cfg, ctx, autocast_dtype, memory_format)


__all__ = [
    "RECIPES",
    "BandRoles",
    "Batch",
    "Progress",
    "Recipe",
    "Update",
    "band_roles",
    "build_recipe",
    "model_spec",
]
