"""The ESRGAN recipe (Wang et al. 2018): super-resolution of every band of a dataset's tiles by `scale`.

Each training tile's target bands (`train.model.target_bands`, all by default) are the truth. G's low-resolution
input is those bands degraded by `atlas_gan/degrade.py`, seeded by (run seed, step, rank, sample), so a resumed run
degrades exactly as an uninterrupted one; or, for real pairs (`train.model.input_bands`: a coarser co-registered
source's bands, `ingest.paired`), those bands area-downsampled by the scale: a real sensor's view of the same ground,
not a simulated one. Two phases, decided by the step:
- pixel phase (`pixel_steps`): G alone minimizes L1 + `sam_weight` x the spectral angle to the truth, at twice
  `lr_g` (the paper pre-trains at 2e-4, then trains the GAN at 1e-4);
- GAN phase, starting from that G: D (`discriminator`: the paper's VGG-style or Real-ESRGAN's U-Net, both
  spectrally normalized) minimizes the relativistic-average loss;
  G minimizes `pixel_weight` x L1 + `gan_weight` x the relativistic-average loss + `sam_weight` x spectral angle
  + `perceptual_weight` x the perceptual loss (`perceptual_network`: VGG19's features, only with its weights on the
  machine, or a random-weight network's on every band; see `perceptual.py`)
  + `texture_weight` x the random network's texture loss (its features' Gram matrices over small windows)
  + `feature_weight` x the L1 distance between D's activations on G's output and on the truth (feature matching,
  a perceptual loss that needs no pretrained weights).
At the first GAN step the pixel-phase G is kept (`reference_generators()["pixel"]`): it is saved in every later
checkpoint and scored beside the GAN as the model it must improve on. The loop keeps an EMA of G, which is what is
evaluated, unless `interpolation` < 1: then the generator evaluated, registered and served is ESRGAN's network
interpolation of that EMA with the pixel-phase G (recipe state `interpolation`, which `load_generator` applies).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from atlas_gan.config import DegradationConfig, SuperResOptions, TrainConfig
from atlas_gan.degrade import batch_seeds, degrade, key_seed
from atlas_gan.losses import feature_matching_loss, relativistic_average_losses, spectral_angle_loss
from atlas_gan.models.base import GANFamily, ModelSpec
from atlas_gan.perceptual import PerceptualLoss, RandomPerceptualLoss, resolve_vgg_weights
from atlas_gan.preview import band_triplets
from atlas_gan.recipes.base import Batch, Progress, Recipe, Update, frozen
from atlas_gan.recipes.roles import BandRoles
from atlas_gan.runtime.distributed import DistributedContext
from atlas_gan.runtime.generator import INTERPOLATION, REFERENCE_GENERATORS, interpolate_generators
from atlas_gan.runtime.signature import IMAGE

PIXEL_LR_FACTOR = 2.0  # pixel phase: 2 x lr_g


class SuperResRecipe(Recipe):
    name = "superres"
    signature = IMAGE

    def __init__(
        self,
        family: GANFamily,
        spec: ModelSpec,
        cfg: TrainConfig,
        ctx: DistributedContext,
        autocast_dtype: torch.dtype | None,
        memory_format: torch.memory_format | None,
        roles: BandRoles,
    ) -> None:
        super().__init__(spec, cfg.batch_size, ctx, autocast_dtype, memory_format)
        options = cfg.model
        assert isinstance(options, SuperResOptions)
        self.options, self.defaults, self.seed = options, family.training, cfg.seed
        self.adopt_pair(family.generator(spec), family.discriminator(spec), self.defaults, cfg)
        self.lr_g = cfg.lr_g or self.defaults.lr_g
        self.perceptual: PerceptualLoss | RandomPerceptualLoss | None = None
        features_wanted = options.perceptual_weight > 0 or options.texture_weight > 0  # texture: random only
        if features_wanted and options.perceptual_network == "random":
            self.perceptual = RandomPerceptualLoss(len(roles.outputs)).to(ctx.device)
        elif options.perceptual_weight > 0:
            positions = band_triplets(roles.output_names, cfg.rgb_bands)[0][1]
            weights = resolve_vgg_weights(options.vgg_weights)
            self.perceptual = PerceptualLoss(weights, positions).to(ctx.device)
        self.pixel_state: dict[str, torch.Tensor] | None = None  # G at the end of the pixel phase
        assert roles.inputs is not None
        self.inputs = torch.tensor(roles.inputs, device=ctx.device)
        self.targets = torch.tensor(roles.outputs, device=ctx.device)
        self.real_pairs = options.input_bands is not None
        self._phase = "pixel" if options.pixel_steps > 0 else "gan"

    # ---- inputs and state -------------------------------------------------------------------------------------------

    def low_resolution(self, tiles: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """Dataset tiles (every band) -> G's inputs: the input bands of real pairs area-downsampled, else the target
        bands by the configured degradation."""
        if self.real_pairs:
            return degrade(tiles.index_select(1, self.inputs), self.spec.scale, DegradationConfig(), seeds)
        return degrade(tiles.index_select(1, self.targets), self.spec.scale, self.options.degradation, seeds)

    def fixed_inputs(self, count: int, seed: int, examples: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The first `count` held-out tiles (`examples`), degraded with seeds of their position."""
        if examples is None or len(examples) == 0:
            raise ValueError("esrgan needs example tiles for its sample grids; the dataset gave none")
        chosen = examples[:count].to(self.ctx.device)
        seeds = [key_seed(f"example:{i}", seed) for i in range(len(chosen))]
        return (self.low_resolution(chosen, seeds),)

    def phase(self, step: int) -> str:
        return "pixel" if step < self.options.pixel_steps else "gan"

    def state_dict(self) -> dict[str, Any]:
        kept = {"pixel": self.pixel_state} if self.pixel_state is not None else {}
        state: dict[str, Any] = {"phase": self._phase, REFERENCE_GENERATORS: kept}
        if kept and self.options.interpolation < 1:
            state[INTERPOLATION] = {"reference": "pixel", "alpha": self.options.interpolation}
        return state

    def load_state_dict(self, shared: dict[str, Any], own: dict[str, Any] | None) -> None:
        self._phase = shared.get("phase", self._phase)
        self.pixel_state = (shared.get(REFERENCE_GENERATORS) or {}).get("pixel")

    def reference_generators(self) -> dict[str, nn.Module]:
        """{"pixel": the generator as the pixel phase left it (eval mode)} once the GAN phase has started."""
        if self.pixel_state is None:
            return {}
        generator = copy.deepcopy(self.G).eval()
        generator.load_state_dict(self.pixel_state)
        return {"pixel": generator.requires_grad_(False)}

    def served(self, generator: nn.Module) -> nn.Module:
        """`generator` interpolated with the pixel-phase G by `interpolation` once the GAN phase has started."""
        if self.options.interpolation == 1 or self.pixel_state is None:
            return generator  # no copy of G on every sample grid and evaluation when there is nothing to mix
        return interpolate_generators(generator, self.reference_generators()["pixel"], self.options.interpolation)

    def log_values(self) -> dict[str, float | None]:
        return {"gan_phase": float(self._phase == "gan")}

    # ---- one step ---------------------------------------------------------------------------------------------------

    def _content_losses(self, fake: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.l1_loss(fake.float(), real.float()), spectral_angle_loss(fake, real)

    def _feature_losses(self, fake: torch.Tensor, real: torch.Tensor) -> dict[str, tuple[float, torch.Tensor]]:
        """{log name: (weight, loss)} of the perceptual and texture losses that are on."""
        options, terms = self.options, {}
        if isinstance(self.perceptual, RandomPerceptualLoss):
            perceptual, texture = self.perceptual.distances(fake, real, texture=options.texture_weight > 0)
            if texture is not None:
                terms["loss_texture"] = (options.texture_weight, texture)
        elif self.perceptual is not None:
            perceptual = self.perceptual(fake, real)
        if self.perceptual is not None and options.perceptual_weight > 0:
            terms["loss_perceptual"] = (options.perceptual_weight, perceptual)
        return terms

    def step(self, batches: Iterator[Batch], update: Update, progress: Progress) -> dict[str, torch.Tensor] | None:
        phase = self.phase(progress.step)
        if phase == "gan" and self._phase == "pixel":
            self.pixel_state = {k: v.detach().cpu().clone() for k, v in self.G.state_dict().items()}
        self._phase = phase
        lr = self.lr_g * (PIXEL_LR_FACTOR if phase == "pixel" else 1.0)
        for group in self.optimizers["G"].param_groups:
            group["lr"] = lr
        tiles = self.on_device(next(batches)["image"])
        low = self.low_resolution(tiles, batch_seeds(self.seed, progress.step, self.ctx.rank, len(tiles)))
        real = tiles.index_select(1, self.targets)
        progress.images_seen += real.shape[0] * self.ctx.world_size
        options = self.options
        if phase == "pixel":
            with self.autocast():
                fake = self.G(low)
            loss_l1, loss_sam = self._content_losses(fake, real)
            loss_g = loss_l1 + options.sam_weight * loss_sam
            if not update(loss_g, self.G, self.optimizers["G"]):
                return None
            return {"loss_g": loss_g.detach(), "loss_l1": loss_l1.detach(), "loss_sam": loss_sam.detach()}
        with self.autocast():
            fake = self.G(low)
            real_logits, fake_logits = self.D(real).float(), self.D(fake.detach()).float()
        loss_d, _ = relativistic_average_losses(real_logits, fake_logits)
        if not update(loss_d, self.D, self.optimizers["D"]):
            return None
        with frozen(self.D), self.autocast():
            fake_logits, fake_features = self.D.forward_features(fake)
            with torch.no_grad():
                real_logits, real_features = self.D.forward_features(real)
        _, loss_adv = relativistic_average_losses(real_logits.float(), fake_logits.float())
        loss_l1, loss_sam = self._content_losses(fake, real)
        loss_g = options.pixel_weight * loss_l1 + options.gan_weight * loss_adv + options.sam_weight * loss_sam
        losses = {"loss_l1": loss_l1.detach(), "loss_sam": loss_sam.detach(), "loss_g_adversarial": loss_adv.detach()}
        if options.feature_weight > 0:
            loss_features = feature_matching_loss(fake_features, real_features)
            loss_g = loss_g + options.feature_weight * loss_features
            losses["loss_feature_matching"] = loss_features.detach()
        for name, (weight, loss) in self._feature_losses(fake, real).items():
            loss_g = loss_g + weight * loss
            losses[name] = loss.detach()
        if not update(loss_g, self.G, self.optimizers["G"]):
            return None
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), **losses}
