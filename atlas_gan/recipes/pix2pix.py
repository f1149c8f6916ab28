"""The pix2pix recipe (Isola et al. 2017): paired translation from a dataset's input bands to its target bands.

Each training tile carries both: G reads `train.model.input_bands` and draws `train.model.target_bands`. One step
is one D update then one G update on the same batch:
- D (a PatchGAN on the input concatenated with the real or translated target) minimizes BCE, halved as in the
  paper so D learns slower than G;
- G minimizes the non-saturating GAN loss plus `l1_weight` (100) x the L1 distance to the target.
No augmentation of what D sees (it would have to move input and target together; the loader's flips and rotations
already do). The sample grids translate fixed held-out tiles.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from atlas_gan.config import Pix2PixOptions, TrainConfig
from atlas_gan.losses import discriminator_loss, generator_loss
from atlas_gan.models.base import GANFamily, ModelSpec
from atlas_gan.recipes.base import Batch, Progress, Recipe, Update, frozen
from atlas_gan.recipes.roles import BandRoles
from atlas_gan.runtime.distributed import DistributedContext
from atlas_gan.runtime.signature import IMAGE


class Pix2PixRecipe(Recipe):
    name = "pix2pix"
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
        assert isinstance(options, Pix2PixOptions) and roles.inputs is not None
        self.options, self.defaults = options, family.training
        generator, discriminator = family.generator(spec), family.discriminator(spec)
        for layer in generator.modules():
            if isinstance(layer, nn.Dropout):
                layer.p = options.dropout
        self.adopt_pair(generator, discriminator, self.defaults, cfg)
        self.inputs = torch.tensor(roles.inputs, device=ctx.device)
        self.targets = torch.tensor(roles.outputs, device=ctx.device)

    def split(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of dataset tiles -> (G's input bands, the target bands)."""
        return images.index_select(1, self.inputs), images.index_select(1, self.targets)

    def fixed_inputs(self, count: int, seed: int, examples: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The input bands of the first `count` held-out tiles (`examples`, dataset bands in [-1, 1])."""
        if examples is None or len(examples) == 0:
            raise ValueError("pix2pix needs example tiles for its sample grids; the dataset gave none")
        return (self.split(examples[:count].to(self.ctx.device))[0],)

    def step(self, batches: Iterator[Batch], update: Update, progress: Progress) -> dict[str, torch.Tensor] | None:
        loss = self.defaults.loss
        batch = next(batches)
        source, target = self.split(self.on_device(batch["image"]))
        progress.images_seen += source.shape[0] * self.ctx.world_size
        with self.autocast():
            fake = self.G(source)
            real_logits = self.D(source, target)
            fake_logits = self.D(source, fake.detach())
        loss_d = 0.5 * discriminator_loss(loss, real_logits, fake_logits)
        if not update(loss_d, self.D, self.optimizers["D"]):
            return None
        with frozen(self.D), self.autocast():
            fake_logits = self.D(source, fake)
        loss_adv = generator_loss(loss, fake_logits)
        loss_l1 = F.l1_loss(fake.float(), target.float())
        loss_g = loss_adv + self.options.l1_weight * loss_l1
        if not update(loss_g, self.G, self.optimizers["G"]):
            return None
        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "loss_g_adversarial": loss_adv.detach(),
            "loss_l1": loss_l1.detach(),
        }
