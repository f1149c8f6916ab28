"""Score an unpaired translation (CycleGAN) on the held-out tiles of its validation split: FID and KID of G's
translations of domain A's held-out tiles against domain B's held-out tiles, beside the baseline of not
translating at all (A's tiles as they are against B's). Band triplet and Inception preprocessing as for every FID.
The primary metric is FID (lower is better)."""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from atlas_gan.config import AtlasConfig
from atlas_gan.labels import LabelVocabulary, scene_labels
from atlas_gan.metrics.features import image_features
from atlas_gan.metrics.inception import RESIZE_METHOD
from atlas_gan.metrics.scores import FeatureStats, frechet_distance, kernel_inception_distance
from atlas_gan.metrics.translation import held_out_split
from atlas_gan.metrics.weights import load_inception, resolve_weights
from atlas_gan.preview import band_triplets
from atlas_gan.recipes.cyclegan import domain_classes
from atlas_gan.shards import shard_urls
from atlas_gan.storage import join_url, storage_for
from atlas_gan.train.data import read_tiles

UNPAIRED_KEYS = ("fid", "kid", "identity_fid")


class UnpairedEvaluator:
    """Held-out tiles of both domains, loaded once; `evaluate` scores a generator (A -> B) on them."""

    def __init__(
        self, config: AtlasConfig, meta: dict[str, Any], n: int | None = None, device: torch.device | None = None
    ) -> None:
        self.device = device or torch.device("cpu")
        manifest, self.split = held_out_split(config)
        dataset = config.dataset_url
        labels = scene_labels(manifest, config.train.condition, config.storage)
        if labels is None:
            raise ValueError("an unpaired translation is scored per domain: its labels (train.condition) are needed")
        domain_a, domain_b = domain_classes(config.train.model, LabelVocabulary.from_dict(meta.get("labels")))

        def held_out(domain: frozenset[int]) -> frozenset[str]:
            return frozenset(
                key for key in self.split.validation if labels.by_scene.get(self.split.scene_of[key]) in domain
            )

        urls, size, limit = shard_urls(manifest, dataset), meta["spec"]["image_size"], n or config.evaluate.n
        _, self.tiles_a = read_tiles(urls, held_out(domain_a), size, config.storage, limit)
        _, self.tiles_b = read_tiles(urls, held_out(domain_b), size, config.storage, limit)
        if len(self.tiles_a) < 2 or len(self.tiles_b) < 2:
            raise ValueError(
                f"the validation split holds {len(self.tiles_a)} tiles of domain A and {len(self.tiles_b)} of B; "
                "at least 2 of each are needed: raise train.validation.fraction"
            )
        self.config, self.manifest = config, manifest
        self.weights = resolve_weights(config.evaluate.inception_weights)
        self.positions = band_triplets(meta["bands"], config.evaluate.rgb_bands or config.train.rgb_bands)[0][1]
        self.real_b = self._features(self.tiles_b, "embed domain B")
        self.identity = self._scores(self._features(self.tiles_a, "embed domain A"))

    def _features(self, images: torch.Tensor, desc: str) -> torch.Tensor:
        model = load_inception(self.weights).to(self.device)
        shown = ((images[:, self.positions] + 1) / 2).clamp(0, 1)
        return image_features(model, shown, self.config.evaluate.batch_size, self.device, desc)

    def _scores(self, features: torch.Tensor) -> dict[str, float]:
        evaluate = self.config.evaluate
        kid, _ = kernel_inception_distance(self.real_b, features, evaluate.kid_subsets, evaluate.kid_subset_size)
        return {"fid": frechet_distance(FeatureStats.of(self.real_b), FeatureStats.of(features)), "kid": kid}

    @torch.no_grad()
    def evaluate(
        self, generator: torch.nn.Module, meta: dict[str, Any], device: torch.device, write: bool = True
    ) -> dict[str, Any]:
        started = time.perf_counter()
        was_training = generator.training
        generator.eval()
        batch = self.config.evaluate.batch_size
        try:
            parts = [
                generator(self.tiles_a[i : i + batch].to(device)).float().cpu()
                for i in range(0, len(self.tiles_a), batch)
            ]
            translated = torch.cat(parts)
        finally:
            generator.train(was_training)
        if not torch.isfinite(translated).all():
            raise ValueError(f"the generator at step {meta.get('step')} translated to non-finite values (NaN or inf)")
        scores = self._scores(self._features(translated, "embed translated A"))
        options = self.config.train.model
        result: dict[str, Any] = {
            "kind": "unpaired",
            "checkpoint": meta.get("checkpoint"),
            "step": meta["step"],
            "model": meta["model"],
            "dataset_checksum": self.manifest["checksum"],
            "domain_a": [str(x) for x in options.domain_a],
            "domain_b": [str(x) for x in options.domain_b],
            "primary_metric": "fid",
            "fid": scores["fid"],
            "kid": scores["kid"],
            "identity_fid": self.identity["fid"],
            "identity_kid": self.identity["kid"],
            "n_a": len(self.tiles_a),
            "n_b": len(self.tiles_b),
            "bands": [meta["bands"][i] for i in dict.fromkeys(self.positions)],
            "weights_sha256": self.weights.sha256,
            "resize": RESIZE_METHOD,
            "split": {k: v for k, v in self.split.summary().items() if k != "validation_keys"},
            "seconds": time.perf_counter() - started,
        }
        if write:
            url = join_url(self.config.train.run_dir, "eval", f"step-{meta['step']:08d}.json")
            storage_for(url, self.config.storage).write_bytes(url, (json.dumps(result, indent=2) + "\n").encode())
            result["written_to"] = url
        return result


def unpaired_record(result: dict[str, Any], images_seen: int) -> dict[str, Any]:
    """The log.jsonl record of an unpaired translation's evaluation (event `evaluate_unpaired`)."""
    return {
        "event": "evaluate_unpaired",
        "step": result["step"],
        "images_seen": images_seen,
        **{key: result[key] for key in UNPAIRED_KEYS},
        "n_a": result["n_a"],
        "n_b": result["n_b"],
        "result": result.get("written_to"),
    }


def unpaired_summary(result: dict[str, Any]) -> list[str]:
    a, b = ",".join(result["domain_a"]), ",".join(result["domain_b"])
    return [
        f"{result['model']} step {result['step']}: {a} -> {b}, {result['n_a']} held-out tiles of A translated, "
        f"against {result['n_b']} of B (bands {','.join(result['bands'])})",
        f"translated   FID {result['fid']:8.2f}  KID {result['kid']:.5f}",
        f"untranslated FID {result['identity_fid']:8.2f}  KID {result['identity_kid']:.5f}  (A as it is, against B)",
        f"FID ratio translated / untranslated: {result['fid'] / result['identity_fid']:.3f}",
    ]
