"""The mode-seeking term of G: its formula, its pull, the config, and that every adversarial step applies it."""

from __future__ import annotations

import json

import pytest
import torch

from atlas_gan.config import ConfigError, load_config
from atlas_gan.recipes.mode_seeking import EPSILON, mode_seeking_penalty
from atlas_gan.runtime import distributed
from atlas_gan.train.trainer import Trainer
from tests.test_train import small_config


def test_the_penalty_is_the_latent_to_image_distance_ratio_inverted():
    images = torch.tensor([[0.0, 0.0], [1.0, 3.0], [0.5, 0.5], [0.5, 0.5]]).view(4, 2, 1, 1)
    latents = torch.tensor([[0.0], [1.0], [2.0], [4.0]])
    # pairs (0, 2) and (1, 3): image gaps 0.5 and 1.5, latent gaps 2 and 3
    expected = (1 / (0.5 / 2 + EPSILON) + 1 / (1.5 / 3 + EPSILON)) / 2
    assert float(mode_seeking_penalty(images, latents)) == pytest.approx(expected)
    assert float(mode_seeking_penalty(images[:1], latents[:1])) == 0.0  # no pair in a batch of one
    twins = mode_seeking_penalty(torch.ones(2, 3, 4, 4), torch.randn(2, 8))
    assert float(twins) == pytest.approx(1 / EPSILON)  # two latents, one image: as bad as it gets


def test_a_step_down_the_penalty_pushes_images_of_distinct_latents_apart():
    images = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)).mul(0.1).requires_grad_(True)
    latents = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    before = (images[:4] - images[4:]).abs().mean()
    mode_seeking_penalty(images, latents).backward()
    with torch.no_grad():
        after = ((images[:4] - images[4:]) - 0.01 * (images.grad[:4] - images.grad[4:])).abs().mean()
    assert after > before


def test_config_takes_the_weight_for_adversarial_families_only():
    assert load_config(None, ["train.model=fastgan"]).train.model.mode_seeking_weight is None
    chosen = load_config(None, ["train.model=sngan", "train.model.mode_seeking_weight=1"])
    assert chosen.train.model.mode_seeking_weight == 1.0
    with pytest.raises(ConfigError, match="mode_seeking_weight"):
        load_config(None, ["train.model=fastgan", "train.model.mode_seeking_weight=-1"])
    pix2pix = ["train.model.family=pix2pix", "train.model.input_bands=[1]", "train.model.target_bands=[2]"]
    with pytest.raises(ConfigError, match="mode_seeking_weight: pix2pix has one D step per G step"):
        load_config(None, [*pix2pix, "train.model.mode_seeking_weight=1"])


@pytest.mark.parametrize("family", ["sngan", "biggan", "pggan"])  # fastgan takes sngan's step (64+ px only)
def test_every_adversarial_step_adds_the_term_to_g_loss(family, train_data, tmp_path):
    """Step 1's D update and fakes are the same with and without the term (it draws no random numbers), so its
    G loss is higher by exactly the weighted penalty, which is positive."""

    def first_g_loss(weight: float) -> float:
        run_dir = tmp_path / f"{family}-{weight}"
        overrides = [f"train.model.family={family}", f"train.model.mode_seeking_weight={weight}", "train.steps=1"]
        trainer = Trainer(small_config(train_data, run_dir, *overrides), distributed.setup(), progress=False)
        assert trainer.recipe.mode_seeking_weight == weight
        trainer.run()
        records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        return next(r["loss_g"] for r in records if "loss_g" in r)

    assert first_g_loss(1.0) > first_g_loss(0.0)
