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


def relativistic_average_losses(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Jolicoeur-Martineau 2018's relativistic average GAN (as in ESRGAN): D judges whether a real image looks more
    real than the average fake and a fake less real than the average real. Returns (D's loss, G's loss) from the
    same logits; G's loss needs `real` too (detach it for G's update: only its dependence on G matters)."""
    real_vs_fake = real - fake.mean()
    fake_vs_real = fake - real.mean()
    ones, zeros = torch.ones_like(real_vs_fake), torch.zeros_like(fake_vs_real)
    d_loss = F.binary_cross_entropy_with_logits(real_vs_fake, ones) + F.binary_cross_entropy_with_logits(
        fake_vs_real, zeros
    )
    g_loss = F.binary_cross_entropy_with_logits(real_vs_fake, zeros) + F.binary_cross_entropy_with_logits(
        fake_vs_real, ones
    )
    return d_loss / 2, g_loss / 2


def feature_matching_loss(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """Mean over D's layers of the L1 distance between its activations on G's output and on the paired truth
    (Wang et al. 2018, pix2pixHD): a perceptual loss D learns on the dataset itself, with no pretrained weights.
    `real`'s activations are targets (detached)."""
    if len(fake) != len(real) or not fake:
        raise ValueError(f"feature matching needs the same nonzero number of layers; got {len(fake)} and {len(real)}")
    losses = [F.l1_loss(f.float(), r.detach().float()) for f, r in zip(fake, real, strict=True)]
    return torch.stack(losses).mean()


def spectral_angle_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean angle (radians) between predicted and target spectra per pixel, on values shifted from [-1, 1] to
    [0, 1] so spectra point into the positive orthant; 0 for a single band (an angle needs two). The cosine is
    clamped below 1 - 1e-4 (0.8 degrees): acos's slope is infinite at 1, and closer spectra are left to L1."""
    if pred.shape[1] < 2:
        return pred.new_zeros(())
    p, t = (pred.float() + 1) / 2, (target.float() + 1) / 2
    cosine = (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1) + eps)
    return torch.acos(cosine.clamp(-1 + 1e-4, 1 - 1e-4)).mean()
