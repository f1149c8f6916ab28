"""Score an image-to-image generator on the held-out tiles of its dataset's validation split.

The split is the one training used (`train.validation`, recomputed: it depends only on the dataset and the seed).
Each held-out tile gives a pair: its input bands, and its target bands as the truth. The result holds the paired
metrics of the generator (`paired.py`) and, in the same result, of the baselines it must beat: the per-band linear
regression from input to target bands fitted on training tiles, and identity where input and target bands are the
same. The primary metric is PSNR (dB, mean over target bands; higher is better). With Inception weights at hand
(`evaluate.inception_weights`, resolved as for every FID), FID/KID of the translated tiles against the true target
tiles too (the first three target bands, or one band as grey), for the generator and the baselines.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch

from atlas_gan.config import AtlasConfig
from atlas_gan.geo.bands import select_bands
from atlas_gan.metrics.features import image_features
from atlas_gan.metrics.paired import LinearBaseline, paired_scores
from atlas_gan.metrics.scores import FeatureStats, frechet_distance, kernel_inception_distance
from atlas_gan.metrics.weights import WeightsNotFound, load_inception, resolve_weights
from atlas_gan.preview import band_triplets
from atlas_gan.shards import read_manifest, shard_urls
from atlas_gan.split import TileSplit, dataset_split, validation_fraction
from atlas_gan.storage import join_url, storage_for
from atlas_gan.train.data import read_tiles

PRIMARY_METRIC = "psnr"  # higher is better
BASELINE_TILES = 256  # training tiles the linear baseline is fitted on
METRIC_KEYS = ("psnr", "ssim", "l1", "sam_degrees")


def held_out_split(config: AtlasConfig) -> tuple[dict[str, Any], TileSplit]:
    """The dataset's manifest and the validation split training used (recomputed: it depends only on the data and
    `train.validation`)."""
    dataset = config.dataset_url
    store = storage_for(dataset, config.storage)
    manifest = read_manifest(store, dataset)
    if manifest is None:
        raise ValueError(f"{dataset}: no dataset manifest to evaluate against")
    fraction = validation_fraction(config.train.validation, reads_images=True)
    if fraction == 0:
        raise ValueError("train.validation.fraction is 0: a translation is scored on held-out tiles; set it > 0")
    return manifest, dataset_split(store, dataset, manifest, config.train.validation, fraction)


class TranslationEvaluator:
    """Loads the held-out pairs and fits the baselines once; `evaluate` scores a generator on them. Subclasses
    (super-resolution) change how a held-out tile becomes a pair (`make_pairs`) and what the baselines are."""

    kind = "translation"
    baseline = "linear"  # the baseline a generator must beat (its scores are `baseline_*` in records)

    def __init__(
        self, config: AtlasConfig, meta: dict[str, Any], n: int | None = None, device: torch.device | None = None
    ) -> None:
        self.device = device or torch.device("cpu")
        manifest, self.split = held_out_split(config)
        self.config, self.meta, self.manifest = config, meta, manifest
        bands = manifest["tile"]["bands"]
        self.inputs = select_bands(bands, meta["input_bands"])
        self.targets = select_bands(bands, meta["bands"])
        self.urls = shard_urls(manifest, config.dataset_url)
        limit = n or config.evaluate.n
        self.keys, tiles = read_tiles(self.urls, self.split.validation, self.tile_size, config.storage, limit)
        if not self.keys:
            raise ValueError(f"{config.dataset_url}: none of the validation split's tiles were found in the shards")
        self.pairs = self.make_pairs(tiles)
        by_name = {b["name"]: b for b in manifest["normalization"]["bands"]}
        self.scales = np.array([by_name[bands[i]]["scale"] for i in self.targets], dtype=np.float64)
        self.offsets = np.array([by_name[bands[i]]["offset"] for i in self.targets], dtype=np.float64)
        self.target_names = [bands[i] for i in self.targets]
        self.fid_positions = band_triplets(self.target_names, None)[0][1]
        self.real_features, self.fid_unavailable = self._real_features()
        self.baselines = self._baselines()

    def _real_features(self) -> tuple[torch.Tensor | None, str | None]:
        """Inception features of the true target tiles, or why there are none (no weights on this machine)."""
        try:
            self.weights = resolve_weights(self.config.evaluate.inception_weights)
        except WeightsNotFound as exc:
            return None, str(exc)
        return self._features(self.pairs[1], "embed targets"), None

    def _features(self, images: torch.Tensor, desc: str) -> torch.Tensor:
        shown = ((images[:, self.fid_positions].float() + 1) / 2).clamp(0, 1)
        model = load_inception(self.weights).to(self.device)
        return image_features(model, shown, self.config.evaluate.batch_size, self.device, desc)

    def score(self, predicted: torch.Tensor) -> dict[str, Any]:
        """Paired scores and FID/KID of `predicted` (the held-out inputs' translations, in order) against the truth."""
        scores = paired_scores(predicted, self.pairs[1], self.target_names, self.scales, self.offsets)
        if self.real_features is None:
            return {**scores, "fid": None, "kid": None}
        evaluate = self.config.evaluate
        fake = self._features(predicted, "embed translated")
        scores["fid"] = frechet_distance(FeatureStats.of(self.real_features), FeatureStats.of(fake))
        scores["kid"] = kernel_inception_distance(
            self.real_features, fake, evaluate.kid_subsets, evaluate.kid_subset_size, evaluate.seed
        )[0]
        return scores

    @property
    def tile_size(self) -> int:
        return int(self.meta["spec"]["image_size"])

    def make_pairs(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out tiles -> (the generator's inputs, the truth): their input bands and their target bands."""
        return tiles[:, self.inputs], tiles[:, self.targets]

    def _baselines(self) -> dict[str, Any]:
        _, training = read_tiles(self.urls, self.split.train_keys, self.tile_size, self.config.storage, BASELINE_TILES)
        linear = LinearBaseline(training[:, self.inputs], training[:, self.targets])
        found = {"linear": self.score(linear(self.pairs[0]))}
        if self.inputs == self.targets:
            found["identity"] = self.score(self.pairs[0])
        return found

    def extra_fields(self) -> dict[str, Any]:
        """What a subclass adds to every result."""
        return {}

    @torch.no_grad()
    def translate(self, generator: torch.nn.Module, device: torch.device) -> torch.Tensor:
        was_training = generator.training
        generator.eval()
        batch = self.config.evaluate.batch_size
        source = self.pairs[0]
        try:
            parts = [generator(source[i : i + batch].to(device)).float().cpu() for i in range(0, len(source), batch)]
        finally:
            generator.train(was_training)
        return torch.cat(parts)

    def evaluate(
        self,
        generator: torch.nn.Module,
        meta: dict[str, Any],
        device: torch.device,
        write: bool = True,
        references: dict[str, torch.nn.Module] | None = None,
    ) -> dict[str, Any]:
        """Scores of `generator` beside the baselines, and beside `references` (other generators scored the same
        way, e.g. super-resolution's pixel-loss model) in `baselines` too."""
        started = time.perf_counter()
        predicted = self.translate(generator, device)
        if not torch.isfinite(predicted).all():
            raise ValueError(f"the generator at step {meta.get('step')} translated to non-finite values (NaN or inf)")
        scores = self.score(predicted)
        baselines = dict(self.baselines)
        for name, reference in (references or {}).items():
            baselines[name] = self.score(self.translate(reference, device))
        baseline = baselines[self.baseline]
        result: dict[str, Any] = {
            "kind": self.kind,
            "checkpoint": meta.get("checkpoint"),
            "step": meta["step"],
            "model": meta["model"],
            "dataset_checksum": self.manifest["checksum"],
            "input_bands": meta["input_bands"],
            "target_bands": self.target_names,
            "primary_metric": PRIMARY_METRIC,
            "n_validation": len(self.keys),
            "split": {k: v for k, v in self.split.summary().items() if k != "validation_keys"},
            **{key: scores[key] for key in METRIC_KEYS},
            "fid": scores["fid"],
            "kid": scores["kid"],
            "fid_bands": [self.target_names[i] for i in dict.fromkeys(self.fid_positions)],
            "fid_unavailable": self.fid_unavailable,
            "per_band": scores["per_band"],
            "baseline": self.baseline,
            "baselines": baselines,
            "psnr_over_baseline": scores["psnr"] - baseline["psnr"],
            "ssim_over_baseline": scores["ssim"] - baseline["ssim"],
            "device": str(device),
            **self.extra_fields(),
        }
        result["seconds"] = time.perf_counter() - started
        if write:
            url = join_url(self.config.train.run_dir, "eval", f"step-{meta['step']:08d}.json")
            storage_for(url, self.config.storage).write_bytes(url, (json.dumps(result, indent=2) + "\n").encode())
            result["written_to"] = url
        return result


def evaluation_record(result: dict[str, Any], images_seen: int) -> dict[str, Any]:
    """The log.jsonl record of a translation evaluation (event `evaluate_translation`); `baseline_*`: the scores of
    the baseline it must beat (`result["baseline"]`: linear regression, or bicubic for super-resolution)."""
    baseline = result["baselines"][result["baseline"]]
    pixel = result["baselines"].get("pixel") or {}
    return {
        "event": "evaluate_translation",
        "step": result["step"],
        "images_seen": images_seen,
        **{key: result[key] for key in METRIC_KEYS},
        "baseline": result["baseline"],
        "baseline_psnr": baseline["psnr"],
        "baseline_ssim": baseline["ssim"],
        "fid": result.get("fid"),
        "baseline_fid": baseline.get("fid"),
        "psnr_over_baseline": result["psnr_over_baseline"],
        "pixel_psnr": pixel.get("psnr"),
        "pixel_fid": pixel.get("fid"),
        "n_validation": result["n_validation"],
        "result": result.get("written_to"),
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A translation result as a few lines of text: the model, then each baseline, per band."""

    def line(name: str, scores: dict[str, Any]) -> str:
        sam = scores["sam_degrees"]
        bands = "  ".join(
            f"{band}: {v['psnr']:.2f} dB / SSIM {v['ssim']:.3f} / L1 {v['l1_physical']:.4g}"
            for band, v in scores["per_band"].items()
        )
        sam_text = "" if sam is None else f"  SAM {sam:.2f} deg"
        fid = "" if scores.get("fid") is None else f"  FID {scores['fid']:.2f}"
        return f"{name:<10} PSNR {scores['psnr']:6.2f} dB  SSIM {scores['ssim']:.4f}{sam_text}{fid}  | {bands}"

    inputs, targets = ",".join(result["input_bands"]), ",".join(result["target_bands"])
    what = f"x{result['scale']} super-resolution of {targets}" if result.get("scale") else f"{inputs} -> {targets}"
    lines = [
        f"{result['model']} step {result['step']}: {what} on {result['n_validation']} held-out tiles (L1 in source "
        "units)",
        line("generator", {**result, "per_band": result["per_band"]}),
    ]
    lines += [line(name, scores) for name, scores in result["baselines"].items()]
    lines.append(f"PSNR over the {result['baseline']} baseline: {result['psnr_over_baseline']:+.2f} dB")
    return lines
