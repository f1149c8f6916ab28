"""FastGAN: shapes for any band count, the self-supervised decoders learn, training on real shards resumes exactly,
and the quality gate refuses a collapsed generator while crowning a varied one."""

from __future__ import annotations

import json

import pytest
import torch

from atlas_gan.config import load_config
from atlas_gan.metrics.features import PixelSpread
from atlas_gan.models import build
from atlas_gan.models.base import ModelSpec
from atlas_gan.models.fastgan import FastGANDiscriminator, FastGANGenerator
from atlas_gan.runtime import distributed
from atlas_gan.runtime.checkpoint import load_checkpoint
from atlas_gan.storage import LocalStorage
from atlas_gan.tracking.promotion import CHALLENGER, QualityGate, Score, decide, gate_refusal
from atlas_gan.train.data_defaults import pick_data_defaults
from atlas_gan.train.trainer import Trainer
from tests.test_train import small_config

pytestmark = pytest.mark.slow(seconds=120)

FASTGAN = ["train.model=fastgan", "train.latent_dim=32"]


@pytest.mark.parametrize("size", [64, 256])
@pytest.mark.parametrize("bands", [1, 3, 4, 12])
def test_shapes_for_any_band_count(bands, size):
    torch.manual_seed(0)
    spec = ModelSpec(bands=bands, image_size=size, latent_dim=16, g_width=4, d_width=4)
    G, D = FastGANGenerator(spec), FastGANDiscriminator(spec)
    images = G(torch.randn(3, 16))
    assert images.shape == (3, bands, size, size) and images.abs().max() <= 1
    logits, reconstruction = D.forward_with_reconstruction(images, None, quarter=3)
    assert logits.shape == (3,) and reconstruction.ndim == 0 and torch.isfinite(reconstruction)
    assert D(images).shape == (3,)
    (logits.mean() + reconstruction).backward()
    assert all(p.grad is not None for p in D.parameters() if p.requires_grad)


def test_conditional_networks_take_labels():
    spec = ModelSpec(bands=4, image_size=64, latent_dim=16, g_width=4, d_width=4, num_classes=3)
    _, G, D = build("fastgan", spec)
    labels = torch.tensor([0, 2, 1])
    assert D(G(torch.randn(3, 16), labels), labels).shape == (3,)
    with pytest.raises(ValueError, match="conditional on 3 labels"):
        G(torch.randn(3, 16))


def test_fastgan_refuses_images_below_64_px():
    with pytest.raises(ValueError, match="fastgan needs image_size 64, 128, 256 or 512; got 32"):
        build("fastgan", ModelSpec(bands=3, image_size=32))


def test_the_decoders_learn_to_reconstruct_real_tiles():
    torch.manual_seed(0)
    D = FastGANDiscriminator(ModelSpec(bands=4, image_size=64, latent_dim=16, g_width=8, d_width=8))
    real = torch.rand(8, 4, 64, 64) * 2 - 1
    optimizer = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    losses = []
    for step in range(30):
        _, loss = D.forward_with_reconstruction(real, None, quarter=step % 4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_trains_on_real_shards_with_the_reconstruction_term_and_resumes_exactly(train_data_64, tmp_path):
    ctx = distributed.setup()
    run_dir = tmp_path / "run"
    first = Trainer(small_config(train_data_64, run_dir, "train.steps=4", *FASTGAN), ctx, progress=False)
    assert first.recipe.name == "fastgan" and first.config.train.diffaugment == ["color", "translation"]
    assert first.recipe.r1_gamma == pytest.approx(0.0002 * 64**2 / 8)  # lazy R1, StyleGAN2-ADA's gamma at batch 8
    summary = first.run()
    assert summary["step"] == 4
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    picked = next(r for r in records if r.get("event") == "data_defaults")["picked"]
    assert picked["train.diffaugment"]["value"] == ["color", "translation"]
    assert "tiles" in picked["train.diffaugment"]["reason"]
    steps = [r for r in records if "loss_reconstruction" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(r["loss_reconstruction"] > 0 for r in steps)
    saved = load_checkpoint(LocalStorage(), summary["checkpoint"])
    assert saved["recipe"] == "fastgan" and saved["model"] == "fastgan"

    resumed = Trainer(small_config(train_data_64, run_dir, "train.steps=6", *FASTGAN), ctx, progress=False)
    assert (resumed.step, resumed.images_seen) == (4, 32)
    for name, network in resumed.recipe.networks.items():
        for key, value in network.state_dict().items():
            assert torch.equal(value, saved["networks"][name][key]), (name, key)
    for key, value in resumed.generator.state_dict().items():
        assert torch.equal(value, saved["ema"]["G"][key]), key
    assert torch.equal(torch.get_rng_state(), saved["rng"][0]["torch"])  # the same reconstruction quarters follow
    assert resumed.run()["step"] == 6


@pytest.mark.parametrize(
    ("family", "tiles", "expected"),
    [
        ("fastgan", 1_436, ["color", "translation"]),  # the FastGAN authors' policy
        ("dcgan", 1_436, ["color", "translation", "cutout"]),  # Zhao et al.'s few-shot policy
        ("fastgan", 50_000, []),
    ],
)
def test_the_augmentation_picked_follows_the_family_and_the_dataset_size(family, tiles, expected):
    train = load_config(None, ["ingest.source=unused", f"train.model={family}"]).train
    (pick,) = pick_data_defaults(train, tiles)
    assert pick.key == "train.diffaugment" and pick.value == expected
    assert f"{tiles} tiles" in pick.reason


def test_a_resumed_run_keeps_the_augmentation_it_started_with(train_data_64, tmp_path):
    ctx = distributed.setup()
    run_dir = tmp_path / "run"
    Trainer(small_config(train_data_64, run_dir, "train.steps=2", *FASTGAN), ctx, progress=False).run()
    # the dataset "grew" past the threshold: a new run would train without augmentation, this one keeps its own
    from atlas_gan.train import data_defaults

    saved_threshold = data_defaults.SMALL_DATASET
    data_defaults.SMALL_DATASET = 10
    try:
        resumed = Trainer(small_config(train_data_64, run_dir, "train.steps=3", *FASTGAN), ctx, progress=False)
        fresh = Trainer(small_config(train_data_64, tmp_path / "new", "train.steps=3", *FASTGAN), ctx, progress=False)
    finally:
        data_defaults.SMALL_DATASET = saved_threshold
    assert resumed.config.train.diffaugment == ["color", "translation"]
    assert "kept from the checkpoint of step 2" in resumed.data_defaults[0].reason
    assert fresh.config.train.diffaugment == []


def test_pixel_spread_tells_a_collapsed_generator_from_a_varied_one():
    torch.manual_seed(0)
    varied, collapsed = PixelSpread(), PixelSpread()
    tiles = torch.rand(64, 3, 16, 16)
    varied.add(tiles[:32])
    varied.add(tiles[32:])
    collapsed.add(tiles[:1].expand(64, -1, -1, -1) + 0.01 * torch.randn(64, 3, 16, 16))
    assert varied.value() == pytest.approx(float(tiles.std(dim=0).mean()), rel=1e-6)
    assert collapsed.value() < 0.05 * varied.value()


def test_the_quality_gate():
    gate = QualityGate(min_spread_ratio=0.3, max_fid=300.0, max_fid_over_floor=3.0)
    good = Score(120.0, "p", "f", floor_fid=50.0, spread_ratio=0.9)
    assert gate_refusal(good, gate) is None and decide(good, None, gate).alias == "champion"
    collapsed = Score(120.0, "p", "f", floor_fid=50.0, spread_ratio=0.02)
    decision = decide(collapsed, None, gate)
    assert decision.alias == CHALLENGER and "samples collapsed: their pixel spread is 0.02" in decision.reason
    assert "above the ceiling 300" in gate_refusal(Score(350.0, "p", "f", 50.0, 0.9), gate)
    assert "4.0x the real-vs-real floor" in gate_refusal(Score(200.0, "p", "f", 50.0, 0.9), gate)
    assert gate_refusal(Score(200.0, "p", "f", 50.0, None), QualityGate()) is None  # every check off
    covering = QualityGate(min_recall=0.2)
    assert gate_refusal(Score(120.0, "p", "f", 50.0, 0.9, recall=0.35, floor_recall=0.8), covering) is None
    narrow = gate_refusal(Score(120.0, "p", "f", 50.0, 0.9, recall=0.05, floor_recall=0.8), covering)
    assert (
        narrow == "samples cover too little of the real tiles: recall 0.05 (at least 0.2 required; real tiles "
        "outside the reference: 0.80)"
    )
    assert "no sample recall measurement" in gate_refusal(Score(120.0, "p", "f", 50.0, 0.9), covering)


def test_registering_refuses_a_collapsed_generator_and_crowns_a_varied_one(train_data_64, tmp_path, monkeypatch):
    """Both are registered; only the varied one becomes champion, the collapsed one says why in its tags."""
    from mlflow import MlflowClient

    from atlas_gan.tracking.registry import register_generator
    from atlas_gan.tracking.store import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = [
        *FASTGAN,
        "train.steps=2",
        "train.checkpoint_every=2",
        f"tracking.store_dir={tmp_path / 'mlflow'}",
        "tracking.registered_model=gate-test",
        "evaluate.n=48",
        "evaluate.batch_size=24",
        "evaluate.kid_subset_size=24",
    ]
    collapsed_dir, varied_dir = tmp_path / "collapsed", tmp_path / "varied"
    ctx = distributed.setup()
    Trainer(small_config(train_data_64, varied_dir, *settings), ctx, progress=False).run()
    Trainer(small_config(train_data_64, collapsed_dir, *settings), ctx, progress=False).run()
    # Collapse the second generator: the batch norm feeding its output layer zeroed, so every sample is the same flat
    # tile tanh(bias). (Zeroing the output conv itself would divide by a zero spectral norm: NaN, not a collapse.)
    checkpoint = collapsed_dir / "checkpoints" / "step-00000002.pt"
    state = torch.load(checkpoint, weights_only=True)
    last_norm = [key.rsplit(".", 1)[0] for key in state["ema"]["G"] if key.endswith("running_var")][-1]
    state["ema"]["G"][f"{last_norm}.weight"].zero_()
    state["ema"]["G"][f"{last_norm}.bias"].zero_()
    torch.save(state, checkpoint)

    collapsed = register_generator(small_config(train_data_64, collapsed_dir, *settings), progress=False)
    assert collapsed.alias == CHALLENGER and "samples collapsed" in collapsed.reason
    varied = register_generator(small_config(train_data_64, varied_dir, *settings), progress=False)
    assert varied.alias == "champion", varied.reason
    config = small_config(train_data_64, varied_dir, *settings)
    client = MlflowClient(tracking_uri(config.tracking))
    tags = client.get_model_version("gate-test", collapsed.version).tags
    assert tags["atlas.promotion.decision"] == CHALLENGER and "pixel spread" in tags["atlas.promotion.reason"]
    assert float(tags["atlas.spread_ratio"]) < 0.05 and float(tags["atlas.fid.floor"]) > 0
    assert 0 <= float(tags["atlas.sample_recall"]) <= 1 and 0 <= float(tags["atlas.sample_precision"]) <= 1


@pytest.mark.integration
def test_two_ranks_train_fastgan_in_sync(train_data_64, tmp_path):
    """FastGAN on 2 torchrun ranks: reconstruction quarters drawn from each rank's RNG, gradients averaged, LeCam's
    anchors averaged over ranks; both ranks end with identical weights."""
    from tests.test_train_distributed import train_two_ranks

    log = train_two_ranks(tmp_path / "run", train_data_64, 3, [*FASTGAN, "train.model.lecam_weight=0.3"])
    end = log[-1]
    assert end["event"] == "end" and end["step"] == 3 and end["ranks_in_sync"] is True
    assert log[0]["model"] == "fastgan" and log[0]["world_size"] == 2
    assert all(r["loss_reconstruction"] > 0 for r in log if "loss_reconstruction" in r)
    assert all(isinstance(r["lecam_gap"], float) for r in log if "loss_d" in r)


def test_configured_adam_betas_reach_both_optimizers(train_data_64, tmp_path):
    config = small_config(train_data_64, tmp_path / "run", "train.steps=1", "train.adam_betas=[0.2, 0.9]", *FASTGAN)
    optimizers = Trainer(config, distributed.setup(), progress=False).recipe.optimizers
    assert optimizers["G"].param_groups[0]["betas"] == (0.2, 0.9)
    lazy = 16 / 17  # D's lazy R1 every 16 steps rescales its betas (StyleGAN2)
    assert optimizers["D"].param_groups[0]["betas"] == pytest.approx((0.2**lazy, 0.9**lazy))
