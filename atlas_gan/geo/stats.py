"""Per-band distribution statistics in bounded memory, mergeable across scenes and worker processes.

Integer rasters of up to 16 bits keep an exact histogram over [-32768, 65535] (98,304 counters per band), so
percentiles equal numpy's (linear interpolation) over every valid pixel. Other dtypes keep a bottom-k sample:
each value draws a random priority and the k lowest survive, which is a uniform sample that merges exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_HIST_MIN = -32768
_HIST_BINS = 65536 + 32768


def _is_histogrammable(dtype: np.dtype) -> bool:
    return dtype.kind in "iu" and dtype.itemsize <= 2


@dataclass
class BandStatistics:
    sample_size: int = 1_000_000
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    minimum: float = float("inf")
    maximum: float = float("-inf")
    histogram: np.ndarray | None = None  # int64 counts of integer values
    sample_values: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    sample_keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    sampled_count: int = 0  # values routed to the sample

    def update(self, values: np.ndarray, rng: np.random.Generator) -> None:
        """Add valid pixel values (1-D, any numeric dtype)."""
        if values.size == 0:
            return
        as_float = values.astype(np.float64, copy=False)
        self.count += values.size
        self.total += float(as_float.sum())
        self.total_sq += float(np.square(as_float).sum())
        self.minimum = min(self.minimum, float(as_float.min()))
        self.maximum = max(self.maximum, float(as_float.max()))
        if _is_histogrammable(values.dtype):
            counts = np.bincount((values.astype(np.int64) - _HIST_MIN), minlength=_HIST_BINS)
            self.histogram = counts if self.histogram is None else self.histogram + counts
        else:
            self._add_sample(as_float, rng.random(values.size))

    def _add_sample(self, values: np.ndarray, keys: np.ndarray) -> None:
        self.sampled_count += values.size
        all_values = np.concatenate([self.sample_values, values])
        all_keys = np.concatenate([self.sample_keys, keys])
        if all_keys.size > self.sample_size:
            keep = np.argpartition(all_keys, self.sample_size)[: self.sample_size]
            all_values, all_keys = all_values[keep], all_keys[keep]
        self.sample_values, self.sample_keys = all_values, all_keys

    def merge(self, other: BandStatistics) -> None:
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        if other.histogram is not None:
            self.histogram = other.histogram.copy() if self.histogram is None else self.histogram + other.histogram
        if other.sampled_count:
            sampled_before = self.sampled_count
            self._add_sample(other.sample_values, other.sample_keys)
            self.sampled_count = sampled_before + other.sampled_count

    @property
    def exact(self) -> bool:
        return self.sampled_count == 0

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def std(self) -> float:
        if not self.count:
            return float("nan")
        return float(np.sqrt(max(self.total_sq / self.count - self.mean**2, 0.0)))

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) of every value seen; exact for integer data, sampled otherwise."""
        if self.count == 0:
            raise ValueError("no valid pixels: percentile undefined")
        if self.exact and self.histogram is not None:
            return _histogram_percentile(self.histogram, q)
        values, weights = self._weighted_points()
        order = np.argsort(values, kind="stable")
        values, weights = values[order], weights[order]
        cumulative = np.cumsum(weights)
        position = q / 100.0 * cumulative[-1]
        index = min(int(np.searchsorted(cumulative, position, side="left")), values.size - 1)
        return float(values[index])

    def _weighted_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Histogram bins at their counts plus sample points standing for their share of sampled values."""
        values = [self.sample_values]
        weights = [np.full(self.sample_values.size, self.sampled_count / max(self.sample_values.size, 1))]
        if self.histogram is not None:
            nonzero = np.flatnonzero(self.histogram)
            values.append((nonzero + _HIST_MIN).astype(np.float64))
            weights.append(self.histogram[nonzero].astype(np.float64))
        return np.concatenate(values), np.concatenate(weights)


def _histogram_percentile(histogram: np.ndarray, q: float) -> float:
    """numpy's default ('linear') percentile of the multiset that the histogram counts."""
    cumulative = np.cumsum(histogram)
    n = int(cumulative[-1])
    position = q / 100.0 * (n - 1)
    lower_rank = int(np.floor(position))
    upper_rank = min(lower_rank + 1, n - 1)
    lower = int(np.searchsorted(cumulative, lower_rank, side="right")) + _HIST_MIN
    upper = int(np.searchsorted(cumulative, upper_rank, side="right")) + _HIST_MIN
    return float(lower + (upper - lower) * (position - lower_rank))


def new_band_statistics(bands: int, sample_size: int) -> list[BandStatistics]:
    return [BandStatistics(sample_size=sample_size) for _ in range(bands)]
