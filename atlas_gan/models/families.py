"""The families atlas-gan ships, each with the losses and optimizer settings of its paper.

The first five share the DCGAN layout (`dcgan.py`); what differs is normalization, the loss, the optimizer,
self-attention and how labels condition the networks. Conditioning is enabled by the data (`train.condition`), not
by the family: `concat` families append one-hot labels, `projection` families (the spectrally normalized ones) use
conditional batch norm in G and a projection discriminator. StyleGAN2 (`stylegan2.py`) has its own networks and
adds the lazy R1 and path-length regularizers; BigGAN (`biggan.py`) its residual networks with a hierarchical
latent, trained with gradient accumulation and orthogonal regularization (`atlas_gan/recipes/biggan.py`); PGGAN
(`pggan.py`) networks that grow level by level (`atlas_gan/recipes/pggan.py`). These
train with the adversarial recipe (`atlas_gan/recipes/adversarial.py`); FastGAN adds D's reconstruction task to it.
The translations have their own recipes: pix2pix (`pix2pix.py`, paired bands), CycleGAN (`cyclegan.py`, unpaired
label domains) and ESRGAN (`esrgan.py`, super-resolution). `training` holds each family's settings from its paper.
"""

from __future__ import annotations

from functools import partial

from torch.nn.utils.parametrizations import spectral_norm

from atlas_gan.models.base import AdversarialDefaults, GANFamily
from atlas_gan.models.biggan import BigGANDiscriminator, BigGANGenerator
from atlas_gan.models.cyclegan import ResNetGenerator
from atlas_gan.models.dcgan import DCGANDiscriminator, DCGANGenerator
from atlas_gan.models.esrgan import RRDBGenerator
from atlas_gan.models.esrgan import discriminator as esrgan_discriminator
from atlas_gan.models.fastgan import FastGANDiscriminator, FastGANGenerator
from atlas_gan.models.pggan import PGGANDiscriminator, PGGANGenerator
from atlas_gan.models.pix2pix import PatchDiscriminator, UNetGenerator
from atlas_gan.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

DCGAN = GANFamily(
    name="dcgan",
    generator=DCGANGenerator,
    discriminator=DCGANDiscriminator,
    training=AdversarialDefaults(loss="nonsaturating", lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999)),
    description="Radford et al. 2015: batch norm, non-saturating BCE loss, Adam(2e-4, 0.5)",
)

WGAN = GANFamily(
    name="wgan",
    generator=DCGANGenerator,
    discriminator=partial(DCGANDiscriminator, batch_norm=False),
    training=AdversarialDefaults(
        loss="wasserstein", lr_g=5e-5, lr_d=5e-5, betas=(0.0, 0.0), optimizer="rmsprop", n_critic=5, weight_clip=0.01
    ),
    description="Arjovsky et al. 2017: critic weights clipped to +-0.01, RMSprop(5e-5), 5 critic steps",
)

WGAN_GP = GANFamily(
    name="wgan-gp",
    generator=DCGANGenerator,
    discriminator=partial(DCGANDiscriminator, batch_norm=False),
    training=AdversarialDefaults(
        loss="wasserstein", lr_g=1e-4, lr_d=1e-4, betas=(0.0, 0.9), n_critic=5, gp_weight=10.0
    ),
    description="Gulrajani et al. 2017: critic without batch norm, gradient penalty 10, 5 critic steps",
)

SNGAN = GANFamily(
    name="sngan",
    generator=partial(DCGANGenerator, conditioning="projection"),
    discriminator=partial(DCGANDiscriminator, batch_norm=False, wrap=spectral_norm, conditioning="projection"),
    training=AdversarialDefaults(loss="hinge", lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999)),
    description="Miyato et al. 2018: spectral norm on every discriminator layer, hinge loss",
)

SAGAN = GANFamily(
    name="sagan",
    generator=partial(DCGANGenerator, conditioning="projection", wrap=spectral_norm),
    discriminator=partial(DCGANDiscriminator, batch_norm=False, wrap=spectral_norm, conditioning="projection"),
    training=AdversarialDefaults(loss="hinge", lr_g=1e-4, lr_d=4e-4, betas=(0.0, 0.9)),
    attention=True,
    description="Zhang et al. 2018: self-attention in G and D, spectral norm in both, hinge loss, TTUR (1e-4, 4e-4)",
)

BIGGAN = GANFamily(
    name="biggan",
    generator=BigGANGenerator,
    discriminator=BigGANDiscriminator,
    training=AdversarialDefaults(loss="hinge", lr_g=1e-4, lr_d=4e-4, betas=(0.0, 0.999), n_critic=2),
    recipe="biggan",
    attention=True,
    description=(
        "Brock et al. 2019: residual G with a hierarchical latent and a shared class embedding into its batch "
        "norms, projection D, self-attention, spectral norm and orthogonal init in both, orthogonal "
        "regularization of G, hinge loss, TTUR (1e-4, 4e-4), 2 D steps per G step, gradient accumulation, "
        "truncation at sampling"
    ),
)

PGGAN = GANFamily(
    name="pggan",
    generator=PGGANGenerator,
    discriminator=PGGANDiscriminator,
    training=AdversarialDefaults(
        loss="wasserstein", lr_g=1e-3, lr_d=1e-3, betas=(0.0, 0.99), gp_weight=10.0, small_data_augmentation=()
    ),
    recipe="pggan",
    description=(
        "Karras et al. 2018: G and D grow from 4x4 to the tile size, each level faded in linearly in images shown "
        "(reals blended too), pixel norm in G, minibatch stddev in D, equalized learning rate, WGAN-GP + drift, "
        "Adam(1e-3, 0, 0.99) reset per level; unconditional"
    ),
)

STYLEGAN2 = GANFamily(
    name="stylegan2",
    generator=StyleGAN2Generator,
    discriminator=StyleGAN2Discriminator,
    training=AdversarialDefaults(
        loss="nonsaturating",
        lr_g=0.0025,
        lr_d=0.0025,
        betas=(0.0, 0.99),
        r1_coefficient=0.0002,
        r1_interval=16,
        pl_weight=2.0,
        pl_interval=4,
    ),
    description=(
        "Karras et al. 2020: mapping network, modulated/demodulated convolutions, noise, skip G, residual D with "
        "minibatch stddev, lazy R1 (gamma = 0.0002 size^2 / batch) and path-length regularization, style mixing; "
        "64-256 px"
    ),
)

FASTGAN = GANFamily(
    name="fastgan",
    generator=FastGANGenerator,
    discriminator=FastGANDiscriminator,
    # the authors' DiffAugment policy: D's reconstruction task already regularizes it, and cutout slowed learning
    # in bench/quality.py (FID 255.7 -> 238.4 at 12 kimg on landsat8-parana without it). Lazy R1 with
    # StyleGAN2-ADA's gamma (0.05 at 64 px, batch 16) is not the paper's: bench/quality.py measured it at 173.4 FID
    # mean over seeds 0-2 at 36 kimg against 186.2 without (landsat8-parana 64 px; see the README's Benchmark).
    training=AdversarialDefaults(
        loss="hinge",
        lr_g=2e-4,
        lr_d=2e-4,
        betas=(0.5, 0.999),
        r1_coefficient=0.0002,
        small_data_augmentation=("color", "translation"),
    ),
    recipe="fastgan",
    description=(
        "Liu et al. 2021: skip-layer excitation in G, spectrally normalized D that reconstructs real images from its "
        "own features, hinge loss, lazy R1 (gamma = 0.0002 size^2 / batch); made for hundreds to thousands of "
        "images; 64-512 px"
    ),
)

PIX2PIX = GANFamily(
    name="pix2pix",
    generator=UNetGenerator,
    discriminator=PatchDiscriminator,
    training=AdversarialDefaults(
        loss="nonsaturating", lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999), small_data_augmentation=()
    ),
    recipe="pix2pix",
    description=(
        "Isola et al. 2017: U-Net G with skip connections and dropout, 70x70 PatchGAN D on (input, output) pairs, "
        "BCE + 100 x L1 to the target; paired band-to-band translation, any band counts"
    ),
)

CYCLEGAN = GANFamily(
    name="cyclegan",
    generator=ResNetGenerator,
    discriminator=partial(PatchDiscriminator, paired=False),
    training=AdversarialDefaults(
        loss="least_squares", lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999), small_data_augmentation=()
    ),
    recipe="cyclegan",
    description=(
        "Zhu et al. 2017: two ResNet generators (A -> B, B -> A), two PatchGAN Ds, least-squares GAN loss, cycle "
        "(10) and identity (5) L1 losses, history pools of 50 fakes, linear LR decay; unpaired domains from labels"
    ),
)

ESRGAN = GANFamily(
    name="esrgan",
    generator=RRDBGenerator,
    discriminator=esrgan_discriminator,
    training=AdversarialDefaults(
        loss="relativistic_average", lr_g=1e-4, lr_d=1e-4, betas=(0.9, 0.99), small_data_augmentation=()
    ),
    recipe="superres",
    description=(
        "Wang et al. 2018: residual-in-residual dense block G upscaling x2 or x4 by pixel shuffle, spectrally "
        "normalized VGG-style or (Real-ESRGAN's) U-Net D, L1 pre-training then relativistic-average GAN + L1 + "
        "spectral angle (+ a perceptual loss: VGG19's where its weights are found, or a random-weight network's); "
        "any band count"
    ),
)

BUILT_IN = (DCGAN, WGAN, WGAN_GP, SNGAN, SAGAN, BIGGAN, PGGAN, STYLEGAN2, FASTGAN, PIX2PIX, CYCLEGAN, ESRGAN)
