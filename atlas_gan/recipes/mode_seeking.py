"""Mode-seeking regularization of G (Mao et al., CVPR 2019, "Mode Seeking Generative Adversarial Networks for
Diverse Image Synthesis").

Two latents that differ should give images that differ. The batch is split into pairs (the first half against the
second) and G's loss gains

    penalty = weight x E[1 / (mean|G(z1) - G(z2)| / mean|z1 - z2| + eps)]

which is large where G maps distant latents to similar images (a collapsing region) and pushes those images apart.
It costs no extra forward pass: the pairs are the batch G already drew. Tried against FastGAN's low recall on
satellite tiles (samples bunching in Inception space; `atlas_gan/metrics/manifold.py`): it learned faster early
but ended worse and did not raise recall, so it is off by default (README, Benchmark).
"""

from __future__ import annotations

import torch

EPSILON = 1e-5  # keeps the penalty finite when two images are identical


def mode_seeking_penalty(images: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Mean over the batch's pairs of 1 / (image distance / latent distance + eps), distances as mean absolute
    differences; 0 for a batch of one (no pair)."""
    half = images.shape[0] // 2
    if half == 0:
        return images.new_zeros(())
    first, second = images[:half].float(), images[half : 2 * half].float()
    image_gap = (first - second).abs().flatten(1).mean(1)
    latent_gap = (latents[:half].float() - latents[half : 2 * half].float()).abs().flatten(1).mean(1)
    return (1.0 / (image_gap / latent_gap + EPSILON)).mean()
