"""The update every recipe goes through: host-checked and deferred (device-side) finite checks."""

import copy

import pytest
import torch
from torch import nn

from atlas_gan.models.base import AdversarialDefaults
from atlas_gan.recipes.base import Update, make_optimizer, skips_on_device
from atlas_gan.runtime import distributed

DEFAULTS = AdversarialDefaults(loss="hinge", lr_g=1e-3, lr_d=1e-3, betas=(0.5, 0.99))


def _network_and_optimizer(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    network = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    return network, make_optimizer(DEFAULTS, network.parameters(), 1e-3)


def _loss(network: nn.Module, poison: bool = False) -> torch.Tensor:
    loss = network(torch.ones(3, 4)).square().mean()
    return loss * float("nan") if poison else loss


def test_adam_is_fused_so_a_step_can_be_skipped_on_the_device():
    _, optimizer = _network_and_optimizer()
    assert skips_on_device(optimizer)
    wgan = AdversarialDefaults(loss="wasserstein", lr_g=5e-5, lr_d=5e-5, betas=(0.5, 0.999), optimizer="rmsprop")
    rmsprop = make_optimizer(wgan, nn.Linear(2, 2).parameters(), 1e-3)
    assert not skips_on_device(rmsprop)


@pytest.mark.parametrize("deferred", [False, True])
def test_a_finite_update_is_the_same_with_either_check(deferred):
    reference, reference_optimizer = _network_and_optimizer()
    network, optimizer = _network_and_optimizer()
    ctx = distributed.setup()
    for _ in range(3):
        assert Update(ctx, deferred=False)(_loss(reference), reference, reference_optimizer)
        assert Update(ctx, deferred=deferred)(_loss(network), network, optimizer)
    for ours, theirs in zip(network.parameters(), reference.parameters(), strict=True):
        assert torch.equal(ours, theirs)


def test_a_non_finite_loss_changes_nothing_and_is_counted_on_the_device():
    network, optimizer = _network_and_optimizer()
    ctx = distributed.setup()
    update = Update(ctx, deferred=True)
    assert update(_loss(network), network, optimizer)  # one good step: Adam has moments and a step count
    weights, state = copy.deepcopy(network.state_dict()), copy.deepcopy(optimizer.state_dict())
    assert update(_loss(network, poison=True), network, optimizer)  # deferred: no host read, so "done"
    assert float(update.skipped) == 1
    for key, value in network.state_dict().items():
        assert torch.equal(value, weights[key]), key
    for index, saved in state["state"].items():
        now = optimizer.state_dict()["state"][index]
        assert float(now["step"]) == float(saved["step"]) == 1
        assert torch.equal(now["exp_avg"], saved["exp_avg"]) and torch.equal(now["exp_avg_sq"], saved["exp_avg_sq"])
    assert update(_loss(network), network, optimizer)
    assert float(update.skipped) == 1  # the next good update stepped (and is not counted)
    assert all(float(s["step"]) == 2 for s in optimizer.state_dict()["state"].values())


def test_host_checks_report_a_non_finite_loss_at_once():
    network, optimizer = _network_and_optimizer()
    weights = copy.deepcopy(network.state_dict())
    update = Update(distributed.setup(), deferred=False)
    assert not update(_loss(network, poison=True), network, optimizer)
    assert all(torch.equal(v, weights[k]) for k, v in network.state_dict().items())
    assert float(update.skipped) == 0


def test_weight_clipping_updates_are_checked_on_the_host_even_when_deferred():
    network, optimizer = _network_and_optimizer()
    update = Update(distributed.setup(), deferred=True)
    assert not update(_loss(network, poison=True), network, optimizer, after_step=lambda: None)


def test_configured_betas_replace_the_familys_and_are_rescaled_for_lazy_regularization():
    layer = nn.Linear(2, 2)
    assert make_optimizer(DEFAULTS, layer.parameters(), 1e-3).param_groups[0]["betas"] == (0.5, 0.99)
    group = make_optimizer(DEFAULTS, layer.parameters(), 1e-3, lazy_interval=16, betas=(0.0, 0.9)).param_groups[0]
    assert group["betas"] == pytest.approx((0.0, 0.9 ** (16 / 17)))
    wgan = AdversarialDefaults(loss="wasserstein", lr_g=5e-5, lr_d=5e-5, betas=(0.5, 0.999), optimizer="rmsprop")
    with pytest.raises(ValueError, match="train.adam_betas.*RMSprop"):
        make_optimizer(wgan, layer.parameters(), 1e-3, betas=(0.0, 0.99))
