"""GAN families by name. A family is registered once and the trainer never needs to know which it runs.

Later families (StyleGAN2, SAGAN, conditional, BigGAN, pix2pix, CycleGAN) add a module that calls `register`.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from atlas_gan.models.base import GANFamily, ModelSpec
from atlas_gan.models.dcgan import DCGANDiscriminator, DCGANGenerator

_FAMILIES: dict[str, GANFamily] = {}


def register(family: GANFamily) -> GANFamily:
    if family.name in _FAMILIES:
        raise ValueError(f"GAN family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> GANFamily:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(_FAMILIES)}") from None


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def build(name: str, spec: ModelSpec) -> tuple[GANFamily, nn.Module, nn.Module]:
    family = get_family(name)
    return family, family.generator(spec), family.discriminator(spec)


register(
    GANFamily(
        name="dcgan",
        generator=DCGANGenerator,
        discriminator=DCGANDiscriminator,
        loss="nonsaturating",
        lr_g=2e-4,
        lr_d=2e-4,
        betas=(0.5, 0.999),
        description="Radford et al. 2015: batch norm, non-saturating BCE loss, Adam(2e-4, 0.5)",
    )
)
register(
    GANFamily(
        name="wgan-gp",
        generator=DCGANGenerator,
        discriminator=lambda spec: DCGANDiscriminator(spec, batch_norm=False),
        loss="wasserstein",
        lr_g=1e-4,
        lr_d=1e-4,
        betas=(0.0, 0.9),
        n_critic=5,
        gradient_penalty=10.0,
        description="Gulrajani et al. 2017: critic without batch norm, gradient penalty 10, 5 critic steps",
    )
)
register(
    GANFamily(
        name="sngan",
        generator=DCGANGenerator,
        discriminator=lambda spec: DCGANDiscriminator(spec, batch_norm=False, wrap=spectral_norm),
        loss="hinge",
        lr_g=2e-4,
        lr_d=2e-4,
        betas=(0.5, 0.999),
        description="Miyato et al. 2018: spectral norm on every discriminator layer, hinge loss",
    )
)

__all__ = ["GANFamily", "ModelSpec", "build", "family_names", "get_family", "register"]
