"""BigGAN (Brock et al. 2019): the networks' shapes and paper details, the hierarchical latent, truncation,
gradient accumulation equal to a larger batch, orthogonal regularization; trained on real shards, resumed, registered,
sampled by label with truncation and exported."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from atlas_gan.config import ConfigError, load_config
from atlas_gan.export import export_onnx, export_torchscript
from atlas_gan.models import ModelSpec, build, get_family
from atlas_gan.models.base import check_truncation, truncation
from atlas_gan.models.biggan import BigGANGenerator, HierarchicalBatchNorm
from atlas_gan.recipes import BandRoles, Update, build_recipe
from atlas_gan.recipes.base import Progress
from atlas_gan.recipes.biggan import orthogonal_penalty
from atlas_gan.runtime import distributed
from atlas_gan.runtime.checkpoint import load_checkpoint
from atlas_gan.sampling import load_sampler
from atlas_gan.storage import LocalStorage
from atlas_gan.train.trainer import Trainer
from tests.test_tracking import tracked_config, train_tracked
from tests.test_train import small_config

BIGGAN = ["train.model=biggan", "train.diffaugment=[]"]


def spec_for(bands=4, size=32, classes=0, latent=20):
    return ModelSpec(bands, size, latent, 8, 8, num_classes=classes, attention_resolution=size // 2)


@pytest.mark.parametrize("bands", [3, 4, 12])
@pytest.mark.parametrize("classes", [0, 3])
@pytest.mark.parametrize("size", [32, 64])
def test_shapes_for_any_band_count_conditional_or_not(bands, classes, size):
    _, generator, discriminator = build("biggan", spec_for(bands, size, classes))
    labels = torch.tensor([0, 2, 1, 1]) if classes else None
    images = generator(torch.randn(4, 20), labels)
    assert images.shape == (4, bands, size, size) and images.abs().max() <= 1
    assert discriminator(images, labels).shape == (4,)


def test_the_networks_follow_the_paper():
    family = get_family("biggan")
    training = family.training
    assert (training.loss, training.lr_g, training.lr_d, training.betas, training.n_critic) == (
        "hinge",
        1e-4,
        4e-4,
        (0.0, 0.999),
        2,
    )
    _, generator, discriminator = build("biggan", spec_for(classes=3))
    for network in (generator, discriminator):
        layers = [m for m in network.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        assert layers and all(hasattr(m, "parametrizations") for m in layers)  # spectral norm on every weight
    # orthogonal init: a conv's rows (output channels) are orthonormal when it has fewer outputs than inputs
    conv = generator.blocks[-1].conv1.parametrizations.weight.original.flatten(1)
    assert conv.shape[0] <= conv.shape[1]
    assert torch.allclose(conv @ conv.T, torch.eye(conv.shape[0]), atol=1e-5)
    assert generator.shared.weight.shape == (3, 128)  # the shared class embedding
    assert any(isinstance(m, HierarchicalBatchNorm) for m in generator.modules())
    assert discriminator.embed is not None  # projection
    assert len(generator.attention) == 1 and len(discriminator.attention) == 1
    plain = build("biggan", spec_for())[1]
    assert plain.shared.weight.shape == (1, 128)  # unconditional: the one-class case


def test_every_block_gets_its_own_latent_chunk():
    torch.manual_seed(0)
    generator = BigGANGenerator(spec_for(size=32, latent=20)).eval()  # 3 blocks + the input layer: 4 chunks of 5
    outputs: list[torch.Tensor] = []
    for block in generator.blocks:
        block.register_forward_hook(lambda module, args, output: outputs.append(output.detach()))
    z = torch.randn(2, 20)
    generator(z)
    before = list(outputs)
    for chunk in range(4):
        outputs.clear()
        moved = z.clone()
        moved[:, 5 * chunk : 5 * (chunk + 1)] += 1.0
        generator(moved)
        changed = [not torch.equal(a, b) for a, b in zip(before, outputs, strict=True)]
        first = max(chunk - 1, 0)  # chunk 0 feeds the input layer, chunk i block i - 1
        assert changed == [i >= first for i in range(3)], (chunk, changed)
    with pytest.raises(ValueError, match="latent_dim must be at least 4"):
        BigGANGenerator(spec_for(size=32, latent=3))


def test_truncation_keeps_z_inside_the_threshold_and_zero_gives_the_image_of_z_zero():
    torch.manual_seed(0)
    generator = BigGANGenerator(spec_for(classes=3)).eval()
    z = torch.randn(6, 20) * 2
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    generator.truncation_psi = 0.5
    threshold = math.sqrt(2) * torch.erfinv(torch.tensor(0.5))  # keeps half of N(0, 1)'s mass
    truncated = generator.truncated(z)
    assert truncated.abs().max() <= threshold + 1e-6
    assert torch.equal(torch.sign(truncated), torch.sign(z))  # monotone: a seed keeps its direction
    with torch.no_grad():
        zero = generator.eval()(torch.zeros(6, 20), labels)
        with truncation(generator, 0.0):
            images = generator(z, labels)
        with truncation(generator, 1.0):
            untruncated = generator(z, labels)
    assert torch.allclose(images, zero, atol=1e-6)
    assert not torch.allclose(images[0], images[2], atol=1e-3)  # each class its own image of z = 0
    assert not torch.allclose(untruncated, zero, atol=1e-3)
    with pytest.raises(ValueError, match=r"\[0, 1\] for BigGANGenerator"):
        check_truncation(generator, 1.5)


def test_orthogonal_penalty_is_zero_for_orthogonal_rows_and_skips_the_embedding():
    layer = nn.Linear(8, 4, bias=False)
    nn.init.orthogonal_(layer.weight)
    assert orthogonal_penalty(layer) < 1e-10
    with torch.no_grad():
        layer.weight[1] = layer.weight[0]
    assert orthogonal_penalty(layer) > 0.5
    generator = BigGANGenerator(spec_for(classes=3))
    before = orthogonal_penalty(generator, skip=(generator.shared,))
    with torch.no_grad():
        generator.shared.weight.fill_(1.0)  # far from orthogonal, but the paper leaves the embedding out
    assert orthogonal_penalty(generator, skip=(generator.shared,)) == before
    assert orthogonal_penalty(generator) > before


def _recipe(batch, accumulate, train_data, tmp_path):
    cfg = small_config(
        train_data, tmp_path, *BIGGAN, f"train.batch_size={batch}", f"train.model.accumulate={accumulate}",
        "train.model.n_critic=1", "train.model.orthogonal_weight=0", "train.latent_dim=20",
    ).train  # fmt: skip
    torch.manual_seed(3)
    recipe = build_recipe(
        cfg,
        spec_for(classes=3),
        distributed.setup(),
        None,
        None,
        BandRoles(None, [0, 1, 2, 3], ["b1", "b2", "b3", "b4"]),
    )
    recipe.G.eval()  # G's batch norm normalizes each batch on its own; with running statistics the sums must match
    return recipe


def test_accumulating_k_batches_updates_like_one_batch_k_times_larger(train_data, tmp_path):
    torch.manual_seed(0)
    real = torch.rand(8, 4, 32, 32) * 2 - 1
    labels = torch.arange(8) % 3
    latents = torch.randn(16, 20)  # D's fakes, then G's

    def run(batch, accumulate):
        recipe = _recipe(batch, accumulate, train_data, tmp_path)
        drawn = iter(latents.split(batch))
        recipe._latents = lambda n: next(drawn)  # the same latents in the same order for both
        batches = iter({"image": r, "label": y} for r, y in zip(real.split(batch), labels.split(batch), strict=True))
        progress = Progress()
        losses = recipe.step(batches, Update(recipe.ctx), progress)
        return recipe, losses, progress

    small, small_losses, small_progress = run(4, 2)
    large, large_losses, _ = run(8, 1)
    assert small_progress.images_seen == 8 and small.images_per_step == 8
    assert float(small_losses["loss_d"]) == pytest.approx(float(large_losses["loss_d"]), rel=1e-5)
    assert float(small_losses["loss_g"]) == pytest.approx(float(large_losses["loss_g"]), rel=1e-5)
    for name in ("D", "G"):
        for (key, a), b in zip(
            small.networks[name].state_dict().items(), large.networks[name].state_dict().values(), strict=True
        ):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-4), (name, key)


def test_biggan_only_options_are_named():
    with pytest.raises(ConfigError, match="accumulate: sagan has no gradient accumulation"):
        load_config(None, ["train.model=sagan", "train.model.accumulate=4"])
    with pytest.raises(ConfigError, match="attention_resolution: dcgan has no self-attention block .sagan and biggan"):
        load_config(None, ["train.model=dcgan", "train.model.attention_resolution=16"])
    assert load_config(None, ["train.model=biggan", "train.model.attention_resolution=16"]).train.model.accumulate == 1


def test_trains_conditional_on_real_shards_with_accumulation_and_resumes_exactly(train_data, tmp_path):
    settings = [*BIGGAN, "train.condition.by=year", "train.model.accumulate=2", "train.latent_dim=20"]
    run_dir = tmp_path / "run"
    summary = Trainer(small_config(train_data, run_dir, "train.steps=2", *settings), distributed.setup(),
                      progress=False).run()  # fmt: skip
    saved = load_checkpoint(LocalStorage(), summary["checkpoint"])
    assert saved["recipe"] == "biggan" and saved["images_seen"] == 2 * 2 * 2 * 8  # steps x n_critic x k x batch
    resumed = Trainer(small_config(train_data, run_dir, "train.steps=3", *settings), distributed.setup(),
                      progress=False)  # fmt: skip
    assert resumed.recipe.images_per_step == 16 and resumed.spec.num_classes == 8
    for name, network in resumed.recipe.networks.items():
        for key, value in network.state_dict().items():
            assert torch.equal(value, saved["networks"][name][key]), (name, key)
    for name, optimizer in resumed.recipe.optimizers.items():
        assert optimizer.state_dict()["state"].keys() == saved["optimizers"][name]["state"].keys()
    assert torch.equal(torch.get_rng_state(), saved["rng"][0]["torch"])
    assert resumed.run()["step"] == 3


@pytest.mark.integration
def test_registered_biggan_samples_by_label_with_truncation_and_exports(train_data, tmp_path):
    from atlas_gan.tracking.registry import register_generator

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tracked_config(
        train_data, tmp_path / "run", tmp_path, "train.steps=2", "train.evaluate_every=2", f"tracking.uri={uri}",
        *BIGGAN, "train.condition.by=year", "train.latent_dim=20",
    )  # fmt: skip
    train_tracked(config)
    registration = register_generator(config, progress=False)
    sampler = load_sampler(f"models:/tiles-test/{registration.version}", tracking=uri)
    label = sampler.vocabulary.classes[0]
    varied = sampler.generate(4, seed=1, label=label)
    typical = sampler.generate(4, seed=1, label=label, truncation_psi=0.0)
    assert varied.std(axis=0).mean() > 1e-3  # different z, different tiles
    assert abs(typical - typical[:1]).max() < 1e-5  # psi 0: every z becomes 0, one tile per label
    path = export_torchscript(sampler.generator, ModelSpec(**sampler.meta["spec"]), tmp_path / "g.pt", 0.5)
    scripted = torch.jit.load(str(path))
    z = torch.randn(3, 20)
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad(), truncation(sampler.generator, 0.5):
        expected = sampler.generator.eval()(z, labels)
    assert torch.allclose(scripted(z, labels), expected, atol=1e-5)
    with pytest.raises(ValueError, match="erfinv, which ONNX has no operator for"):
        export_onnx(sampler.generator, ModelSpec(**sampler.meta["spec"]), tmp_path / "g.onnx", 0.5)
