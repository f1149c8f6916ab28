"""The BigGAN recipe (Brock et al. 2019): the adversarial recipe's hinge loss, augmentation and TTUR, plus
gradient accumulation and the orthogonal regularization of G.

- Accumulation (`train.model.accumulate` = k): every D update and every G update sums the gradients of k batches
  before stepping, an effective batch of k x batch_size per rank. Each batch's loss is divided by k, so the update
  equals one of a batch k times larger: spectral norm's power iteration runs on the first batch only (as it would
  run once on the large batch), and ranks average the summed gradients once. What cannot match is G's batch norm,
  which normalizes each batch on its own (as BigGAN on many GPUs without cross-replica batch norm).
- Unlike the adversarial recipe, the G update draws its own fakes (k batches of them), with the labels of the last
  D update's real batches.
- Orthogonal regularization: beta ||W^T W (1 - I)||_F^2 summed over G's weight matrices (convolutions flattened to
  out x in*k*k, the shared class embedding excepted, as in the paper), added once per G update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from atlas_gan.config import BigGANOptions
from atlas_gan.losses import r1_penalty
from atlas_gan.recipes.adversarial import AdversarialRecipe
from atlas_gan.recipes.base import Batch, Progress, Update, frozen


@contextlib.contextmanager
def power_iteration_paused(network: nn.Module, paused: bool = True) -> Iterator[None]:
    """Spectral norm uses its current singular-vector estimates without refining them inside the block."""
    if not paused:
        yield
        return
    norms = [module for module in network.modules() if hasattr(module, "_power_method")]  # the parametrizations
    modes = [norm.training for norm in norms]
    for norm in norms:
        norm.train(False)
    try:
        yield
    finally:
        for norm, mode in zip(norms, modes, strict=True):
            norm.train(mode)


def orthogonal_penalty(network: nn.Module, skip: tuple[nn.Module, ...] = ()) -> torch.Tensor:
    """sum over weight matrices W of ||W W^T (1 - I)||_F^2 (rows: output channels); `skip`: modules left out."""
    skipped = {id(parameter) for module in skip for parameter in module.parameters()}
    total = torch.zeros((), device=next(network.parameters()).device)
    for name, parameter in network.named_parameters():
        if parameter.ndim < 2 or id(parameter) in skipped or not name.endswith(("weight", "weight.original")):
            continue
        matrix = parameter.flatten(1)
        gram = matrix @ matrix.T
        total = total + (gram - torch.diag(torch.diagonal(gram))).square().sum()
    return total


class BigGANRecipe(AdversarialRecipe):
    name = "biggan"

    @property
    def accumulate(self) -> int:
        assert isinstance(self.options, BigGANOptions)
        return self.options.accumulate

    @property
    def orthogonal_weight(self) -> float:
        assert isinstance(self.options, BigGANOptions)
        return self.options.orthogonal_weight

    @property
    def images_per_step(self) -> int:
        return self.batch_size * self.accumulate

    def _discriminator_update(
        self, batches: Iterator[Batch], update: Update, progress: Progress, first_of_step: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]] | None:
        """One D update over `accumulate` real batches; its loss and the batches' labels (None if skipped)."""
        k, batch, world = self.accumulate, self.batch_size, self.ctx.world_size
        total, labels_seen = torch.zeros((), device=self.ctx.device), []
        for share in range(k):
            real, labels = self._real(batches)
            labels_seen.append(labels)
            with torch.no_grad(), power_iteration_paused(self.G, share > 0), self.autocast():
                fake = self.G(self._latents(batch), labels)
            r1_due = self.r1_gamma > 0 and first_of_step and progress.step % self.defaults.r1_interval == 0
            real = real.detach().requires_grad_(r1_due)
            with power_iteration_paused(self.D, share > 0), self.autocast():
                real_logits, _ = self.discriminate_real(real, labels)
                loss = self.regularized_d_loss(real_logits, self.discriminate(fake, labels))
            if self.ada:
                self.ada.observe(real_logits)
            if r1_due:
                loss = loss + r1_penalty(real_logits, real) * (self.r1_gamma / 2 * self.defaults.r1_interval)
            loss = loss / k
            total += loss.detach().float()
            progress.images_seen += batch * world
            if share < k - 1:
                update.accumulate(loss, self.D)
            elif not update(loss, self.D, self.optimizers["D"]):
                return None
        return total, labels_seen

    def _generator_update(self, labels_seen: list[torch.Tensor | None], update: Update) -> torch.Tensor | None:
        """One G update over `accumulate` batches of fakes (with the given labels); its loss (None if skipped)."""
        k = self.accumulate
        total = torch.zeros((), device=self.ctx.device)
        with frozen(self.D):
            for share, labels in enumerate(labels_seen):
                with power_iteration_paused(self.G, share > 0), power_iteration_paused(self.D, share > 0):
                    with self.autocast():
                        latents = self._latents(self.batch_size)
                        loss = self.regularized_g_loss(self.G(latents, labels), latents, labels) / k
                    total += loss.detach().float()
                    if share < k - 1:
                        update.accumulate(loss, self.G)
                        continue
                    if self.orthogonal_weight:
                        penalty = orthogonal_penalty(self.G, skip=(self.G.shared,))
                        loss = loss + self.orthogonal_weight * penalty
                    if not update(loss, self.G, self.optimizers["G"]):
                        return None
        return total

    def step(self, batches: Iterator[Batch], update: Update, progress: Progress) -> dict[str, torch.Tensor] | None:
        loss_d = torch.zeros((), device=self.ctx.device)
        labels_seen: list[torch.Tensor | None] = []
        for critic_step in range(self.n_critic):
            result = self._discriminator_update(batches, update, progress, critic_step == 0)
            if result is None:
                return None
            loss, labels_seen = result
            loss_d += loss
        loss_g = self._generator_update(labels_seen, update)
        if loss_g is None:
            return None
        if self.ada:
            self.ada.adjust(self.batch_size * self.ctx.world_size * self.n_critic * self.accumulate, self.ctx)
        return {"loss_d": loss_d / self.n_critic, "loss_g": loss_g}
