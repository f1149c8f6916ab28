"""Generator signatures: what a generator takes, so sampling, evaluation, export and the registered model can feed
any recipe's generator without knowing its family.

A signature turns a request ("n samples from this seed", "n random inputs for FID", "an example for export") into
the positional arguments of `generator(*inputs)`. Each recipe names its generator's signature and checkpoints and
registered models record it (`meta["signature"]`; absent in files written before signatures: `latent`).

- `latent`: `generator(latents, labels)`: latents float32 (n, latent_dim) ~ N(0, I); labels int64 (n,) for a
  conditional generator, else None.

- `image`: `generator(images)`: images float32 (n, input_bands, h, w) in [-1, 1], the dataset's normalized units
  (translation and super-resolution, whose outputs are `spec.scale` times larger across). There is nothing to draw
  from a seed: inputs come from imagery.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch

from atlas_gan.labels import LabelVocabulary, generation_labels
from atlas_gan.models.base import ModelSpec, seeded_latents

LATENT = "latent"
IMAGE = "image"

Inputs = tuple[torch.Tensor | None, ...]


class LatentSignature:
    """Latent vectors (and labels, if conditional) in; see the module docstring."""

    name: ClassVar[str] = LATENT

    def input_names(self, spec: ModelSpec) -> list[str]:
        return ["latents", "labels"] if spec.conditional else ["latents"]

    def example_inputs(self, spec: ModelSpec, count: int) -> tuple[torch.Tensor, ...]:
        """Fixed example inputs (export tracing): seeded latents and labels cycling through the classes."""
        latents = seeded_latents(count, spec.latent_dim, seed=0)
        if not spec.conditional:
            return (latents,)
        return latents, torch.arange(count, dtype=torch.int64) % spec.num_classes

    def seeded_inputs(
        self, spec: ModelSpec, vocabulary: LabelVocabulary | None, count: int, seed: int, label: str | None = None
    ) -> Inputs:
        """`count` inputs from `seed`: the same seed (and label) gives the same inputs on every machine. A
        conditional generator gets `label` for all, or labels in the training data's proportions."""
        return seeded_latents(count, spec.latent_dim, seed), generation_labels(vocabulary, count, label, seed)

    def request_inputs(
        self,
        model_input: Any,
        spec: ModelSpec,
        vocabulary: LabelVocabulary | None,
        seed: int,
        label: str | None = None,
    ) -> Inputs:
        """The inputs of a serving request (the registered model's `predict`): latents as an array, a named
        tensor ({"latents": array}) or a DataFrame; labels as for `seeded_inputs`."""
        if isinstance(model_input, dict):
            model_input = model_input.get("latents", next(iter(model_input.values()), None))
        if hasattr(model_input, "to_numpy"):  # a DataFrame (e.g. from a JSON request)
            model_input = model_input.to_numpy()
        array = np.asarray(model_input, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != spec.latent_dim:
            raise ValueError(
                f"latents must have shape (n, {spec.latent_dim}); got {array.shape}. "
                "Or pass params={'count': n, 'seed': s}."
            )
        return torch.from_numpy(array), generation_labels(vocabulary, len(array), label, seed)

    def walk_inputs(
        self,
        spec: ModelSpec,
        vocabulary: LabelVocabulary | None,
        walks: int,
        keyframes: int,
        frames_between: int,
        seed: int,
        label: str | None = None,
    ) -> list[Inputs]:
        """A looping latent walk: for each of `walks` parallel walks, `keyframes` seeded latents joined by spherical
        interpolation (`frames_between` frames from one to the next, back to the first at the end). Returns one
        input tuple per frame. Labels stay fixed along a walk: `label` for all, else walk i draws class
        i mod classes (a row per label in a grid as wide as the class count)."""
        keys = seeded_latents(walks * keyframes, spec.latent_dim, seed).reshape(keyframes, walks, spec.latent_dim)
        labels = None
        if vocabulary is not None:
            given = label is not None and str(label) != ""
            labels = (
                generation_labels(vocabulary, walks, label, seed)
                if given
                else torch.arange(walks) % len(vocabulary.classes)
            )
        elif label is not None and str(label) != "":
            generation_labels(None, walks, label, seed)  # raises: unconditional generators take no label
        frames = []
        for key in range(keyframes):
            start, end = keys[key], keys[(key + 1) % keyframes]
            for step in range(frames_between):
                frames.append((slerp(start, end, step / frames_between), labels))
        return frames

    def label_names(self, inputs: Inputs, vocabulary: LabelVocabulary | None) -> list[str]:
        """The label of each input, by name ([] for an unconditional generator)."""
        labels = inputs[1] if len(inputs) > 1 else None
        return [vocabulary.classes[i] for i in labels.tolist()] if vocabulary and labels is not None else []

    def random_batches(
        self,
        spec: ModelSpec,
        vocabulary: LabelVocabulary | None,
        count: int,
        batch_size: int,
        rng: torch.Generator,
        device: torch.device,
    ) -> Iterator[Inputs]:
        """`count` inputs in batches, drawn from `rng` (evaluation: labels in the training data's proportions)."""
        done = 0
        while done < count:
            size = min(batch_size, count - done)
            latents = torch.randn(size, spec.latent_dim, generator=rng).to(device)
            labels = vocabulary.sample(size, rng).to(device) if vocabulary else None
            yield latents, labels
            done += size


def slerp(start: torch.Tensor, end: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between rows of `start` and `end` (Gaussian latents keep their typical norm);
    linear where the two are (nearly) parallel."""
    dot = (start * end).sum(-1, keepdim=True) / (start.norm(dim=-1, keepdim=True) * end.norm(dim=-1, keepdim=True))
    omega = torch.arccos(dot.clamp(-1.0, 1.0))
    sin = torch.sin(omega)
    linear = sin.abs() < 1e-6
    safe = torch.where(linear, torch.ones_like(sin), sin)
    spherical = (torch.sin((1 - t) * omega) * start + torch.sin(t * omega) * end) / safe
    return torch.where(linear, (1 - t) * start + t * end, spherical)


class ImageSignature(LatentSignature):
    """Images in; see the module docstring. What only makes sense for latents (seeds, walks) is refused."""

    name: ClassVar[str] = IMAGE

    def input_names(self, spec: ModelSpec) -> list[str]:
        return ["images"]

    def example_inputs(self, spec: ModelSpec, count: int) -> tuple[torch.Tensor, ...]:
        """Seeded images in [-1, 1] (export tracing)."""
        rng = torch.Generator().manual_seed(0)
        size = spec.input_size
        return (torch.rand(count, spec.input_bands, size, size, generator=rng) * 2 - 1,)

    def seeded_inputs(
        self, spec: ModelSpec, vocabulary: LabelVocabulary | None, count: int, seed: int, label: str | None = None
    ) -> Inputs:
        raise ValueError(
            "this generator translates images: pass images (n, "
            f"{spec.input_bands}, h, w) in [-1, 1], or use `atlas-gan {'upscale' if spec.scale > 1 else 'translate'}`"
            " on a scene; it draws nothing from a seed"
        )

    def request_inputs(
        self,
        model_input: Any,
        spec: ModelSpec,
        vocabulary: LabelVocabulary | None,
        seed: int,
        label: str | None = None,
    ) -> Inputs:
        if isinstance(model_input, dict):
            model_input = model_input.get("images", next(iter(model_input.values()), None))
        array = np.asarray(model_input, dtype=np.float32)
        if array.ndim != 4 or array.shape[1] != spec.input_bands:
            raise ValueError(f"images must have shape (n, {spec.input_bands}, h, w); got {array.shape}")
        return (torch.from_numpy(array),)

    def walk_inputs(self, *args: Any, **kwargs: Any) -> list[Inputs]:
        raise ValueError("an image-to-image generator has no latent space to walk")

    def label_names(self, inputs: Inputs, vocabulary: LabelVocabulary | None) -> list[str]:
        return []

    def random_batches(self, *args: Any, **kwargs: Any) -> Iterator[Inputs]:
        raise ValueError("an image-to-image generator is scored on held-out image pairs, not on random inputs")


SIGNATURES: dict[str, LatentSignature] = {LATENT: LatentSignature(), IMAGE: ImageSignature()}


def signature_of(meta: dict[str, Any]) -> LatentSignature:
    """The signature a checkpoint's or registered model's metadata records (default `latent`)."""
    name = meta.get("signature") or LATENT
    try:
        return SIGNATURES[name]
    except KeyError:
        raise ValueError(
            f"generator signature {name!r} is not known to this atlas-gan (known: {sorted(SIGNATURES)}); "
            "upgrade atlas-gan to use this model"
        ) from None
