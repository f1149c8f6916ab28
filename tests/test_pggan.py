"""Progressive growing (Karras et al. 2018): the schedule from images shown, shapes at every level, fades that blend
G's, D's and the real images' resolutions, Adam reset per level, the gradient penalty apart from alpha, a resume
mid-fade, two ranks through a level change, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import atlas_gan.recipes.pggan as pggan_recipe
from atlas_gan.config import ConfigError, load_config
from atlas_gan.export import export_onnx, export_torchscript
from atlas_gan.losses import gradient_penalty
from atlas_gan.models import ModelSpec, build, get_family
from atlas_gan.recipes import BandRoles, Update, build_recipe
from atlas_gan.recipes.base import Progress
from atlas_gan.recipes.pggan import GrowthSchedule, reals_at
from atlas_gan.runtime import distributed
from atlas_gan.sampling import load_sampler
from atlas_gan.train.trainer import Trainer
from tests.test_train import small_config

pytestmark = pytest.mark.slow(seconds=45)

FAST = ["train.model=pggan", "train.model.stable_kimg=0.016", "train.model.fade_kimg=0.016"]


def test_level_and_alpha_come_from_images_shown_and_alpha_is_linear():
    schedule = GrowthSchedule(levels=3, stable_images=100, fade_images=50)
    assert schedule.at(0) == (0, 1.0) and schedule.at(99) == (0, 1.0)
    for images in range(100, 150):
        assert schedule.at(images) == (1, (images - 100) / 50)
    assert schedule.at(150) == (1, 1.0) and schedule.at(249) == (1, 1.0)
    assert schedule.at(250) == (2, 0.0) and schedule.at(275) == (2, 0.5)
    assert schedule.at(400) == (3, 0.0) and schedule.at(10**9) == (3, 1.0)
    assert schedule.phases() == [(0, 100), (1, 50), (1, 100), (2, 50), (2, 100), (3, 50), (3, 100)]


def test_the_family_follows_the_paper():
    training = get_family("pggan").training
    assert (training.loss, training.lr_g, training.lr_d, training.betas, training.gp_weight) == (
        "wasserstein", 1e-3, 1e-3, (0.0, 0.99), 10.0
    )  # fmt: skip
    assert load_config(None, ["train.model=pggan"]).train.model.drift_weight == 0.001
    with pytest.raises(ValueError, match="pggan is unconditional"):
        build("pggan", ModelSpec(3, 32, num_classes=2))
    with pytest.raises(ConfigError, match="resolution 6 is not one of"):
        load_config(None, ["train.model=pggan", "train.model.batch_sizes={4: 8, 6: 4}"])
    with pytest.raises(ConfigError, match="fade_kimg: dcgan has no growing schedule .pggan has."):
        load_config(None, ["train.model=dcgan", "train.model.fade_kimg=4"])


@pytest.mark.parametrize("bands", [3, 4, 12])
def test_shapes_at_every_level(bands):
    spec = ModelSpec(bands, 64, 16, 8, 8)
    _, generator, discriminator = build("pggan", spec)
    z = torch.randn(4, 16)
    for level in range(spec.levels + 1):
        for alpha in (0.0, 0.4, 1.0):
            generator.set_growth(level, alpha)
            discriminator.set_growth(level, alpha)
            image = generator.forward_level(z)
            side = 4 * 2**level
            assert image.shape == (4, bands, side, side)
            assert discriminator(image).shape == (4,)
            assert generator(z).shape == (4, bands, 64, 64)  # evaluation and export always see the tile size
    assert generator.eval()(z).abs().max() <= 1.0


def test_a_fade_starts_exactly_at_the_previous_level_in_g_d_and_the_reals():
    torch.manual_seed(0)
    _, generator, discriminator = build("pggan", ModelSpec(3, 32, 16, 8, 8))
    z, x = torch.randn(4, 16), torch.randn(4, 3, 16, 16)
    generator.set_growth(1, 1.0)
    discriminator.set_growth(1, 1.0)
    coarse, coarse_score = generator.forward_level(z), discriminator(F.avg_pool2d(x, 2))
    generator.set_growth(2, 0.0)
    discriminator.set_growth(2, 0.0)
    assert torch.allclose(generator.forward_level(z), F.interpolate(coarse, scale_factor=2.0), atol=1e-6)
    assert torch.allclose(discriminator(x), coarse_score, atol=1e-5)

    tiles = torch.rand(2, 3, 32, 32)
    pooled = F.avg_pool2d(tiles, 2)  # level 2 = 16 px
    lower = F.interpolate(F.avg_pool2d(pooled, 2), scale_factor=2.0)
    assert torch.allclose(reals_at(tiles, 2, 1.0), pooled)
    assert torch.allclose(reals_at(tiles, 2, 0.0), lower)
    assert torch.allclose(reals_at(tiles, 2, 0.25), 0.75 * lower + 0.25 * pooled, atol=1e-6)
    assert reals_at(tiles, 0, 1.0).shape == (2, 3, 4, 4)


def _recipe(train_data, tmp_path, *extra):
    cfg = small_config(train_data, tmp_path, *FAST, *extra).train
    spec = ModelSpec(4, 32, cfg.latent_dim, 8, 8)
    torch.manual_seed(0)
    return build_recipe(cfg, spec, distributed.setup(), None, None, BandRoles(None, [0, 1, 2, 3], list("abcd")))


def _batches(size=8):
    while True:
        yield {"image": torch.rand(size, 4, 32, 32) * 2 - 1}


def test_a_new_level_resets_adam_and_batch_sizes_follow_the_level(train_data, tmp_path):
    recipe = _recipe(train_data, tmp_path, "train.model.batch_sizes={4: 8, 8: 4}")
    progress, update, batches = Progress(), Update(recipe.ctx), _batches()
    recipe.step(batches, update, progress)
    recipe.step(batches, update, progress)  # 16 images at 4x4: level 0 is done
    steps = {id(p): s["step"] for p, s in recipe.optimizers["G"].state.items()}
    assert progress.images_seen == 16 and set(map(float, steps.values())) == {2.0}
    recipe.step(batches, update, progress)  # level 1 (8 px) fades in: Adam starts over
    assert (recipe.active_level, recipe.G.growth(), recipe.images_per_step) == (1, (1, 0.0), 4)
    assert progress.images_seen == 20
    assert {float(s["step"]) for s in recipe.optimizers["G"].state.values()} == {1.0}
    assert {float(s["step"]) for s in recipe.optimizers["D"].state.values()} == {1.0}
    recipe.step(batches, update, progress)
    assert recipe.G.growth() == (1, 0.25) and recipe.D.growth() == (1, 0.25)


def test_the_gradient_penalty_draws_its_own_interpolation_and_leaves_alpha_alone(train_data, tmp_path, monkeypatch):
    recipe = _recipe(train_data, tmp_path)
    factors = []

    def spy(critic, real, fake):  # the real penalty, recording where it evaluated D
        def recording(mixed):
            factors.append(((mixed - fake) / (real - fake)).flatten(1).median(dim=1).values.detach())
            return critic(mixed)

        return gradient_penalty(recording, real, fake)

    monkeypatch.setattr(pggan_recipe, "gradient_penalty", spy)
    progress = Progress(images_seen=24)  # mid-fade of level 1: alpha 0.5
    recipe.step(_batches(), Update(recipe.ctx), progress)
    assert recipe.G.growth() == (1, 0.5) and recipe.D.growth() == (1, 0.5)
    (eps,) = factors
    assert eps.std() > 0.05 and not torch.allclose(eps, torch.full_like(eps, 0.5))


def _levels(run_dir):
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["level"], r["alpha"], r["images_seen"]) for r in records if "alpha" in r]


def test_trains_through_the_levels_and_a_resume_mid_fade_continues_exactly(train_data, tmp_path):
    settings = [*FAST, "train.model.batch_sizes={4: 8, 16: 4}", "train.checkpoint_every=3"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    ctx = distributed.setup()
    Trainer(small_config(train_data, straight, "train.steps=9", *settings), ctx, progress=False).run()
    Trainer(small_config(train_data, interrupted, "train.steps=3", *settings), ctx, progress=False).run()
    resumed = Trainer(small_config(train_data, interrupted, "train.steps=9", *settings), ctx, progress=False)
    assert resumed.images_seen == 24 and resumed.recipe.active_level == 1  # resumed mid-fade
    resumed.run()
    levels = _levels(straight)
    assert levels == _levels(interrupted)
    assert [(level, alpha) for _, level, alpha, _ in levels] == [
        (0, 1.0), (0, 1.0), (1, 0.0), (1, 0.5), (1, 1.0), (1, 1.0), (2, 0.0), (2, 0.25), (2, 0.5)
    ]  # fmt: skip
    assert levels[-1][3] == 16 + 32 + 3 * 4  # 16 px levels take 4 tiles a step
    sampler = load_sampler(str(sorted((straight / "checkpoints").glob("*.pt"))[-1]))
    assert sampler.generator.growth() == (2, 0.5)  # the EMA generator follows the live one's level
    assert sampler.generate(3, seed=0).shape == (3, 4, 32, 32)
    spec = ModelSpec(**sampler.meta["spec"])
    z = torch.randn(2, spec.latent_dim)
    with torch.no_grad():
        expected = sampler.generator.eval()(z)
    for path in (export_torchscript(sampler.generator, spec, tmp_path / "g.pt"),):
        assert torch.allclose(torch.jit.load(str(path))(z), expected, atol=1e-5)
    export_onnx(sampler.generator, spec, tmp_path / "g.onnx")


@pytest.mark.integration
def test_a_registered_pggan_samples_at_its_level(train_data, tmp_path):
    from mlflow import MlflowClient

    from atlas_gan.tracking.registry import register_generator
    from tests.test_tracking import tracked_config, train_tracked

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tracked_config(
        train_data, tmp_path / "run", tmp_path, "train.steps=4", "train.evaluate_every=4", f"tracking.uri={uri}", *FAST
    )
    train_tracked(config)
    registration = register_generator(config, progress=False)
    sampler = load_sampler(f"models:/tiles-test/{registration.version}", tracking=uri)
    assert sampler.generator.growth() == (1, 0.5)
    client = MlflowClient(uri)
    run_id = client.get_model_version("tiles-test", registration.version).run_id
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "alpha"))
    assert history == [(1, 1.0), (2, 1.0), (3, 0.0), (4, 0.5)]  # the fade, in MLflow
    tiles = sampler.generate(4, seed=2)
    assert tiles.shape == (4, 4, 32, 32) and tiles.std(axis=0).mean() > 1e-3
    assert np.array_equal(tiles[:, :, ::4, ::4], tiles[:, :, 3::4, 3::4])  # 8 px drawn, shown at 32 px


@pytest.mark.integration
def test_two_ranks_grow_through_a_level_change_in_sync(train_data, tmp_path):
    from tests.test_train_distributed import train_two_ranks

    log = train_two_ranks(tmp_path / "run", train_data, 3, FAST)
    end = log[-1]
    assert end["event"] == "end" and end["ranks_in_sync"] is True
    assert [(r["level"], r["alpha"]) for r in log if "alpha" in r] == [(0, 1.0), (1, 0.0), (1, 1.0)]
    assert all(np.isfinite(r["loss_d"]) for r in log if "loss_d" in r)
