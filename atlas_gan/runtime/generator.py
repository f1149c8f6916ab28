"""The generator of a training checkpoint, and the one description of a generator that travels with it (into
evaluation results, registered models and exports)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from atlas_gan.models import get_family
from atlas_gan.models.base import ModelSpec
from atlas_gan.runtime.checkpoint import load_checkpoint
from atlas_gan.runtime.signature import signature_of
from atlas_gan.storage import Storage

REFERENCE_GENERATORS = "reference_generators"  # recipe-state key of generators kept for comparison
INTERPOLATION = "interpolation"  # recipe-state key: {"reference": name, "alpha": a}, the served G's weight mix
META_KEYS = ("model", "signature", "spec", "bands", "input_bands", "labels", "normalization", "step", "images_seen")


def generator_meta(
    *,
    model: str,
    signature: str,
    spec: dict[str, Any],
    bands: list[str],
    labels: dict[str, Any] | None,
    normalization: dict[str, Any] | None,
    step: int,
    images_seen: int,
    input_bands: list[str] | None = None,
) -> dict[str, Any]:
    """What is needed to rebuild a generator and read its images: family, input signature, ModelSpec fields, the
    names of the bands it draws (and reads: `input_bands`, None for a latent generator), label vocabulary (None:
    unconditional), the dataset's normalization (every dataset band, by name), and how far it was trained."""
    return {
        "model": model,
        "signature": signature,
        "spec": spec,
        "bands": bands,
        "input_bands": input_bands,
        "labels": labels,
        "normalization": normalization,
        "step": step,
        "images_seen": images_seen,
    }


def build_generator(meta: dict[str, Any]) -> nn.Module:
    """An untrained generator of the family and spec `meta` describes."""
    signature_of(meta)  # refuse a generator this atlas-gan cannot feed before building anything
    return get_family(meta["model"]).generator(ModelSpec(**meta["spec"]))


def load_generator(
    store: Storage, url: str, ema: bool = True, interpolated: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """The (EMA) generator of a checkpoint, in eval mode on CPU, with its `generator_meta`. Where the recipe asked
    for network interpolation (recipe state `interpolation`: super-resolution's `train.model.interpolation`) the
    generator is the one it asked for, mixed with the kept reference; `interpolated=False`: the weights as trained."""
    state = load_checkpoint(store, url)
    name = state["generator"]["network"]
    meta = _meta_of(state)
    generator = build_generator(meta)
    generator.load_state_dict(state["ema"][name] if ema and name in state["ema"] else state["networks"][name])
    mix = (state.get("recipe_state") or {}).get(INTERPOLATION)
    if interpolated and mix is not None:
        reference = _references(state, meta)[mix["reference"]]
        return interpolate_generators(generator, reference, float(mix["alpha"])), meta
    return generator.eval(), meta


def load_reference_generators(store: Storage, url: str) -> dict[str, nn.Module]:
    """Generators a recipe kept beside its own to be scored against (recipe state `reference_generators`:
    name -> weights; super-resolution's pixel-loss model), in eval mode on CPU; {} when there are none."""
    state = load_checkpoint(store, url)
    return _references(state, _meta_of(state))


def interpolate_generators(gan: nn.Module, reference: nn.Module, alpha: float) -> nn.Module:
    """ESRGAN's network interpolation (Wang et al. 2018): a copy of `gan` whose floating-point weights are
    alpha x its own + (1 - alpha) x those of `reference`, the model it was fine-tuned from (super-resolution: the
    pixel-phase G). Between a GAN and the pixel-loss model it started from, this trades fidelity (PSNR) for
    realism (FID) more smoothly than retraining with other loss weights."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"interpolation alpha must be in [0, 1], got {alpha}")
    own, other = gan.state_dict(), reference.state_dict()
    if own.keys() != other.keys() or any(own[k].shape != other[k].shape for k in own):
        raise ValueError("network interpolation needs two generators of the same architecture")
    mixed = copy.deepcopy(gan)
    mixed.load_state_dict({k: torch.lerp(other[k], v, alpha) if v.is_floating_point() else v for k, v in own.items()})
    return mixed.eval()


def _references(state: dict[str, Any], meta: dict[str, Any]) -> dict[str, nn.Module]:
    kept = (state.get("recipe_state") or {}).get(REFERENCE_GENERATORS) or {}
    references = {}
    for name, weights in kept.items():
        generator = build_generator(meta)
        generator.load_state_dict(weights)
        references[name] = generator.eval()
    return references


def _meta_of(state: dict[str, Any]) -> dict[str, Any]:
    return generator_meta(
        model=state["model"],
        signature=state["generator"]["signature"],
        spec=state["spec"],
        bands=state["bands"],
        input_bands=state.get("input_bands"),
        labels=state.get("labels"),
        normalization=state["normalization"],
        step=state["step"],
        images_seen=state["images_seen"],
    )
