"""Generate tiles from a registered model or a checkpoint, and write them as a PNG grid or as GeoTIFFs.

GeoTIFFs carry the band names as band descriptions and, by default, values mapped back to the source units with
the dataset's normalization (`values="model"` keeps [-1, 1]). Synthetic tiles are nowhere on Earth, so no CRS or
geotransform is written unless the caller asks for one.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from atlas_gan.labels import LabelVocabulary
from atlas_gan.models.base import ModelSpec, generate_batched
from atlas_gan.preview import band_positions, tile_grid
from atlas_gan.runtime.signature import signature_of


@dataclass
class Sampler:
    """A generator and what is needed to interpret its images."""

    generator: torch.nn.Module
    meta: dict[str, Any]  # atlas_gan.runtime.generator.generator_meta
    source: str

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
        `truncation_psi` < 1 (StyleGAN2) trades variety for typical-looking tiles."""
        inputs = signature_of(self.meta).seeded_inputs(
            ModelSpec(**self.meta["spec"]), self.vocabulary, count, seed, label
        )
        parts = generate_batched(self.generator, inputs, batch_size, truncation_psi)
        return torch.cat(parts).float().numpy()


def is_mlflow_uri(uri: str) -> bool:
    return uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/"))


def load_sampler(uri: str, storage_settings: Any = None, tracking: str | None = None) -> Sampler:
    """`models:/name@alias`, `models:/name/3`, `runs:/id/generator` (MLflow, from the `tracking` store), or a
    checkpoint path / s3:// URL."""
    if is_mlflow_uri(uri):
        from atlas_gan.tracking.registry import load_registered_generator

        generator, meta = load_registered_generator(uri, tracking)
        return Sampler(generator, meta, uri)
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
) -> list[Path]:
    """One float32 GeoTIFF per tile, band descriptions = band names; each written to a temp name then renamed."""
    import rasterio
    import rasterio.errors
    from rasterio.transform import from_origin

    data = physical_values(images, normalization) if values == "physical" else images.astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "dtype": "float32",
        "count": data.shape[1],
        "height": data.shape[2],
        "width": data.shape[3],
        "compress": "deflate",
    }
    if crs is not None:
        profile["crs"] = crs
        profile["transform"] = from_origin(0.0, data.shape[2] * pixel_size, pixel_size, pixel_size)
    written = []
    with warnings.catch_warnings():  # no CRS on synthetic tiles is on purpose, not worth a warning per file
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        for index, tile in enumerate(data):
            path = folder / f"{prefix}-{index:05d}.tif"
            handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
            os.close(handle)
            try:
                with rasterio.open(temp, "w", **profile) as dst:
                    dst.write(tile)
                    dst.descriptions = tuple(bands)
                    dst.update_tags(generator="atlas-gan", values=values)
                os.replace(temp, path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
            written.append(path)
    return written
