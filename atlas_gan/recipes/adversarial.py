"""The adversarial recipe: one latent-to-image generator G against one discriminator D. dcgan, wgan, wgan-gp, sngan,
sagan and stylegan2 are its configurations (their networks and paper settings: `atlas_gan/models/families.py`).

One step is `n_critic` D updates, each on a fresh real batch, then one G update. The last D update's fakes keep their
graph and serve the G update too (one G forward per step, as pytorch/examples' DCGAN does); D only ever sees them
detached. Conditional runs give the fakes the real batch's labels, so G is asked for each label as often as the data
holds it. Around that:
- augmentation of everything D sees: DiffAugment or ADA (ADA counts the signs of D's outputs on reals and adjusts
  its p once per step, over all ranks);
- D's regularizers: lazy R1 every `r1_interval` steps on the real images before augmentation, the WGAN-GP penalty,
  LeCam's pull of D's outputs toward running anchors (`lecam.py`), weight clipping after each D update;
- G's regularizers: StyleGAN2's path-length penalty every `pl_interval` steps, the mode-seeking term
  (`mode_seeking.py`: images of distant latents kept apart);
- optimizers rescaled for lazy regularization (StyleGAN2's rule), RMSprop for WGAN.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
from torch import nn

from atlas_gan.config import ModelOptions, TrainConfig
from atlas_gan.losses import discriminator_loss, generator_loss, gradient_penalty, r1_penalty
from atlas_gan.models.base import GANFamily, ModelSpec
from atlas_gan.recipes.ada import AdaptiveAugment
from atlas_gan.recipes.base import Batch, Progress, Recipe, Update, frozen
from atlas_gan.recipes.diffaugment import DiffAugment
from atlas_gan.recipes.lecam import LeCamRegularizer
from atlas_gan.recipes.mode_seeking import mode_seeking_penalty
from atlas_gan.recipes.path_length import PathLengthRegularizer
from atlas_gan.runtime.distributed import DistributedContext

CALIBRATION_SEED, CALIBRATION_BATCHES, CALIBRATION_BATCH = 12345, 8, 64


def make_augment(cfg: TrainConfig) -> DiffAugment | AdaptiveAugment:
    if cfg.ada is None:
        return DiffAugment(cfg.diffaugment or ())  # null (left to the data) is resolved by the trainer first
    ada = cfg.ada
    return AdaptiveAugment(ada.groups, ada.target, ada.interval, ada.speed_kimg, ada.initial_p)


def attention_resolution(family: GANFamily, options: ModelOptions, image_size: int) -> int:
    """Where the self-attention block goes (0: none): the option, else the family's default."""
    chosen = getattr(options, "attention_resolution", None)
    return family.default_attention_resolution(image_size) if chosen is None else chosen


class AdversarialRecipe(Recipe):
    name = "adversarial"
    extra_loss_name = "loss_extra"  # how the log names `discriminate_real`'s extra term

    def __init__(
        self,
        family: GANFamily,
        spec: ModelSpec,
        cfg: TrainConfig,
        ctx: DistributedContext,
        autocast_dtype: torch.dtype | None,
        memory_format: torch.memory_format | None,
    ) -> None:
        """Builds G then D (the caller seeds the global RNG first), the augmentation, regularizers, optimizers."""
        super().__init__(spec, cfg.batch_size, ctx, autocast_dtype, memory_format)
        options, defaults = cfg.model, family.training
        self.family, self.defaults, self.options = family, defaults, options
        generator, discriminator = family.generator(spec), family.discriminator(spec)
        self.n_critic = options.n_critic or defaults.n_critic
        self.augment = make_augment(cfg)
        self.ada = self.augment if isinstance(self.augment, AdaptiveAugment) else None
        if self.ada and defaults.loss == "wasserstein":
            raise ValueError(
                f"train.ada: {family.name}'s critic values have an arbitrary offset, so ADA's overfitting "
                "heuristic E[sign(D(real))] means nothing there; use train.diffaugment"
            )
        self.r1_gamma = (
            options.r1_gamma
            if options.r1_gamma is not None
            else defaults.default_r1_gamma(spec.image_size, cfg.batch_size * ctx.world_size)
        )
        lecam_weight = options.lecam_weight
        self.lecam = LeCamRegularizer(defaults.lecam_weight if lecam_weight is None else lecam_weight)
        mode_seeking = options.mode_seeking_weight
        self.mode_seeking_weight = defaults.mode_seeking_weight if mode_seeking is None else mode_seeking
        pl_weight = getattr(options, "path_length_weight", None)
        pl_weight = defaults.pl_weight if pl_weight is None else pl_weight
        self.path_length = PathLengthRegularizer(pl_weight, defaults.pl_interval)
        lazy_g = defaults.pl_interval if pl_weight else 0
        lazy_d = defaults.r1_interval if self.r1_gamma else 0
        self.adopt_pair(generator, discriminator, defaults, cfg, lazy=(lazy_g, lazy_d))

    # ---- state ------------------------------------------------------------------------------------------------------

    def fixed_inputs(
        self, count: int, seed: int, examples: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, ...]:
        """Seeded latents; a conditional grid shows the classes in equal blocks, in order."""
        latents = torch.randn(count, self.spec.latent_dim, generator=torch.Generator().manual_seed(seed))
        labels = None
        if self.spec.conditional:
            labels = (torch.arange(count) * self.spec.num_classes // count).to(self.ctx.device)
        return latents.to(self.ctx.device), labels

    def state_dict(self) -> dict[str, Any]:
        return {"path_length": self.path_length.state_dict(), "lecam": self.lecam.state_dict()}

    def rank_state_dict(self) -> dict[str, Any] | None:
        """ADA's p and step counter (equal on all ranks) with each rank's own sign accumulators."""
        if self.ada is None:
            return None
        return {"augment": {key: value.cpu() for key, value in self.ada.state_dict().items()}}

    def load_state_dict(self, shared: dict[str, Any], own: dict[str, Any] | None) -> None:
        if self.ada is not None and own and own.get("augment"):
            self.ada.load_state_dict(own["augment"])
        if shared.get("path_length"):
            self.path_length.load_state_dict(shared["path_length"])
        if shared.get("lecam"):
            self.lecam.load_state_dict(shared["lecam"])

    def log_values(self) -> dict[str, float | None]:
        """ADA's p and overfitting heuristic; LeCam's anchor gap (how far apart D holds reals and fakes)."""
        values = {"augment_p": self.ada.p, "augment_rt": self.ada.rt} if self.ada else {}
        if self.lecam.anchors is not None:
            values["lecam_gap"] = float(self.lecam.anchors[0] - self.lecam.anchors[1])
        return values

    @torch.no_grad()
    def calibrate(self, generator: nn.Module) -> None:
        """Batch-norm statistics for the EMA generator's own weights. The EMA averages weights, not statistics:
        the live generator's running statistics (what it copies) belong to other weights, and an EMA generator
        sampled with them draws worse tiles (FID 277 against 263 recalibrated, fastgan on landsat8-parana after
        600 steps). So every batch norm is re-estimated as the plain average over CALIBRATION_BATCHES batches of
        seeded latents (and uniform labels), without touching the training RNG. Only the batch norms run in train
        mode: spectral norm's power iteration stays put, so calibrating twice gives the same generator."""
        norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta = [norm.momentum for norm in norms]
        rng = torch.Generator().manual_seed(CALIBRATION_SEED)
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self.autocast():
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # cumulative average
            generator.eval()
            for norm in norms:
                norm.train()
            for _ in range(CALIBRATION_BATCHES):
                latents = torch.randn(CALIBRATION_BATCH, self.spec.latent_dim, generator=rng).to(self.ctx.device)
                labels = None
                if self.spec.conditional:
                    labels = torch.randint(self.spec.num_classes, (CALIBRATION_BATCH,), generator=rng)
                    labels = labels.to(self.ctx.device)
                generator(latents, labels)
        generator.eval()
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum

    # ---- one step ---------------------------------------------------------------------------------------------------

    def _latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.spec.latent_dim, device=self.ctx.device)

    def _real(self, batches: Iterator[Batch]) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = next(batches)
        labels = batch["label"].to(self.ctx.device) if self.spec.conditional else None
        return self.on_device(batch["image"]), labels

    def augmented(self, images: torch.Tensor) -> torch.Tensor:
        """`images` as D sees them: DiffAugment or ADA (identity without either), in D's memory format."""
        augmented = self.augment(images)
        if self.memory_format and augmented is not images:  # ADA's resampling returns NCHW
            augmented = augmented.contiguous(memory_format=self.memory_format)
        return augmented

    def discriminate(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """D's output on augmented images."""
        return self.D(self.augmented(images), labels)

    def discriminate_real(
        self, real: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """D's output on (augmented) real images, and an extra term for D's loss (None here; FastGAN adds its
        reconstruction loss)."""
        return self.discriminate(real, labels), None

    def regularized_d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """The family's D loss on D's outputs, plus the LeCam penalty where it is on."""
        loss = discriminator_loss(self.defaults.loss, real_logits, fake_logits)
        if self.lecam.enabled:
            loss = loss + self.lecam.penalty(real_logits, fake_logits, self.ctx)
        return loss

    def regularized_g_loss(
        self, fake: torch.Tensor, latents: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor:
        """The family's G loss on D's output for `fake` (drawn from `latents`), plus the mode-seeking term where it
        is on."""
        loss = generator_loss(self.defaults.loss, self.discriminate(fake, labels))
        if self.mode_seeking_weight:
            loss = loss + self.mode_seeking_weight * mode_seeking_penalty(fake, latents)
        return loss

    def _clip_discriminator(self) -> None:
        with torch.no_grad():
            for parameter in self.D.parameters():
                parameter.clamp_(-self.defaults.weight_clip, self.defaults.weight_clip)

    def step(self, batches: Iterator[Batch], update: Update, progress: Progress) -> dict[str, torch.Tensor] | None:
        batch = self.batch_size
        world = self.ctx.world_size
        clip = self._clip_discriminator if self.defaults.weight_clip else None
        totals: dict[str, torch.Tensor] = {}
        for critic_step in range(self.n_critic):
            real, labels = self._real(batches)
            with torch.set_grad_enabled(critic_step == self.n_critic - 1), self.autocast():
                latents = self._latents(batch)
                fake = self.G(latents, labels)
            detached = fake.detach()
            r1_due = self.r1_gamma > 0 and critic_step == 0 and progress.step % self.defaults.r1_interval == 0
            real = real.detach().requires_grad_(r1_due)
            with self.autocast():
                real_logits, extra = self.discriminate_real(real, labels)
                loss_d = self.regularized_d_loss(real_logits, self.discriminate(detached, labels))
            if extra is not None:
                loss_d = loss_d + extra
            if self.ada:
                self.ada.observe(real_logits)
            if r1_due:
                loss_d = loss_d + r1_penalty(real_logits, real) * (self.r1_gamma / 2 * self.defaults.r1_interval)
            if self.defaults.gp_weight:
                critic = partial(self.discriminate, labels=labels)
                loss_d = loss_d + self.defaults.gp_weight * gradient_penalty(critic, real, detached)
            if not update(loss_d, self.D, self.optimizers["D"], after_step=clip):
                return None
            totals["loss_d"] = totals.get("loss_d", 0.0) + loss_d.detach()
            if extra is not None:
                totals[self.extra_loss_name] = totals.get(self.extra_loss_name, 0.0) + extra.detach()
            progress.images_seen += batch * world

        with frozen(self.D):
            with self.autocast():
                loss_g = self.regularized_g_loss(fake, latents, labels)
                if self.path_length.due(progress.step):
                    loss_g = loss_g + self.path_length.penalty(self.G, batch, labels, self.ctx)
            if not update(loss_g, self.G, self.optimizers["G"]):
                return None
        if self.ada:
            self.ada.adjust(batch * world * self.n_critic, self.ctx)
        return {**{key: value / self.n_critic for key, value in totals.items()}, "loss_g": loss_g.detach()}
