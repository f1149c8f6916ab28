"""The footprint map of a dataset: scene outlines and how many tiles cover each place, in lon/lat."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from atlas_gan.figures.canvas import new_figure, png_bytes

MAX_LEGEND_SCENES = 12
CELLS = 120  # cells across the longer side of the map


def footprint_map_png(outlines: dict[str, Any], tiles: np.ndarray, title: str, width_px: int = 1000) -> bytes:
    """`outlines`: scene id -> shapely polygon (lon/lat); `tiles`: the tiles' footprints (shapely polygons, lon/lat).
    Cells are shaded by how many tiles cover them (stacked scenes of one place add up), under the scene outlines;
    scenes too small to see at the map's scale get a ring marker."""
    import shapely

    tile_bounds = shapely.bounds(tiles) if len(tiles) else np.zeros((0, 4))
    west, south, east, north = _bounds(outlines, tile_bounds)
    shape = (north - south) / max((east - west) * math.cos(math.radians((south + north) / 2)), 1e-9)
    figure = new_figure(width_px, int(np.clip(width_px * 0.6 * shape + 220, 420, 1.2 * width_px)))
    axes = figure.add_subplot()
    span = max(east - west, north - south, 1e-6)
    cell = span / CELLS
    if len(tiles):
        columns, rows = int(np.ceil((east - west) / cell)) + 1, int(np.ceil((north - south) / cell)) + 1
        counts = coverage(tiles, tile_bounds, west, north, cell, rows, columns)
        x_edges = west + cell * np.arange(columns + 1)
        y_edges = north - cell * np.arange(rows + 1)
        image = axes.pcolormesh(
            x_edges,
            y_edges,
            np.ma.masked_equal(counts, 0),
            cmap="viridis",
            shading="flat",
            vmin=0,
            vmax=max(int(counts.max()), 1),
        )
        km = cell * 111.32 * math.cos(math.radians((south + north) / 2))
        figure.colorbar(
            image, ax=axes, orientation="horizontal", shrink=0.6, label=f"tiles covering each cell ({km:.3g} km wide)"
        )
    colours = _colours(len(outlines))
    for (scene, outline), colour in zip(outlines.items(), colours, strict=True):
        x, y = outline.exterior.xy
        axes.plot(x, y, color=colour, linewidth=1.4, label=scene)
        w, s, e, n = outline.bounds
        if max(e - w, n - s) < span / 100:  # invisible as an outline at this scale
            axes.plot([(w + e) / 2], [(s + n) / 2], marker="o", markersize=9, fillstyle="none", color=colour)
    if 0 < len(outlines) <= MAX_LEGEND_SCENES:
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", title="scenes")
    margin = 0.05 * span
    axes.set_xlim(west - margin, east + margin)
    axes.set_ylim(south - margin, north + margin)
    axes.set_aspect(1.0 / max(math.cos(math.radians((south + north) / 2)), 0.01))  # metres look square
    axes.set_xlabel("longitude (°)")
    axes.set_ylabel("latitude (°)")
    axes.grid(True, linewidth=0.3, alpha=0.5)
    axes.set_title(title, fontsize="medium")
    return png_bytes(figure)


def coverage(
    tiles: np.ndarray, bounds: np.ndarray, west: float, north: float, cell: float, rows: int, columns: int
) -> np.ndarray:
    """(rows, columns) count of tiles covering each cell's centre, north row first (GDAL's rasterize, adding up).
    Tiles smaller than a cell count in every cell they touch instead, so none vanishes."""
    from rasterio.enums import MergeAlg
    from rasterio.features import rasterize
    from rasterio.transform import from_origin

    smaller = np.median(np.minimum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])) < cell
    return rasterize(
        ((shape, 1) for shape in _geojson_polygons(tiles)),
        out_shape=(rows, columns),
        transform=from_origin(west, north, cell, cell),
        all_touched=bool(smaller),
        merge_alg=MergeAlg.add,
        dtype="int32",
    )


def _geojson_polygons(polygons: np.ndarray) -> list[dict[str, Any]]:
    """GeoJSON mappings of single-ring polygons, built from all their coordinates at once: a shapely polygon's own
    `__geo_interface__` costs ~100 us each, which made the map the largest per-tile cost of an ingest."""
    import shapely

    coordinates = shapely.get_coordinates(polygons).tolist()
    ends = np.cumsum(shapely.get_num_coordinates(polygons)).tolist()
    starts = [0, *ends[:-1]]
    return [{"type": "Polygon", "coordinates": [coordinates[a:b]]} for a, b in zip(starts, ends, strict=True)]


def _bounds(outlines: dict[str, Any], tile_bounds: np.ndarray) -> tuple[float, float, float, float]:
    boxes = [outline.bounds for outline in outlines.values()]
    if len(tile_bounds):
        boxes.append((*tile_bounds[:, :2].min(axis=0), *tile_bounds[:, 2:].max(axis=0)))
    if not boxes:
        return (-1.0, -1.0, 1.0, 1.0)
    array = np.asarray(boxes)
    return float(array[:, 0].min()), float(array[:, 1].min()), float(array[:, 2].max()), float(array[:, 3].max())


def _colours(count: int) -> list[Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(count)]
