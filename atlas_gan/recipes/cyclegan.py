"""The CycleGAN recipe (Zhu et al. 2017): unpaired translation between two domains of tiles, A -> B and back.

The domains are label sets of the data's `train.condition` rule (years, seasons, sensors, scenes, a label file):
`train.model.domain_a: [1985, 1990]`, `domain_b: [2015, 2020]`. Each step takes one batch and splits it by label
(tiles of other labels are not used; another batch is drawn while a domain is missing). Networks: G (A -> B), F
(B -> A), D_A and D_B (PatchGANs on single images). One step:
- G and F together: least-squares GAN losses of G(a) under D_B and F(b) under D_A, plus `cycle_weight` (10) x the
  L1 cycle losses |F(G(a)) - a| and |G(F(b)) - b|, plus `identity_weight` (0.5) x `cycle_weight` x |G(b) - b| +
  |F(a) - a| (inputs and outputs have the same bands);
- D_A and D_B together: least-squares real/fake losses, halved, on fakes drawn from a history of up to `pool_size`
  (50) earlier fakes per D (Shrivastava et al. 2017); the pools are per-rank state saved in every checkpoint.
Learning rates stay constant, then decay linearly to 0 from `decay_from` (half) of `train.steps` to the end. G
(A -> B) is the generator that is evaluated, registered and exported.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from atlas_gan.config import CycleGANOptions, TrainConfig
from atlas_gan.labels import LabelVocabulary
from atlas_gan.losses import discriminator_loss, generator_loss
from atlas_gan.models.base import GANFamily, ModelSpec
from atlas_gan.recipes.base import Batch, Progress, Recipe, Update, frozen, make_optimizer
from atlas_gan.runtime.distributed import DistributedContext
from atlas_gan.runtime.signature import IMAGE

MAX_DRAWS = 64  # batches drawn in one step while looking for tiles of both domains
Domains = tuple[frozenset[int], frozenset[int]]  # label indexes of A and B


def domain_classes(options: CycleGANOptions, vocabulary: LabelVocabulary | None) -> Domains:
    """The label indexes of domains A and B in the vocabulary of `train.condition`."""
    if vocabulary is None:
        raise ValueError(
            "cyclegan translates between label domains: set train.condition (e.g. by: year) and name its labels in "
            "train.model.domain_a and domain_b"
        )
    try:
        return (
            frozenset(vocabulary.index(label) for label in options.domain_a),
            frozenset(vocabulary.index(label) for label in options.domain_b),
        )
    except ValueError as exc:
        raise ValueError(f"train.model.domain_a/domain_b: {exc}") from None


class HistoryPool:
    """Up to `size` earlier fakes: each new fake is returned as is while the pool fills, then, with probability
    1/2, swapped for a random stored one (which is returned instead). Uses torch's global RNG (checkpointed)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, fakes: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return fakes
        out = []
        for fake in fakes.detach():
            if len(self.images) < self.size:
                self.images.append(fake.clone())
                out.append(fake)
            elif float(torch.rand(())) < 0.5:
                index = int(torch.randint(len(self.images), ()))
                out.append(self.images[index].to(fake.device))
                self.images[index] = fake.clone()
            else:
                out.append(fake)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        images = torch.stack(self.images).cpu() if self.images else torch.empty(0)
        return {"size": self.size, "images": images}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.images = [image.to(device) for image in state["images"]] if len(state["images"]) else []


class CycleGANRecipe(Recipe):
    name = "cyclegan"
    signature = IMAGE
    paired = False

    def __init__(
        self,
        family: GANFamily,
        spec: ModelSpec,
        cfg: TrainConfig,
        ctx: DistributedContext,
        autocast_dtype: torch.dtype | None,
        memory_format: torch.memory_format | None,
        domains: Domains,
    ) -> None:
        super().__init__(spec, cfg.batch_size, ctx, autocast_dtype, memory_format)
        options = cfg.model
        assert isinstance(options, CycleGANOptions)
        self.options, self.defaults, self.steps = options, family.training, cfg.steps
        self.domain_a, self.domain_b = domains
        self.G, self.F = self.place(family.generator(spec)), self.place(family.generator(spec))
        self.D_A, self.D_B = self.place(family.discriminator(spec)), self.place(family.discriminator(spec))
        self.networks = {"G": self.G, "F": self.F, "D_A": self.D_A, "D_B": self.D_B}
        self.generators = nn.ModuleDict({"G": self.G, "F": self.F})  # one loss, one update for both
        self.discriminators = nn.ModuleDict({"D_A": self.D_A, "D_B": self.D_B})
        self.base_lr = {"generators": cfg.lr_g or self.defaults.lr_g, "discriminators": cfg.lr_d or self.defaults.lr_d}
        self.optimizers = {
            "generators": make_optimizer(
                self.defaults, self.generators.parameters(), self.base_lr["generators"], betas=cfg.adam_betas
            ),
            "discriminators": make_optimizer(
                self.defaults, self.discriminators.parameters(), self.base_lr["discriminators"], betas=cfg.adam_betas
            ),
        }
        self.pools = {"D_A": HistoryPool(options.pool_size), "D_B": HistoryPool(options.pool_size)}

    # ---- state ------------------------------------------------------------------------------------------------------

    def fixed_inputs(self, count: int, seed: int, examples: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Held-out tiles of domain A (the trainer passes them as `examples`)."""
        if examples is None or len(examples) == 0:
            raise ValueError("cyclegan needs held-out tiles of domain A for its sample grids; the data gave none")
        return (examples[:count].to(self.ctx.device),)

    def takes_example(self, label: int | None) -> bool:
        return label in self.domain_a

    def rank_state_dict(self) -> dict[str, Any]:
        return {name: pool.state_dict() for name, pool in self.pools.items()}

    def load_state_dict(self, shared: dict[str, Any], own: dict[str, Any] | None) -> None:
        for name, pool in self.pools.items():
            if own is not None:
                pool.load_state_dict(own[name], self.ctx.device)

    def learning_rate_factor(self, step: int) -> float:
        """1 until `decay_from` x steps, then linearly down to 0 at the last step."""
        start = int(self.options.decay_from * self.steps)
        if step < start or self.steps <= start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / (self.steps - start))

    def log_values(self) -> dict[str, float | None]:
        return {"lr_factor": self._factor} if hasattr(self, "_factor") else {}

    # ---- one step ---------------------------------------------------------------------------------------------------

    def _domains(self, batches: Iterator[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(MAX_DRAWS):
            batch = next(batches)
            labels = batch["label"]
            in_a = torch.tensor([int(label) in self.domain_a for label in labels], dtype=torch.bool)
            in_b = torch.tensor([int(label) in self.domain_b for label in labels], dtype=torch.bool)
            if in_a.any() and in_b.any():
                images = batch["image"]
                return self.on_device(images[in_a]), self.on_device(images[in_b])
        raise ValueError(
            f"no batch of {MAX_DRAWS} held tiles of both domains: check train.model.domain_a/domain_b against the "
            "labels of train.condition, and raise train.shuffle_buffer so batches mix them"
        )

    def step(self, batches: Iterator[Batch], update: Update, progress: Progress) -> dict[str, torch.Tensor] | None:
        self._factor = self.learning_rate_factor(progress.step)
        for name, optimizer in self.optimizers.items():
            for group in optimizer.param_groups:
                group["lr"] = self.base_lr[name] * self._factor
        real_a, real_b = self._domains(batches)
        progress.images_seen += self.batch_size * self.ctx.world_size  # nominal: the same on every rank
        cycle, identity = self.options.cycle_weight, self.options.identity_weight * self.options.cycle_weight
        with frozen(self.D_A), frozen(self.D_B), self.autocast():
            fake_b, fake_a = self.G(real_a), self.F(real_b)
            loss = self.defaults.loss
            adversarial = generator_loss(loss, self.D_B(fake_b)) + generator_loss(loss, self.D_A(fake_a))
            loss_cycle = F.l1_loss(self.F(fake_b).float(), real_a.float()) + F.l1_loss(
                self.G(fake_a).float(), real_b.float()
            )
            loss_identity = (
                F.l1_loss(self.G(real_b).float(), real_b.float()) + F.l1_loss(self.F(real_a).float(), real_a.float())
                if identity
                else torch.zeros((), device=real_a.device)
            )
            loss_g = adversarial + cycle * loss_cycle + identity * loss_identity
        if not update(loss_g, self.generators, self.optimizers["generators"]):
            return None
        with self.autocast():
            pooled_b, pooled_a = self.pools["D_B"].query(fake_b), self.pools["D_A"].query(fake_a)
            loss_d_b = 0.5 * discriminator_loss(self.defaults.loss, self.D_B(real_b), self.D_B(pooled_b.detach()))
            loss_d_a = 0.5 * discriminator_loss(self.defaults.loss, self.D_A(real_a), self.D_A(pooled_a.detach()))
            loss_d = loss_d_a + loss_d_b
        if not update(loss_d, self.discriminators, self.optimizers["discriminators"]):
            return None
        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "loss_g_adversarial": adversarial.detach(),
            "loss_cycle": loss_cycle.detach(),
            "loss_identity": loss_identity.detach(),
        }
