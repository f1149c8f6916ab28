"""Pictures of a training run, redrawn at every evaluation and at the end, into `run_dir/figures/`:

- `curves.png`: losses, images/s, augmentation p and FID/KID against kimg;
- `real-vs-generated-<triplet>.png`: real tiles beside the EMA generator's fixed-latent samples, one stretch;
- `band-histograms.png`: each band's values, real against generated, in the source's units;
- `latent-walk.gif` (at the end only): a looping latent walk of the final EMA generator.

A translation (a generator that reads images) gets `translation-<triplet>.png` instead of the real-vs-generated
grids: held-out tiles' input bands, their translation and the target bands; its histograms compare target and
translated values, and it has no latent walk.

Other hooks get the URLs through `on_figures` (MLflow logs them as artifacts; the Prefect report inlines them).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
from typing import Any

import numpy as np

from atlas_gan.figures.animation import walk_gif
from atlas_gan.figures.compare import band_histograms_png, real_vs_generated_png, translation_png
from atlas_gan.figures.curves import training_curves_png
from atlas_gan.geo.normalize import Normalization
from atlas_gan.preview import band_triplets, iter_tiles_and_masks
from atlas_gan.runtime.signature import IMAGE
from atlas_gan.runtime.walk import latent_walk
from atlas_gan.storage import join_url, storage_for
from atlas_gan.train.hooks import TrainHooks
from atlas_gan.train.run_log import LOG_NAME
from atlas_gan.train.trainer import Trainer

log = logging.getLogger("atlas_gan.train")

FIGURES_DIR = "figures"
WALK_NAME = "latent-walk.gif"
REAL_TILES = 256  # for the histograms; the first `sample_count` of them are drawn beside the generated ones
SHARDS_READ = 4  # real tiles come from this many shards spread across the dataset


class FiguresHook(TrainHooks):
    """Rank 0: keeps the log's records and a spread sample of real tiles, and draws the figures."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.real: np.ndarray | None = None  # (n, bands, h, w) in [0, 1]
        self.real_masks: np.ndarray | None = None
        self.drawn_at: int | None = None

    def on_start(self, trainer: Trainer) -> None:
        url = join_url(trainer.config.train.run_dir, LOG_NAME)
        if trainer.store.exists(url):  # a resumed run: its curves start at step 0, not at the resume
            lines = trainer.store.read_bytes(url).decode().splitlines()
            self.records = [json.loads(line) for line in lines if line.strip()]
        if trainer.recipe.signature == IMAGE:
            return  # the held-out examples are the real side
        self.real, self.real_masks = _spread_real_tiles(trainer, REAL_TILES)

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.records.append(record)
        if record.get("event") == "evaluate":
            self.draw(trainer)

    def on_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if self.drawn_at != trainer.step:
            self.draw(trainer)
        if trainer.recipe.signature == IMAGE:
            return
        try:
            url = join_url(trainer.config.train.run_dir, FIGURES_DIR, WALK_NAME)
            trainer.store.write_bytes(url, walk_gif_of(trainer))
        except Exception as exc:  # a picture must never end a training run
            log.warning("could not draw the latent walk: %s", exc)
            return
        for hook in trainer.hooks:
            hook.on_figures(trainer, [url])

    def draw(self, trainer: Trainer) -> list[str]:
        """Write every figure for the current step; a failure is logged, never fatal to training."""
        try:
            urls = self._draw(trainer)
        except Exception as exc:  # a picture must never end a training run
            log.warning("could not draw the training figures at step %d: %s", trainer.step, exc)
            return []
        self.drawn_at = trainer.step
        for hook in trainer.hooks:
            hook.on_figures(trainer, urls)
        return urls

    def _draw(self, trainer: Trainer) -> list[str]:
        title = f"{trainer.model_name}, step {trainer.step:,} ({trainer.images_seen / 1000:.1f} kimg)"
        figures = {"curves.png": training_curves_png(self.records, f"training curves: {title}")}
        if trainer.recipe.signature == IMAGE:
            figures.update(_translation_figures(trainer, title))
            return _write(trainer, figures)
        generated = (trainer.fixed_samples().numpy() + 1.0) / 2.0  # the normalized [0, 1] of the real tiles
        assert self.real is not None and self.real_masks is not None
        shown = list(self.real[: len(generated)])
        for label, positions in band_triplets(trainer.bands, trainer.config.train.rgb_bands):
            png = real_vs_generated_png(shown, list(generated), positions, title, label)
            figures[f"real-vs-generated-{label}.png"] = png
        norm = Normalization.from_manifest(trainer.manifest["normalization"])
        real_values = norm.invert(self.real.transpose(1, 0, 2, 3))[:, self.real_masks]  # (bands, valid pixels)
        fake_values = norm.invert(generated.transpose(1, 0, 2, 3)).reshape(len(trainer.bands), -1)
        units = f"source units ({trainer.manifest['scenes'][0].get('dtype', 'values')})"
        figures["band-histograms.png"] = band_histograms_png(
            real_values, fake_values, trainer.bands, f"band values, real vs generated: {title}", units
        )
        return _write(trainer, figures)


def _write(trainer: Trainer, figures: dict[str, bytes]) -> list[str]:
    folder = join_url(trainer.config.train.run_dir, FIGURES_DIR)
    urls = []
    for name, data in figures.items():
        url = join_url(folder, name)
        trainer.store.write_bytes(url, data)
        urls.append(url)
    return urls


def _translation_figures(trainer: Trainer, title: str) -> dict[str, bytes]:
    """Input, translation and target of the held-out examples; target against translated band values."""
    assert trainer.examples is not None and trainer.input_bands is not None
    examples = (trainer.examples.numpy() + 1.0) / 2.0
    roles = trainer.roles
    inputs, targets = examples[:, roles.inputs], examples[:, roles.outputs]
    scale = trainer.spec.scale
    if scale > 1:  # super-resolution: show the low-resolution input, its pixels scale x scale
        low = trainer.fixed_inputs[0].float().cpu().repeat_interleave(scale, -1).repeat_interleave(scale, -2)
        inputs = (low.numpy() + 1.0) / 2.0
    translated = (trainer.fixed_samples().numpy() + 1.0) / 2.0
    unpaired = not trainer.recipe.paired  # CycleGAN: another domain, no target to compare with
    figures = {}
    for label, positions in band_triplets(trainer.bands, trainer.display_bands):
        shown = ",".join(trainer.bands[i] for i in dict.fromkeys(positions))
        same_bands = unpaired or scale > 1
        input_positions = positions if same_bands else band_triplets(trainer.input_bands, None)[0][1]
        arrow = f"domain A -> B, bands {shown}" if unpaired else f"{','.join(trainer.input_bands)} -> {shown}"
        if scale > 1:
            arrow = f"x{scale} super-resolution, bands {shown}"
        figures[f"translation-{label}.png"] = translation_png(
            list(inputs), list(translated), None if unpaired else list(targets), input_positions, positions,
            f"{title}: {arrow}",
        )  # fmt: skip
    if unpaired:
        return figures
    by_name = {b["name"]: b for b in trainer.manifest["normalization"]["bands"]}
    norm = Normalization.from_manifest({"bands": [by_name[name] for name in trainer.bands]})
    real_values = norm.invert(targets.transpose(1, 0, 2, 3)).reshape(len(trainer.bands), -1)
    fake_values = norm.invert(translated.transpose(1, 0, 2, 3)).reshape(len(trainer.bands), -1)
    units = f"source units ({trainer.manifest['scenes'][0].get('dtype', 'values')})"
    figures["band-histograms.png"] = band_histograms_png(
        real_values, fake_values, trainer.bands, f"band values, target vs translated: {title}", units
    )
    return figures


def walk_gif_of(trainer: Trainer, walks: int = 9) -> bytes:
    """A looping latent walk of the trainer's (EMA) generator, through the RGB triplet."""
    meta = trainer.generator_meta()
    frames = latent_walk(trainer.generator, meta, walks, seed=trainer.config.train.seed, frames_between=12)
    return walk_gif(frames, band_triplets(trainer.bands, trainer.config.train.rgb_bands)[0][1])


def _spread_real_tiles(trainer: Trainer, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `count` real tiles (as float32 in [0, 1], with masks): the first ones of `SHARDS_READ` shards spread
    over the dataset (a shard is read only as far as needed), at the training image size."""
    shards = trainer.manifest["shards"]
    picked = [shards[i] for i in sorted({round(x) for x in np.linspace(0, len(shards) - 1, SHARDS_READ)})]
    store = storage_for(trainer.config.dataset_url, trainer.config.storage)
    per_shard = -(-count // len(picked))
    chosen = []
    for shard in picked:
        with contextlib.closing(iter_tiles_and_masks(store, trainer.config.dataset_url, [shard])) as samples:
            chosen += itertools.islice(samples, per_shard)  # closing stops the read there
    chosen = chosen[:count]
    size = trainer.spec.image_size
    tiles = np.stack([tile[:, :size, :size].astype(np.float32) for tile, _ in chosen])  # top-left crop if smaller
    masks = np.stack([mask[:size, :size] for _, mask in chosen])
    return tiles, masks
