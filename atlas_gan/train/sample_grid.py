"""Sample grids: generated images as PNGs, RGB from a chosen band triplet and the other bands in threes."""

from __future__ import annotations

import io

import torch
from PIL import Image

from atlas_gan.preview import band_triplets, tile_grid
from atlas_gan.storage import Storage


def write_sample_grids(
    store: Storage, prefix: str, images: torch.Tensor, bands: list[str], rgb: list[str | int] | None
) -> list[str]:
    """images in [-1, 1], (n, bands, h, w) -> `<prefix>-<label>.png` for each band triplet; returns the URLs."""
    tiles = list(((images + 1.0) / 2.0).numpy())
    columns = max(1, int(len(tiles) ** 0.5))
    urls = []
    for label, positions in band_triplets(bands, rgb):
        buffer = io.BytesIO()
        Image.fromarray(tile_grid(tiles, positions, columns)).save(buffer, format="PNG")
        url = f"{prefix}-{label}.png"
        store.write_bytes(url, buffer.getvalue())
        urls.append(url)
    return urls
