"""Inception features of real tiles (from the dataset's shards) and of generated images, batched.

Both sides are shown to Inception the same way: a band triplet of values in [0, 1] (ingest's normalization for
real tiles, (G(z) + 1) / 2 for generated ones), clipped, 8-bit quantized, scaled to [-1, 1], resized to 299.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tarfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from atlas_gan.labels import LabelVocabulary
from atlas_gan.metrics.inception import FIDInception, preprocess
from atlas_gan.models.base import ModelSpec
from atlas_gan.runtime.signature import signature_of
from atlas_gan.storage import Storage, join_url


@contextlib.contextmanager
def _autocast(device: torch.device, bf16: bool) -> Iterator[None]:
    if bf16:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


@torch.no_grad()
def embed(
    model: FIDInception, images: torch.Tensor, device: torch.device, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RGB images in [0, 1] -> (features float32 (N, 2048), softmax probabilities (N, 1008) or None)."""
    with _autocast(device, bf16):
        features, logits = model(preprocess(images.to(device)).contiguous(memory_format=torch.channels_last))
    probabilities = torch.softmax(logits.float(), dim=1).cpu() if logits is not None else None
    return features.float().cpu(), probabilities


def embed_batches(
    model: FIDInception,
    batches: Iterator[torch.Tensor],
    total: int,
    device: torch.device,
    bf16: bool,
    desc: str,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    features, probabilities = [], []
    with tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not progress) as bar:
        for batch in batches:
            f, p = embed(model, batch, device, bf16)
            features.append(f)
            if p is not None:
                probabilities.append(p)
            bar.update(batch.shape[0])
    return torch.cat(features), (torch.cat(probabilities) if probabilities else None)


def image_features(
    model: FIDInception, images: torch.Tensor, batch_size: int, device: torch.device, desc: str = "embed"
) -> torch.Tensor:
    """Inception features of images already in [0, 1] with three bands, `batch_size` at a time."""
    batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    return embed_batches(model, batches, len(images), device, False, desc, False)[0]


def chosen_tiles(total: int, n: int, seed: int, exclude: set[int] | frozenset[int] = frozenset()) -> set[int]:
    """A seeded random subset of min(n, available) tile indexes out of `total`, none of them in `exclude`."""
    rng = np.random.default_rng(seed)
    if not exclude:
        return set(rng.choice(total, size=min(n, total), replace=False).tolist())
    pool = np.setdiff1d(np.arange(total), np.fromiter(exclude, dtype=np.int64))
    return set(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist())


def real_tile_batches(
    store: Storage,
    dataset: str,
    manifest: dict[str, Any],
    positions: list[int],
    n: int,
    batch_size: int,
    seed: int,
    exclude: set[int] | frozenset[int] = frozenset(),
) -> Iterator[torch.Tensor]:
    """A seeded random subset of n tiles of the dataset (none in `exclude`), as (batch, 3, h, w) in [0, 1], in
    shard order."""
    chosen = chosen_tiles(manifest["totals"]["samples"], n, seed, exclude)
    index, batch = 0, []
    for shard in manifest["shards"]:
        with store.open_read(join_url(dataset, shard["url"])) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.name.endswith(".tile.npy"):
                    continue
                if index in chosen:
                    tile = np.load(io.BytesIO(tar.extractfile(member).read()))
                    batch.append(torch.from_numpy(tile[positions].astype(np.float32)))
                    if len(batch) == batch_size:
                        yield torch.stack(batch)
                        batch = []
                index += 1
    if batch:
        yield torch.stack(batch)


class PixelSpread:
    """How much images vary from one to the next: the per-pixel standard deviation across images, averaged over
    pixels and bands. A collapsed generator (one tile, or one tile plus noise that does not vary) scores near 0;
    real tiles score their own variety. Feed batches with `add` (or wrap an iterator with `passing`)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.count = 0

    def add(self, images: torch.Tensor) -> None:
        x = images.detach().to("cpu", torch.float64)
        if self.total is None:
            self.total, self.squares = torch.zeros_like(x[0]), torch.zeros_like(x[0])
        self.total += x.sum(dim=0)
        self.squares += x.square().sum(dim=0)
        self.count += x.shape[0]

    def passing(self, batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        for batch in batches:
            self.add(batch)
            yield batch

    def state(self) -> torch.Tensor:
        """count, sums and sums of squares as one float64 tensor (to add up over ranks)."""
        assert self.total is not None and self.squares is not None
        return torch.cat(
            [torch.tensor([float(self.count)], dtype=torch.float64), self.total.flatten(), self.squares.flatten()]
        )

    @staticmethod
    def value_of(state: torch.Tensor) -> float:
        count, rest = float(state[0]), state[1:]
        total, squares = rest.chunk(2)
        mean = total / count
        variance = (squares / count - mean.square()).clamp(min=0) * count / max(count - 1, 1)
        return float(variance.sqrt().mean())

    def value(self) -> float:
        return self.value_of(self.state())


def generated_batches(
    generator: torch.nn.Module,
    meta: dict[str, Any],
    n: int,
    batch_size: int,
    positions: list[int],
    device: torch.device,
    seed: int,
) -> Iterator[torch.Tensor]:
    """n generator samples as band-triplet images in [0, 1], from inputs its signature draws from a seeded generator
    (latents; for a conditional generator, labels with the training data's label frequencies)."""
    rng = torch.Generator(device="cpu").manual_seed(seed)
    signature = signature_of(meta)
    spec = ModelSpec(**meta["spec"])
    vocabulary = LabelVocabulary.from_dict(meta.get("labels"))
    for inputs in signature.random_batches(spec, vocabulary, n, batch_size, rng, device):
        with torch.no_grad():
            images = generator(*inputs).float()
        yield ((images[:, positions] + 1.0) / 2.0).cpu()
