"""Where tiles and scenes lie on Earth: footprint polygons in the native CRS and in WGS84 (lon/lat).

A tile's corners are its affine transform applied to (0, 0), (size, 0), (size, size), (0, size); tiles are small,
so their four reprojected corners make the WGS84 polygon. Scene outlines are densified along each edge, since a
projected straight edge is curved in lon/lat. Scenes crossing the antimeridian are not split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WGS84 = "EPSG:4326"


def tile_transform(scene_transform: Sequence[float], row: int, col: int) -> list[float]:
    """The affine transform (a, b, c, d, e, f) of the tile whose top-left pixel is (row, col) of the scene."""
    a, b, c, d, e, f = scene_transform[:6]
    return [a, b, c + a * col + b * row, d, e, f + d * col + e * row]


def tile_corners(transforms: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 6) affine transforms (a, b, c, d, e, f) -> x, y of the four corners, each (n, 4), in the native CRS."""
    a, b, c, d, e, f = (transforms[:, i : i + 1] for i in range(6))
    cols = np.array([[0.0, size, size, 0.0]])
    rows = np.array([[0.0, 0.0, size, size]])
    return c + a * cols + b * rows, f + d * cols + e * rows


def scene_ring(transform: Sequence[float], width: int, height: int, points_per_edge: int = 16) -> np.ndarray:
    """(k, 2) x, y along the scene's edges (clockwise in pixel space), densified, in the native CRS."""
    a, b, c, d, e, f = transform[:6]
    steps = np.linspace(0.0, 1.0, points_per_edge, endpoint=False)
    cols = np.concatenate([steps * width, np.full_like(steps, width), (1 - steps) * width, np.zeros_like(steps)])
    rows = np.concatenate([np.zeros_like(steps), steps * height, np.full_like(steps, height), (1 - steps) * height])
    return np.stack([c + a * cols + b * rows, f + d * cols + e * rows], axis=1)


def to_wgs84(crs: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reproject coordinate arrays (any shape) from `crs` (WKT, EPSG:n) to lon/lat."""
    from rasterio.crs import CRS
    from rasterio.warp import transform

    source = CRS.from_user_input(crs)
    if source == CRS.from_epsg(4326):
        return x.astype(np.float64), y.astype(np.float64)
    lon, lat = transform(source, CRS.from_epsg(4326), x.ravel().tolist(), y.ravel().tolist())
    return np.asarray(lon).reshape(x.shape), np.asarray(lat).reshape(y.shape)


def polygons(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, k) corner coordinates -> n shapely polygons, exterior rings counter-clockwise (GeoParquet's advice)."""
    import shapely

    rings = np.stack([x, y], axis=-1)
    rings = np.concatenate([rings, rings[:, :1]], axis=1)  # closed
    return shapely.orient_polygons(shapely.polygons(rings), exterior_cw=False)


def scene_outline_wgs84(crs: str, transform: Sequence[float], width: int, height: int):
    """The scene's footprint as one shapely polygon in lon/lat."""
    ring = scene_ring(transform, width, height)
    lon, lat = to_wgs84(crs, ring[:, 0], ring[:, 1])
    return polygons(lon[None, :], lat[None, :])[0]
