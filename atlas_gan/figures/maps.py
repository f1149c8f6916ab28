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
        figure.legend(loc="outside right upper", fontsize="small", title="scenes")
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
    """(rows, columns) count of tiles covering each cell's centre, north row first. Tiles smaller than a cell count
    in every cell they overlap instead, so none vanishes. Tiles are convex footprints (reprojected rectangles), so
    each test is a few cross products, done with numpy for every (tile, nearby cell) pair at once; the counts are
    GDAL's rasterize (add, all_touched for small tiles) but for cells a tile only touches at a point."""
    counts = np.zeros(rows * columns, np.int64)
    if len(tiles):
        touched = bool(np.median(np.minimum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])) < cell)
        grid = (west, north, cell, rows, columns)
        for first in range(0, len(tiles), _TILES_PER_PASS):
            part = slice(first, first + _TILES_PER_PASS)
            tile, row, col = _nearby_cells(bounds[part], grid, touched)
            hit = _covers(_rings(tiles[part]), tile, row, col, grid, touched)
            counts += np.bincount(row[hit] * columns + col[hit], minlength=rows * columns)
    return counts.reshape(rows, columns).astype(np.int32)


_TILES_PER_PASS = 1 << 16  # bounds the memory of the (tile, cell) pairs


def _nearby_cells(
    bounds: np.ndarray, grid: tuple[float, float, float, int, int], touched: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (tile, row, column) to test: cells whose square overlaps the tile's bounding box (`touched`), or whose
    centre lies in it."""
    west, north, cell, rows, columns = grid
    x0, x1 = (bounds[:, 0] - west) / cell, (bounds[:, 2] - west) / cell
    y0, y1 = (north - bounds[:, 3]) / cell, (north - bounds[:, 1]) / cell
    if touched:
        first_col, last_col, first_row, last_row = np.floor(x0), np.ceil(x1) - 1, np.floor(y0), np.ceil(y1) - 1
    else:
        first_col, last_col = np.ceil(x0 - 0.5), np.floor(x1 - 0.5)
        first_row, last_row = np.ceil(y0 - 0.5), np.floor(y1 - 0.5)
    first_col, first_row = np.maximum(first_col, 0).astype(np.int64), np.maximum(first_row, 0).astype(np.int64)
    width = np.maximum(np.minimum(last_col, columns - 1).astype(np.int64) - first_col + 1, 0)
    height = np.maximum(np.minimum(last_row, rows - 1).astype(np.int64) - first_row + 1, 0)
    pairs = width * height
    tile = np.repeat(np.arange(len(bounds)), pairs)
    within = np.arange(tile.size) - np.repeat(np.cumsum(pairs) - pairs, pairs)  # the pair's place in its tile's box
    return tile, first_row[tile] + within // width[tile], first_col[tile] + within % width[tile]


def _covers(
    rings: np.ndarray,
    tile: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    grid: tuple[float, float, float, int, int],
    touched: bool,
) -> np.ndarray:
    """Whether each tile covers its paired cell's centre, or (`touched`) overlaps the cell's square."""
    west, north, cell = grid[:3]
    start, edge = rings[:, :-1], rings[:, 1:] - rings[:, :-1]  # (tiles, edges, xy)
    # the shoelace sign makes "inside" the same side of every edge for clockwise and anticlockwise rings
    orientation = np.sign(np.sum(start[..., 0] * rings[:, 1:, 1] - rings[:, 1:, 0] * start[..., 1], axis=1))
    start, edge, orientation = start[tile], edge[tile], orientation[tile]
    if not touched:  # the centre lies on the inner side of (or on) every edge
        centres = np.stack([west + cell * (col + 0.5), north - cell * (row + 0.5)], axis=-1)
        return np.all(_side(start, edge, centres[:, None]) * orientation[:, None] >= 0, axis=1)
    # separating axes: the square misses the tile if all four of its corners lie outside one edge (or on its line)
    corners = np.array([[0.0, 0.0], [cell, 0.0], [0.0, -cell], [cell, -cell]])
    squares = np.stack([west + cell * col, north - cell * row], axis=-1)[:, None] + corners  # (pairs, 4, xy)
    side = _side(start[:, :, None], edge[:, :, None], squares[:, None]) * orientation[:, None, None]
    padding = np.all(edge == 0, axis=-1)  # the zero-length edges of padded rings separate nothing
    return ~np.any(np.all(side <= 0, axis=2) & ~padding, axis=1)


def _rings(polygons: np.ndarray) -> np.ndarray:
    """(polygons, vertices, xy): each exterior ring, closed, shorter ones padded by repeating their last vertex."""
    import shapely

    exteriors = shapely.get_exterior_ring(polygons)
    coordinates, lengths = shapely.get_coordinates(exteriors), shapely.get_num_coordinates(exteriors)
    ends = np.cumsum(lengths)
    index = np.minimum(ends[:, None] - lengths[:, None] + np.arange(int(lengths.max())), ends[:, None] - 1)
    return coordinates[index]


def _side(start: np.ndarray, edge: np.ndarray, point: np.ndarray) -> np.ndarray:
    """The cross product edge x (point - start): positive left of the edge, negative right, 0 on its line."""
    return edge[..., 0] * (point[..., 1] - start[..., 1]) - edge[..., 1] * (point[..., 0] - start[..., 0])


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
