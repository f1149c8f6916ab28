"""Cut a scene into tiles (pass 1) and turn the kept tiles into encoded samples (pass 2).

The first of ingest's two passes reads every source pixel once, in strips `tile_size` rows tall (memory is bounded
by a strip, never a whole scene), accumulates the per-band statistics of the kept tiles, writes their raw values
and metadata JSON to a local spool file and returns every kept tile's encoded sample length, from which ingest lays
the shards out. The second pass normalizes the spool once the dataset-wide statistics are known and writes each
sample straight to its place in a staged shard. Both passes run in worker processes, one scene (or part of one)
each.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from atlas_gan.config import IngestConfig
from atlas_gan.geo.discovery import SceneSpec
from atlas_gan.geo.footprints import tile_transform
from atlas_gan.geo.normalize import Normalization
from atlas_gan.geo.scene import SceneError, SceneReader
from atlas_gan.geo.stats import BandStatistics, counts_exactly, merge_band_statistics, new_band_statistics
from atlas_gan.samples import NpyEncoder, encode_sample, member_size
from atlas_gan.shards import Placement
from atlas_gan.storage import StorageError

# Source pixels fetched per windowed read: bounds a worker's memory whatever the scene's size, while keeping
# per-call overhead (GDAL, Python) small for ordinary scenes.
READ_BUDGET_BYTES = 32 * 2**20


@dataclass
class SceneScan:
    """What pass 1 learned about one scene, or one part of it (a contiguous band of tile rows);
    `reason` is set when the scene is rejected."""

    spec: SceneSpec
    part: int = 0
    parts: int = 1
    reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    tile_count: int = 0
    dropped_nodata: int = 0
    spool_path: str = ""
    dtype: str = ""
    # One entry per strip with kept tiles, in spool order: (row, columns, nodata fractions).
    strips: list[tuple[int, list[int], list[float]]] = field(default_factory=list)
    stats: list[BandStatistics] = field(default_factory=list)
    # Each kept tile's encoded sample size and metadata JSON size, in spool order. The first follows from the second
    # and the keys, but is summed up here, in the workers, so the main process only lays the shards out.
    sample_lengths: list[int] = field(default_factory=list)
    json_lengths: list[int] = field(default_factory=list)
    placements: list[Placement] = field(default_factory=list)  # where pass 2 writes the samples (set by ingest)

    @property
    def bands(self) -> list[str]:
        return list(self.meta.get("bands", []))


def _epsg(crs: Any) -> int | None:
    try:
        return crs.to_epsg()
    except Exception:  # pyproj-free rasterio CRS may not resolve custom WKT; no EPSG then
        return None


def scan_scene(
    spec: SceneSpec, config: IngestConfig, gdal_options: dict[str, Any], spool_dir: str, part: int = 0, parts: int = 1
) -> SceneScan:
    """Pass 1 over part `part` of `parts` of a scene. Never raises for bad input: the reason is returned instead."""
    scan = SceneScan(spec, part, parts)
    try:
        paired = config.paired
        partner = {"partner_bands": paired.bands, "partner_suffix": paired.suffix} if paired else {}
        with SceneReader(spec, config.bands, config.resampling, config.nodata, gdal_options, **partner) as reader:
            _scan(reader, config, scan, spool_dir)
    except SceneError as exc:
        scan.reason = str(exc)
    except MemoryError:
        raise
    except Exception as exc:  # a reader library failing on a malformed file must not end the whole run
        scan.reason = f"unexpected {type(exc).__name__} while reading: {exc}"
    if scan.reason and scan.spool_path and os.path.exists(scan.spool_path):
        os.unlink(scan.spool_path)
    if scan.reason and is_transient_read_failure(scan.reason, [f.url for f in spec.all_files]):
        # the storage failed, not the file: raise so callers retry (the Prefect task does) instead of rejecting
        raise StorageError(f"{spec.scene_id}: {scan.reason}")
    return scan


_TRANSIENT = re.compile(
    r"HTTP (response )?code:? ?(5\d\d|429)|connection (refused|reset|timed out)|could(n't| not) (connect|resolve)"
    r"|timed? ?out|failed to connect|temporary failure|network is unreachable",
    re.IGNORECASE,
)


def is_transient_read_failure(reason: str, urls: list[str]) -> bool:
    """A remote source that failed the way a server does (5xx, throttling, refused, timeout): worth a retry."""
    return any(url.startswith(("s3://", "/vsis3/", "http://", "https://")) for url in urls) and bool(
        _TRANSIENT.search(reason)
    )


@dataclass
class _Cut:
    """The kept tiles of one tile row, copied out of the strip."""

    row: int
    tiles: np.ndarray  # (kept, bands, size, size)
    masks: np.ndarray  # (kept, size, size)
    cols: list[int]
    fractions: list[float]


def _cut_strip(
    scan: SceneScan, row: int, data: np.ndarray, valid: np.ndarray, size: int, stride: int, limit: float
) -> _Cut | None:
    """Tiles of one tile row under the nodata limit (None when there is none); the others are counted as dropped."""
    starts = np.arange(0, data.shape[2] - size + 1, stride)
    # valid pixels per tile from running column counts: the same fractions as each window's mean, in O(width)
    running = np.concatenate([[0], np.cumsum(np.count_nonzero(valid, axis=0))])
    fractions = 1.0 - (running[starts + size] - running[starts]) / (size * size)
    keep = (fractions <= limit) & (fractions < 1.0)
    scan.dropped_nodata += int((~keep).sum())
    if not keep.any():
        return None
    # (bands, size, cols, size) -> (cols, bands, size, size): every tile of this row, as views; the kept ones copied
    tiles = sliding_window_view(data, size, axis=2)[:, :, ::stride].transpose(2, 0, 1, 3)
    masks = sliding_window_view(valid, size, axis=1)[:, ::stride].transpose(1, 0, 2)
    cols = [int(c) for c in starts[keep]]
    return _Cut(row, tiles[keep], masks[keep], cols, [float(f) for f in fractions[keep]])


class _Spooler:
    """Writes each kept tile row to the part's spool (raw values, packed masks, metadata JSON) and records what
    pass 2 and the shard layout need: the rows' tiles, each sample's length and its JSON's length."""

    def __init__(self, scan: SceneScan, config: IngestConfig, spool: BinaryIO) -> None:
        self.scan, self.spool, self.size = scan, spool, config.tile_size
        self.prefix, self.transform = _scene_json_prefix(scan, config.tile_dtype), scan.meta["transform"]
        self.tile_bytes = _tile_encoder(scan, config).encoded_size
        self.mask_bytes = _mask_encoder(config).encoded_size

    def add(self, cut: _Cut) -> None:
        scan, size = self.scan, self.size
        self.spool.write(memoryview(np.ascontiguousarray(cut.tiles)))
        self.spool.write(memoryview(np.packbits(cut.masks, axis=None)))
        metas = [
            tile_metadata_json(self.prefix, self.transform, cut.row, col, size, fraction)
            for col, fraction in zip(cut.cols, cut.fractions, strict=True)
        ]
        self.spool.write(b"".join(metas))
        for col, meta in zip(cut.cols, metas, strict=True):
            key = tile_key(scan.spec.scene_id, cut.row, col)
            scan.sample_lengths.append(
                member_size(f"{key}.tile.npy", self.tile_bytes)
                + member_size(f"{key}.mask.npy", self.mask_bytes)
                + member_size(f"{key}.json", len(meta))
            )
            scan.json_lengths.append(len(meta))
        scan.strips.append((cut.row, cut.cols, cut.fractions))
        scan.tile_count += len(cut.cols)


def _add_statistics(stats: list[BandStatistics], cut: _Cut, seed: int) -> None:
    """One tile row's kept valid pixels into each band's statistics. Sampled (float) values are drawn with a
    generator seeded by scene and row, so the sample does not depend on how the scene was split into parts; exact
    histograms need none. (One row at a time: numpy's count of a whole read's values is slower than its parts.)"""
    rng = None if counts_exactly(cut.tiles.dtype) else np.random.default_rng((seed, cut.row))
    all_valid = bool(cut.masks.all())
    for band, band_stats in enumerate(stats):
        pixels = cut.tiles[:, band]
        band_stats.update(pixels.ravel() if all_valid else pixels[cut.masks], rng)


def _scan(reader: SceneReader, config: IngestConfig, scan: SceneScan, spool_dir: str) -> None:
    size, stride = config.tile_size, config.effective_stride
    scan.dtype = np.dtype(reader.dtype).name
    scan.meta = {
        "bands": reader.band_names,
        "dtype": scan.dtype,
        "crs": reader.crs.to_wkt(),
        "epsg": _epsg(reader.crs),
        "width": reader.width,
        "height": reader.height,
        "transform": list(reader.transform)[:6],
        "resampled": reader.resampled,
    }
    if reader.width < size or reader.height < size:
        raise SceneError(f"scene is {reader.width}x{reader.height} px, smaller than one {size} px tile")
    scan.stats = new_band_statistics(len(reader.band_names), config.normalization.float_sample_size)
    seed = zlib.crc32(scan.spec.scene_id.encode())
    scan.spool_path = os.path.join(spool_dir, f"{scan.spec.scene_id}.{scan.part}.spool")
    limit = config.max_nodata_fraction
    all_rows = range(0, reader.height - size + 1, stride)
    tile_rows = [all_rows[i] for i in np.array_split(np.arange(len(all_rows)), scan.parts)[scan.part]]
    row_bytes = reader.width * len(reader.band_names) * np.dtype(reader.dtype).itemsize
    per_read = max(1, READ_BUDGET_BYTES // (row_bytes * max(stride, 1)))  # tile rows per windowed read
    with open(scan.spool_path, "wb") as spool:
        spooler = _Spooler(scan, config, spool)
        for first in range(0, len(tile_rows), per_read):
            group = tile_rows[first : first + per_read]
            top = group[0]
            block, block_valid = reader.read_strip(top, group[-1] + size - top)
            for row in group:
                data, valid = block[:, row - top : row - top + size], block_valid[row - top : row - top + size]
                cut = _cut_strip(scan, row, data, valid, size, stride, limit)
                if cut is not None:
                    spooler.add(cut)
                    _add_statistics(scan.stats, cut, seed)


def merge_parts(parts: list[SceneScan], config: IngestConfig) -> SceneScan:
    """One scene's summary from its parts: counts and statistics added up, the first rejection reason kept."""
    first = parts[0]
    merged = SceneScan(first.spec, reason=next((p.reason for p in parts if p.reason), None), meta=first.meta)
    merged.dtype = first.dtype
    merged.tile_count = sum(p.tile_count for p in parts)
    merged.dropped_nodata = sum(p.dropped_nodata for p in parts)
    if merged.reason is None:
        sample_size = config.normalization.float_sample_size
        merged.stats = merge_band_statistics([p.stats for p in parts], len(first.stats), sample_size)
        if merged.tile_count == 0:
            merged.reason = (
                f"no usable tile: all {merged.dropped_nodata} tiles of {config.tile_size} px have more than "
                f"{config.max_nodata_fraction:.0%} nodata (or none is valid)"
            )
    return merged


def _scene_json_prefix(scan: SceneScan, tile_dtype: str) -> str:
    """The JSON of the metadata every tile of the scene shares, without its closing brace."""
    shared = {
        "scene_id": scan.spec.scene_id,
        "sources": [file.url for file in scan.spec.all_files],
        "bands": scan.bands,
        "crs": scan.meta["crs"],
        "epsg": scan.meta["epsg"],
        "acquired": scan.spec.acquired,
        "source_dtype": scan.dtype,
        "tile_dtype": tile_dtype,
    }
    return json.dumps(shared, separators=(",", ":"))[:-1]


def tile_key(scene_id: str, row: int, col: int) -> str:
    """A tile's WebDataset sample key: its scene and the top-left pixel of its window."""
    return f"{scene_id}_r{row:06d}_c{col:06d}"


def tile_metadata_json(prefix: str, transform: list[float], row: int, col: int, size: int, fraction: float) -> bytes:
    """One tile's metadata: the scene's shared fields plus its transform, bounds (left, bottom, right, top in the
    scene's CRS), window and nodata fraction. Formatted directly (numbers as `json.dumps` writes them: floats by
    their repr), as ingest writes one per tile."""
    a, b, c, d, e, f = tile_transform(transform, row, col)
    xs = [c + a * i + b * j for i, j in ((0, 0), (size, 0), (0, size), (size, size))]
    ys = [f + d * i + e * j for i, j in ((0, 0), (size, 0), (0, size), (size, size))]
    return (
        f'{prefix},"transform":[{a!r},{b!r},{c!r},{d!r},{e!r},{f!r}],'
        f'"bounds":[{min(xs)!r},{min(ys)!r},{max(xs)!r},{max(ys)!r}],'
        f'"window":{{"row":{row:d},"col":{col:d},"height":{size:d},"width":{size:d}}},'
        f'"nodata_fraction":{round(fraction, 6)!r}}}'
    ).encode()


def _tile_encoder(scan: SceneScan, config: IngestConfig) -> NpyEncoder:
    return NpyEncoder(np.dtype(config.tile_dtype), (len(scan.bands), config.tile_size, config.tile_size))


def _mask_encoder(config: IngestConfig) -> NpyEncoder:
    return NpyEncoder(np.dtype(bool), (config.tile_size, config.tile_size))


def _encoded_samples(scan: SceneScan, norm: Normalization, config: IngestConfig) -> Iterator[bytes]:
    """The scene part's samples, normalized from its spool, in order."""
    size, bands = config.tile_size, len(scan.bands)
    raw_dtype, tile_dtype = np.dtype(scan.dtype), np.dtype(config.tile_dtype)
    tile_npy, mask_npy = _tile_encoder(scan, config), _mask_encoder(config)
    pixels = size * size
    json_lengths = iter(scan.json_lengths)
    with open(scan.spool_path, "rb") as spool:
        for row, cols, _ in scan.strips:
            count = len(cols)
            raw = np.frombuffer(spool.read(count * bands * pixels * raw_dtype.itemsize), dtype=raw_dtype)
            packed = np.frombuffer(spool.read((count * pixels + 7) // 8), dtype=np.uint8)
            lengths = list(itertools.islice(json_lengths, count))
            metas = memoryview(spool.read(sum(lengths)))
            masks = np.unpackbits(packed, count=count * pixels).astype(bool).reshape(count, size, size)
            tiles = norm.apply(raw.reshape(count, bands, size, size), masks, tile_dtype)
            offset = 0
            for col, length, tile, mask in zip(cols, lengths, tiles, masks, strict=True):
                yield encode_sample(
                    tile_key(scan.spec.scene_id, row, col),
                    {
                        "tile.npy": tile_npy.encode(tile),
                        "mask.npy": mask_npy.encode(mask),
                        "json": metas[offset : offset + length],
                    },
                )
                offset += length


def encode_scene(scan: SceneScan, norm: Normalization, config: IngestConfig) -> None:
    """Pass 2 over one scene part: normalize its spooled tiles and write their samples where `scan.placements`
    says, straight into the staged shards, a batch of samples per system call (other workers write other parts of
    the same shard, and every write takes the file's lock)."""
    samples = _encoded_samples(scan, norm, config)
    for place in scan.placements:
        fd = os.open(place.path, os.O_WRONLY)
        try:
            offset, end, remaining = place.offset, place.offset + place.length, place.count
            while batch := list(itertools.islice(samples, min(remaining, _SAMPLES_PER_WRITE))):
                offset = _write_at(fd, batch, offset)
                remaining -= len(batch)
        finally:
            os.close(fd)
        if offset != end:
            raise RuntimeError(
                f"{scan.spec.scene_id}: encoded {offset - place.offset} bytes where the shard layout planned "
                f"{place.length} (the sample lengths of pass 1 and the encoder disagree)"
            )


_SAMPLES_PER_WRITE = 64  # ~2 MB of 64 px samples; within the kernel's limit of 1,024 buffers a call


def _write_at(fd: int, buffers: list[bytes], offset: int) -> int:
    """Write `buffers` back to back from `offset` (retrying short writes); returns the offset after them."""
    pending = [memoryview(b) for b in buffers]
    while pending:
        written = os.pwritev(fd, pending, offset)
        offset += written
        while pending and written >= len(pending[0]):
            written -= len(pending[0])
            pending.pop(0)
        if pending and written:
            pending[0] = pending[0][written:]
    return offset
