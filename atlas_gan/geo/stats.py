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


def counts_exactly(dtype: np.dtype) -> bool:
    """Values of `dtype` go to an exact histogram (integers of up to 16 bits); others to a seeded sample."""
    return dtype.kind in "iu" and dtype.itemsize <= 2


@dataclass
class BandStatistics:
    sample_size: int = 1_000_000
    histogram: np.ndarray | None = None  # int64 counts of integer values, index = value - _HIST_MIN
    # moments and extremes of the values routed to the sample (histogram values are summarized on demand)
    sampled_count: int = 0
    sampled_total: float = 0.0
    sampled_total_sq: float = 0.0
    sampled_min: float = float("inf")
    sampled_max: float = float("-inf")
    sample_values: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    sample_keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))

    def update(self, values: np.ndarray, rng: np.random.Generator | None = None) -> None:
        """Add valid pixel values (1-D, any numeric dtype); `rng` draws the sample priorities of values that are not
        `counts_exactly`, and only those need it."""
        if values.size == 0:
            return
        if counts_exactly(values.dtype):
            if self.histogram is None:
                self.histogram = np.zeros(_HIST_BINS, np.int64)
            if values.dtype.kind == "u":
                counts = np.bincount(values)  # up to the largest value only: no 512 kB of zeros to add per call
                self.histogram[-_HIST_MIN : -_HIST_MIN + counts.size] += counts
            else:
                self.histogram += np.bincount(values.astype(np.int32) - _HIST_MIN, minlength=_HIST_BINS)
            return
        if rng is None:
            raise ValueError(f"{values.dtype} values are sampled: update needs an rng")
        as_float = values.astype(np.float64, copy=False)
        self.sampled_total += float(as_float.sum())
        self.sampled_total_sq += float(np.square(as_float).sum())
        self.sampled_min = min(self.sampled_min, float(as_float.min()))
        self.sampled_max = max(self.sampled_max, float(as_float.max()))
        self.sampled_count += values.size
        self._add_sample(as_float, rng.random(values.size))

    def _add_sample(self, values: np.ndarray, keys: np.ndarray) -> None:
        all_values = np.concatenate([self.sample_values, values])
        all_keys = np.concatenate([self.sample_keys, keys])
        if all_keys.size > self.sample_size:
            keep = np.argpartition(all_keys, self.sample_size)[: self.sample_size]
            all_values, all_keys = all_values[keep], all_keys[keep]
        self.sample_values, self.sample_keys = all_values, all_keys

    def merge(self, other: BandStatistics) -> None:
        if other.histogram is not None:
            self.histogram = other.histogram.copy() if self.histogram is None else self.histogram + other.histogram
        if other.sampled_count:
            self.sampled_count += other.sampled_count
            self.sampled_total += other.sampled_total
            self.sampled_total_sq += other.sampled_total_sq
            self.sampled_min = min(self.sampled_min, other.sampled_min)
            self.sampled_max = max(self.sampled_max, other.sampled_max)
            self._add_sample(other.sample_values, other.sample_keys)

    def _histogram_moments(self) -> tuple[int, float, float, float, float]:
        """count, sum, sum of squares, min, max of the histogram's values."""
        if self.histogram is None or not self.histogram.any():
            return 0, 0.0, 0.0, float("inf"), float("-inf")
        nonzero = np.flatnonzero(self.histogram)
        values = (nonzero + _HIST_MIN).astype(np.float64)
        counts = self.histogram[nonzero].astype(np.float64)
        return int(counts.sum()), float(values @ counts), float(values**2 @ counts), values[0], values[-1]

    @property
    def exact(self) -> bool:
        return self.sampled_count == 0

    @property
    def count(self) -> int:
        return self._histogram_moments()[0] + self.sampled_count

    @property
    def minimum(self) -> float:
        return min(self._histogram_moments()[3], self.sampled_min)

    @property
    def maximum(self) -> float:
        return max(self._histogram_moments()[4], self.sampled_max)

    @property
    def mean(self) -> float:
        count, total, _, _, _ = self._histogram_moments()
        count, total = count + self.sampled_count, total + self.sampled_total
        return total / count if count else float("nan")

    @property
    def std(self) -> float:
        count, total, total_sq, _, _ = self._histogram_moments()
        count += self.sampled_count
        if not count:
            return float("nan")
        mean = (total + self.sampled_total) / count
        return float(np.sqrt(max((total_sq + self.sampled_total_sq) / count - mean**2, 0.0)))

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


def merge_band_statistics(groups: list[list[BandStatistics]], bands: int, sample_size: int) -> list[BandStatistics]:
    """Per-band statistics of several scenes (or parts of one), combined into new objects."""
    merged = new_band_statistics(bands, sample_size)
    for group in groups:
        for total, part in zip(merged, group, strict=True):
            total.merge(part)
    return merged
