"""The pictures a run leaves: curves, real beside generated, band histograms, latent walks - on real datasets
of 1, 3, 4 and 12 bands, through the trainer's own figures hook."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atlas_gan.config import load_config
from atlas_gan.figures.animation import gif_bytes
from atlas_gan.figures.curves import current_attempt, smoothed, training_curves_png
from atlas_gan.ingest import ingest
from atlas_gan.labels import LabelVocabulary
from atlas_gan.models.base import ModelSpec
from atlas_gan.pipeline import MAX_INLINE_GIF_BYTES, report_figure_images, run_figures
from atlas_gan.preview import band_triplets
from atlas_gan.runtime import distributed
from atlas_gan.runtime.signature import LatentSignature, slerp
from atlas_gan.train.figures_hook import FIGURES_DIR, WALK_NAME, FiguresHook
from atlas_gan.train.hooks import TrainHooks
from atlas_gan.train.trainer import Trainer
from tests.test_tile_index import SOURCES
from tests.test_train import SMALL

pytestmark = pytest.mark.slow(seconds=55)


class SeenFigures(TrainHooks):
    def __init__(self) -> None:
        self.urls: list[str] = []

    def on_figures(self, trainer, urls):
        self.urls += urls


def png_size(path: Path) -> tuple[int, int]:
    image = Image.open(io.BytesIO(path.read_bytes()))
    assert image.format == "PNG"
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 20, f"{path.name} looks blank"
    return image.size


@pytest.mark.parametrize("bands", sorted(SOURCES))
def test_a_run_draws_every_figure_for_any_band_count(bands, geotiff, make_config, tmp_path):
    source, expected = SOURCES[bands]
    data = tmp_path / "shards"
    ingest(make_config(geotiff / source, data, tile_size=32, workers=1), progress=False)
    run_dir = tmp_path / "run"
    config = load_config(None, [f"ingest.output={data}", f"train.run_dir={run_dir}", *SMALL, "train.steps=3"])
    seen = SeenFigures()
    trainer = Trainer(config, distributed.setup(), hooks=[FiguresHook(), seen], progress=False)
    trainer.run()

    folder = run_dir / FIGURES_DIR
    triplets = [label for label, _ in band_triplets(trainer.bands, None)]
    names = {"curves.png", "band-histograms.png", WALK_NAME, *(f"real-vs-generated-{t}.png" for t in triplets)}
    assert {p.name for p in folder.iterdir()} == names
    assert sorted(Path(url).name for url in seen.urls) == sorted(names)  # other hooks (MLflow) hear of each
    assert len(trainer.bands) == expected

    assert png_size(folder / "curves.png") == (1200, 744)
    columns = min(4, expected)
    rows = -(-expected // columns)
    assert png_size(folder / "band-histograms.png") == (max(640, 320 * columns + 80), 230 * rows + 80)
    for triplet in triplets:
        width, height = png_size(folder / f"real-vs-generated-{triplet}.png")
        assert width == 1200 and height > 300

    walk = Image.open(folder / WALK_NAME)
    side = 2 * (3 * (32 + 2) + 2)  # 9 walks in a 3x3 grid of 32 px tiles, shown twice as large
    assert walk.format == "GIF" and walk.size == (side, side) and walk.n_frames == 4 * 12
    assert walk.info["loop"] == 0


def test_curves_show_losses_speed_augmentation_and_fid():
    records = [{"event": "start", "step": 0}]
    for step in range(1, 41):
        records.append(
            {
                "step": step,
                "images_seen": 64 * step,
                "loss_d": 1 / step,
                "loss_g": 2.0,
                "images_per_s": 100.0,
                "augment_p": step / 100,
            }
        )
        if step % 20 == 0:
            records.append(
                {"event": "evaluate", "step": step, "fid": 300 - step, "kid": 0.3, "floor_fid": 50.0, "n_fake": 64}
            )
    png = training_curves_png(records, "test run")
    assert Image.open(io.BytesIO(png)).size == (1200, 744)
    assert smoothed(np.array([1.0, 1.0, 1.0]), 2.0).tolist() == pytest.approx([1.0, 1.0, 1.0])  # bias-corrected
    late = smoothed(np.array([np.nan, np.nan, 2.0, 2.0]), 2.0)  # a loss that starts later (ESRGAN's D)
    assert np.isnan(late[:2]).all() and late[2:].tolist() == pytest.approx([2.0, 2.0])


@pytest.mark.parametrize("adaptive", [False, True])
def test_curves_draw_precision_and_recall_in_their_own_panel(adaptive, tmp_path):
    records = [{"step": s, "images_seen": 16 * s, "loss_d": 1.0, "images_per_s": 50.0} for s in range(1, 31)]
    for record in records:
        if adaptive:
            record["augment_p"] = record["step"] / 100
    records += [
        {"event": "evaluate", "step": s, "fid": 300 - s, "kid": 0.2, "floor_fid": 50.0, "n_fake": 64,
         "sample_precision": s / 40, "sample_recall": s / 80, "floor_precision": 0.8, "floor_recall": 0.78}
        for s in (10, 20, 30)
    ]  # fmt: skip
    records.sort(key=lambda r: r["step"])
    png = training_curves_png(records, "precision and recall")
    (tmp_path / "curves.png").write_bytes(png)
    # a fifth panel when the augmentation panel shows adaptive p, else in that panel's place
    assert Image.open(io.BytesIO(png)).size == ((1200, 1116) if adaptive else (1200, 744))


def test_curves_of_a_resumed_run_drop_the_steps_its_checkpoint_threw_away():
    first = [{"event": "start", "step": 0}, *({"step": s, "loss_d": 1.0} for s in (100, 200, 300))]
    # stopped after step 300, resumed from the checkpoint of step 200
    second = [{"event": "start", "step": 200}, {"step": 300, "loss_d": 0.5}, {"event": "evaluate", "step": 300}]
    kept = current_attempt(first + second)
    assert [(r.get("event"), r["step"]) for r in kept] == [
        ("start", 0), (None, 100), (None, 200), ("start", 200), (None, 300), ("evaluate", 300)
    ]  # fmt: skip
    assert kept[4]["loss_d"] == 0.5  # the resumed attempt's step 300, not the abandoned one
    assert current_attempt(first) == first


def test_slerp_keeps_endpoints_and_the_latent_norm():
    generator = torch.Generator().manual_seed(0)
    start, end = torch.randn(5, 512, generator=generator), torch.randn(5, 512, generator=generator)
    assert torch.allclose(slerp(start, end, 0.0), start, atol=1e-5)
    assert torch.allclose(slerp(start, end, 1.0), end, atol=1e-5)
    middle = slerp(start, end, 0.5)
    linear = (start + end) / 2
    assert (middle.norm(dim=1) > 0.95 * start.norm(dim=1).minimum(end.norm(dim=1))).all()
    assert (linear.norm(dim=1) < 0.8 * middle.norm(dim=1)).all()  # a straight line would sag toward the origin
    assert torch.allclose(slerp(start, start, 0.3), start, atol=1e-5)  # parallel: no division by zero


def test_walk_inputs_loop_and_hold_one_label_per_walk():
    spec = ModelSpec(bands=3, image_size=32, latent_dim=8, g_width=8, d_width=8, num_classes=3)
    vocabulary = LabelVocabulary.from_dict({"by": "year", "classes": ["1985", "1990", "1995"], "weights": [1, 1, 1]})
    frames = LatentSignature().walk_inputs(spec, vocabulary, walks=6, keyframes=3, frames_between=4, seed=7)
    assert len(frames) == 12
    latents = torch.stack([f[0] for f in frames])
    assert latents.shape == (12, 6, 8)
    step = (latents[1:] - latents[:-1]).norm(dim=-1)
    closing = (latents[0] - latents[-1]).norm(dim=-1)
    assert (closing < 2 * step.max(dim=0).values).all()  # the last frame leads back to the first: a loop
    assert all(f[1].tolist() == [0, 1, 2, 0, 1, 2] for f in frames)
    fixed = LatentSignature().walk_inputs(spec, vocabulary, 2, 2, 2, seed=7, label="1990")
    assert all(f[1].tolist() == [1, 1] for f in fixed)
    again = LatentSignature().walk_inputs(spec, vocabulary, walks=6, keyframes=3, frames_between=4, seed=7)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(frames, again, strict=True))  # seeded


def test_the_report_inlines_small_animations_and_shows_large_ones_as_a_still(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "run" / "figures"
    folder.mkdir(parents=True)
    small = gif_bytes([np.full((64, 64, 3), v, np.uint8) for v in (0, 128, 255)])
    large = gif_bytes([rng.integers(0, 256, (400, 400, 3), dtype=np.uint8) for _ in range(8)])  # noise: ~1.3 MB
    assert len(small) < MAX_INLINE_GIF_BYTES < len(large)
    config = load_config(None, [f"train.run_dir={tmp_path / 'run'}"])
    for data, animated in ((small, True), (large, False)):
        (folder / "latent-walk.gif").write_bytes(data)
        figures = run_figures(config)
        assert list(figures) == ["Latent walk of the new generator"]
        ((caption, image),) = report_figure_images(config, figures).items()
        assert image.startswith("data:image/gif;base64,") == animated
        assert ("first frame; the animation:" in caption) == (not animated)
