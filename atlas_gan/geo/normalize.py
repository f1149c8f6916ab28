"""Per-band linear normalization derived from dataset percentiles, stored in the manifest and invertible.

`normalized = (raw - offset) / scale` with `offset` = the low percentile and `scale` = high - low, so the low
percentile maps to 0 and the high one to 1. Values outside are not clipped (the trainer decides), which keeps the
mapping invertible: `raw = normalized * scale + offset`. Nodata pixels are written as 0 and flagged in the mask.

Integer sources of up to 16 bits (most satellite products) are normalized through a per-band lookup table of every
possible value, computed with the same float32 arithmetic, so the result is bit-identical to the arithmetic path at
about half the cost: one gather per pixel instead of a subtraction, a division, a clip and a float16 conversion
(numpy converts to float16 without SIMD).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
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
        if _has_lookup(raw.dtype):
            return self._apply_lookup(raw, valid, np.dtype(dtype))
        return self.compute(raw, valid, dtype)

    def compute(self, raw: np.ndarray, valid: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """`apply` by arithmetic, for any source dtype: float32 (raw - offset) / scale, clipped to float16's range
        when `dtype` is float16."""
        offsets = self.offsets.astype(np.float32)[:, None, None]
        scaled = np.subtract(raw, offsets, dtype=np.float32)
        scaled /= self.scales.astype(np.float32)[:, None, None]
        if not valid.all():
            scaled = np.where(np.expand_dims(valid, -3), scaled, np.float32(0.0))  # NaN nodata must not survive
        if np.dtype(dtype) == np.float16:
            np.clip(scaled, -_FLOAT16_MAX, _FLOAT16_MAX, out=scaled)
        return scaled.astype(dtype)

    def _apply_lookup(self, raw: np.ndarray, valid: np.ndarray, dtype: np.dtype) -> np.ndarray:
        tables = _lookup_tables(self.offsets.tobytes(), self.scales.tobytes(), raw.dtype.str, dtype.str)
        out = np.empty(raw.shape, dtype)
        for band, table in enumerate(tables):
            # mode="clip": every index is in the table, and the default ("raise") buffers `out` through a copy when
            # it is strided (one band of a tile stack is): 2.2x slower
            np.take(table, _table_index(raw[..., band, :, :]), out=out[..., band, :, :], mode="clip")
        if not valid.all():
            out = np.where(np.expand_dims(valid, -3), out, out.dtype.type(0))
        return out

    def invert(self, normalized: np.ndarray) -> np.ndarray:
        """normalized[bands, ...] -> source units (float64)."""
        shape = (-1,) + (1,) * (normalized.ndim - 1)
        return normalized.astype(np.float64) * self.scales.reshape(shape) + self.offsets.reshape(shape)


def _table_index(values: np.ndarray) -> np.ndarray:
    """Each value's place in its dtype's table (smallest value first): itself when unsigned; for signed values,
    value - min, which is the two's-complement bits with the sign bit flipped (one pass, no widening)."""
    if values.dtype.kind == "u":
        return values
    unsigned = values.view(values.dtype.str.replace("i", "u"))
    return unsigned ^ unsigned.dtype.type(1 << (8 * values.dtype.itemsize - 1))


def _has_lookup(dtype: np.dtype) -> bool:
    """Integer dtypes of up to 16 bits: every value fits a table of at most 65,536 entries per band."""
    return dtype.kind in "iu" and dtype.itemsize <= 2


@lru_cache(maxsize=16)
def _lookup_tables(offsets: bytes, scales: bytes, raw_dtype: str, dtype: str) -> list[np.ndarray]:
    """Per band, the normalized value of every value of `raw_dtype` (smallest first), by `Normalization.compute`."""
    norm = Normalization(np.frombuffer(offsets), np.frombuffer(scales))
    info = np.iinfo(np.dtype(raw_dtype))
    every_value = np.arange(info.min, info.max + 1).astype(raw_dtype)
    stacked = np.broadcast_to(every_value, (len(norm.offsets), 1, every_value.size))
    table = norm.compute(stacked, np.ones((1, every_value.size), bool), np.dtype(dtype))
    return [np.ascontiguousarray(band[0]) for band in table]


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
