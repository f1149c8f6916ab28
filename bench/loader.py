"""Training data loader throughput: atlas-gan's TileStream against the webdataset pipeline it replaced, one run.

    python bench/loader.py [--data ../shared/data] [--tiles 6000] [--batch 64] [--workers 0 1 2] [--repeats 2]

Ingests landsat8-parana (B4, B3, B2) as 64 px float16 tiles into a temporary folder, then streams batches through
torch's DataLoader with 0, 1 and 2 worker processes and prints tiles/s for:
  webdataset  the loader before: webdataset's tar expansion and decoding of every member (`wds.decode()`)
  atlas-gan   `atlas_gan.train.data.TileStream` as the trainer uses it (its own tar and .npy parser)
with the same shuffling, augmentation (flips, rot90) and conversion to [-1, 1] in both, and the ratio. Each figure
is the best of --repeats runs of --tiles tiles after one warm-up batch (worker start-up excluded).

Then, with worker processes, the host time the *training process's* main thread spends per batch received (its
CPU time, so waiting is not counted): what a GPU step loses from launching kernels. Baseline: each worker sends
one batch at a time (the loader before); atlas-gan: `make_loader`, whose workers send LOADER_GROUP batches at once.
Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import webdataset as wds
from shared_data import SHARED_DATA

from atlas_gan.config import load_config
from atlas_gan.ingest import ingest
from atlas_gan.shards import read_manifest, shard_urls
from atlas_gan.storage import LocalStorage
from atlas_gan.train.data import LOADER_GROUP, TileStream, make_loader


class WebDatasetStream(TileStream):
    """The baseline: the same stream, its shards read by webdataset's generic stages (the loader before)."""

    def _samples(self, urls: list[str]) -> Iterator[dict[str, Any]]:
        yield from wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), wds.decode())


def tiles_per_second(stream: TileStream, workers: int, batch: int, tiles: int) -> float:
    batches = iter(make_loader(stream, batch, workers, pin_memory=False))
    next(batches)  # warm-up: workers started, shuffle buffer filling
    started, seen = time.perf_counter(), 0
    while seen < tiles:
        seen += len(next(batches)["image"])
    return seen / (time.perf_counter() - started)


def host_ms_per_batch(batches: Iterator[dict[str, Any]], count: int) -> float:
    """The calling thread's CPU time per batch over `count` batches (after a warm-up and a pause that lets the
    workers fill their queues)."""
    next(batches)
    time.sleep(2)
    started = time.thread_time()
    for _ in range(count):
        next(batches)
    return 1000 * (time.thread_time() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--tiles", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atlas-bench-loader-") as folder:
        config = load_config(
            None,
            [
                f"ingest.source={args.data / 'geotiff' / 'landsat8-parana'}",
                f"ingest.output={folder}",
                "ingest.tile_size=64",
                "ingest.bands=[B4, B3, B2]",
            ],
        )
        report = ingest(config, progress=False)
        urls = shard_urls(read_manifest(LocalStorage(), folder), folder)
        print(f"landsat8-parana: {report.new_samples} tiles of 64 px, 3 bands, float16, {len(urls)} shards")
        print(f"{'workers':>7} {'webdataset':>12} {'atlas-gan':>12} {'ratio':>7}   (tiles/s, batch {args.batch})")
        for workers in args.workers:
            rates = {}
            for name, kind in (("webdataset", WebDatasetStream), ("atlas-gan", TileStream)):
                rates[name] = max(
                    tiles_per_second(
                        kind(urls, 0, 1, image_size=64, seed=0, shuffle_buffer=1000), workers, args.batch, args.tiles
                    )
                    for _ in range(args.repeats)
                )
            ratio = rates["atlas-gan"] / rates["webdataset"]
            print(f"{workers:>7} {rates['webdataset']:>12,.0f} {rates['atlas-gan']:>12,.0f} {ratio:>6.2f}x")
        print(f"main-thread host time per batch received (ms; lower is better; atlas-gan: {LOADER_GROUP} per transfer)")
        print(f"{'workers':>7} {'one/transfer':>12} {'atlas-gan':>12} {'ratio':>7}")
        for workers in [w for w in args.workers if w > 0]:
            count = max(1, args.tiles // args.batch)
            host = {}
            for name, make in (
                ("one", lambda s, w=workers: iter(make_loader(s, args.batch, w, pin_memory=False, group=1))),
                (
                    "grouped",
                    lambda s, w=workers: iter(make_loader(s, args.batch, w, pin_memory=False, group=LOADER_GROUP)),
                ),
            ):
                host[name] = min(
                    host_ms_per_batch(make(TileStream(urls, 0, 1, image_size=64, seed=0, shuffle_buffer=1000)), count)
                    for _ in range(args.repeats)
                )
            ratio = host["one"] / host["grouped"]
            print(f"{workers:>7} {host['one']:>12.2f} {host['grouped']:>12.2f} {ratio:>6.2f}x")


if __name__ == "__main__":
    main()
