"""StyleGAN2's path-length regularization: a fixed-size step in w should move the image by a fixed amount.

For images g(w) and random image-space directions y ~ N(0, I) / sqrt(h w), the length ||J_w^T y|| (J the Jacobian of
the synthesis network at w) is pulled toward its running mean `a`: penalty = (||J_w^T y|| - a)^2. Following the
paper's lazy regularization, it runs every `interval` G steps on half the batch, weighted by `weight x interval`.
The running mean is averaged over ranks and saved with the checkpoint (`state_dict`).
"""

from __future__ import annotations

from math import sqrt

import torch
from torch import nn

from atlas_gan.runtime.distributed import DistributedContext

MEAN_DECAY = 0.01
BATCH_SHRINK = 2


class PathLengthRegularizer:
    def __init__(self, weight: float, interval: int) -> None:
        self.weight, self.interval = weight, interval
        self.mean = torch.zeros((), dtype=torch.float32)  # kept on the training device: no host sync per step

    def due(self, step: int) -> bool:
        return self.weight > 0 and step % self.interval == 0

    def penalty(
        self, generator: nn.Module, batch_size: int, labels: torch.Tensor | None, ctx: DistributedContext
    ) -> torch.Tensor:
        """The weighted penalty on fresh latents for a fraction of the batch (and its first labels),
        differentiable w.r.t. G."""
        count = max(1, batch_size // BATCH_SHRINK)
        latents = torch.randn(count, generator.spec.latent_dim, device=ctx.device)
        ws = generator.styles(latents, None if labels is None else labels[:count])
        images = generator.synthesis(ws)
        directions = torch.randn_like(images) / sqrt(images.shape[2] * images.shape[3])
        (grads,) = torch.autograd.grad((images * directions).sum(), ws, create_graph=True)
        lengths = grads.float().square().sum(dim=2).mean(dim=1).sqrt()
        batch_mean = lengths.detach().mean()
        if ctx.enabled:
            torch.distributed.all_reduce(batch_mean)
            batch_mean = batch_mean / ctx.world_size
        self.mean = self.mean.to(batch_mean.device).lerp(batch_mean, MEAN_DECAY)
        return (lengths - self.mean).square().mean() * (self.weight * self.interval)

    def state_dict(self) -> dict[str, float]:
        return {"mean": float(self.mean)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean = torch.tensor(float(state["mean"]), dtype=torch.float32)
