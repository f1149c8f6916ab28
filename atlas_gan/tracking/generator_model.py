"""The registered generator as an MLflow pyfunc model: latents (or a count and a seed) -> images + band names.

Serialization, chosen deliberately: the EMA generator's `state_dict` (`generator.pt`, read back with
`torch.load(weights_only=True)`, so loading a model never unpickles code) plus `generator.json` (family, ModelSpec,
bands, normalization), rebuilt with atlas-gan's own model classes, which are logged with the model (`code_paths`).
Not torch.export (MLflow 3's default for `mlflow.pytorch`): an exported program is bound to traced shapes and
operators, and fixes eval-time choices such as StyleGAN2's truncation psi; the same module code gives the
registered model bit-identical images to the trainer's generator, on every family, with psi a predict parameter.
ONNX/TorchScript files come from `atlas-gan export` (`atlas_gan/export.py`). Not pickle: unsafe to load.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch

from atlas_gan.labels import LabelVocabulary
from atlas_gan.models.base import ModelSpec, generate_batched
from atlas_gan.runtime.generator import build_generator
from atlas_gan.runtime.signature import signature_of

WEIGHTS_ARTIFACT = "weights"
META_ARTIFACT = "meta"


def generator_from_files(weights_path: str, meta_path: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the generator from the two artifact files (CPU, eval mode)."""
    with open(meta_path) as handle:
        meta = json.load(handle)
    generator = build_generator(meta)
    generator.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return generator.eval(), meta


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """`predict(latents)` or `predict(None, params={"count": 16, "seed": 0})` -> {"images", "bands", "labels"}.

    images: float32 (n, bands, size, size) in [-1, 1] (the normalized units of the dataset; the `normalization` in
    the model's metadata maps them back to source units). A conditional generator takes `params={"label": "1990"}`
    (every sample of that label); without one, labels are drawn with the training data's frequencies from `seed`.
    An unknown label raises an error that lists the known ones. `params={"truncation_psi": 0.7}` applies the
    truncation trick (StyleGAN2 only; 1 = off).
    """

    def load_context(self, context) -> None:  # context: MLflow's PythonModelContext
        self.generator, self.meta = generator_from_files(
            context.artifacts[WEIGHTS_ARTIFACT], context.artifacts[META_ARTIFACT]
        )
        self.spec = ModelSpec(**self.meta["spec"])
        self.signature = signature_of(self.meta)
        self.vocabulary = LabelVocabulary.from_dict(self.meta.get("labels"))

    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> dict[str, Any]:
        params = params or {}
        count = int(params.get("count") or 0)
        seed = int(params.get("seed") or 0)
        label = params.get("label")
        if count > 0:
            inputs = self.signature.seeded_inputs(self.spec, self.vocabulary, count, seed, label)
        else:
            inputs = self.signature.request_inputs(model_input, self.spec, self.vocabulary, seed, label)
        batch = int(params.get("batch_size") or 256)
        psi = float(params.get("truncation_psi", 1.0))
        parts = generate_batched(self.generator, inputs, batch, psi)
        if parts:
            images = torch.cat(parts)
        else:
            size = self.spec.image_size
            images = torch.empty(0, len(self.meta["bands"]), size, size)
        names = self.signature.label_names(inputs, self.vocabulary)
        return {"images": images.float().numpy(), "bands": list(self.meta["bands"]), "labels": names}
