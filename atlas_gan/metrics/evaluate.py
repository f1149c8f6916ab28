"""Evaluate a generator checkpoint: FID, KID and (with a classifier head) Inception Score against its dataset.

Real-tile statistics are cached next to the dataset (`<dataset>/fid-reference/<key>.pt`, local or S3), keyed by
the manifest checksum, the weights' sha256, N, the resize method, the band triplet and the seed, so repeated
evaluations only embed generated images. Under torchrun each rank generates and embeds its share; rank 0 gathers
the features and computes the scores. Every result records its protocol: weights sha256, N real, N fake, resize
method, band triplet.

Next to each FID: the real-vs-real floor at the same N (real tiles outside the reference set scored against it,
cached beside the reference) and the distance to it, so an FID reads as "this far from what real tiles score"; and
the pixel spread of the samples against the real tiles' (`PixelSpread`), which flags a collapsed generator that a
single FID number can hide; and precision and recall in Inception feature space (`manifold.py`: do the samples look
like real tiles, do they cover what real tiles show), beside what real tiles outside the reference set score.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from atlas_gan.config import AtlasConfig
from atlas_gan.metrics.features import PixelSpread, chosen_tiles, embed_batches, generated_batches, real_tile_batches
from atlas_gan.metrics.inception import RESIZE_METHOD, FIDInception
from atlas_gan.metrics.manifold import MAX_SAMPLES, precision_recall
from atlas_gan.metrics.scores import FeatureStats, frechet_distance, inception_score, kernel_inception_distance
from atlas_gan.metrics.superres import SuperResEvaluator
from atlas_gan.metrics.translation import TranslationEvaluator
from atlas_gan.metrics.unpaired import UnpairedEvaluator
from atlas_gan.metrics.weights import InceptionWeights, load_inception, resolve_weights
from atlas_gan.preview import band_triplets
from atlas_gan.runtime.checkpoint import checkpoint_step, list_checkpoints
from atlas_gan.runtime.distributed import DistributedContext, barrier
from atlas_gan.runtime.generator import load_generator, load_reference_generators
from atlas_gan.runtime.precision import autocast_dtype
from atlas_gan.runtime.signature import IMAGE
from atlas_gan.shards import read_manifest
from atlas_gan.storage import Storage, join_url, storage_for

REFERENCE_CONTENT = 2  # 2: features and pixel spread (1 held features only)


def _reference_url(dataset: str, fields: dict[str, Any]) -> str:
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    return join_url(dataset, "fid-reference", f"{key}.pt")


@dataclass(frozen=True)
class RealReference:
    """The real side of an evaluation: Inception features of the reference tiles and their pixel spread."""

    features: torch.Tensor
    spread: float
    cached: bool


@dataclass(frozen=True)
class Floor:
    """FID/KID, precision and recall of real tiles outside the reference set against it: what a perfect generator
    scores at this N."""

    fid: float
    kid: float
    n: int
    precision: float | None  # None: too few tiles for a k-th neighbour
    recall: float | None


def _load_cached(store: Storage, url: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    if not store.exists(url):
        return None
    cached = torch.load(io.BytesIO(store.read_bytes(url)), map_location="cpu", weights_only=True)
    return cached if cached.get("fields") == fields else None


def _save_cached(store: Storage, url: str, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    store.write_bytes(url, buffer.getvalue())


def reference_fields(
    manifest: dict[str, Any], weights: InceptionWeights, positions: list[int], n: int, seed: int, bf16: bool
) -> dict[str, Any]:
    """What identifies a reference set and its features (the cache key)."""
    return {
        "dataset": manifest["checksum"],
        "weights": weights.sha256,
        "n": min(n, manifest["totals"]["samples"]),
        "resize": RESIZE_METHOD,
        "bands": positions,
        "seed": seed,
        "bf16": bf16,
        "content": REFERENCE_CONTENT,
    }


def reference_features(
    store: Storage,
    dataset: str,
    manifest: dict[str, Any],
    model: FIDInception,
    fields: dict[str, Any],
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> RealReference:
    """Real-tile features and spread from the cache, or computed now and cached."""
    url = _reference_url(dataset, fields)
    cached = _load_cached(store, url, fields)
    if cached is not None:
        return RealReference(cached["features"], float(cached["spread"]), True)
    n, positions, seed, bf16 = fields["n"], fields["bands"], fields["seed"], fields["bf16"]
    spread = PixelSpread()
    batches = spread.passing(real_tile_batches(store, dataset, manifest, positions, n, batch_size, seed))
    features, _ = embed_batches(model, batches, n, device, bf16, "embed real tiles", progress)
    _save_cached(store, url, {"fields": fields, "features": features, "spread": spread.value()})
    return RealReference(features, spread.value(), False)


def real_floor(
    store: Storage,
    dataset: str,
    manifest: dict[str, Any],
    model: FIDInception,
    reference: RealReference,
    fields: dict[str, Any],
    n_fake: int,
    kid_subsets: int,
    kid_subset_size: int,
    pr_neighbours: int,
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> Floor | None:
    """The real-vs-real floor for `n_fake` samples against the reference: n_fake real tiles that are not in the
    reference set (fewer when the dataset is too small: the floor then reports its own N), computed once per
    dataset, reference and N and cached beside the reference. None when fewer than 2 tiles are left over."""
    total = manifest["totals"]["samples"]
    n = min(n_fake, total - fields["n"])
    if n < 2:
        return None
    floor_fields = {**fields, "floor_n": n}
    url = _reference_url(dataset, floor_fields)
    cached = _load_cached(store, url, floor_fields)
    if cached is None or cached.get("pr_neighbours") != pr_neighbours:  # older caches hold no precision/recall
        exclude = chosen_tiles(total, fields["n"], fields["seed"])
        batches = real_tile_batches(
            store, dataset, manifest, fields["bands"], n, batch_size, fields["seed"] + 1, exclude
        )
        features, _ = embed_batches(model, batches, n, device, fields["bf16"], "embed real tiles (floor)", progress)
        kid, _ = kernel_inception_distance(reference.features, features, kid_subsets, kid_subset_size, fields["seed"])
        fid = frechet_distance(FeatureStats.of(reference.features), FeatureStats.of(features))
        manifold = precision_recall(reference.features, features, pr_neighbours, fields["seed"])
        cached = {
            "fields": floor_fields,
            "fid": fid,
            "kid": kid,
            "n": n,
            "precision": manifold.precision if manifold else None,
            "recall": manifold.recall if manifold else None,
            "pr_neighbours": pr_neighbours,
        }
        _save_cached(store, url, cached)
    return Floor(float(cached["fid"]), float(cached["kid"]), int(cached["n"]), cached["precision"], cached["recall"])


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


def stored_evaluation(config: AtlasConfig, step: int, checksum: str) -> dict[str, Any] | None:
    """run_dir/eval/step-N.json when it was made at evaluate.n against the current dataset."""
    url = join_url(config.train.run_dir, "eval", f"step-{step:08d}.json")
    store = storage_for(url, config.storage)
    if not store.exists(url):
        return None
    result = json.loads(store.read_bytes(url))
    if result.get("n_fake") != config.evaluate.n or result.get("dataset_checksum") != checksum:
        return None
    if "sample_recall" not in result:  # scored before the floor, spread or precision/recall were measured: again
        return None
    return {**result, "written_to": url}


def scored_checkpoints(config: AtlasConfig) -> list[tuple[float, int, str]]:
    """(FID, step, url) of the run's checkpoints that training evaluated (stored as `stored_evaluation` reads
    them), oldest first."""
    store = storage_for(config.train.run_dir, config.storage)
    found = list_checkpoints(store, config.train.run_dir)
    dataset = config.dataset_url
    manifest = read_manifest(storage_for(dataset, config.storage), dataset) if found else None
    if manifest is None:
        return []
    scored = []
    for step, url in found:
        result = stored_evaluation(config, step, manifest["checksum"])
        if result is not None and result.get("fid") is not None:
            scored.append((float(result["fid"]), step, url))
    return scored


def checkpoint_to_register(config: AtlasConfig) -> str:
    """The checkpoint a training run offers the registry: with `evaluate.register_checkpoint` best, the one whose
    evaluation during training scored the lowest FID (the newest of equals); else, or with none scored, the newest."""
    newest = latest_checkpoint(config)
    if config.evaluate.register_checkpoint == "last":
        return newest
    scored = scored_checkpoints(config)
    return min(scored, key=lambda s: (s[0], -s[1]))[2] if scored else newest


def stored_checkpoint_evaluation(config: AtlasConfig, checkpoint: str) -> dict[str, Any] | None:
    """The evaluation training already made of `checkpoint` (`train.evaluate_every` landing on its step), when it
    was made at evaluate.n against the current dataset; None otherwise."""
    step = checkpoint_step(checkpoint)
    if step is None:
        return None
    dataset = config.dataset_url
    manifest = read_manifest(storage_for(dataset, config.storage), dataset)
    return None if manifest is None else stored_evaluation(config, step, manifest["checksum"])


def evaluate_checkpoint(
    config: AtlasConfig,
    checkpoint: str,
    ctx: DistributedContext,
    n: int | None = None,
    progress: bool = True,
    write: bool = True,
) -> dict[str, Any] | None:
    """Collective: every rank calls it. Returns the result on rank 0 (None elsewhere)."""
    store = storage_for(checkpoint, config.storage)
    generator, meta = load_generator(store, checkpoint)
    references = load_reference_generators(store, checkpoint)
    return evaluate_generator(
        config, generator, {**meta, "checkpoint": checkpoint}, ctx, n, progress, write, references
    )


def image_evaluator(
    config: AtlasConfig, meta: dict[str, Any], n: int | None, device: torch.device
) -> TranslationEvaluator | UnpairedEvaluator:
    """The evaluator of an image-to-image generator: FID against the other domain for CycleGAN, paired scores
    beside bicubic for super-resolution, beside the linear regression for pix2pix."""
    if meta["model"] == "cyclegan":
        return UnpairedEvaluator(config, meta, n, device)
    if int(meta["spec"].get("scale", 1)) > 1:
        return SuperResEvaluator(config, meta, n, device)
    return TranslationEvaluator(config, meta, n, device)


def evaluate_generator(
    config: AtlasConfig,
    generator: torch.nn.Module,
    meta: dict[str, Any],
    ctx: DistributedContext,
    n: int | None = None,
    progress: bool = True,
    write: bool = True,
    references: dict[str, torch.nn.Module] | None = None,
) -> dict[str, Any] | None:
    """Scores of `generator` (meta: `generator_meta`, plus checkpoint if any). Collective, like the above. An
    image-to-image generator is scored on the validation split by rank 0 (`translation.py`), beside `references`
    (super-resolution's pixel-loss model) when given."""
    if meta.get("signature") == IMAGE:
        if not ctx.is_main:
            return None
        evaluator = image_evaluator(config, meta, n, ctx.device)
        if isinstance(evaluator, UnpairedEvaluator):
            return evaluator.evaluate(generator, meta, ctx.device, write)
        return evaluator.evaluate(generator, meta, ctx.device, write, references)
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
        spread = PixelSpread()
        batches = spread.passing(
            generated_batches(
                generator, meta, share, cfg.batch_size, positions, ctx.device, cfg.seed * 1_000_003 + ctx.rank
            )
        )
        fake, probabilities = embed_batches(model, batches, share, ctx.device, bf16, f"embed generated ({label})", show)
        fake, probabilities = _gather(fake, ctx), _gather(probabilities, ctx)
        spread_state = spread.state()
        if ctx.enabled:
            spread_state = spread_state.to(ctx.device)
            dist.all_reduce(spread_state)
        if ctx.is_main:
            fields = reference_fields(manifest, weights, positions, n_real, cfg.seed, bf16)
            reference = reference_features(
                data_store, config.dataset_url, manifest, model, fields, cfg.batch_size, ctx.device, show
            )
            floor = real_floor(
                data_store,
                config.dataset_url,
                manifest,
                model,
                reference,
                fields,
                n_fake,
                cfg.kid_subsets,
                cfg.kid_subset_size,
                cfg.pr_neighbours,
                cfg.batch_size,
                ctx.device,
                show,
            )
            real = reference.features
            fake = fake[:n_fake]
            if not torch.isfinite(fake).all():
                raise ValueError(
                    f"the generator at step {meta.get('step')} drew non-finite samples (NaN or inf): its weights "
                    "diverged, so there is nothing to score; resume from an earlier checkpoint or lower the "
                    "learning rate"
                )
            kid_mean, kid_std = kernel_inception_distance(real, fake, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
            fid = frechet_distance(FeatureStats.of(real), FeatureStats.of(fake))
            # at the floor's N when there is one (it may have fewer tiles than n_fake), so the two compare
            pr_limit = min(MAX_SAMPLES, floor.n) if floor else MAX_SAMPLES
            manifold = precision_recall(real, fake, cfg.pr_neighbours, cfg.seed, pr_limit, ctx.device)
            fake_spread = PixelSpread.value_of(spread_state.cpu())
            scores: dict[str, Any] = {
                "bands": [bands[i] for i in dict.fromkeys(positions)],
                "fid": fid,
                "kid": kid_mean,
                "kid_std": kid_std,
                "n_real": real.shape[0],
                "reference_cached": reference.cached,
                "floor_fid": floor.fid if floor else None,
                "floor_kid": floor.kid if floor else None,
                "floor_n": floor.n if floor else None,
                "fid_above_floor": fid - floor.fid if floor else None,
                "spread": fake_spread,
                "real_spread": reference.spread,
                "spread_ratio": fake_spread / reference.spread if reference.spread > 0 else None,
                "sample_precision": manifold.precision if manifold else None,
                "sample_recall": manifold.recall if manifold else None,
                "pr_neighbours": cfg.pr_neighbours,
                "pr_n": min(real.shape[0], fake.shape[0], pr_limit),
                "floor_precision": floor.precision if floor else None,
                "floor_recall": floor.recall if floor else None,
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
    main = result["scores"][triplets[0][0]]
    result["fid"] = main["fid"]
    result["floor_fid"], result["spread_ratio"] = main["floor_fid"], main["spread_ratio"]
    result["sample_precision"], result["sample_recall"] = main["sample_precision"], main["sample_recall"]
    result["seconds"] = time.perf_counter() - started
    if write:
        out = join_url(config.train.run_dir, "eval", f"step-{meta['step']:08d}.json")
        storage_for(out, config.storage).write_bytes(out, (json.dumps(result, indent=2) + "\n").encode())
        result["written_to"] = out
    return result
