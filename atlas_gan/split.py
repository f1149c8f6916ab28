"""A spatially blocked train/validation split of a dataset's tiles, from its tile index.

Neighbouring tiles look alike (spatial autocorrelation), and so do the tiles of one place at two dates: a random
split puts near-copies of validation tiles in training and flatters every validation figure. Here tiles are held
out in whole units of ground:

- `blocks`: the ground is cut into squares of `block_tiles` x `block_tiles` tiles (on a local metric grid over the
  dataset, so every date of a place falls in the same block), and whole blocks are held out;
- `scenes`: whole scenes are held out.

Then every training tile whose centre lies within 1.5 tile widths of a held-out tile's centre (a neighbour, or the
same ground at another date) is dropped from training too: the *buffer*. Which blocks or scenes are held out
depends only on the seed and the tiles, so the same dataset and seed give the same split on every machine.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas_gan.config import ValidationConfig
from atlas_gan.storage import Storage
from atlas_gan.tile_index import index_table, read_index, rows_from_shards

METRES_PER_DEGREE = 111_320.0
NEIGHBOUR_DISTANCE = 1.5  # tile widths: centres closer than this are neighbours (8-neighbourhood, or one place)
IMAGE_TO_IMAGE_FRACTION = 0.1  # validation.fraction when null, for recipes scored on held-out pairs


@dataclass(frozen=True)
class TileSplit:
    """Which tiles are held out (validation) and which are kept out of both sides (buffer)."""

    keys: frozenset[str]  # every tile
    validation: frozenset[str]
    buffer: frozenset[str]
    settings: dict[str, Any]
    scene_of: dict[str, str]  # tile key -> scene id

    @property
    def total(self) -> int:
        return len(self.keys)

    @property
    def excluded(self) -> frozenset[str]:
        """What training must not see."""
        return self.validation | self.buffer

    @property
    def train_keys(self) -> frozenset[str]:
        return self.keys - self.excluded

    @property
    def train_count(self) -> int:
        return self.total - len(self.validation) - len(self.buffer)

    def summary(self) -> dict[str, Any]:
        """What `split.json` records: settings, counts and the held-out keys."""
        return {
            **self.settings,
            "tiles": self.total,
            "train": self.train_count,
            "validation_tiles": len(self.validation),
            "buffer_tiles": len(self.buffer),
            "validation_keys": sorted(self.validation),
        }


def validation_fraction(config: ValidationConfig, reads_images: bool) -> float:
    """`config.fraction`, or when it is null: IMAGE_TO_IMAGE_FRACTION for generators that read images (scored on
    held-out tiles), else 0."""
    if config.fraction is not None:
        return config.fraction
    return IMAGE_TO_IMAGE_FRACTION if reads_images else 0.0


def metric_positions(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Tile centres on a local equirectangular grid in metres (longitudes scaled at the dataset's mean latitude)."""
    scale = math.cos(math.radians(float(np.mean(lat)))) if len(lat) else 1.0
    return np.stack([lon * METRES_PER_DEGREE * scale, lat * METRES_PER_DEGREE], axis=1)


def tile_widths(geometry_wkb: list[bytes], lat: np.ndarray) -> np.ndarray:
    """Each tile's ground width in metres, from its WGS84 footprint's bounding box."""
    import shapely

    bounds = shapely.bounds(shapely.from_wkb(geometry_wkb))
    width = (bounds[:, 2] - bounds[:, 0]) * METRES_PER_DEGREE * np.cos(np.radians(lat))
    height = (bounds[:, 3] - bounds[:, 1]) * METRES_PER_DEGREE
    return np.maximum(width, height)


def _near(points: np.ndarray, centres: np.ndarray, radius: float, chunk: int = 2048) -> np.ndarray:
    """For each of `points`, whether some centre lies within `radius` (chunked to bound memory)."""
    near = np.zeros(len(points), dtype=bool)
    if len(centres) == 0:
        return near
    for start in range(0, len(points), chunk):
        part = points[start : start + chunk]
        distances = np.sqrt(((part[:, None, :] - centres[None, :, :]) ** 2).sum(-1))
        near[start : start + chunk] = (distances < radius).any(axis=1)
    return near


def blocked_split(
    keys: list[str],
    scenes: list[str],
    positions: np.ndarray,
    tile_width: float,
    config: ValidationConfig,
    fraction: float,
) -> TileSplit:
    """Hold out whole blocks (or scenes) until at least `fraction` of the tiles are held out; buffer the rest."""
    settings = {"by": config.by, "fraction": fraction, "seed": config.seed, "tile_width_m": round(tile_width, 2)}
    if config.by == "blocks":
        block = config.block_tiles * tile_width
        settings["block_tiles"], settings["block_m"] = config.block_tiles, round(block, 2)
        cells = np.floor(positions / block).astype(np.int64)
        groups = [f"{x},{y}" for x, y in cells]
    else:
        groups = list(scenes)
    if fraction <= 0 or not keys:
        return TileSplit(frozenset(keys), frozenset(), frozenset(), settings, dict(zip(keys, scenes, strict=True)))
    order = sorted(set(groups))
    random.Random(config.seed).shuffle(order)
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    held: list[int] = []
    wanted = math.ceil(fraction * len(keys))
    for group in order:
        if len(held) >= wanted:
            break
        held += members[group]
    is_held = np.zeros(len(keys), dtype=bool)
    is_held[held] = True
    buffered = ~is_held & _near(positions, positions[is_held], NEIGHBOUR_DISTANCE * tile_width)
    validation = frozenset(k for k, h in zip(keys, is_held, strict=True) if h)
    buffer = frozenset(k for k, b in zip(keys, buffered, strict=True) if b)
    split = TileSplit(frozenset(keys), validation, buffer, settings, dict(zip(keys, scenes, strict=True)))
    if split.train_count == 0:
        raise ValueError(
            f"train.validation ({config.by}, fraction {fraction}) leaves no training tile: every tile is held out "
            "or next to a held-out one; lower train.validation.fraction or block_tiles, or use by=blocks"
        )
    return split


def split_of_index(table: Any, config: ValidationConfig, fraction: float) -> TileSplit:
    """The split of a tile index table (`atlas_gan.tile_index`)."""
    keys = table.column("key").to_pylist()
    lon = np.asarray(table.column("lon").to_numpy(), dtype=np.float64)
    lat = np.asarray(table.column("lat").to_numpy(), dtype=np.float64)
    width = float(np.median(tile_widths(table.column("geometry").to_pylist(), lat))) if keys else 0.0
    return blocked_split(keys, table.column("scene").to_pylist(), metric_positions(lon, lat), width, config, fraction)


def dataset_split(
    store: Storage, dataset_url: str, manifest: dict[str, Any], config: ValidationConfig, fraction: float
) -> TileSplit:
    """The split of an ingested dataset, from its tile index (rebuilt from the shards when it predates the index)."""
    table = read_index(store, dataset_url, manifest)
    if table is None:
        rows = rows_from_shards(store, dataset_url, [shard["url"] for shard in manifest["shards"]])
        table = index_table(rows, manifest["tile"]["size"])
    return split_of_index(table, config, fraction)
