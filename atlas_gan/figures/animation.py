"""Animated GIFs from RGB frames (Pillow: no system codec needed)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def gif_bytes(frames: Sequence[np.ndarray], frame_ms: int = 80) -> bytes:
    """uint8 (h, w, 3) frames -> a looping GIF; one palette per frame (adaptive), no dithering noise."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames to animate")
    images = [Image.fromarray(frame).quantize(colors=256, method=Image.Quantize.MEDIANCUT) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return buffer.getvalue()


def walk_gif(frames: np.ndarray, positions: list[int], frame_ms: int = 80) -> bytes:
    """A latent walk as a GIF: frames (frames, walks, bands, h, w) in [-1, 1], each a square-ish grid of the walks
    shown through the band `positions`; tiles under 64 px are enlarged twice (nearest neighbour) to be seen."""
    from atlas_gan.preview import tile_grid

    columns = max(1, int(np.ceil(np.sqrt(frames.shape[1]))))
    grids = [tile_grid(list((frame + 1.0) / 2.0), positions, columns) for frame in frames]
    scale = 2 if frames[0].shape[-1] < 64 else 1
    if scale > 1:
        grids = [grid.repeat(scale, axis=0).repeat(scale, axis=1) for grid in grids]
    return gif_bytes(grids, frame_ms)
