"""Per-band linear normalization derived from dataset percentiles, stored in the manifest and invertible.

`normalized = (raw - offset) / scale` with `offset` = the low percentile and `scale` = high - low, so the low
percentile maps to 0 and the high one to 1. Values outside are not clipped (the trainer decides), which keeps the
mapping invertible: `raw = normalized * scale + offset`. Nodata pixels are written as 0 and flagged in the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas_gan.config import NormalizationConfig
from atlas_gan.geo.stats import BandStatistics

_FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class Normalization:
    offsets: np.ndarray  # float64 per band
    scales: np.ndarray  # float64 per band, > 0

    @classmethod
    def from_statistics(cls, stats: list[BandStatistics], config: NormalizationConfig) -> Normalization:
        lows = np.array([s.percentile(config.low) for s in stats])
        highs = np.array([s.percentile(config.high) for s in stats])
        scales = np.where(highs > lows, highs - lows, 1.0)  # a constant band maps to 0, not to a division by 0
        return cls(lows, scales)

    @classmethod
    def from_manifest(cls, normalization: dict[str, Any]) -> Normalization:
        bands = normalization["bands"]
        return cls(np.array([b["offset"] for b in bands], float), np.array([b["scale"] for b in bands], float))

    def apply(self, raw: np.ndarray, valid: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """raw[..., bands, h, w] with valid[..., h, w] -> normalized array of `dtype`; invalid pixels become 0."""
        offsets = self.offsets.astype(np.float32)[:, None, None]
        scaled = np.subtract(raw, offsets, dtype=np.float32)
        scaled /= self.scales.astype(np.float32)[:, None, None]
        if not valid.all():
            scaled = np.where(np.expand_dims(valid, -3), scaled, np.float32(0.0))  # NaN nodata must not survive
        if np.dtype(dtype) == np.float16:
            np.clip(scaled, -_FLOAT16_MAX, _FLOAT16_MAX, out=scaled)
        return scaled.astype(dtype)

    def invert(self, normalized: np.ndarray) -> np.ndarray:
        """normalized[bands, ...] -> source units (float64)."""
        shape = (-1,) + (1,) * (normalized.ndim - 1)
        return normalized.astype(np.float64) * self.scales.reshape(shape) + self.offsets.reshape(shape)


def describe(
    stats: list[BandStatistics], norm: Normalization, band_names: list[str], config: NormalizationConfig
) -> dict[str, Any]:
    """The manifest's `normalization` section: method, percentiles and the per-band inverse mapping."""
    return {
        "method": config.method,
        "low_percentile": config.low,
        "high_percentile": config.high,
        "formula": "normalized = (raw - offset) / scale; raw = normalized * scale + offset; nodata -> 0",
        "exact": all(s.exact for s in stats),
        "bands": [
            {
                "name": name,
                "offset": float(norm.offsets[i]),
                "scale": float(norm.scales[i]),
                "low_value": float(norm.offsets[i]),
                "high_value": float(norm.offsets[i] + norm.scales[i]),
                "valid_pixels": s.count,
                "min": s.minimum,
                "max": s.maximum,
                "mean": s.mean,
                "std": s.std,
            }
            for i, (name, s) in enumerate(zip(band_names, stats, strict=True))
        ],
    }
