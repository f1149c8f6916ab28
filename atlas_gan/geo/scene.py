"""Open a scene as one band stack on one pixel grid and read it strip by strip with a validity mask.

A grouped scene whose bands differ in resolution is read on the finest band's grid: coarser bands go through a
GDAL WarpedVRT with the configured resampling. Bands that disagree in CRS, or whose extents differ by more than
one coarse pixel, make the scene invalid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from atlas_gan.geo.bands import SceneError, select_bands
from atlas_gan.geo.discovery import SceneSpec
from atlas_gan.storage import rasterio_env


@dataclass(frozen=True)
class _BandHandle:
    dataset: Any  # rasterio DatasetReader or WarpedVRT
    index: int  # 1-based band index within `dataset`
    nodata: float | None
    per_dataset_mask: bool  # GDAL mask/alpha must be read; otherwise the nodata value decides


class SceneReader:
    """Band-stacked, grid-aligned, strip-wise access to one scene. Use as a context manager."""

    def __init__(
        self,
        spec: SceneSpec,
        wanted: Sequence[str | int] | None,
        resampling: str,
        nodata_override: float | None,
        gdal_options: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self._stack = contextlib.ExitStack()
        self._env = rasterio_env(gdal_options)
        self._nodata_override = nodata_override
        try:
            self._stack.enter_context(self._env)
            self._open(wanted, Resampling[resampling])
        except BaseException:
            self._stack.close()
            raise

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _open_file(self, url: str) -> Any:
        try:
            return self._stack.enter_context(rasterio.open(url))
        except RasterioError as exc:
            raise SceneError(f"{url}: not a raster GDAL can read ({exc})") from exc

    def _open(self, wanted: Sequence[str | int] | None, resampling: Resampling) -> None:
        files = self.spec.files
        datasets = [self._open_file(f.url) for f in files]
        if self.spec.grouped:
            for f, ds in zip(files, datasets, strict=True):
                if ds.count != 1:
                    raise SceneError(f"{f.url}: band file {f.band} holds {ds.count} bands; expected 1")
            names = [f.band for f in files]
        else:
            ds = datasets[0]
            names = [d if d else str(i + 1) for i, d in enumerate(ds.descriptions)]
        positions = select_bands(names, wanted)
        self.band_names = [names[p] for p in positions]
        if self.spec.grouped:
            chosen = [datasets[p] for p in positions]
            self._check_grid(chosen, [files[p].url for p in positions])
            reference = min(chosen, key=lambda d: abs(d.res[0] * d.res[1]))
        else:
            chosen = [datasets[0]] * len(positions)
            reference = datasets[0]
        if reference.crs is None:
            raise SceneError(f"{reference.name}: has no CRS; georeferenced imagery is required")
        self.crs = reference.crs
        self.transform = reference.transform
        self.width, self.height = reference.width, reference.height
        self.resampled: list[str] = []
        self._bands: list[_BandHandle] = []
        for name, ds, pos in zip(self.band_names, chosen, positions, strict=True):
            index = 1 if self.spec.grouped else pos + 1
            if ds is not reference and (ds.transform != reference.transform or ds.shape != reference.shape):
                ds = self._stack.enter_context(
                    WarpedVRT(
                        ds,
                        crs=reference.crs,
                        transform=reference.transform,
                        width=reference.width,
                        height=reference.height,
                        resampling=resampling,
                    )
                )
                self.resampled.append(name)
            flags = ds.mask_flag_enums[index - 1]
            nodata = ds.nodata if ds.nodata is not None else self._nodata_override
            per_dataset = MaskFlags.per_dataset in flags or MaskFlags.alpha in flags
            self._bands.append(_BandHandle(ds, index, nodata, per_dataset))
        dtypes = {np.dtype(h.dataset.dtypes[h.index - 1]) for h in self._bands}
        self.dtype = np.result_type(*dtypes)

    def _check_grid(self, datasets: list[Any], urls: list[str]) -> None:
        first = datasets[0]
        coarsest = max(max(abs(d.res[0]), abs(d.res[1])) for d in datasets)
        for ds, url in zip(datasets[1:], urls[1:], strict=True):
            if ds.crs != first.crs:
                raise SceneError(f"{url}: CRS {ds.crs} differs from {urls[0]}'s {first.crs}")
            gap = max(abs(a - b) for a, b in zip(ds.bounds, first.bounds, strict=True))
            if gap > coarsest:
                raise SceneError(
                    f"{url}: extent {tuple(ds.bounds)} differs from {urls[0]}'s {tuple(first.bounds)} "
                    f"by {gap:g} (more than one coarse pixel, {coarsest:g})"
                )

    def read_strip(self, row: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [row, row+height) of every band: (data[bands, height, width], valid[height, width])."""
        window = Window(0, row, self.width, height)
        data = np.empty((len(self._bands), height, self.width), dtype=self.dtype)
        valid = np.ones((height, self.width), dtype=bool)
        for i, band in enumerate(self._bands):
            try:
                if band.dataset.dtypes[band.index - 1] == data.dtype:  # decode straight into the stack
                    values = band.dataset.read(band.index, window=window, out=data[i])
                else:
                    values = band.dataset.read(band.index, window=window)
                    data[i] = values
                if band.per_dataset_mask:
                    valid &= band.dataset.read_masks(band.index, window=window) > 0
            except RasterioError as exc:
                raise SceneError(f"{band.dataset.name}: read failed at rows {row}-{row + height}: {exc}") from exc
            if band.nodata is not None and not band.per_dataset_mask:
                valid &= values != band.nodata if not np.isnan(band.nodata) else ~np.isnan(values)
            if values.dtype.kind == "f":
                valid &= np.isfinite(values)
        return data, valid
