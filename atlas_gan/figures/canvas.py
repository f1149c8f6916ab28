"""A matplotlib Figure that renders to PNG bytes without pyplot (thread-safe, no GUI backend)."""

from __future__ import annotations

import io
from typing import Any


def new_figure(width_px: int, height_px: int, dpi: int = 100) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")


def png_bytes(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
