"""GAN families by name. A family is registered once and the trainer never needs to know which it runs.

The built-in families live in `families.py`; a new one (BigGAN, ...) adds a module that calls `register`.
"""

from __future__ import annotations

from torch import nn

from atlas_gan.models.base import GANFamily, ModelSpec
from atlas_gan.models.families import BUILT_IN

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


for _family in BUILT_IN:
    register(_family)

__all__ = ["GANFamily", "ModelSpec", "build", "family_names", "get_family", "register"]
