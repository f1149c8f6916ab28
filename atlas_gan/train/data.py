"""Stream training tiles from an ingest manifest's WebDataset shards, split over ranks and loader workers.

Every rank and every DataLoader worker is one *consumer*. Each epoch the shard list is shuffled with a seed that
depends only on (seed, epoch), so all consumers agree on it; then each consumer takes every n-th shard. When a
dataset has fewer shards than consumers (small datasets, many GPUs), every consumer reads all shards and keeps
every n-th sample instead, so no rank ever waits on an empty split. The stream is endless: after the last shard it
moves to the next epoch. Each consumer's stream is a function of (seed, epoch, consumer) alone, and every sample
carries its consumer and its place in that consumer's epoch, so a resumed run can start each consumer exactly where
the checkpoint left it (`atlas_gan/train/data_resume.py`) instead of at the start of an epoch.

Tiles arrive normalized by ingest (the 2nd..98th percentile of each band spans 0..1); the trainer sees
`clip(2 * tile - 1, -1, 1)`, the range of the generator's tanh. Nodata pixels (0 in the tile) become -1.
Each tile comes with its class label: the index of its scene's label (conditional training, see labels.py;
tiles of unlabelled scenes are skipped), or 0 when training is unconditional.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from atlas_gan.config import AugmentConfig, StorageConfig
from atlas_gan.samples import NpyDecoder, TarFormatError, read_members
from atlas_gan.storage import storage_for
from atlas_gan.train.data_resume import DataPosition, DataResume


def augment(tile: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Flips and 90-degree rotations: the dihedral group, valid for overhead imagery."""
    if config.rot90:
        tile = np.rot90(tile, k=int(rng.integers(4)), axes=(1, 2))
    if config.flips and rng.random() < 0.5:
        tile = tile[:, :, ::-1]
    return tile


def to_training_range(tile: np.ndarray, image_size: int) -> np.ndarray:
    """Normalized tile -> float32 in [-1, 1], average-pooled down to `image_size` when the tile is larger."""
    factor = tile.shape[-1] // image_size
    if tile.dtype == np.float16 and factor == 1:
        # one gather per pixel: numpy converts float16 without SIMD, slower than the lookup and arithmetic together
        return np.take(_FLOAT16_TO_TRAINING, np.ascontiguousarray(tile).view(np.uint16))
    x = tile.astype(np.float32)
    if factor > 1:
        c, h, w = x.shape
        x = x.reshape(c, h // factor, factor, w // factor, factor).mean(axis=(2, 4))
    return _from_unit_range(x)


def _from_unit_range(x: np.ndarray) -> np.ndarray:
    """float32 [0, 1] -> [-1, 1], clipped."""
    return np.clip(x * 2.0 - 1.0, -1.0, 1.0)


def _float16_table() -> np.ndarray:
    """`to_training_range` of every float16 value (NaN stays NaN), indexed by its bits."""
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    with np.errstate(invalid="ignore"):
        return _from_unit_range(every.astype(np.float32))


_FLOAT16_TO_TRAINING = _float16_table()


class TileStream(IterableDataset):
    """Endless stream of samples `{"image", "label", "epoch"}` for one rank; DataLoader workers split it further
    (and collate them into batches of the same keys)."""

    def __init__(
        self,
        shard_urls: list[str],
        rank: int,
        world_size: int,
        *,
        image_size: int,
        seed: int,
        start_epoch: int = 0,
        shuffle_buffer: int = 1000,
        augment_config: AugmentConfig | None = None,
        storage: StorageConfig | None = None,
        scene_labels: dict[str, int] | None = None,
        exclude: frozenset[str] = frozenset(),
        starts: dict[int, tuple[int, int]] | None = None,
        rotation: int = 0,
    ) -> None:
        """`starts`: consumer -> (epoch, samples of its stream from that epoch's start to pass over), for a resumed
        run; other consumers start at `start_epoch`. `rotation`: loader worker w plays the rank's consumer
        (w + rotation) mod workers, so that the first batch a resumed DataLoader hands out (worker 0's) comes from
        the consumer whose turn it was."""
        super().__init__()
        if not shard_urls:
            raise ValueError("the dataset has no shards: run `atlas-gan ingest` first")
        self.shard_urls = list(shard_urls)
        self.rank, self.world_size = rank, world_size
        self.image_size, self.seed, self.start_epoch = image_size, seed, start_epoch
        self.shuffle_buffer, self.augment_config = shuffle_buffer, augment_config or AugmentConfig()
        self.storage = storage
        self.scene_labels = scene_labels
        self.exclude = exclude  # tile keys training never sees (the validation split and its buffer)
        self.starts, self.rotation = dict(starts or {}), rotation

    def _consumer(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + (worker + self.rotation) % workers, self.world_size * workers

    def _samples(self, urls: list[str]) -> Iterator[dict[str, Any]]:
        """Each sample's tile (and its metadata when training is conditional), shard by shard. The shards are
        WebDataset tars; they are parsed here directly (`read_members`, `NpyDecoder`), 2-3x faster than webdataset's
        generic tar and decode stages, and members training does not use (masks) are never decoded."""
        decoder = NpyDecoder()
        for url in urls:
            with storage_for(url, self.storage).open_read(url) as stream:
                try:
                    yield from self._shard_samples(read_members(stream), decoder)
                except TarFormatError as exc:
                    raise TarFormatError(f"{url}: {exc}") from None

    def _shard_samples(self, members: Iterator[tuple[str, bytes]], decoder: NpyDecoder) -> Iterator[dict[str, Any]]:
        """Members grouped into samples by key (the name up to its first dot, as webdataset groups them)."""
        key, sample = None, {}
        for name, payload in members:
            member_key, _, suffix = name.partition(".")
            if member_key != key:
                if "tile.npy" in sample:
                    yield sample
                key, sample = member_key, {}
            if member_key in self.exclude:
                continue
            if suffix == "tile.npy":
                sample["tile.npy"] = decoder.decode(payload)
            elif suffix == "json" and self.scene_labels is not None:
                sample["json"] = json.loads(payload)
        if "tile.npy" in sample:
            yield sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        me, consumers = self._consumer()
        first_epoch, skip = self.starts.get(me, (self.start_epoch, 0))
        for epoch in itertools.count(first_epoch):
            order = list(self.shard_urls)
            random.Random(f"{self.seed}-{epoch}").shuffle(order)
            rng = np.random.default_rng((self.seed, epoch, me))
            if len(order) >= consumers:
                samples = self._samples(order[me::consumers])
            else:
                samples = itertools.islice(self._samples(order), me, None, consumers)
            empty = True
            for index, (tile, label) in enumerate(self._shuffled(samples, rng)):
                empty = False
                if skip:  # drawn before the checkpoint
                    skip -= 1
                    continue
                yield {"image": torch.from_numpy(tile), "label": label, "epoch": epoch, "consumer": me, "index": index}
            if empty:  # every later epoch would be empty too: fail instead of looping forever
                raise ValueError(
                    f"no training tiles reach data consumer {me + 1} of {consumers} ({self.world_size} rank(s) x "
                    f"{consumers // self.world_size} loader worker(s)): its share of the {len(order)} shard(s) "
                    "holds none (too few tiles, or all of them held out); lower train.num_workers or add tiles"
                )

    def _label(self, sample: dict[str, Any]) -> int | None:
        if self.scene_labels is None:
            return 0
        return self.scene_labels.get(sample["json"]["scene_id"])

    def _shuffled(
        self, samples: Iterator[dict[str, Any]], rng: np.random.Generator
    ) -> Iterator[tuple[np.ndarray, int]]:
        """(tile augmented and in the training range, label), in the order of a shuffle buffer flushed at the end of
        the epoch."""
        buffer: list[tuple[np.ndarray, int]] = []
        for sample in samples:
            label = self._label(sample)
            if label is None:
                continue  # a scene left out of conditional training (condition.unlabeled=drop)
            # converted while the decoded tile is in cache: 1.1-1.4x the tiles/s of one loader worker converting
            # on the way out of the buffer
            item = (to_training_range(augment(sample["tile.npy"], rng, self.augment_config), self.image_size), label)
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            i = int(rng.integers(len(buffer)))
            buffer[i], item = item, buffer[i]
            yield item
        for i in rng.permutation(len(buffer)):
            yield buffer[i]


def read_tiles(
    shard_urls: list[str], keys: frozenset[str] | None, image_size: int, storage: StorageConfig | None, limit: int
) -> tuple[list[str], torch.Tensor]:
    """The first `limit` tiles named by `keys` (e.g. the validation split; None: any) in shard order, in the
    training range [-1, 1] at `image_size`: (keys, images (n, bands, size, size))."""
    decoder, found = NpyDecoder(), {}
    for url in shard_urls:
        with storage_for(url, storage).open_read(url) as stream:
            for name, payload in read_members(stream):
                key, _, suffix = name.partition(".")
                if suffix == "tile.npy" and (keys is None or key in keys):
                    found[key] = to_training_range(decoder.decode(payload), image_size)
                    if len(found) == limit:
                        break
        if len(found) == limit:
            break
    if not found:
        return [], torch.empty(0)
    return list(found), torch.from_numpy(np.stack(list(found.values())))


LOADER_GROUP = 4  # batches a loader worker collates and sends at once (see GroupedBatches)


class GroupedBatches:
    """Batches of `batch_size` from a DataLoader whose batches are `group` times larger, split into views, with
    where each data consumer stands (`position`, what a checkpoint saves for an exact resume).

    Each batch a worker process sends costs the training process host time to receive (shared-memory handles,
    unpickling, pinning) whatever its size: about 2 ms per batch of 64 tiles here, which on a GPU is time the host
    does not spend launching kernels. Sending 4 batches at once cut it to 0.7 ms per batch. The views of a pinned
    batch are pinned too, so their copies to the GPU stay asynchronous.

    A DataLoader hands out its workers' batches in turn, and each comes from one consumer, so a position is, per
    consumer, the (epoch, index) of the first sample of the last batch it sent and how many of its views were taken,
    plus which consumer sent last (see `data_resume.plan_resume`). `discard`: views to drop from a consumer's first
    batch (a resumed run restarts a half-taken batch at its beginning, so that the batches after it line up)."""

    def __init__(self, loader: DataLoader, position: DataPosition, discard: dict[int, int] | None = None) -> None:
        """`position`: where the streams start (its batch size and grouping are the loader's), carried on here."""
        self.loader, self.batch_size = loader, position.batch_size
        self.position = replace(position, consumers=dict(position.consumers))
        self._discard = dict(discard or {})

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for packed in self.loader:
            group = unpack_tiles(packed)
            consumer = int(group["consumer"][0])
            parts = {key: value.split(self.batch_size) for key, value in group.items()}
            taken = self._discard.pop(consumer, 0)
            place = [int(group["epoch"][0]), int(group["index"][0]), taken]
            self.position.consumers[consumer], self.position.last = place, consumer
            for i in range(taken, len(group["image"]) // self.batch_size):
                place[2] = i + 1  # counted as it is handed over: a checkpoint after this view resumes after it
                yield {key: values[i] for key, values in parts.items()}


def make_loader(
    stream: TileStream,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    group: int | None = None,
    resume: DataResume | None = None,
) -> GroupedBatches:
    """Endless batches of `batch_size` from `stream`. `group`: batches each worker sends at a time; None: LOADER_GROUP
    when feeding a GPU (`pin_memory`), whose kernel launches compete for the host, else 1 (on the CPU a group only
    delays the first batch: the tests' short runs took 1.2x longer). `resume`: where the stream was told to start
    (its half-taken batch to trim, the position to carry on)."""
    group = loader_group(num_workers, pin_memory, group)
    loader = DataLoader(
        stream,
        batch_size=batch_size * group,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        drop_last=True,
        prefetch_factor=max(2, 4 // group) if num_workers > 0 else None,  # per worker: 4 batches, 8 when grouped
        # its own generator: starting an iterator draws a seed for the workers, which must not come from (and move)
        # the training RNG, or a resumed run, starting its loader later, would continue on other random numbers;
        # the stream's randomness has seeds of its own
        generator=torch.Generator(),
        collate_fn=pack_tiles,
    )
    if resume is None:
        fresh = DataPosition(batch_size, group, max(num_workers, 1), origin=stream.start_epoch)
        return GroupedBatches(loader, fresh)
    return GroupedBatches(loader, resume.position, resume.discard)


def pack_tiles(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """A DataLoader batch of samples as two tensors: the images, and (label, epoch, consumer, index) per tile.
    Every tensor a worker sends costs a shared-memory transfer; one integer tensor instead of four kept a worker's
    tiles/s and the main thread's time per batch where they were before the stream carried its places."""
    images = default_collate([sample["image"] for sample in samples])  # in shared memory when collated by a worker
    places = [[sample["label"], sample["epoch"], sample["consumer"], sample["index"]] for sample in samples]
    return {"image": images, "meta": torch.tensor(places, dtype=torch.int64)}


def unpack_tiles(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`pack_tiles`'s batch with a key per field (views of its integer tensor)."""
    meta = packed["meta"]
    fields = {"label": meta[:, 0], "epoch": meta[:, 1], "consumer": meta[:, 2], "index": meta[:, 3]}
    return {"image": packed["image"], **fields}


def loader_group(num_workers: int, pin_memory: bool, group: int | None = None) -> int:
    """Batches a worker collates at once (see make_loader)."""
    if num_workers == 0:
        return 1
    return (LOADER_GROUP if pin_memory else 1) if group is None else group
