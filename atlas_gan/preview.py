"""A picture of a dataset: a grid of tiles from its shards, as an RGB PNG (three chosen bands, or one in grey)."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

from atlas_gan.samples import NpyDecoder, read_members
from atlas_gan.shards import read_manifest
from atlas_gan.storage import Storage, join_url


def band_positions(bands: list[str], wanted: list[str] | None) -> list[int]:
    """Positions of the three display bands (default: the first three, or the only band as grey)."""
    if wanted is None:
        return [0, 1, 2] if len(bands) >= 3 else [0, 0, 0]
    lowered = [b.lower() for b in bands]
    positions = []
    for name in wanted:
        if name.lower() not in lowered:
            raise ValueError(f"band {name!r} is not in this dataset; it has {bands}")
        positions.append(lowered.index(name.lower()))
    if len(positions) not in (1, 3):
        raise ValueError(f"give one band (grey) or three (red, green, blue); got {wanted}")
    return positions * 3 if len(positions) == 1 else positions


def band_triplets(bands: list[str], rgb: list[str | int] | None) -> list[tuple[str, list[int]]]:
    """(label, positions) of each grid: the RGB triplet first, then the remaining bands three at a time."""
    wanted = None if rgb is None else [bands[b - 1] if isinstance(b, int) else b for b in rgb]
    first = band_positions(bands, wanted)
    grids = [("rgb", first)]
    rest = [i for i in range(len(bands)) if i not in first]
    for start in range(0, len(rest), 3):
        group = rest[start : start + 3]
        group += [group[-1]] * (3 - len(group))  # one or two left: repeat to fill the channels (grey-ish)
        grids.append(("-".join(dict.fromkeys(bands[i] for i in group)), group))
    return grids


def iter_tiles(store: Storage, output: str, manifest: dict[str, Any]) -> Iterator[np.ndarray]:
    """Every tile of the dataset, in shard order, read with plain tarfile."""
    for tile, _ in iter_tiles_and_masks(store, output, manifest["shards"]):
        yield tile


def iter_tiles_and_masks(
    store: Storage, output: str, shards: list[dict[str, Any]]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tile, valid-pixel mask) of every sample of these manifest shards, in order."""
    decoder = NpyDecoder()
    for shard in shards:
        with store.open_read(join_url(output, shard["url"])) as stream:
            tile = None
            for name, payload in read_members(stream):
                if name.endswith(".tile.npy"):
                    tile = decoder.decode(payload)
                elif name.endswith(".mask.npy") and tile is not None:
                    yield tile, decoder.decode(payload)
                    tile = None


def tile_grid(tiles: list[np.ndarray], positions: list[int], columns: int, gap: int = 2) -> np.ndarray:
    """uint8 (H, W, 3) mosaic; normalized values are shown with 0 as black and 1 as white (clipped)."""
    size = tiles[0].shape[-1]
    rows = -(-len(tiles) // columns)
    canvas = np.full((rows * (size + gap) + gap, columns * (size + gap) + gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        rgb = np.clip(tile[positions].astype(np.float32), 0.0, 1.0).transpose(1, 2, 0)
        r, c = divmod(i, columns)
        top, left = gap + r * (size + gap), gap + c * (size + gap)
        canvas[top : top + size, left : left + size] = np.rint(rgb * 255).astype(np.uint8)
    return canvas


def write_preview(store: Storage, output: str, count: int, bands: list[str] | None, columns: int) -> bytes:
    """PNG bytes of the first `count` tiles of the dataset at `output`."""
    from PIL import Image

    manifest = read_manifest(store, output)
    if manifest is None or not manifest["shards"]:
        raise ValueError(f"{output}: no dataset there (no manifest.json with shards)")
    positions = band_positions(manifest["tile"]["bands"], bands)
    tiles = list(itertools.islice(iter_tiles(store, output, manifest), count))
    buffer = io.BytesIO()
    Image.fromarray(tile_grid(tiles, positions, min(columns, len(tiles)))).save(buffer, format="PNG")
    return buffer.getvalue()
