"""Super-resolution (esrgan): networks at x2/x4 for any band count, the degradation, the two-phase recipe, the VGG
perceptual loss's resolution and the random-weight one, training and scoring on real Landsat tiles, resume across
the phase change, whole-scene upscaling into a COG, the registry round trip and ONNX export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from rasterio.enums import Resampling
from rasterio.transform import Affine
from torch import nn
from typer.testing import CliRunner

from atlas_gan.cli import app
from atlas_gan.config import ConfigError, DegradationConfig, load_config
from atlas_gan.degrade import batch_seeds, degrade, key_seed
from atlas_gan.ingest import ingest
from atlas_gan.losses import feature_matching_loss, relativistic_average_losses, spectral_angle_loss
from atlas_gan.metrics.evaluate import evaluate_checkpoint
from atlas_gan.metrics.hook import EvaluationHook
from atlas_gan.models.base import ModelSpec
from atlas_gan.models.esrgan import RRDBGenerator, UNetDiscriminator, VGGStyleDiscriminator, discriminator
from atlas_gan.perceptual import (
    ENV_VAR,
    PerceptualLoss,
    RandomPerceptualLoss,
    VGGWeightsNotFound,
    gram_matrices,
    resolve_vgg_weights,
    vgg19_features,
)
from atlas_gan.recipes import Progress, Update, band_roles, build_recipe, model_spec
from atlas_gan.runtime import distributed
from atlas_gan.runtime.checkpoint import load_checkpoint
from atlas_gan.runtime.generator import interpolate_generators, load_generator, load_reference_generators
from atlas_gan.shards import read_manifest, shard_urls
from atlas_gan.storage import LocalStorage
from atlas_gan.train.data import read_tiles
from atlas_gan.train.data_defaults import apply_data_defaults, pick_data_defaults
from atlas_gan.train.figures_hook import FiguresHook
from atlas_gan.train.trainer import Trainer

pytestmark = pytest.mark.slow(seconds=160)

ESRGAN = [
    "train.model.family=esrgan",
    "train.model.scale=4",  # 32 px tiles from 8 px inputs
    "train.model.blocks=1",
    "train.model.growth=8",
    "train.model.pixel_steps=3",
    "train.g_width=8",
    "train.d_width=8",
    "train.batch_size=8",
    "train.num_workers=0",
    "train.log_every=1",
    "train.sample_every=3",
    "train.checkpoint_every=3",
    "train.shuffle_buffer=64",
    "train.sample_count=9",
    "evaluate.batch_size=64",
    "evaluate.n=32",
    "tracking.enabled=false",
]


def esrgan_config(train_data, run_dir, *overrides):
    return load_config(None, [f"ingest.output={train_data}", f"train.run_dir={run_dir}", *ESRGAN, *overrides])


@pytest.fixture(autouse=True)
def no_vgg_weights(monkeypatch):
    """This machine has no VGG19 weights (nothing is downloaded): make sure of it wherever tests run."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr("atlas_gan.perceptual.HUB_FILE", "absent-vgg19.pth")


def tiles(count: int, bands: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random tiles in [-1, 1] (upsampled noise: something a network can learn to sharpen)."""
    coarse = torch.rand(count, bands, size // 4, size // 4, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) * 2 - 1


# ---- networks, losses, degradation --------------------------------------------------------------------------------


@pytest.mark.parametrize("bands", [1, 3, 4, 12])
@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("upsampler", ["shuffle", "nearest"])
def test_networks_upscale_any_band_count(bands, scale, upsampler):
    spec = ModelSpec(
        bands,
        32,
        g_width=8,
        d_width=8,
        input_bands=bands,
        scale=scale,
        residual_blocks=1,
        growth=4,
        upsampler=upsampler,
    )
    generator, discriminator = RRDBGenerator(spec), VGGStyleDiscriminator(spec)
    low = torch.rand(2, bands, 32 // scale, 32 // scale) * 2 - 1
    high = generator(low)
    assert high.shape == (2, bands, 32, 32)
    assert discriminator(high).shape == (2, 1, 4, 4)
    generator.eval()
    with torch.no_grad():  # eval mode clamps; a fresh G is bicubic plus a small residual
        out = generator(low)
    bicubic = F.interpolate(low, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)
    assert out.abs().max() <= 1 and (out - bicubic).abs().mean() < 0.1
    assert generator(torch.rand(1, bands, 12, 20)).shape == (1, bands, 12 * scale, 20 * scale)  # any size
    unet = UNetDiscriminator(spec)
    assert unet(high).shape == (2, 1, 32, 32)  # one logit per pixel


def test_network_interpolation_mixes_the_weights_of_a_gan_and_its_pixel_phase():
    """ESRGAN's trade-off: alpha 1 is the GAN, 0 the model it started from, between them a weighted mean of every
    weight; neither input is changed, and generators of different architectures are refused."""
    spec = ModelSpec(3, 32, g_width=8, input_bands=3, scale=4, residual_blocks=1, growth=4)
    torch.manual_seed(0)
    gan, pixel = RRDBGenerator(spec), RRDBGenerator(spec)
    before = {k: v.clone() for k, v in gan.state_dict().items()}
    low = torch.rand(1, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.equal(interpolate_generators(gan, pixel, 1.0)(low), gan.eval()(low))
        assert torch.equal(interpolate_generators(gan, pixel, 0.0)(low), pixel.eval()(low))
    mixed = interpolate_generators(gan, pixel, 0.8).state_dict()
    for key, weight in gan.state_dict().items():
        assert torch.allclose(mixed[key], 0.8 * weight + 0.2 * pixel.state_dict()[key], atol=1e-6)
        assert torch.equal(weight, before[key])
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        interpolate_generators(gan, pixel, 1.5)
    wider = RRDBGenerator(ModelSpec(3, 32, g_width=16, input_bands=3, scale=4, residual_blocks=1, growth=4))
    with pytest.raises(ValueError, match="same architecture"):
        interpolate_generators(gan, wider, 0.5)


def test_discriminator_is_chosen_by_the_spec_and_the_upsampling_starts_without_a_checkerboard():
    spec = ModelSpec(3, 32, g_width=8, d_width=8, input_bands=3, scale=4, residual_blocks=1, growth=4)
    assert isinstance(discriminator(spec), VGGStyleDiscriminator)  # checkpoints from before the choice: vgg
    assert isinstance(discriminator(ModelSpec(**{**spec.__dict__, "discriminator": "unet"})), UNetDiscriminator)
    with pytest.raises(ValueError, match="unet or vgg"):
        discriminator(ModelSpec(**{**spec.__dict__, "discriminator": "patch"}))
    with pytest.raises(ConfigError, match="discriminator: fastgan has no choice between two discriminators"):
        load_config(None, ["train.model.family=fastgan", "train.model.discriminator=unet"])
    features = torch.randn(1, 8, 6, 6)
    for stage in RRDBGenerator(spec).upsample:  # ICNR: each 2x2 block of a fresh stage's output is one value
        out = stage(features)
        blocks = out.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)
        torch.testing.assert_close(blocks, blocks[..., :1].expand_as(blocks))
        features = out


def test_upsampler_is_chosen_by_the_config_and_nearest_stages_share_one_filter_bank():
    """`train.model.upsampler: nearest` builds ESRGAN's own stages (nearest doubling, then one convolution for every
    output pixel); a spec saved before the option existed still builds pixel shuffle; other families refuse it."""
    cfg = load_config(None, ["train.model.family=esrgan", "train.model.upsampler=nearest"])
    assert cfg.train.model.upsampler == "nearest"
    assert load_config(None, ["train.model.family=esrgan"]).train.model.upsampler == "shuffle"
    spec = ModelSpec(3, 32, g_width=8, input_bands=3, scale=4, residual_blocks=1, growth=4, upsampler="nearest")
    stages = RRDBGenerator(spec).upsample
    assert len(stages) == 2 and all(isinstance(stage[0], nn.Upsample) for stage in stages)
    assert stages[0][1].weight.shape == (8, 8, 3, 3)  # width in, width out: no per-position filters to drift apart
    saved = {k: v for k, v in spec.__dict__.items() if k != "upsampler"}  # meta of an older checkpoint
    assert isinstance(RRDBGenerator(ModelSpec(**saved)).upsample[0][1], nn.PixelShuffle)
    with pytest.raises(ValueError, match="upsampler must be one of nearest, shuffle; got 'bilinear'"):
        RRDBGenerator(ModelSpec(**{**spec.__dict__, "upsampler": "bilinear"}))
    with pytest.raises(ConfigError, match="upsampler"):
        load_config(None, ["train.model.family=esrgan", "train.model.upsampler=bilinear"])
    with pytest.raises(ConfigError, match="upsampler: fastgan has no choice of upsampling stages in G"):
        load_config(None, ["train.model.family=fastgan", "train.model.upsampler=nearest"])


@pytest.mark.parametrize("kind", ["vgg", "unet"])
def test_feature_matching_compares_each_layer_of_d_on_output_and_truth(kind):
    spec = ModelSpec(3, 32, d_width=8, input_bands=3, scale=4, discriminator=kind)
    network = discriminator(spec).eval()  # eval: spectral norm's power iteration does not move between calls
    truth, output = tiles(2, 3, 32), tiles(2, 3, 32).flip(-1).requires_grad_()
    logits, features = network.forward_features(truth)
    torch.testing.assert_close(logits, network(truth))  # the same logits as the plain forward
    assert len(features) == {"vgg": 3, "unet": 6}[kind]  # 32 px: three halvings to 4x4; unet: 3 down, 3 up
    assert feature_matching_loss(features, features) == 0
    loss = feature_matching_loss(network.forward_features(output)[1], features)
    assert loss > 0
    loss.backward()
    assert output.grad is not None and output.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="same nonzero number of layers"):
        feature_matching_loss(features[:1], features)


def test_spec_rejects_bad_scales_and_band_changes():
    with pytest.raises(ValueError, match="scale must be 1, 2 or 4"):
        ModelSpec(3, 32, input_bands=3, scale=3)
    with pytest.raises(ValueError, match="scale must be 1, 2 or 4"):
        ModelSpec(3, 32, scale=2)  # a latent generator does not upscale
    with pytest.raises(ValueError, match="draws the bands it reads"):
        RRDBGenerator(ModelSpec(3, 32, input_bands=4, scale=2))
    with pytest.raises(ConfigError, match="scale"):
        load_config(None, ["train.model.family=esrgan", "train.model.scale=3"])
    with pytest.raises(ConfigError, match="scale: Extra inputs are not permitted"):
        load_config(None, ["train.model.family=cyclegan", "train.model.domain_a=[1]", "train.model.domain_b=[2]",
                           "train.model.scale=2"])  # fmt: skip
    with pytest.raises(ConfigError, match="scale: fastgan has no upscaling factor"):
        load_config(None, ["train.model.family=fastgan", "train.model.scale=2"])


def test_relativistic_and_spectral_angle_losses():
    real, fake = torch.tensor([3.0, 2.0]), torch.tensor([-2.0, -3.0])
    d_loss, g_loss = relativistic_average_losses(real, fake)
    assert d_loss < 0.05 < g_loss  # D separates them well: its loss is small, G's large
    d_even, g_even = relativistic_average_losses(torch.zeros(2), torch.zeros(2))
    assert d_even == pytest.approx(math.log(2)) and g_even == pytest.approx(math.log(2))
    images = tiles(2, 4, 16)
    assert spectral_angle_loss(images, images) < 0.02  # within the clamp of identical spectra
    brighter = ((images + 1) * 1.5 - 1).clamp(max=5)
    assert spectral_angle_loss(brighter, images) < 0.02  # an angle ignores brightness
    shuffled = images[:, [3, 2, 1, 0]]
    assert spectral_angle_loss(shuffled, images) > 0.05
    assert spectral_angle_loss(images[:, :1], images[:, :1]) == 0  # one band: no angle


def test_degradation_is_deterministic_per_seed():
    high = tiles(4, 3, 32)
    plain = degrade(high, 4, DegradationConfig(), [1, 2, 3, 4])
    torch.testing.assert_close(plain, F.avg_pool2d(high, 4))  # area downsampling: the mean of each 4x4 block
    settings = DegradationConfig(blur=1.5, noise=0.05, second_order=True)
    seeds = [key_seed(f"tile-{i}") for i in range(4)]
    first, again = degrade(high, 4, settings, seeds), degrade(high, 4, settings, seeds)
    assert first.shape == (4, 3, 8, 8)
    assert torch.equal(first, again)
    other = degrade(high, 4, settings, [s + 1 for s in seeds])
    assert not torch.equal(first, other)
    assert key_seed("a", 0) == key_seed("a", 0) != key_seed("a", 1)  # stable across processes, not hash()
    assert batch_seeds(0, 5, 1, 3) == batch_seeds(0, 5, 1, 3) != batch_seeds(0, 6, 1, 3)
    with pytest.raises(ValueError, match="one seed per image"):
        degrade(high, 4, settings, seeds[:2])
    with pytest.raises(ValueError, match="do not divide"):
        degrade(tiles(1, 3, 32)[:, :, :30, :30], 4, settings, [0])


# ---- the perceptual loss: found locally or off ---------------------------------------------------------------------


def test_vgg_weights_are_resolved_locally_or_the_loss_is_off(tmp_path, monkeypatch):
    with pytest.raises(VGGWeightsNotFound, match="no VGG19 weights"):
        resolve_vgg_weights()
    config = load_config(None, ["train.model.family=esrgan"])
    picks = {p.key: p for p in pick_data_defaults(config.train, 100)}
    assert picks["train.model.perceptual_weight"].value == 0.0
    assert picks["train.model.perceptual_weight"].reason.startswith("perceptual loss: unavailable")
    resolved = apply_data_defaults(config.train, list(picks.values()))
    assert resolved.model.perceptual_weight == 0 and resolved.model.scale == 4  # the rest kept

    weights = tmp_path / "vgg19.pth"  # torchvision's key layout, features and classifier (random: no download)
    network = torch.nn.Module()
    network.features = vgg19_features(end=37)
    network.classifier = torch.nn.Linear(8, 2)
    torch.save(network.state_dict(), weights)
    monkeypatch.setenv(ENV_VAR, str(weights))
    assert resolve_vgg_weights() == weights
    picks = {p.key: p for p in pick_data_defaults(config.train, 100)}
    assert picks["train.model.vgg_weights"].value == str(weights)
    loss = PerceptualLoss(weights, [0])  # one band, repeated as grey
    pred = tiles(2, 1, 32).requires_grad_(True)
    value = loss(pred, tiles(2, 1, 32, seed=1))
    value.backward()
    assert value > 0 and pred.grad is not None and pred.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not torchvision VGG19 weights"):
        PerceptualLoss(tmp_path / "bad.pth", [0, 1, 2])


@pytest.mark.parametrize("bands", [1, 3, 4, 12])
def test_the_random_weight_perceptual_loss_needs_no_weights_and_takes_every_band(bands):
    """Liu et al. 2021's loss: the same frozen network on every rank and run (drawn without touching the training
    RNG), zero for identical tiles, larger for a blurred tile than for a slightly noisy one, gradients to G."""
    state = torch.get_rng_state()
    loss, again = RandomPerceptualLoss(bands), RandomPerceptualLoss(bands)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(loss.state_dict().values(), again.state_dict().values(), strict=True))
    assert not any(p.requires_grad for p in loss.parameters()) and not loss.train().training
    truth = tiles(2, bands, 32) + 0.3 * torch.randn(2, bands, 32, 32, generator=torch.Generator().manual_seed(1))
    assert loss(truth, truth) == 0
    noisy = truth + 0.02 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(2))
    blurred = F.avg_pool2d(truth, 3, stride=1, padding=1, count_include_pad=False)
    assert loss(blurred, truth) > loss(noisy, truth) > 0
    pred = blurred.clone().requires_grad_(True)
    loss(pred, truth).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least one band"):
        RandomPerceptualLoss(0)


def test_gram_matrices_are_taken_per_window():
    features = torch.arange(2 * 16 * 16, dtype=torch.float32).view(1, 2, 16, 16)
    grams = gram_matrices(features, patch=8)
    assert grams.shape == (4, 2, 2)  # 2 x 2 windows of 8 px
    window = features[0, :, 8:, :8].reshape(2, 64)  # the third window: rows 8-15, columns 0-7
    assert torch.allclose(grams[2], window @ window.T / 64)
    assert gram_matrices(features[..., :4, :4], patch=8).shape == (1, 2, 2)  # smaller than a window: the whole map


@pytest.mark.parametrize("bands", [1, 3, 4, 12])
def test_the_texture_loss_asks_for_the_truths_texture_not_its_exact_grain(bands):
    """A tile with the same structure and a fresh draw of the same grain is far closer to the truth in texture than
    a blurred copy (which keeps every pixel near its place), much more so than in the perceptual distance."""
    loss = RandomPerceptualLoss(bands)
    draw = torch.Generator().manual_seed(1)
    structure = F.interpolate(torch.randn(2, bands, 8, 8, generator=draw), size=32, mode="bilinear")
    truth = (structure + 0.3 * torch.randn(2, bands, 32, 32, generator=draw)).clamp(-1, 1)
    regrained = (structure + 0.3 * torch.randn(2, bands, 32, 32, generator=draw)).clamp(-1, 1)
    blurred = F.avg_pool2d(truth, 3, stride=1, padding=1, count_include_pad=False)
    (perceptual_regrained, texture_regrained), (perceptual_blurred, texture_blurred) = (
        loss.distances(regrained, truth),
        loss.distances(blurred, truth),
    )
    assert texture_regrained / texture_blurred < 0.5 * perceptual_regrained / perceptual_blurred
    assert loss.distances(truth, truth) == (0, 0) and loss.distances(truth, truth, texture=False)[1] is None
    pred = blurred.clone().requires_grad_(True)
    loss.distances(pred, truth)[1].backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_a_random_perceptual_network_is_used_without_vgg_weights(tmp_path):
    config = load_config(None, ["train.model.family=esrgan", "train.model.perceptual_network=random"])
    picked = {p.key for p in pick_data_defaults(config.train, 100)}
    assert not picked & {"train.model.perceptual_weight", "train.model.vgg_weights"}  # nothing resolved or turned off
    roles = band_roles(config.train, ["B4", "B3", "B2", "B8"])
    recipe = build_recipe(config.train, model_spec(config.train, roles, 32, 0), distributed.setup(), None, None, roles)
    assert isinstance(recipe.perceptual, RandomPerceptualLoss)
    assert recipe.perceptual.stages[0][0].in_channels == 4  # every band, not a display triplet
    with pytest.raises(ConfigError, match="vgg_weights is set but perceptual_network is 'random'"):
        load_config(None, [*ESRGAN, "train.model.perceptual_network=random", f"train.model.vgg_weights={tmp_path}"])
    with pytest.raises(ConfigError, match="texture_weight 1.0 needs perceptual_network: random"):
        load_config(None, [*ESRGAN, "train.model.texture_weight=1"])
    texture_only = ["train.model.perceptual_network=random", "train.model.perceptual_weight=0"]
    config = load_config(None, [*ESRGAN, *texture_only, "train.model.texture_weight=1"])
    recipe = build_recipe(config.train, model_spec(config.train, roles, 32, 0), distributed.setup(), None, None, roles)
    assert isinstance(recipe.perceptual, RandomPerceptualLoss)  # the texture loss's network, perceptual term off


# ---- the recipe -----------------------------------------------------------------------------------------------------


def test_pixel_steps_then_gan_steps_lower_their_losses(train_data, tmp_path, monkeypatch):
    """On one fixed batch of real tiles: the pixel phase lowers L1; the GAN phase lowers D's loss and keeps the
    pixel-phase generator as a reference."""
    config = esrgan_config(
        train_data,
        tmp_path / "run",
        "train.model.pixel_steps=15",
        "train.model.perceptual_network=random",
        "train.model.texture_weight=1",
        "train.model.feature_weight=1",
    )
    cfg = config.train
    bands = ["1", "2", "3", "4"]
    roles = band_roles(cfg, bands)
    spec = model_spec(cfg, roles, 32, 0)
    assert (spec.scale, spec.input_size, spec.input_bands, spec.residual_blocks) == (4, 8, 4, 1)
    ctx = distributed.setup()
    torch.manual_seed(0)
    recipe = build_recipe(cfg, spec, ctx, None, None, roles)

    manifest = read_manifest(LocalStorage(), str(train_data))
    _, batch = read_tiles(shard_urls(manifest, str(train_data)), None, 32, None, 8)
    batches = iter(lambda: {"image": batch}, None)
    progress, update = Progress(), Update(ctx)
    pixel = []
    for _ in range(15):
        pixel.append(recipe.step(batches, update, progress))
        progress.step += 1
    assert "loss_d" not in pixel[0] and recipe.reference_generators() == {}
    assert pixel[-1]["loss_l1"] < pixel[0]["loss_l1"]
    gan = []
    for _ in range(8):
        gan.append(recipe.step(batches, update, progress))
        progress.step += 1
    assert gan[-1]["loss_d"] < gan[0]["loss_d"]
    assert gan[0]["loss_feature_matching"] > 0 and gan[0]["loss_perceptual"] > 0 and gan[0]["loss_texture"] > 0
    assert all(np.isfinite(list(losses.values())).all() for losses in gan)
    reference = recipe.reference_generators()["pixel"]
    assert not reference.training and recipe.state_dict()["phase"] == "gan"
    assert progress.images_seen == 23 * 8


# ---- training on real tiles -----------------------------------------------------------------------------------------


def test_esrgan_trains_scores_and_resumes_across_the_phase_change(train_data, tmp_path):
    """x4 on the Pucallpa tiles: scored on the held-out split beside bicubic (and, from the GAN phase on, the
    pixel-loss model); a run resumed in the pixel phase, across the change and again in the GAN phase restores its
    phase, the kept pixel-phase G, its networks and its optimizers exactly, and ends with the straight run's
    weights."""
    ctx = distributed.setup()
    straight_dir = tmp_path / "straight"
    trainer = Trainer(esrgan_config(train_data, straight_dir, "train.steps=6", "train.evaluate_every=3"), ctx)
    assert trainer.fixed_inputs[0].shape == (9, 4, 8, 8) and trainer.spec.scale == 4
    trainer.hooks += [EvaluationHook(), FiguresHook()]
    summary = trainer.run()
    events = [json.loads(line) for line in (straight_dir / "log.jsonl").read_text().splitlines()]
    defaults = next(e for e in events if e.get("event") == "data_defaults")["picked"]
    assert defaults["train.model.perceptual_weight"]["reason"].startswith("perceptual loss: unavailable")
    assert json.loads((straight_dir / "config.json").read_text())["train"]["model"]["perceptual_weight"] == 0
    steps = [e for e in events if "loss_g" in e]
    assert [e["gan_phase"] for e in steps] == [0, 0, 0, 1, 1, 1] and "loss_d" in steps[-1]
    scores = [e for e in events if e.get("event") == "evaluate_translation"]
    assert [e["step"] for e in scores] == [3, 6] and all(e["baseline"] == "bicubic" for e in scores)
    assert scores[0]["pixel_psnr"] is None and np.isfinite(scores[1]["pixel_psnr"])
    result = json.loads((straight_dir / "eval" / "step-00000006.json").read_text())
    assert result["scale"] == 4 and result["degradation"] == DegradationConfig().model_dump()
    assert set(result["baselines"]) == {"bicubic", "pixel"} and result["n_validation"] == 32
    assert result["psnr_over_baseline"] == pytest.approx(result["psnr"] - result["baselines"]["bicubic"]["psnr"])
    assert 10 < result["baselines"]["bicubic"]["psnr"] < 60 and np.isfinite(result["fid"])
    assert (straight_dir / "figures" / "translation-rgb.png").stat().st_size > 0
    checkpoint = summary["checkpoint"]
    assert set(load_reference_generators(LocalStorage(), checkpoint)) == {"pixel"}

    resumed_dir = tmp_path / "resumed"  # stopped in the pixel phase, resumed across the change, resumed again
    every_two = "train.checkpoint_every=2"
    Trainer(esrgan_config(train_data, resumed_dir, "train.steps=2", every_two), ctx).run()
    crossing = Trainer(esrgan_config(train_data, resumed_dir, "train.steps=4", every_two), ctx)
    assert crossing.resumed_from == 2 and crossing.recipe.reference_generators() == {}
    crossing.run()
    saved = load_checkpoint(LocalStorage(), str(resumed_dir / "checkpoints" / "step-00000004.pt"))
    assert saved["recipe_state"]["phase"] == "gan" and set(saved["recipe_state"]["reference_generators"]) == {"pixel"}
    resumed = Trainer(esrgan_config(train_data, resumed_dir, "train.steps=6"), ctx)
    assert resumed.resumed_from == 4 and resumed.recipe.state_dict()["phase"] == "gan"
    kept = resumed.recipe.state_dict()["reference_generators"]["pixel"]
    assert all(torch.equal(v, saved["recipe_state"]["reference_generators"]["pixel"][k]) for k, v in kept.items())
    for name, network in resumed.recipe.networks.items():  # networks, EMA and optimizers as saved
        assert all(torch.equal(v, saved["networks"][name][k]) for k, v in network.state_dict().items())
    assert resumed.recipe.optimizers["D"].state_dict()["state"][0]["step"] == 1  # D trains in the GAN phase only
    assert resumed.recipe.optimizers["G"].state_dict()["state"][0]["step"] == 4
    assert resumed.run()["step"] == 6
    ended = load_checkpoint(LocalStorage(), str(resumed_dir / "checkpoints" / "step-00000006.pt"))
    straight = load_checkpoint(LocalStorage(), checkpoint)
    for name, weights in straight["networks"].items():  # twice resumed, the run still ends where the straight one did
        assert all(torch.equal(v, ended["networks"][name][k]) for k, v in weights.items()), name


def test_network_interpolation_is_what_is_evaluated_and_loaded(train_data, tmp_path):
    """`interpolation` 0.5: the generator scored while training, by `evaluate` and by `load_generator` (so the
    registry, `sample` and `upscale`) is half the GAN's EMA and half the pixel-phase G; `interpolated=False` gives the
    GAN as trained. It needs a pixel phase, and stays in [0, 1]."""
    ctx = distributed.setup()
    run_dir = tmp_path / "run"
    config = esrgan_config(
        train_data, run_dir, "train.steps=6", "train.evaluate_every=6", "train.model.interpolation=0.5"
    )
    trainer = Trainer(config, ctx, hooks=[EvaluationHook()], progress=False)
    checkpoint = trainer.run()["checkpoint"]
    assert load_checkpoint(LocalStorage(), checkpoint)["recipe_state"]["interpolation"] == {
        "reference": "pixel",
        "alpha": 0.5,
    }
    served, _ = load_generator(LocalStorage(), checkpoint)
    trained, _ = load_generator(LocalStorage(), checkpoint, interpolated=False)
    pixel = load_reference_generators(LocalStorage(), checkpoint)["pixel"]
    mixed = served.state_dict()
    for key, weight in trained.state_dict().items():
        assert torch.allclose(mixed[key], 0.5 * weight + 0.5 * pixel.state_dict()[key], atol=1e-6), key
    assert any(not torch.equal(mixed[k], w) for k, w in trained.state_dict().items())  # the GAN phase moved G
    assert all(torch.equal(w, mixed[k]) for k, w in trainer.generator.state_dict().items())  # trained = loaded
    while_training = json.loads((run_dir / "eval" / "step-00000006.json").read_text())
    evaluated = evaluate_checkpoint(config, checkpoint, ctx, progress=False, write=False)
    assert evaluated["psnr"] == pytest.approx(while_training["psnr"], abs=1e-4)
    with pytest.raises(ConfigError, match="interpolation 0.8 mixes the GAN with its pixel phase, but pixel_steps is 0"):
        load_config(None, [*ESRGAN, "train.model.pixel_steps=0", "train.model.interpolation=0.8"])
    with pytest.raises(ConfigError, match="interpolation"):
        load_config(None, [*ESRGAN, "train.model.interpolation=1.5"])


def test_upscale_a_whole_scene_keeps_its_extent_without_seams(train_data, geotiff, tmp_path):
    run_dir = tmp_path / "run"
    Trainer(esrgan_config(train_data, run_dir, "train.steps=4"), distributed.setup(), progress=False).run()
    checkpoint = str(run_dir / "checkpoints" / "step-00000004.pt")
    scene = geotiff / "landsat-pucallpa" / "landsat_2015.tif"
    out = tmp_path / "out" / "x4.tif"
    result = CliRunner().invoke(app, ["upscale", str(scene), "--model", checkpoint, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "x4 super-resolution of 1,2,3,4" in result.output
    from rio_cogeo.cogeo import cog_validate

    assert cog_validate(str(out))[0]
    with rasterio.open(scene) as source, rasterio.open(out) as upscaled:
        assert upscaled.crs == source.crs and upscaled.bounds == pytest.approx(source.bounds)
        assert upscaled.res == pytest.approx((source.res[0] / 4, source.res[1] / 4))
        assert upscaled.shape == (source.height * 4, source.width * 4)
        assert upscaled.descriptions == ("1", "2", "3", "4")
        assert "x4 super-resolution" in upscaled.tags()["atlas_translation"]
        values = upscaled.read(1)
        raw = source.read(1).astype(np.float64)
        valid = np.repeat(np.repeat((source.read_masks() > 0).all(axis=0), 4, axis=0), 4, axis=1)
    assert np.isfinite(values[valid]).all() and np.isnan(values[~valid]).all()
    source_valid = valid[::4, ::4]
    block_means = values.reshape(raw.shape[0], 4, raw.shape[1], 4).mean(axis=(1, 3))
    error = np.abs(block_means[source_valid] - raw[source_valid]).mean()
    assert error < 0.1 * raw[source_valid].std()  # the same scene, in the same place and units
    stride = 16  # 8 px input tiles overlap by 4 px: output tiles start every 16 px
    for axis in (0, 1):
        steps = np.abs(np.diff(values, axis=axis))
        position = np.arange(steps.shape[axis])
        # like with like: steps between two source pixels' blocks, at a tile border or inside a tile
        at_borders = position % stride == stride - 1
        between_pixels = (position % 4 == 3) & ~at_borders
        border = np.take(steps, np.flatnonzero(at_borders), axis=axis)
        inside_steps = np.take(steps, np.flatnonzero(between_pixels), axis=axis)
        assert np.nanmean(border) <= 1.1 * np.nanmean(inside_steps)
    wrong = CliRunner().invoke(app, ["upscale", str(scene), "--model", checkpoint, "--out", str(out), "--scale", "2"])
    assert wrong.exit_code == 2 and "upscales by 4, not by --scale 2" in wrong.output


def test_esrgan_registers_serves_and_exports(train_data, tmp_path, monkeypatch):
    """Registered with its held-out PSNR against bicubic; the pyfunc takes low-resolution images; ONNX has a
    dynamic batch and size."""
    import mlflow
    import onnxruntime
    from mlflow import MlflowClient

    from atlas_gan.export import export_generator
    from atlas_gan.tracking.hook import MLflowHook
    from atlas_gan.tracking.registry import register_generator

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = ["train.steps=4", "train.evaluate_every=4", "tracking.enabled=true", f"tracking.uri={uri}"]
    config = esrgan_config(train_data, tmp_path / "run", *settings, "tracking.registered_model=sr")
    summary = Trainer(config, distributed.setup(), hooks=[EvaluationHook(), MLflowHook()], progress=False).run()
    registration = register_generator(config, progress=False)
    client = MlflowClient(uri, uri)
    tags = client.get_model_version("sr", registration.version).tags
    assert tags["atlas.primary_metric"] == "psnr" and tags["atlas.translation"] == "x4 super-resolution of 1,2,3,4"
    over = float(tags["atlas.translation.score"]) - float(tags["atlas.translation.baseline"])
    assert registration.alias == ("champion" if over > 0 else "challenger")
    run = client.get_run(registration.run_id)
    assert run.data.params["train.model.perceptual_weight"] == "0.0"
    assert run.data.tags["atlas.auto.train.model.perceptual_weight"].startswith("0.0: perceptual loss: unavailable")
    assert "pixel_psnr" in run.data.metrics and "baseline_psnr" in run.data.metrics

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(f"models:/sr/{registration.version}")
    generator, meta = load_generator(LocalStorage(), summary["checkpoint"])
    low = torch.rand(3, 4, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        expected = generator(low).numpy()
    served = model.predict(low.numpy())
    assert served["images"].shape == (3, 4, 32, 32)
    np.testing.assert_array_equal(served["images"], expected)

    path = export_generator(generator, ModelSpec(**meta["spec"]), tmp_path / "sr.onnx", "onnx", info=meta)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((2, 4, 8, 8), (1, 4, 16, 24)):
        images = torch.rand(*shape, generator=torch.Generator().manual_seed(2)) * 2 - 1
        with torch.no_grad():
            expected = generator(images).numpy()
        (out,) = session.run(["translated"], {"images": images.numpy()})
        assert out.shape == (shape[0], 4, shape[2] * 4, shape[3] * 4)
        np.testing.assert_allclose(out, expected, atol=1e-4)


def coarse_copy(scene: Path, folder: Path, factor: int = 2) -> Path:
    """`scene` averaged over factor x factor pixels: the same ground and date seen by a coarser sensor, on its own
    (coarser) grid."""
    folder.mkdir(parents=True)
    with rasterio.open(scene) as src:
        height, width = src.height // factor, src.width // factor
        data = src.read(out_shape=(src.count, height, width), resampling=Resampling.average)
        profile = src.profile | {"height": height, "width": width, "transform": src.transform * Affine.scale(factor)}
        profile["photometric"] = "MINISBLACK"  # four plain bands, as the source's data (its header says RGB)
        with rasterio.open(folder / f"coarse_{scene.name}", "w", **profile) as dst:
            dst.write(data)
    return folder / f"coarse_{scene.name}"


def test_real_pairs_from_a_coarser_source_train_score_and_upscale_its_scenes(geotiff, make_config, tmp_path):
    """x2 from a 60 m source to the 30 m scene of the same ground (paired ingest): G reads the coarse source's own
    pixels, the evaluation scores against them, and `upscale` takes a scene of the coarse source by its band names."""
    scene = geotiff / "landsat-pucallpa" / "landsat_2020.tif"
    fine = tmp_path / "fine"
    fine.mkdir()
    (fine / scene.name).symlink_to(scene)
    coarse = coarse_copy(scene, tmp_path / "coarse")
    shards = tmp_path / "shards"
    config = make_config(
        fine, shards, tile_size=32, workers=1, resampling="nearest", paired={"source": str(coarse.parent)}
    )
    assert ingest(config, progress=False).rejected == []
    pairs = ["train.model.scale=2", "train.model.input_bands=[1_pair,2_pair,3_pair,4_pair]",
             "train.model.target_bands=[1,2,3,4]", "train.steps=3", "train.evaluate_every=3"]  # fmt: skip
    run_dir = tmp_path / "run"
    trainer = Trainer(esrgan_config(shards, run_dir, *pairs), distributed.setup(), progress=False)
    assert trainer.input_bands == ["1_pair", "2_pair", "3_pair", "4_pair"] and trainer.bands == ["1", "2", "3", "4"]
    assert trainer.spec.input_bands == 4 and trainer.fixed_inputs[0].shape == (9, 4, 16, 16)
    examples = trainer.examples[:9]
    partner = examples[:, 4:]  # the 60 m pixels, warped (nearest) onto the 30 m grid: constant 2 x 2 blocks
    same = (partner[..., ::2, ::2] == partner[..., 1::2, 1::2]).float().mean()
    assert same > 0.99  # (the scene's own nodata pixels mask both sources)
    blocks = F.avg_pool2d(partner, 2)
    assert torch.allclose(trainer.fixed_inputs[0].cpu(), blocks, atol=1e-6)  # G reads them, area-downsampled
    assert (blocks == partner[..., ::2, ::2]).float().mean() > 0.99
    trainer.hooks.append(EvaluationHook())
    summary = trainer.run()
    result = json.loads((run_dir / "eval" / "step-00000003.json").read_text())
    assert result["degradation"] == "real pairs" and result["input_bands"] == trainer.input_bands
    assert result["baselines"]["bicubic"]["psnr"] > 20  # bicubic of the coarse source is close to the scene

    out = tmp_path / "x2.tif"
    upscale = ["upscale", str(coarse), "--model", summary["checkpoint"], "--out", str(out), "--quiet"]
    finished = CliRunner().invoke(app, upscale)
    assert finished.exit_code == 0, finished.output
    with rasterio.open(coarse) as source, rasterio.open(out) as upscaled, rasterio.open(scene) as truth:
        assert upscaled.crs == source.crs and upscaled.bounds == pytest.approx(source.bounds)
        assert upscaled.res == pytest.approx(truth.res)  # 60 m -> 30 m: the scene's own pixel size
        assert upscaled.descriptions == ("1", "2", "3", "4")


def test_real_pairs_need_one_target_band_per_input_band():
    with pytest.raises(ConfigError, match="input_bands .a coarser source's bands. needs target_bands, one per input"):
        load_config(None, ["train.model.family=esrgan", "train.model.input_bands=[B4_pair, B3_pair]"])
    with pytest.raises(ConfigError, match="one per input band"):
        load_config(
            None, ["train.model.family=esrgan", "train.model.input_bands=[a_pair]", "train.model.target_bands=[a, b]"]
        )
    with pytest.raises(ConfigError, match="input_bands: dcgan has no input image .pix2pix and esrgan have."):
        load_config(None, ["train.model.family=dcgan", "train.model.input_bands=[a]"])
