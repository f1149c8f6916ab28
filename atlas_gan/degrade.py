"""Make the low-resolution inputs of super-resolution from high-resolution tiles (`train.model.degradation`).

First pass: Gaussian blur (sigma drawn in [0, blur] high-resolution pixels: the sensor's point spread), area
downsampling by the scale (the mean of each scale x scale block, what a coarser sensor's pixel integrates), Gaussian
noise (std drawn in [0, noise], normalized units). Second pass (`second_order`, after Real-ESRGAN's repeated
degradations): the same blur and noise again at the low resolution, with half the strengths. With no blur and no
noise it is plain area downsampling.

Every sample draws its strengths and noise from its own seed, so a tile degraded with the same seed is the same input
on every machine and every run: training seeds by (run seed, step, rank, position in the batch), validation by the
tile's key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from atlas_gan.config import DegradationConfig


def key_seed(key: str, seed: int = 0) -> int:
    """A stable 63-bit seed for a tile key (Python's hash() differs per process)."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def batch_seeds(seed: int, step: int, rank: int, count: int) -> list[int]:
    """One seed per sample of a training batch: the same for the same run seed, step and rank (so a resumed run
    degrades exactly as an uninterrupted one)."""
    return [key_seed(f"{step}:{rank}:{i}", seed) for i in range(count)]


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (bands, h, w) by a Gaussian of `sigma` px (kernel +-3 sigma), reflecting at the borders."""
    if sigma < 0.05:
        return image
    radius = max(1, min(int(3 * sigma + 0.5), min(image.shape[-2:]) - 1))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    bands = image.shape[0]
    padded = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(bands, 1, 1, -1), groups=bands)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(bands, 1, -1, 1), groups=bands)[0]


def _blur_and_noise(image: torch.Tensor, blur: float, noise: float, rng: torch.Generator) -> torch.Tensor:
    sigma = float(torch.rand((), generator=rng)) * blur
    std = float(torch.rand((), generator=rng)) * noise
    image = gaussian_blur(image, sigma)
    if std > 0:
        # noise in normalized units (0..1) is twice that in the training range [-1, 1]
        image = image + 2 * std * torch.randn(image.shape, generator=rng, dtype=image.dtype)
    return image


def degrade(images: torch.Tensor, scale: int, settings: DegradationConfig, seeds: Sequence[int]) -> torch.Tensor:
    """(n, bands, h, w) tiles in [-1, 1] (on the CPU or a device) -> (n, bands, h / scale, w / scale) inputs."""
    if len(seeds) != len(images):
        raise ValueError(f"one seed per image: got {len(seeds)} seeds for {len(images)} images")
    if images.shape[-1] % scale or images.shape[-2] % scale:
        raise ValueError(f"tiles of {tuple(images.shape[-2:])} px do not divide by the scale {scale}")
    plain = settings.blur == 0 and settings.noise == 0
    if plain:  # area downsampling only: no randomness, one batched call
        return F.avg_pool2d(images.float(), scale)
    device, out = images.device, []
    for image, seed in zip(images.float().cpu(), seeds, strict=True):
        rng = torch.Generator().manual_seed(int(seed))
        low = F.avg_pool2d(_blur_and_noise(image, settings.blur, settings.noise, rng)[None], scale)[0]
        if settings.second_order:
            low = _blur_and_noise(low, settings.blur / (2 * scale), settings.noise / 2, rng)
        out.append(low.clamp(-1.0, 1.0))
    return torch.stack(out).to(device)
