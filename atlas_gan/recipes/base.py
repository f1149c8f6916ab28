"""What every training recipe is: named networks and optimizers, the one network that is *the generator*, and a
`step` that does the maths of one training step. The loop (`atlas_gan/train/trainer.py`) does the mechanics around
it: data, device placement, ranks, EMA, checkpoints, rollback, logging, hooks.

A recipe declares:
- `networks` and `optimizers`, by name (`"G"`, `"D"`; CycleGAN would have two of each). Checkpoints save them by
  these names, so a new recipe needs no new checkpoint keys.
- `ema_networks`: the networks the loop keeps an exponential moving average of (sampled, evaluated, registered).
- `generator_name` and `signature`: which network is evaluated, exported and registered, and what it takes
  (`latent`: latent vectors and, if conditional, labels; `image`: images). Everything downstream dispatches on the
  signature, never on a family name.
- `step(batches, update, progress)`: pulls the batches it needs and updates its networks through `update`, which
  does what every update needs (zero grad, backward, average over ranks, finite check, step, post-step hook).
- `fixed_inputs(n, seed, examples)`: the generator inputs of the sample grids, the same at every step (an
  image-to-image recipe takes them from `examples`, held-out tiles).
- `state_dict` / `rank_state_dict`: state beyond networks and optimizers (ADA's p, the path-length mean, ...):
  shared (equal on every rank) or per rank (saved for every rank, restored exactly when the world size is equal).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from atlas_gan.config import TrainConfig
from atlas_gan.models.base import AdversarialDefaults, ModelSpec
from atlas_gan.runtime import distributed as dist_utils
from atlas_gan.runtime.distributed import DistributedContext
from atlas_gan.runtime.signature import LATENT

FUSED_ADAM_DEVICES = ("cuda", "cpu")
Batch = dict[str, torch.Tensor]  # "image" (n, bands, h, w) in [-1, 1], "label" (n,), "epoch" (n,)


@dataclass
class Progress:
    """Where training stands; owned by the loop, advanced by recipes as they consume real images."""

    step: int = 0
    images_seen: int = 0
    epoch: int = 0


class Update:
    """One network update, the same for every recipe and network; its gradient may be summed over several
    batches first (`accumulate`, then the call with the last batch's share).

    The finite check either reads the loss back on the host at every update (`deferred=False`: a non-finite loss
    skips the update and the caller's step, on every rank) or stays on the device (`deferred=True`, the CUDA
    default): the fused Adam step is told the loss was non-finite and leaves weights, moments and step counts as
    they were, and `skipped` counts such updates for the loop to read when it logs. No update then waits for the
    device, so the host queues the next kernels while the device works. Optimizers without a device-side skip
    (RMSprop) and updates with an `after_step` (weight clipping) always check on the host."""

    def __init__(self, ctx: DistributedContext, deferred: bool = False) -> None:
        self.ctx, self.deferred = ctx, deferred
        self._accumulated: dict[int, list[torch.Tensor]] = {}  # id(network) -> the detached losses summed so far
        self.skipped = torch.zeros((), device=ctx.device)  # deferred: updates skipped since the loop last reset it

    def accumulate(self, loss: torch.Tensor, network: nn.Module) -> None:
        """Backward of one batch's share of `network`'s next update (the first share zeroes its gradients)."""
        shares = self._accumulated.get(id(network))
        if shares is None:
            network.zero_grad(set_to_none=True)
            shares = self._accumulated[id(network)] = []
        loss.backward()
        shares.append(loss.detach())

    def __call__(
        self,
        loss: torch.Tensor,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        after_step: Callable[[], None] | None = None,
    ) -> bool:
        """zero grad (unless shares were accumulated), backward, average gradients over ranks, then step only if
        every share's loss is finite on every rank (False: nothing was changed, on any rank), then `after_step`
        (e.g. weight clipping). Deferred: always True; a skip shows in `skipped`."""
        earlier = self._accumulated.pop(id(network), [])
        if not earlier:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dist_utils.average_gradients(network, self.ctx)
        total = torch.stack([*earlier, loss.detach()]).sum() if earlier else loss.detach()
        if self.deferred and after_step is None and skips_on_device(optimizer):
            self._step_unless_non_finite(total, optimizer)
            return True
        if not dist_utils.all_true(bool(torch.isfinite(total)), self.ctx):
            return False
        optimizer.step()
        if after_step is not None:
            after_step()
        return True

    def _step_unless_non_finite(self, total: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer's step, made a no-op on the device when `total` is not finite on some rank."""
        non_finite = (~torch.isfinite(total.float())).float()
        dist_utils.all_reduce_max(non_finite, self.ctx)
        optimizer.found_inf = non_finite  # type: ignore[attr-defined]  # read by the fused step (as GradScaler does)
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]
        self.skipped += non_finite


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step()` honours a device-side `found_inf` flag (the fused Adam kernels do)."""
    return isinstance(optimizer, torch.optim.Adam) and all(group.get("fused") for group in optimizer.param_groups)


@contextlib.contextmanager
def frozen(network: nn.Module) -> Iterator[None]:
    """No gradients for `network`'s parameters inside the block (its input still gets them)."""
    network.requires_grad_(False)
    try:
        yield
    finally:
        network.requires_grad_(True)


def make_optimizer(
    defaults: AdversarialDefaults,
    parameters: Iterator[nn.Parameter],
    lr: float,
    lazy_interval: int = 0,
    betas: tuple[float, float] | None = None,
) -> torch.optim.Optimizer:
    """The family's optimizer; `betas` (`train.adam_betas`) replace the family's Adam betas. `lazy_interval` > 0: a
    regularizer runs every that many steps as an extra term of the loss, so (as in StyleGAN2) lr and Adam's betas
    are scaled to keep the combined update's size."""
    if defaults.optimizer == "rmsprop":
        if betas is not None:
            raise ValueError("train.adam_betas: this family trains with RMSprop, which has no betas; leave it null")
        return torch.optim.RMSprop(parameters, lr=lr)
    betas = betas or defaults.betas
    if lazy_interval:
        ratio = lazy_interval / (lazy_interval + 1)
        lr, betas = lr * ratio, (betas[0] ** ratio, betas[1] ** ratio)
    parameters = list(parameters)
    # the fused kernel: fewer launches per step, and it can skip a step on the device (see `Update`)
    fused = bool(parameters) and parameters[0].device.type in FUSED_ADAM_DEVICES
    return torch.optim.Adam(parameters, lr=lr, betas=betas, fused=fused)


class Recipe:
    """Base class of training recipes; see the module docstring."""

    name: ClassVar[str]
    generator_name: ClassVar[str] = "G"
    signature: ClassVar[str] = LATENT
    ema_networks: ClassVar[tuple[str, ...]] = ("G",)
    paired: ClassVar[bool] = True  # image recipes: trained on (input, target) pairs; False: on unpaired domains

    def __init__(
        self,
        spec: ModelSpec,
        batch_size: int,
        ctx: DistributedContext,
        autocast_dtype: torch.dtype | None,
        memory_format: torch.memory_format | None,
    ) -> None:
        self.spec, self.batch_size, self.ctx = spec, batch_size, ctx
        self.autocast_dtype, self.memory_format = autocast_dtype, memory_format
        self.networks: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def adopt_pair(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        defaults: AdversarialDefaults,
        cfg: TrainConfig,
        lazy: tuple[int, int] = (0, 0),
    ) -> None:
        """`self.G` and `self.D` on the device, each with the family's optimizer at the configured (else the
        family's) learning rate and betas; `lazy`: G's and D's lazy-regularization intervals (see `make_optimizer`)."""
        self.G, self.D = self.place(generator), self.place(discriminator)
        self.networks = {"G": self.G, "D": self.D}
        self.optimizers = {
            "G": make_optimizer(defaults, self.G.parameters(), cfg.lr_g or defaults.lr_g, lazy[0], cfg.adam_betas),
            "D": make_optimizer(defaults, self.D.parameters(), cfg.lr_d or defaults.lr_d, lazy[1], cfg.adam_betas),
        }

    # ---- what subclasses implement -----------------------------------------------------------------------------

    def step(self, batches: Iterator[Batch], update: Update, progress: Progress) -> dict[str, torch.Tensor] | None:
        """One training step; returns the losses to log, or None when a non-finite loss made every rank skip it."""
        raise NotImplementedError

    def fixed_inputs(
        self, count: int, seed: int, examples: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, ...]:
        """The generator's inputs for the sample grids (on the training device); `examples`: held-out dataset
        tiles in [-1, 1], for recipes whose generator reads images."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """State equal on every rank (beyond networks and optimizers)."""
        return {}

    def rank_state_dict(self) -> dict[str, Any] | None:
        """State that differs per rank; None when there is none."""
        return None

    def load_state_dict(self, shared: dict[str, Any], own: dict[str, Any] | None) -> None:
        """Restore `state_dict()`'s and (when saved by the same world size, else rank 0's) `rank_state_dict()`'s."""

    def log_values(self) -> dict[str, float | None]:
        """Extra values for the training log (e.g. the augmentation probability)."""
        return {}

    @property
    def images_per_step(self) -> int:
        """Images the generator draws per update, on each rank (the EMA's clock)."""
        return self.batch_size

    def takes_example(self, label: int | None) -> bool:
        """Whether a held-out tile of this label is a sample-grid input (CycleGAN: domain A's only)."""
        return True

    def reference_generators(self) -> dict[str, nn.Module]:
        """Generators to score beside this one (eval mode), e.g. super-resolution's pixel-loss model; saved in
        checkpoints as the recipe state `reference_generators` (name -> weights). None by default."""
        return {}

    def served(self, generator: nn.Module) -> nn.Module:
        """The generator as evaluated, registered and served, made from the trained one (`generator`, its EMA when
        it has one; e.g. super-resolution's network interpolation); the trained one by default."""
        return generator

    def calibrate(self, generator: nn.Module) -> None:
        """Make an EMA copy of the generator ready to sample (e.g. its batch-norm statistics); nothing by default."""

    # ---- helpers for subclasses -----------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype)

    def on_device(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of images on the training device, in the training memory format."""
        images = images.to(self.ctx.device, non_blocking=True)
        return images.contiguous(memory_format=self.memory_format) if self.memory_format else images

    def place(self, network: nn.Module) -> nn.Module:
        return network.to(self.ctx.device, memory_format=self.memory_format or torch.contiguous_format)
