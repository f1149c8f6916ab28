"""GAN losses on discriminator outputs (logits or critic values), the WGAN-GP gradient penalty and R1."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _nonsaturating(real: torch.Tensor | None, fake: torch.Tensor) -> torch.Tensor:
    """Goodfellow et al.: D minimizes BCE; G maximizes log D(G(z)). `real=None` gives G's loss."""
    if real is None:
        return F.softplus(-fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def _wasserstein(real: torch.Tensor | None, fake: torch.Tensor) -> torch.Tensor:
    if real is None:
        return -fake.mean()
    return fake.mean() - real.mean()


def _hinge(real: torch.Tensor | None, fake: torch.Tensor) -> torch.Tensor:
    if real is None:
        return -fake.mean()
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def _least_squares(real: torch.Tensor | None, fake: torch.Tensor) -> torch.Tensor:
    """Mao et al. 2017 (LSGAN): D pushes real outputs to 1 and fake ones to 0; G pushes fake outputs to 1."""
    if real is None:
        return (fake - 1.0).square().mean()
    return (real - 1.0).square().mean() + fake.square().mean()


LOSSES: dict[str, Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]] = {
    "nonsaturating": _nonsaturating,
    "wasserstein": _wasserstein,
    "hinge": _hinge,
    "least_squares": _least_squares,
}


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return LOSSES[kind](real.float(), fake.float())


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    return LOSSES[kind](None, fake.float())


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor
) -> torch.Tensor:
    """E[(||grad D(x_hat)||_2 - 1)^2] at random points between real and fake images (fp32)."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=torch.float32)
    mixed = (eps * real.float() + (1 - eps) * fake.float()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).float().sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mescheder et al. 2018's R1: E[||grad_x D(x)||^2] over real images `real` (which must require grad and be
    what `real_logits` were computed from). Weighting (gamma / 2, lazy interval) is the caller's."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)
    return grad.float().square().flatten(1).sum(dim=1).mean()
