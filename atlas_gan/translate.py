"""Translate (or upscale) a whole georeferenced scene with an image-to-image generator, into a Cloud-Optimized
GeoTIFF.

The scene is read a strip at a time (memory bounded by a strip of `tile` rows, whatever the scene's size). It is
cut into tiles of the generator's size overlapping by half a tile; each translated tile is weighted by a separable
sin^2 window before it is added in, and with a stride of half a tile these windows sum to exactly 1 everywhere (sin^2
+ cos^2), so tile borders leave no seam. The scene is padded by reflection so its edges get the same treatment.

Inputs are normalized with the model's stored statistics (the dataset's per-band offset and scale; nodata -> -1, as
in training); outputs are mapped back to the target bands' physical units, float32, NaN where the input had no
valid pixel. A super-resolution generator (`spec.scale` k > 1) reads tiles of `spec.input_size` and draws tiles k
times larger across; the output has k x k pixels per input pixel, over the same extent (the transform's pixel size
divided by k). The COG keeps the input's CRS (and extent), names the target bands and carries tags naming the model
(URI, version, family, step) and the translation. Written to a temp file and renamed (or uploaded) when complete.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from atlas_gan.geo.bands import SceneError, select_bands
from atlas_gan.geo.cog import cog_block_size
from atlas_gan.models.base import ModelSpec
from atlas_gan.runtime.signature import IMAGE
from atlas_gan.sampling import Sampler
from atlas_gan.storage import S3Storage, is_s3, rasterio_env, storage_for

OUTPUT_NODATA = float("nan")


@dataclass(frozen=True)
class TranslationReport:
    output: str
    width: int
    height: int
    input_bands: list[str]
    output_bands: list[str]
    tiles: int
    seconds: float


def blend_window(size: int) -> np.ndarray:
    """(size, size) weights, sin^2 in each direction: shifted by size / 2 they sum to 1."""
    ramp = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    return np.outer(ramp, ramp)


def _pad_reflect(block: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Pad the last two axes by reflection (by repeating the edge where the block is too small to reflect)."""
    height, width = block.shape[-2:]
    mode = "reflect" if height > max(top, bottom) and width > max(left, right) else "edge"
    return np.pad(block, [(0, 0)] * (block.ndim - 2) + [(top, bottom), (left, right)], mode=mode)


class SceneTranslator:
    """One generator, ready to translate scenes: input/output bands, normalization, tile geometry."""

    def __init__(self, sampler: Sampler, batch_size: int = 32, device: str | None = None) -> None:
        meta = sampler.meta
        if meta.get("signature") != IMAGE:
            raise ValueError(
                f"{sampler.source}: a {meta.get('model')} generator draws from latent vectors; translate needs an "
                "image-to-image model (pix2pix, esrgan)"
            )
        self.sampler, self.meta = sampler, meta
        self.spec = ModelSpec(**meta["spec"])
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.generator = sampler.generator.eval().to(self.device)
        self.batch_size = batch_size
        by_name = {b["name"]: b for b in meta["normalization"]["bands"]}
        self.dataset_bands = [b["name"] for b in meta["normalization"]["bands"]]
        self.input_bands, self.output_bands = list(meta["input_bands"]), list(meta["bands"])
        self.in_offset = np.array([by_name[b]["offset"] for b in self.input_bands], np.float32)
        self.in_scale = np.array([by_name[b]["scale"] for b in self.input_bands], np.float32)
        self.out_offset = np.array([by_name[b]["offset"] for b in self.output_bands], np.float32)
        self.out_scale = np.array([by_name[b]["scale"] for b in self.output_bands], np.float32)
        self.scale = self.spec.scale  # > 1: super-resolution, the output has scale x scale pixels per input pixel
        self.tile = self.spec.input_size  # input pixels per tile
        self.stride = self.tile // 2
        self.window = blend_window(self.tile * self.scale).astype(np.float32)

    def band_indexes(self, descriptions: list[str | None], count: int, url: str) -> list[int]:
        """1-based indexes of the model's input bands in the scene: by band description (a model trained on a
        paired source's bands, `B4_pair`, finds them in that source's own scene as `B4`), or, for a scene without
        descriptions that has all the dataset's bands, by the dataset's band order."""
        names = [d if d else str(i + 1) for i, d in enumerate(descriptions)]
        try:
            return [i + 1 for i in select_bands(names, self.input_bands)]
        except SceneError as exc:
            error = exc
        try:
            return [i + 1 for i in select_bands(names, [band.rsplit("_", 1)[0] for band in self.input_bands])]
        except SceneError:
            pass
        if count == len(self.dataset_bands) and not any(descriptions):
            return [i + 1 for i in select_bands(self.dataset_bands, self.input_bands)]
        raise ValueError(
            f"{url}: {error}; the model reads bands {self.input_bands} of a dataset with bands "
            f"{self.dataset_bands} (name the scene's bands, or pass a scene with the dataset's bands in order)"
        )

    def normalize(self, raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Raw input bands -> the training range [-1, 1]; invalid pixels -1 (normalized 0, as ingest writes)."""
        normalized = (raw.astype(np.float32) - self.in_offset[:, None, None]) / self.in_scale[:, None, None]
        normalized = np.where(valid[None], normalized, 0.0)
        return np.clip(normalized * 2.0 - 1.0, -1.0, 1.0)

    def physical(self, translated: np.ndarray) -> np.ndarray:
        """[-1, 1] -> the target bands' source units."""
        return (translated + 1.0) / 2.0 * self.out_scale[:, None, None] + self.out_offset[:, None, None]

    @torch.no_grad()
    def translate_tiles(self, tiles: np.ndarray) -> np.ndarray:
        """(n, input bands, t, t) in [-1, 1] -> (n, output bands, t, t) in [-1, 1]."""
        parts = []
        for start in range(0, len(tiles), self.batch_size):
            batch = torch.from_numpy(tiles[start : start + self.batch_size]).to(self.device)
            parts.append(self.generator(batch).float().cpu().numpy())
        return np.concatenate(parts)

    def strips(self, dataset: Any, indexes: list[int], progress: bool) -> Iterator[tuple[int, np.ndarray]]:
        """(first input row, translated rows in [-1, 1]) of the scene, top to bottom, `stride` input rows at a
        time (`stride` x scale output rows)."""
        from rasterio.windows import Window

        tile, stride, height, width = self.tile, self.stride, dataset.height, dataset.width
        k = self.scale
        padded_width = math.ceil(width / stride) * stride + tile  # `stride` of padding left, the rest right
        rows = math.ceil(height / stride) + 1  # tile rows: their first halves cover the padded scene
        columns = (padded_width - tile) // stride + 1
        outputs = len(self.output_bands)
        accumulated = np.zeros((outputs, tile * k, padded_width * k), np.float32)
        verb = "upscale" if k > 1 else "translate"
        for row in tqdm(range(rows), desc=verb, unit="row", disable=not progress):
            top = row * stride - stride  # scene row of the tile row's first line (negative: padding)
            first, last = max(top, 0), min(top + tile, height)
            window = Window(0, first, width, max(last - first, 0))
            if last > first:
                raw = dataset.read(indexes, window=window).astype(np.float32)
                masks = dataset.read_masks(indexes, window=window)
                valid = (masks > 0).all(axis=0) & np.isfinite(raw).all(axis=0)
                strip = self.normalize(raw, valid)
                strip = _pad_reflect(strip, first - top, top + tile - last, stride, padded_width - width - stride)
            else:
                strip = np.full((len(indexes), tile, padded_width), -1.0, np.float32)
            tiles = np.stack([strip[:, :, c * stride : c * stride + tile] for c in range(columns)])
            translated = self.translate_tiles(tiles) * self.window
            for c in range(columns):
                accumulated[:, :, c * stride * k : (c * stride + tile) * k] += translated[c]
            yield top, accumulated[:, : stride * k, stride * k : (stride + width) * k].copy()
            accumulated[:, : stride * k] = accumulated[:, stride * k :]
            accumulated[:, stride * k :] = 0.0

    def tiles_for(self, height: int, width: int) -> int:
        """How many tiles a scene of this size takes."""
        columns = (math.ceil(width / self.stride) * self.stride) // self.stride + 1
        return (math.ceil(height / self.stride) + 1) * columns

    def tags(self) -> dict[str, Any]:
        provenance = self.sampler.provenance(seed=0)
        return {
            "atlas_model_uri": provenance["atlas_model_uri"],
            "atlas_model_version": provenance["atlas_model_version"],
            "atlas_model_family": provenance["atlas_model_family"],
            "atlas_training_step": provenance["atlas_training_step"],
            "atlas_translation": f"{','.join(self.input_bands)} -> {','.join(self.output_bands)}"
            + (f", x{self.scale} super-resolution" if self.scale > 1 else ""),
            "atlas_values": "target bands in the source's physical units (inverse of the dataset normalization)",
        }


def translate_scene(
    translator: SceneTranslator,
    source: str,
    output: str,
    storage_settings: Any = None,
    progress: bool = True,
) -> TranslationReport:
    """Translate the scene at `source` (local path or s3://) into a COG at `output` (local path or s3://)."""
    import rasterio
    import rasterio.errors
    import rasterio.shutil
    from rasterio import Affine
    from rasterio.windows import Window

    started = time.perf_counter()
    gdal = S3Storage(storage_settings).gdal_options() if is_s3(source) or is_s3(output) else {}
    local_target = Path(tempfile.gettempdir()) if is_s3(output) else Path(output).resolve().parent
    local_target.mkdir(parents=True, exist_ok=True)
    name = Path(output).name
    with rasterio_env(gdal), tempfile.TemporaryDirectory(prefix=f".{name}.", dir=local_target) as work:
        try:
            dataset = rasterio.open(source)
        except rasterio.errors.RasterioError as exc:
            raise ValueError(f"{source}: not a raster GDAL can read ({exc})") from None
        with dataset:
            if dataset.crs is None:
                raise ValueError(f"{source}: has no CRS; translate writes a georeferenced scene")
            indexes = translator.band_indexes(list(dataset.descriptions), dataset.count, source)
            height, width, k = dataset.height, dataset.width, translator.scale
            staged = Path(work) / "staged.tif"
            profile = {
                "driver": "GTiff",
                "dtype": "float32",
                "count": len(translator.output_bands),
                "height": height * k,
                "width": width * k,
                "crs": dataset.crs,
                "transform": dataset.transform * Affine.scale(1 / k),  # the same extent, pixels k times finer
                "nodata": OUTPUT_NODATA,
                "tiled": True,
                "blockxsize": 256,
                "blockysize": 256,
                "compress": "deflate",
                "BIGTIFF": "IF_SAFER",
            }
            with rasterio.open(staged, "w", **profile) as out:
                out.descriptions = tuple(translator.output_bands)
                out.update_tags(**{k: str(v) for k, v in translator.tags().items() if v is not None})
                for top, rows in translator.strips(dataset, indexes, progress):
                    first, last = max(top, 0), min(top + translator.stride, height)
                    if last <= first:
                        continue
                    block = translator.physical(rows[:, (first - top) * k : (last - top) * k])
                    window = Window(0, first, width, last - first)
                    valid = (dataset.read_masks(indexes, window=window) > 0).all(axis=0)
                    valid = valid.repeat(k, axis=0).repeat(k, axis=1)
                    written = Window(0, first * k, width * k, (last - first) * k)
                    out.write(np.where(valid[None], block, OUTPUT_NODATA).astype(np.float32), window=written)
        cog = Path(work) / name
        rasterio.shutil.copy(
            staged,
            cog,
            driver="COG",
            compress="DEFLATE",
            predictor="3",
            blocksize=cog_block_size(height * k, width * k),
            overviews="AUTO",
            overview_resampling="AVERAGE",
        )
        if is_s3(output):
            storage_for(output, storage_settings).put_file(cog, output)
        else:
            os.replace(cog, Path(output))
    return TranslationReport(
        output,
        width * k,
        height * k,
        translator.input_bands,
        translator.output_bands,
        translator.tiles_for(height, width),
        time.perf_counter() - started,
    )
