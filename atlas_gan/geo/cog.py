"""Cloud-Optimized GeoTIFFs: tiled, deflate-compressed, with overviews, written atomically (GDAL's COG driver).

GDAL's COG driver only copies an existing dataset, so the raster is built in memory as a plain GeoTIFF (values,
band descriptions, tags, georeferencing) and copied into the COG layout in a temp file beside the target, which
is then renamed into place.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def cog_block_size(height: int, width: int) -> int:
    """Internal tile size: half the smaller side (so even a small tile gets one overview), a multiple of 16 in
    [16, 512]."""
    return int(np.clip(min(height, width) // 2 // 16 * 16, 16, 512))


def write_cog(
    path: Path,
    data: np.ndarray,
    band_names: Sequence[str],
    tags: dict[str, Any],
    crs: Any = None,
    transform: Any = None,
    nodata: float | None = None,
) -> Path:
    """Write (bands, height, width) `data` as a COG at `path`; `tags` become dataset metadata (values as str)."""
    import rasterio
    import rasterio.errors
    import rasterio.shutil
    from rasterio.io import MemoryFile

    bands, height, width = data.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "dtype": data.dtype.name,
        "count": bands,
        "height": height,
        "width": width,
        "nodata": nodata,
    }
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        with warnings.catch_warnings():  # synthetic tiles without a CRS are not georeferenced, on purpose
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with MemoryFile() as memory, memory.open(**profile) as staged:
                staged.write(data)
                staged.descriptions = tuple(band_names)
                staged.update_tags(**{key: str(value) for key, value in tags.items() if value is not None})
                rasterio.shutil.copy(
                    staged,
                    temp,
                    driver="COG",
                    compress="DEFLATE",
                    predictor="3" if np.issubdtype(data.dtype, np.floating) else "2",
                    blocksize=cog_block_size(height, width),
                    overviews="AUTO",
                    overview_resampling="AVERAGE",
                )
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
