"""Evaluate a generator checkpoint: FID, KID and (with a classifier head) Inception Score against its dataset.

Real-tile statistics are cached next to the dataset (`<dataset>/fid-reference/<key>.pt`, local or S3), keyed by
the manifest checksum, the weights' sha256, N, the resize method, the band triplet and the seed, so repeated
evaluations only embed generated images. Under torchrun each rank generates and embeds its share; rank 0 gathers
the features and computes the scores. Every result records its protocol: weights sha256, N real, N fake, resize
method, band triplet.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from typing import Any

import torch
import torch.distributed as dist

from atlas_gan.config import AtlasConfig
from atlas_gan.metrics.features import embed_batches, generated_batches, real_tile_batches
from atlas_gan.metrics.inception import RESIZE_METHOD, FIDInception
from atlas_gan.metrics.scores import FeatureStats, frechet_distance, inception_score, kernel_inception_distance
from atlas_gan.metrics.weights import InceptionWeights, load_inception, resolve_weights
from atlas_gan.preview import band_triplets
from atlas_gan.runtime.checkpoint import list_checkpoints
from atlas_gan.runtime.distributed import DistributedContext, barrier
from atlas_gan.runtime.generator import load_generator
from atlas_gan.runtime.precision import autocast_dtype
from atlas_gan.shards import read_manifest
from atlas_gan.storage import Storage, join_url, storage_for


def _reference_url(dataset: str, fields: dict[str, Any]) -> str:
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    return join_url(dataset, "fid-reference", f"{key}.pt")


def reference_features(
    store: Storage,
    dataset: str,
    manifest: dict[str, Any],
    model: FIDInception,
    weights: InceptionWeights,
    positions: list[int],
    n: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    bf16: bool,
    progress: bool,
) -> tuple[torch.Tensor, bool]:
    """Real-tile features from the cache, or embedded now and cached. Returns (features, was_cached)."""
    n = min(n, manifest["totals"]["samples"])
    fields = {
        "dataset": manifest["checksum"],
        "weights": weights.sha256,
        "n": n,
        "resize": RESIZE_METHOD,
        "bands": positions,
        "seed": seed,
        "bf16": bf16,
    }
    url = _reference_url(dataset, fields)
    if store.exists(url):
        cached = torch.load(io.BytesIO(store.read_bytes(url)), map_location="cpu", weights_only=True)
        if cached.get("fields") == fields:
            return cached["features"], True
    batches = real_tile_batches(store, dataset, manifest, positions, n, batch_size, seed)
    features, _ = embed_batches(model, batches, n, device, bf16, "embed real tiles", progress)
    buffer = io.BytesIO()
    torch.save({"fields": fields, "features": features}, buffer)
    store.write_bytes(url, buffer.getvalue())
    return features, False


def _gather(tensor: torch.Tensor | None, ctx: DistributedContext) -> torch.Tensor | None:
    if tensor is None or not ctx.enabled:
        return tensor
    parts = [torch.empty_like(tensor, device=ctx.device) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.to(ctx.device))
    return torch.cat([p.cpu() for p in parts])


def latest_checkpoint(config: AtlasConfig) -> str:
    store = storage_for(config.train.run_dir, config.storage)
    found = list_checkpoints(store, config.train.run_dir)
    if not found:
        raise ValueError(f"{config.train.run_dir}: no checkpoint to evaluate; train first or pass --checkpoint")
    return found[-1][1]


def evaluate_checkpoint(
    config: AtlasConfig,
    checkpoint: str,
    ctx: DistributedContext,
    n: int | None = None,
    progress: bool = True,
    write: bool = True,
) -> dict[str, Any] | None:
    """Collective: every rank calls it. Returns the result on rank 0 (None elsewhere)."""
    generator, meta = load_generator(storage_for(checkpoint, config.storage), checkpoint)
    return evaluate_generator(config, generator, {**meta, "checkpoint": checkpoint}, ctx, n, progress, write)


def evaluate_generator(
    config: AtlasConfig,
    generator: torch.nn.Module,
    meta: dict[str, Any],
    ctx: DistributedContext,
    n: int | None = None,
    progress: bool = True,
    write: bool = True,
) -> dict[str, Any] | None:
    """Scores of `generator` (meta: `generator_meta`, plus checkpoint if any). Collective, like the above."""
    cfg = config.evaluate
    started = time.perf_counter()
    n_fake = n or cfg.n
    n_real = cfg.n_real or n_fake
    weights = resolve_weights(cfg.inception_weights)
    model = load_inception(weights).to(ctx.device)
    bf16 = autocast_dtype(cfg.precision, ctx.device) is not None
    was_training = generator.training
    generator = generator.eval().to(ctx.device)
    data_store = storage_for(config.dataset_url, config.storage)
    manifest = read_manifest(data_store, config.dataset_url)
    if manifest is None:
        raise ValueError(f"{config.dataset_url}: no dataset manifest to evaluate against")
    bands = manifest["tile"]["bands"]
    if bands != meta["bands"]:
        raise ValueError(f"the generator was trained on bands {meta['bands']}, the dataset has {bands}")
    triplets = band_triplets(bands, cfg.rgb_bands or config.train.rgb_bands)
    triplets = triplets if cfg.per_triplet else triplets[:1]
    share = -(-n_fake // ctx.world_size)
    show = progress and ctx.is_main
    result: dict[str, Any] = {
        "checkpoint": meta.get("checkpoint"),
        "step": meta["step"],
        "model": meta["model"],
        "dataset_checksum": manifest["checksum"],
        "weights_sha256": weights.sha256,
        "weights_source": weights.source,
        "resize": RESIZE_METHOD,
        "n_fake": n_fake,
        "precision": "bf16" if bf16 else "fp32",
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "scores": {},
    }
    for label, positions in triplets:
        batches = generated_batches(
            generator, meta, share, cfg.batch_size, positions, ctx.device, cfg.seed * 1_000_003 + ctx.rank
        )
        fake, probabilities = embed_batches(model, batches, share, ctx.device, bf16, f"embed generated ({label})", show)
        fake, probabilities = _gather(fake, ctx), _gather(probabilities, ctx)
        if ctx.is_main:
            real, cached = reference_features(
                data_store,
                config.dataset_url,
                manifest,
                model,
                weights,
                positions,
                n_real,
                cfg.batch_size,
                cfg.seed,
                ctx.device,
                bf16,
                show,
            )
            fake = fake[:n_fake]
            kid_mean, kid_std = kernel_inception_distance(real, fake, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
            scores: dict[str, Any] = {
                "bands": [bands[i] for i in dict.fromkeys(positions)],
                "fid": frechet_distance(FeatureStats.of(real), FeatureStats.of(fake)),
                "kid": kid_mean,
                "kid_std": kid_std,
                "n_real": real.shape[0],
                "reference_cached": cached,
            }
            if probabilities is not None:
                scores["is"], scores["is_std"] = inception_score(probabilities[:n_fake], cfg.is_splits)
            else:
                scores["is"] = None
                scores["is_unavailable"] = (
                    f"the Inception weights ({weights.source}, sha256 {weights.sha256[:12]}) have no classifier "
                    "head (pool3 features only); use pt_inception-2015-12-05-6726825d.pth for Inception Score"
                )
            result["scores"][label] = scores
        barrier(ctx)
    generator.train(was_training)
    if not ctx.is_main:
        return None
    result["fid"] = result["scores"][triplets[0][0]]["fid"]
    result["seconds"] = time.perf_counter() - started
    if write:
        out = join_url(config.train.run_dir, "eval", f"step-{meta['step']:08d}.json")
        storage_for(out, config.storage).write_bytes(out, (json.dumps(result, indent=2) + "\n").encode())
        result["written_to"] = out
    return result
