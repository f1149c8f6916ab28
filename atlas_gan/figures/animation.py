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
