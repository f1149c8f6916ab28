"""Ingest throughput on landsat8-parana against a naive baseline and the raw read limit, measured in one run.

    python bench/ingest.py [--data ../shared/data] [--workers 2] [--repeats 3] [--copies 4]

Prints tiles/s and source MB/s (decoded pixels) for:
  atlas-gan   `atlas_gan.ingest.ingest` (two passes, process pool, shards + manifest)
  naive       read each whole band, percentile-normalize with numpy, slice tiles, write one tar with `tarfile`
  read limit  rasterio alone reading every pixel of the same scenes (one process)
and the ratios atlas-gan/naive and atlas-gan/read-limit. Each figure is the best of --repeats runs
(page cache warm for all three). On two scenes, what every run pays once (process pool, tile index, footprint map,
manifest) weighs as much as the pixels; so atlas-gan and the read limit are timed again on `--copies` copies of the
scenes (symbolic links under new scene names, in a temporary folder) and the marginal throughput, (copies - 1) x the
pixels over the extra time, is compared too: what the per-scene work costs at scale. Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import rasterio
from shared_data import SHARED_DATA

from atlas_gan.config import load_config
from atlas_gan.ingest import ingest

TILE = 64


def scene_groups(folder: Path) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.glob("*.TIF")):
        groups[re.sub(r"_B\d+\.TIF$", "", path.name)].append(path)
    return groups


def pixel_bytes(groups: dict[str, list[Path]]) -> int:
    total = 0
    for paths in groups.values():
        for path in paths:
            with rasterio.open(path) as ds:
                total += ds.width * ds.height * ds.count * np.dtype(ds.dtypes[0]).itemsize
    return total


def read_limit(groups: dict[str, list[Path]]) -> int:
    pixels = 0
    for paths in groups.values():
        for path in paths:
            with rasterio.open(path) as ds:
                pixels += ds.read(1).size
    return pixels


def naive(groups: dict[str, list[Path]], out: Path) -> int:
    """Whole-scene reads, numpy slicing, tarfile: what a first script would do."""
    stacks = {}
    for scene, paths in groups.items():
        bands = []
        for path in paths:
            with rasterio.open(path) as ds:
                bands.append(ds.read(1))
        stacks[scene] = np.stack(bands)
    valid = {s: (a != 0).all(axis=0) for s, a in stacks.items()}
    values = [np.concatenate([a[b][valid[s]] for s, a in stacks.items()]) for b in range(3)]
    lows = np.array([np.percentile(v, 2) for v in values])
    highs = np.array([np.percentile(v, 98) for v in values])
    tiles = 0
    with tarfile.open(out / "naive.tar", "w") as tar:
        for scene, stack in stacks.items():
            norm = ((stack - lows[:, None, None]) / (highs - lows)[:, None, None]).astype(np.float16)
            for row in range(0, stack.shape[1] - TILE + 1, TILE):
                for col in range(0, stack.shape[2] - TILE + 1, TILE):
                    if (~valid[scene][row : row + TILE, col : col + TILE]).mean() > 0.05:
                        continue
                    buffer = io.BytesIO()
                    np.save(buffer, norm[:, row : row + TILE, col : col + TILE])
                    for name, payload in (
                        (f"{scene}_{row}_{col}.tile.npy", buffer.getvalue()),
                        (f"{scene}_{row}_{col}.json", json.dumps({"scene": scene, "row": row, "col": col}).encode()),
                    ):
                        info = tarfile.TarInfo(name)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
                    tiles += 1
    return tiles


def atlas(folder: Path, out: Path, workers: int) -> int:
    config = load_config(
        None,
        [f"ingest.source={folder}", f"ingest.output={out}", f"ingest.workers={workers}", "ingest.nodata=0"],
    )
    return ingest(config, progress=False).new_samples


def linked_copies(folder: Path, target: Path, copies: int) -> Path:
    """`copies` sets of the scenes' files as symbolic links, each set under its own scene names."""
    target.mkdir()
    for copy in range(copies):
        for path in sorted(folder.glob("*.TIF")):
            (target / f"{path.name[:4]}C{copy}{path.name[4:]}").symlink_to(path.resolve())
    return target


def best_of(repeats: int, run) -> tuple[float, int]:
    times, result = [], 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
            start = time.perf_counter()
            result = run(Path(tmp))
            times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=4, help="scene copies for the marginal figures; 1: none")
    args = parser.parse_args()
    folder = args.data / "geotiff" / "landsat8-parana"
    groups = scene_groups(folder)
    megabytes = pixel_bytes(groups) / 2**20

    t_read, _ = best_of(args.repeats, lambda _: read_limit(groups))
    t_naive, naive_tiles = best_of(args.repeats, lambda out: naive(groups, out))
    t_atlas, atlas_tiles = best_of(args.repeats, lambda out: atlas(folder, out, args.workers))

    print(
        f"landsat8-parana: {len(groups)} scenes, {megabytes:.1f} MB of pixels, {os.cpu_count()} CPUs, "
        f"best of {args.repeats}"
    )
    print(f"{'':12} {'seconds':>8} {'tiles':>6} {'tiles/s':>8} {'MB/s':>7}")
    print(f"{'read limit':12} {t_read:8.3f} {'-':>6} {'-':>8} {megabytes / t_read:7.1f}")
    print(f"{'naive':12} {t_naive:8.3f} {naive_tiles:6d} {naive_tiles / t_naive:8.0f} {megabytes / t_naive:7.1f}")
    print(
        f"{'atlas-gan':12} {t_atlas:8.3f} {atlas_tiles:6d} {atlas_tiles / t_atlas:8.0f} {megabytes / t_atlas:7.1f}"
        f"   ({args.workers} workers)"
    )
    print(f"ratio atlas-gan / naive throughput:      {t_naive / t_atlas:.2f}x")
    print(f"ratio atlas-gan / read limit throughput: {t_read / t_atlas:.2f} (goal >= 0.8)")
    if args.copies < 2:
        return
    with tempfile.TemporaryDirectory(prefix="atlas-bench-copies-") as tmp:
        copies = linked_copies(folder, Path(tmp) / "scenes", args.copies)
        copy_groups = scene_groups(copies)
        t_read_k, _ = best_of(args.repeats, lambda _: read_limit(copy_groups))
        t_atlas_k, tiles_k = best_of(args.repeats, lambda out: atlas(copies, out, args.workers))
    extra = (args.copies - 1) * megabytes
    marginal_atlas, marginal_read = extra / (t_atlas_k - t_atlas), extra / (t_read_k - t_read)
    fixed = t_atlas - megabytes / marginal_atlas
    print(
        f"{args.copies} copies ({len(copy_groups)} scenes, {tiles_k} tiles): atlas-gan {t_atlas_k:.3f} s, "
        f"read limit {t_read_k:.3f} s"
    )
    print(
        f"marginal throughput: atlas-gan {marginal_atlas:.1f} MB/s, read limit {marginal_read:.1f} MB/s; "
        f"ratio {marginal_atlas / marginal_read:.2f} (goal >= 0.8); fixed cost per run ~{fixed:.2f} s"
    )


if __name__ == "__main__":
    main()
