"""Cut a scene into tiles, strip by strip: keep tiles under the nodata limit, spool them raw, count the rest.

This is the first of ingest's two passes and runs in worker processes, one scene at a time. It reads every source
pixel once, in strips `tile_size` rows tall (memory is bounded by a strip, never a whole scene), accumulates the
per-band statistics of the kept tiles, and writes the kept tiles' raw values to a local spool file that the second
pass normalizes once the dataset-wide statistics are known.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from atlas_gan.config import IngestConfig
from atlas_gan.geo.discovery import SceneSpec
from atlas_gan.geo.scene import SceneError, SceneReader
from atlas_gan.geo.stats import BandStatistics, new_band_statistics


@dataclass
class SceneScan:
    """What pass 1 learned about one scene; `reason` is set when the scene is rejected."""

    spec: SceneSpec
    reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    tile_count: int = 0
    dropped_nodata: int = 0
    spool_path: str = ""
    dtype: str = ""
    # One entry per strip with kept tiles, in spool order: (row, columns, nodata fractions).
    strips: list[tuple[int, list[int], list[float]]] = field(default_factory=list)
    stats: list[BandStatistics] = field(default_factory=list)

    @property
    def bands(self) -> list[str]:
        return list(self.meta.get("bands", []))


def _epsg(crs: Any) -> int | None:
    try:
        return crs.to_epsg()
    except Exception:  # pyproj-free rasterio CRS may not resolve custom WKT; no EPSG then
        return None


def scan_scene(spec: SceneSpec, config: IngestConfig, gdal_options: dict[str, Any], spool_dir: str) -> SceneScan:
    """Pass 1 over one scene. Never raises for bad input: the reason is returned instead."""
    scan = SceneScan(spec)
    try:
        with SceneReader(spec, config.bands, config.resampling, config.nodata, gdal_options) as reader:
            _scan(reader, config, scan, spool_dir)
    except SceneError as exc:
        scan.reason = str(exc)
    except MemoryError:
        raise
    except Exception as exc:  # a reader library failing on a malformed file must not end the whole run
        scan.reason = f"unexpected {type(exc).__name__} while reading: {exc}"
    if scan.reason and scan.spool_path and os.path.exists(scan.spool_path):
        os.unlink(scan.spool_path)
    return scan


def _scan(reader: SceneReader, config: IngestConfig, scan: SceneScan, spool_dir: str) -> None:
    size, stride = config.tile_size, config.effective_stride
    scan.dtype = np.dtype(reader.dtype).name
    scan.meta = {
        "bands": reader.band_names,
        "dtype": scan.dtype,
        "crs": reader.crs.to_wkt(),
        "epsg": _epsg(reader.crs),
        "width": reader.width,
        "height": reader.height,
        "transform": list(reader.transform)[:6],
        "resampled": reader.resampled,
    }
    if reader.width < size or reader.height < size:
        raise SceneError(f"scene is {reader.width}x{reader.height} px, smaller than one {size} px tile")
    scan.stats = new_band_statistics(len(reader.band_names), config.normalization.float_sample_size)
    rng = np.random.default_rng(zlib.crc32(scan.spec.scene_id.encode()))
    scan.spool_path = os.path.join(spool_dir, f"{scan.spec.scene_id}.spool")
    limit = config.max_nodata_fraction
    with open(scan.spool_path, "wb") as spool:
        for row in range(0, reader.height - size + 1, stride):
            data, valid = reader.read_strip(row, size)
            # (bands, size, cols, size) -> (cols, bands, size, size): every tile of this strip, as views.
            tiles = sliding_window_view(data, size, axis=2)[:, :, ::stride].transpose(2, 0, 1, 3)
            masks = sliding_window_view(valid, size, axis=1)[:, ::stride].transpose(1, 0, 2)
            fractions = 1.0 - masks.mean(axis=(1, 2))
            keep = (fractions <= limit) & (fractions < 1.0)
            scan.dropped_nodata += int((~keep).sum())
            if not keep.any():
                continue
            kept_tiles, kept_masks = np.ascontiguousarray(tiles[keep]), np.ascontiguousarray(masks[keep])
            spool.write(kept_tiles.tobytes())
            spool.write(np.packbits(kept_masks, axis=None).tobytes())
            cols = [int(c) for c in np.flatnonzero(keep) * stride]
            scan.strips.append((row, cols, [float(f) for f in fractions[keep]]))
            scan.tile_count += len(cols)
            for band, stats in enumerate(scan.stats):
                stats.update(kept_tiles[:, band][kept_masks], rng)
    if scan.tile_count == 0:
        raise SceneError(
            f"no usable tile: all {scan.dropped_nodata} tiles of {size} px have more than "
            f"{limit:.0%} nodata (or none is valid)"
        )


def read_spool(scan: SceneScan, tile_size: int) -> Iterator[tuple[int, int, float, np.ndarray, np.ndarray]]:
    """Yield (row, col, nodata fraction, raw tile, valid mask) for every tile spooled by `scan_scene`."""
    bands, dtype = len(scan.bands), np.dtype(scan.dtype)
    pixels = tile_size * tile_size
    with open(scan.spool_path, "rb") as spool:
        for row, cols, fractions in scan.strips:
            count = len(cols)
            tiles = np.frombuffer(spool.read(count * bands * pixels * dtype.itemsize), dtype=dtype)
            tiles = tiles.reshape(count, bands, tile_size, tile_size)
            packed = np.frombuffer(spool.read((count * pixels + 7) // 8), dtype=np.uint8)
            masks = np.unpackbits(packed, count=count * pixels).astype(bool).reshape(count, tile_size, tile_size)
            for col, fraction, tile, mask in zip(cols, fractions, tiles, masks, strict=True):
                yield row, col, fraction, tile, mask
