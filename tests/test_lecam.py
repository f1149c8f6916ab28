"""LeCam regularization of D: the penalty's formula, its anchors, config and a resumed run."""

from __future__ import annotations

import json

import pytest
import torch

from atlas_gan.config import ConfigError, load_config
from atlas_gan.recipes.lecam import LeCamRegularizer
from atlas_gan.runtime import distributed
from atlas_gan.runtime.checkpoint import load_checkpoint
from atlas_gan.storage import LocalStorage
from atlas_gan.train.trainer import Trainer
from tests.test_train import small_config


def test_the_penalty_pulls_only_outputs_past_the_other_anchor():
    ctx = distributed.setup()
    lecam = LeCamRegularizer(0.5, decay=0.9)
    real = torch.tensor([2.0, 0.0, -1.0], requires_grad=True)
    fake = torch.tensor([-2.0, 1.0, 0.0], requires_grad=True)
    penalty = lecam.penalty(real, fake, ctx)
    # first batch: anchors are its means (real 1/3, fake -1/3)
    assert lecam.anchors.tolist() == pytest.approx([1 / 3, -1 / 3])
    past_fake_anchor = [(2 + 1 / 3) ** 2, (0 + 1 / 3) ** 2, 0.0]  # reals above -1/3
    below_real_anchor = [(1 / 3 + 2) ** 2, 0.0, (1 / 3) ** 2]  # fakes below 1/3
    expected = 0.5 * (sum(past_fake_anchor) / 3 + sum(below_real_anchor) / 3)
    assert float(penalty.detach()) == pytest.approx(expected)
    penalty.backward()
    assert real.grad[2] == 0 and fake.grad[1] == 0  # already on the right side of the other anchor: no pull
    assert real.grad[0] > 0 and fake.grad[0] < 0  # descent lowers the real output, raises the fake one

    lecam.penalty(torch.tensor([4.0]), torch.tensor([-4.0]), ctx)
    assert lecam.anchors.tolist() == pytest.approx([0.9 / 3 + 0.1 * 4, -0.9 / 3 - 0.1 * 4])


def test_anchors_survive_a_state_dict_round_trip_exactly():
    ctx = distributed.setup()
    lecam = LeCamRegularizer(0.3)
    assert lecam.state_dict() == {"anchors": None}
    for _ in range(3):
        lecam.penalty(torch.randn(4, 1, 5, 5), torch.randn(4, 1, 5, 5), ctx)  # patch logits are fine too
    restored = LeCamRegularizer(0.3)
    restored.load_state_dict(lecam.state_dict())
    assert torch.equal(restored.anchors, lecam.anchors)
    assert not LeCamRegularizer(0.0).enabled
    with pytest.raises(ValueError, match="LeCam weight must be >= 0"):
        LeCamRegularizer(-1.0)


def test_config_takes_lecam_for_adversarial_families_only():
    assert load_config(None, ["train.model=fastgan", "train.model.lecam_weight=0.3"]).train.model.lecam_weight == 0.3
    assert load_config(None, ["train.model=dcgan"]).train.model.lecam_weight is None
    with pytest.raises(ConfigError, match="lecam_weight"):
        load_config(None, ["train.model=fastgan", "train.model.lecam_weight=-1"])
    pix2pix = ["train.model.family=pix2pix", "train.model.input_bands=[1]", "train.model.target_bands=[2]"]
    refused = "lecam_weight: pix2pix has one D step per G step and no R1, LeCam or mode-seeking term"
    with pytest.raises(ConfigError, match=refused):
        load_config(None, [*pix2pix, "train.model.lecam_weight=0.3"])


def test_a_run_logs_the_anchor_gap_and_resumes_with_its_anchors(train_data, tmp_path):
    ctx = distributed.setup()
    run_dir = tmp_path / "run"
    lecam = ["train.model.family=sngan", "train.model.lecam_weight=0.3"]
    first = Trainer(small_config(train_data, run_dir, "train.steps=3", *lecam), ctx, progress=False)
    assert first.recipe.lecam.weight == 0.3
    summary = first.run()
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    gaps = [r["lecam_gap"] for r in records if "loss_d" in r]
    assert len(gaps) == 3 and all(isinstance(gap, float) for gap in gaps)
    saved = load_checkpoint(LocalStorage(), summary["checkpoint"])
    assert saved["recipe_state"]["lecam"]["anchors"] == first.recipe.lecam.anchors.tolist()

    resumed = Trainer(small_config(train_data, run_dir, "train.steps=4", *lecam), ctx, progress=False)
    assert torch.equal(resumed.recipe.lecam.anchors, first.recipe.lecam.anchors)
    assert resumed.run()["step"] == 4
