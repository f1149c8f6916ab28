"""What every GAN family provides: its networks for a given image spec, its loss and its optimizer settings."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from math import log2
from typing import Literal

import torch
from torch import nn

from atlas_gan.config import IMAGE_SIZES


@dataclass(frozen=True)
class ModelSpec:
    """Shape of the problem: any band count, square images of 32-512 px (each family says which it takes)."""

    bands: int
    image_size: int
    latent_dim: int = 128
    g_width: int = 64
    d_width: int = 64
    num_classes: int = 0  # > 0: a conditional GAN over that many labels
    attention_resolution: int = 0  # > 0: a self-attention block where feature maps have this size (SAGAN)
    input_bands: int = 0  # > 0: an image-to-image generator reading this many bands (0: latent vectors in)
    norm: str = "batch"  # image-to-image networks: batch or instance normalization
    residual_blocks: int = 0  # CycleGAN's ResNet generator: blocks (0: 9 at 256+ px, else 6); ESRGAN's RRDBs
    scale: int = 1  # super-resolution: G reads image_size / scale px and draws image_size px
    growth: int = 0  # ESRGAN's dense-block growth channels
    discriminator: str = "vgg"  # ESRGAN's D: "vgg" (the paper's) or "unet" (Real-ESRGAN's); checkpoints before it: vgg
    upsampler: str = "shuffle"  # ESRGAN's G: "shuffle" (pixel shuffle) or "nearest" (the paper's); before it: shuffle

    def __post_init__(self) -> None:
        if self.image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {', '.join(map(str, IMAGE_SIZES))}; got {self.image_size}")
        if self.bands < 1:
            raise ValueError(f"bands must be at least 1; got {self.bands}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be 0 (unconditional) or more; got {self.num_classes}")
        if self.scale not in (1, 2, 4) or (self.scale > 1 and not self.input_bands):
            raise ValueError(f"scale must be 1, 2 or 4 (2 and 4 only for an image-to-image network); got {self.scale}")
        sizes = [2**i for i in range(3, self.levels + 2)]  # 8 .. image_size / 2: inside both networks
        if self.attention_resolution and self.attention_resolution not in sizes:
            raise ValueError(f"attention_resolution must be one of {sizes} for {self.image_size} px images")

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def input_size(self) -> int:
        """The side of what G reads: image_size for a translation, image_size / scale for super-resolution."""
        return self.image_size // self.scale

    @property
    def levels(self) -> int:
        """Resolution doublings from the 4x4 base to image_size."""
        return int(log2(self.image_size)) - 2


@dataclass(frozen=True)
class AdversarialDefaults:
    """A family's settings for the adversarial recipe, from its paper. `train.model` options override n_critic and
    the R1, LeCam and mode-seeking weights (and, per family, attention and path length); the rest defines the family."""

    loss: str  # a key of atlas_gan.losses.LOSSES (esrgan: "relativistic_average", computed by its recipe)
    lr_g: float
    lr_d: float
    betas: tuple[float, float]
    optimizer: Literal["adam", "rmsprop"] = "adam"  # rmsprop ignores betas
    n_critic: int = 1
    gp_weight: float = 0.0  # weight of the WGAN-GP gradient penalty; 0 = none
    weight_clip: float = 0.0  # > 0: clamp every discriminator parameter to [-clip, clip] after each update (WGAN)
    # R1 penalty (gamma / 2) E||grad D(real)||^2, lazily every r1_interval D steps. Its default gamma follows
    # StyleGAN2-ADA's heuristic: r1_coefficient x image_size^2 / global batch; 0 = no R1.
    r1_coefficient: float = 0.0
    r1_interval: int = 16
    pl_weight: float = 0.0  # StyleGAN2's path-length regularization weight (every pl_interval G steps); 0 = none
    pl_interval: int = 4
    lecam_weight: float = 0.0  # LeCam regularization of D (atlas_gan/recipes/lecam.py); 0 = none
    mode_seeking_weight: float = 0.0  # mode-seeking term of G (atlas_gan/recipes/mode_seeking.py); 0 = none
    # DiffAugment policies picked for a small dataset when train.diffaugment is null (Zhao et al. 2020's few-shot
    # policy unless the family's paper says otherwise)
    small_data_augmentation: tuple[str, ...] = ("color", "translation", "cutout")

    def default_r1_gamma(self, image_size: int, global_batch: int) -> float:
        return self.r1_coefficient * image_size**2 / global_batch


@dataclass(frozen=True)
class GANFamily:
    """A model family: its networks for a given spec, the recipe that trains them and that recipe's defaults."""

    name: str
    generator: Callable[[ModelSpec], nn.Module]
    discriminator: Callable[[ModelSpec], nn.Module]
    training: AdversarialDefaults
    recipe: str = "adversarial"  # a key of atlas_gan.recipes.RECIPES
    attention: bool = False  # the networks have a self-attention block (spec.attention_resolution)
    description: str = ""

    def default_attention_resolution(self, image_size: int) -> int:
        """SAGAN puts attention on the 32x32 features at 64+ px (16x16 for 32 px images)."""
        return min(32, image_size // 2) if self.attention else 0


def check_labels(labels: torch.Tensor | None, spec: ModelSpec, count: int) -> torch.Tensor | None:
    """Labels as a network needs them: (count,) int64 in range for a conditional network, None otherwise."""
    if not spec.conditional:
        if labels is not None:
            raise ValueError("this network is unconditional: it takes no labels")
        return None
    if labels is None:
        raise ValueError(f"this network is conditional on {spec.num_classes} labels: pass one label per sample")
    if torch.jit.is_tracing() or torch.compiler.is_exporting():
        return labels.long()  # a graph cannot raise; branching on sizes or values would freeze or break the capture
    if labels.shape != (count,):
        raise ValueError(f"expected {count} labels, one per sample; got shape {tuple(labels.shape)}")
    labels = labels.long()
    if count and (int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes):
        raise ValueError(f"label indexes must lie in [0, {spec.num_classes}); got {labels.tolist()}")
    return labels


def init_dcgan_weights(module: nn.Module) -> None:
    """Radford et al. 2015: conv weights ~ N(0, 0.02); batch-norm scale ~ N(1, 0.02), shift 0.

    Layers under spectral norm are not reached (their `weight` is computed from the parametrization) and keep
    PyTorch's default init; spectral norm rescales them to unit spectral norm whatever their init scale."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(layer.weight, 0.0, 0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d) and layer.affine:  # conditional BN keeps its own affine
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)


def seeded_latents(count: int, latent_dim: int, seed: int) -> torch.Tensor:
    """`count` standard-normal latents from a CPU generator seeded with `seed`: the same on every machine."""
    return torch.randn(count, latent_dim, generator=torch.Generator(device="cpu").manual_seed(seed))


MAX_TRUNCATION_PSI = 2.0


def check_truncation(generator: nn.Module, psi: float) -> None:
    """psi must lie in [0, the generator's maximum (MAX_TRUNCATION_PSI unless it says less)], and differ from 1
    only for generators that truncate (a `truncation_psi` attribute: stylegan2's style space, biggan's z)."""
    highest = float(getattr(generator, "max_truncation_psi", MAX_TRUNCATION_PSI))
    if not math.isfinite(psi) or not 0.0 <= psi <= highest:
        raise ValueError(f"truncation psi must lie in [0, {highest:g}] for {type(generator).__name__}; got {psi}")
    if psi != 1.0 and not hasattr(generator, "truncation_psi"):
        raise ValueError(
            f"truncation_psi {psi}: {type(generator).__name__} has nothing to truncate (stylegan2 and biggan have)"
        )


@contextlib.contextmanager
def truncation(generator: nn.Module, psi: float) -> Iterator[None]:
    """Sample with the truncation trick for the duration of the block (1 = off, 0 = the most typical image):
    stylegan2 pulls w toward the mean w by `psi`, biggan maps z onto a truncated normal. Others take only 1."""
    check_truncation(generator, psi)
    if psi == 1.0:
        yield
        return
    saved = generator.truncation_psi
    generator.truncation_psi = psi
    try:
        yield
    finally:
        generator.truncation_psi = saved


@torch.no_grad()
def generate_batched(
    generator: nn.Module,
    inputs: tuple[torch.Tensor | None, ...],
    batch_size: int,
    truncation_psi: float = 1.0,
) -> list[torch.Tensor]:
    """The generator's images for `inputs` (its positional arguments, split along the batch; None stays None),
    `batch_size` at a time."""
    count = len(inputs[0])
    with truncation(generator, truncation_psi):
        return [
            generator(*(None if x is None else x[start : start + batch_size] for x in inputs))
            for start in range(0, count, batch_size)
        ]
