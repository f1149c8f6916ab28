"""Generate tiles from a registered model or a checkpoint, and write them as a PNG grid or as GeoTIFFs.

GeoTIFFs carry the band names as band descriptions and, by default, values mapped back to the source units with
the dataset's normalization (`values="model"` keeps [-1, 1]). Synthetic tiles are nowhere on Earth, so no CRS or
geotransform is written unless the caller asks for one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from atlas_gan.labels import LabelVocabulary
from atlas_gan.models.base import ModelSpec, generate_batched
from atlas_gan.preview import band_positions, tile_grid
from atlas_gan.runtime.signature import signature_of
from atlas_gan.runtime.walk import latent_walk


@dataclass
class Sampler:
    """A generator and what is needed to interpret its images."""

    generator: torch.nn.Module
    meta: dict[str, Any]  # atlas_gan.runtime.generator.generator_meta
    source: str
    version: str | None = None  # the registered model version behind a models:/ URI

    def provenance(self, seed: int, truncation_psi: float = 1.0, label: str | None = None) -> dict[str, Any]:
        """Tags that say where generated tiles came from: model URI and version, family, step, seed, truncation,
        label (None values are left out)."""
        return {
            "atlas_model_uri": self.source,
            "atlas_model_version": self.version,
            "atlas_model_family": self.meta.get("model"),
            "atlas_training_step": self.meta.get("step"),
            "atlas_seed": seed,
            "atlas_truncation_psi": truncation_psi,
            "atlas_label": label,
        }

    @property
    def bands(self) -> list[str]:
        return list(self.meta["bands"])

    @property
    def vocabulary(self) -> LabelVocabulary | None:
        return LabelVocabulary.from_dict(self.meta.get("labels"))

    def generate(
        self,
        count: int,
        seed: int = 0,
        label: str | None = None,
        batch_size: int = 256,
        truncation_psi: float = 1.0,
    ) -> np.ndarray:
        """(count, bands, size, size) float32 in [-1, 1]; the same seed (and label) gives the same tiles.
        A conditional generator draws `label` (or, without one, labels in the training data's proportions).
        `truncation_psi` < 1 (stylegan2, biggan) trades variety for typical-looking tiles."""
        inputs = signature_of(self.meta).seeded_inputs(
            ModelSpec(**self.meta["spec"]), self.vocabulary, count, seed, label
        )
        parts = generate_batched(self.generator, inputs, batch_size, truncation_psi)
        return torch.cat(parts).float().numpy()

    def walk(self, walks: int, seed: int = 0, label: str | None = None, **options: Any) -> np.ndarray:
        """A looping latent walk (`atlas_gan.runtime.walk.latent_walk`, whose keyword options it takes):
        (frames, walks, bands, size, size) in [-1, 1]."""
        return latent_walk(self.generator, self.meta, walks, seed, label, **options)


def is_mlflow_uri(uri: str) -> bool:
    return uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/"))


def load_sampler(uri: str, storage_settings: Any = None, tracking: str | None = None) -> Sampler:
    """`models:/name@alias`, `models:/name/3`, `runs:/id/generator` (MLflow, from the `tracking` store), or a
    checkpoint path / s3:// URL."""
    if is_mlflow_uri(uri):
        from atlas_gan.tracking.registry import load_registered_generator, registered_version

        generator, meta = load_registered_generator(uri, tracking)
        return Sampler(generator, meta, uri, registered_version(uri, tracking))
    from atlas_gan.runtime.generator import load_generator
    from atlas_gan.storage import storage_for

    generator, meta = load_generator(storage_for(uri, storage_settings), uri)
    return Sampler(generator, meta, uri)


def load_configured_sampler(uri: str, config: Any, tracking: str | None = None) -> Sampler:
    """`load_sampler` with the MLflow store and S3 settings of a resolved config (an AtlasConfig); `tracking`
    overrides the configured store."""
    if tracking is None and is_mlflow_uri(uri):
        from atlas_gan.tracking.store import tracking_uri

        tracking = tracking_uri(config.tracking)
    return load_sampler(uri, config.storage, tracking)


def grid_png(images: np.ndarray, bands: list[str], display: list[str] | None, columns: int | None = None) -> bytes:
    """PNG of images in [-1, 1] as an RGB grid of the display bands (default: the first three)."""
    from PIL import Image

    tiles = list((images + 1.0) / 2.0)
    columns = columns or max(1, int(len(tiles) ** 0.5))
    buffer = io.BytesIO()
    Image.fromarray(tile_grid(tiles, band_positions(bands, display), columns)).save(buffer, format="PNG")
    return buffer.getvalue()


def physical_values(images: np.ndarray, normalization: dict[str, Any] | None) -> np.ndarray:
    """[-1, 1] model output -> source units (reflectance / DN) with the dataset's per-band normalization."""
    from atlas_gan.geo.normalize import Normalization

    if normalization is None:
        raise ValueError("this generator carries no normalization: write --values model instead")
    norm = Normalization.from_manifest(normalization)
    return np.stack([norm.invert((tile + 1.0) / 2.0) for tile in images]).astype(np.float32)


def write_geotiffs(
    images: np.ndarray,
    bands: list[str],
    folder: Path,
    normalization: dict[str, Any] | None = None,
    values: Literal["physical", "model"] = "physical",
    crs: str | None = None,
    pixel_size: float = 1.0,
    prefix: str = "sample",
    tags: dict[str, Any] | None = None,
) -> list[Path]:
    """One Cloud-Optimized GeoTIFF per tile (float32, band descriptions = band names), each written atomically.
    `tags` (e.g. `Sampler.provenance`) go into every file, with the tile's index among the generated ones."""
    from rasterio.transform import from_origin

    from atlas_gan.geo.cog import write_cog

    data = physical_values(images, normalization) if values == "physical" else images.astype(np.float32)
    transform = from_origin(0.0, data.shape[2] * pixel_size, pixel_size, pixel_size) if crs is not None else None
    shared = {"generator": "atlas-gan", "values": values, **(tags or {})}
    return [
        write_cog(folder / f"{prefix}-{index:05d}.tif", tile, bands, {**shared, "atlas_tile": index}, crs, transform)
        for index, tile in enumerate(data)
    ]
