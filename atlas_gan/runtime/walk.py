"""Latent walks: frames of a generator's images along spherical paths through its latent space."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from atlas_gan.labels import LabelVocabulary
from atlas_gan.models.base import ModelSpec, generate_batched
from atlas_gan.runtime.signature import signature_of


def latent_walk(
    generator: torch.nn.Module,
    meta: dict[str, Any],
    walks: int,
    seed: int = 0,
    label: str | None = None,
    keyframes: int = 4,
    frames_between: int = 16,
    truncation_psi: float = 1.0,
    batch_size: int = 256,
) -> np.ndarray:
    """The frames of a latent walk of any latent-signature generator (a Sampler's, or one being trained)."""
    spec = ModelSpec(**meta["spec"])
    vocabulary = LabelVocabulary.from_dict(meta.get("labels"))
    device = next(generator.parameters()).device
    frames = []
    for inputs in signature_of(meta).walk_inputs(spec, vocabulary, walks, keyframes, frames_between, seed, label):
        moved = tuple(None if x is None else x.to(device) for x in inputs)
        frames.append(torch.cat(generate_batched(generator, moved, batch_size, truncation_psi)).float().cpu().numpy())
    return np.stack(frames)
