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
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
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
    coverage_band: int | None = None  # a warped source without nodata: its added alpha, 0 where it is absent


class SceneReader:
    """Band-stacked, grid-aligned, strip-wise access to one scene. Use as a context manager."""

    def __init__(
        self,
        spec: SceneSpec,
        wanted: Sequence[str | int] | None,
        resampling: str,
        nodata_override: float | None,
        gdal_options: dict[str, Any] | None = None,
        partner_bands: Sequence[str | int] | None = None,
        partner_suffix: str = "pair",
    ) -> None:
        self.spec = spec
        self._stack = contextlib.ExitStack()
        self._env = rasterio_env(gdal_options)
        self._nodata_override = nodata_override
        try:
            self._stack.enter_context(self._env)
            self._open(wanted, Resampling[resampling])
            if spec.partner is not None:
                self._open_partner(spec.partner, partner_bands, partner_suffix, Resampling[resampling])
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

    def _open_group(
        self, spec: SceneSpec, wanted: Sequence[str | int] | None
    ) -> tuple[list[str], list[Any], list[int], Any]:
        """One scene's chosen bands: (names, datasets, 1-based band indexes, its finest dataset)."""
        files = spec.files
        datasets = [self._open_file(f.url) for f in files]
        if spec.grouped:
            for f, ds in zip(files, datasets, strict=True):
                if ds.count != 1:
                    raise SceneError(f"{f.url}: band file {f.band} holds {ds.count} bands; expected 1")
            names = [f.band for f in files]
        else:
            ds = datasets[0]
            names = [d if d else str(i + 1) for i, d in enumerate(ds.descriptions)]
        positions = select_bands(names, wanted)
        if spec.grouped:
            chosen = [datasets[p] for p in positions]
            self._check_grid(chosen, [files[p].url for p in positions])
            reference = min(chosen, key=lambda d: abs(d.res[0] * d.res[1]))
        else:
            chosen = [datasets[0]] * len(positions)
            reference = datasets[0]
        if reference.crs is None:
            raise SceneError(f"{reference.name}: has no CRS; georeferenced imagery is required")
        indexes = [1 if spec.grouped else p + 1 for p in positions]
        return [names[p] for p in positions], chosen, indexes, reference

    def _open(self, wanted: Sequence[str | int] | None, resampling: Resampling) -> None:
        names, chosen, indexes, reference = self._open_group(self.spec, wanted)
        self.crs = reference.crs
        self.transform = reference.transform
        self.width, self.height = reference.width, reference.height
        self.band_names: list[str] = []
        self.resampled: list[str] = []
        self._bands: list[_BandHandle] = []
        self._vrts: dict[int, Any] = {}  # id(source dataset) -> its WarpedVRT onto this grid
        for name, ds, index in zip(names, chosen, indexes, strict=True):
            self._add_band(name, ds, index, resampling)
        self._set_dtype()

    def _open_partner(
        self, partner: SceneSpec, wanted: Sequence[str | int] | None, suffix: str, resampling: Resampling
    ) -> None:
        """The partner scene's bands, reprojected onto this scene's grid and named `<band>_<suffix>`; a partner whose
        footprint misses this scene is an error naming both."""
        names, chosen, indexes, reference = self._open_group(partner, wanted)
        left, bottom, right, top = transform_bounds(reference.crs, self.crs, *reference.bounds)
        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        if right <= west or left >= east or top <= south or bottom >= north:
            raise SceneError(
                f"paired with {partner.scene_id} ({partner.files[0].url}): the footprints do not overlap "
                f"(in {self.crs}: this scene spans x {west:.6g}..{east:.6g}, y {south:.6g}..{north:.6g}; "
                f"the partner x {left:.6g}..{right:.6g}, y {bottom:.6g}..{top:.6g})"
            )
        for name, ds, index in zip(names, chosen, indexes, strict=True):
            self._add_band(f"{name}_{suffix}", ds, index, resampling)
        self._set_dtype()

    def _add_band(self, name: str, ds: Any, index: int, resampling: Resampling) -> None:
        """One band, warped onto the scene's grid when it is on another."""
        flags = ds.mask_flag_enums[index - 1]
        nodata = ds.nodata if ds.nodata is not None else self._nodata_override
        per_dataset = MaskFlags.per_dataset in flags or MaskFlags.alpha in flags
        coverage_band = None
        if ds.crs != self.crs or ds.transform != self.transform or ds.shape != (self.height, self.width):
            # GDAL's warp keeps the source's nodata (outside the source is nodata too); a source with neither nodata
            # nor a mask gets an alpha band, which says where it covers
            add_alpha = ds.nodata is None and not per_dataset
            ds = self._warped(ds, resampling, add_alpha)
            coverage_band = ds.count if add_alpha else None
            self.resampled.append(name)
        self.band_names.append(name)
        self._bands.append(_BandHandle(ds, index, nodata, per_dataset, coverage_band))

    def _warped(self, ds: Any, resampling: Resampling, add_alpha: bool) -> Any:
        """`ds` warped onto the scene's grid, once per source dataset (a multi-band partner's bands share it)."""
        if id(ds) not in self._vrts:
            grid = {"crs": self.crs, "transform": self.transform, "width": self.width, "height": self.height}
            self._vrts[id(ds)] = self._stack.enter_context(
                WarpedVRT(ds, resampling=resampling, add_alpha=add_alpha, **grid)
            )
        return self._vrts[id(ds)]

    def _set_dtype(self) -> None:
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
        covered: set[int] = set()  # warped datasets whose coverage this strip already applied
        for i, band in enumerate(self._bands):
            try:
                if band.dataset.dtypes[band.index - 1] == data.dtype:  # decode straight into the stack
                    values = band.dataset.read(band.index, window=window, out=data[i])
                else:
                    values = band.dataset.read(band.index, window=window)
                    data[i] = values
                if band.per_dataset_mask:
                    valid &= band.dataset.read_masks(band.index, window=window) > 0
                if band.coverage_band is not None and id(band.dataset) not in covered:
                    valid &= band.dataset.read(band.coverage_band, window=window) > 0
                    covered.add(id(band.dataset))
            except RasterioError as exc:
                raise SceneError(f"{band.dataset.name}: read failed at rows {row}-{row + height}: {exc}") from exc
            if band.nodata is not None and not band.per_dataset_mask:
                valid &= values != band.nodata if not np.isnan(band.nodata) else ~np.isnan(values)
            if values.dtype.kind == "f":
                valid &= np.isfinite(values)
        return data, valid
