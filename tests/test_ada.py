"""ADA: each augmentation does what the module documents, p follows D's overfitting, and the state round-trips."""

import io
import itertools

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from atlas_gan.recipes import ada
from atlas_gan.recipes.ada import (
    GROUPS,
    AdaptiveAugment,
    blit_matrices,
    brightness,
    color,
    contrast,
    geom_matrices,
    saturation,
    warp,
)
from atlas_gan.runtime.distributed import DistributedContext

SINGLE = DistributedContext(0, 0, 1, torch.device("cpu"), None)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is as fast, and steadier on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.rand(8, 4, 32, 32) * 2 - 1  # four bands in the training range


def smooth_images(n, bands=3, size=32):
    """Random low-frequency images: what a tile looks like more than white noise does."""
    coarse = torch.randn(n, bands, 4, 4) * 2
    return torch.tanh(F.interpolate(coarse, size=size, mode="bilinear", align_corners=False))


def test_p_zero_returns_the_input_without_drawing(images):
    augment = AdaptiveAugment()
    rng = torch.get_rng_state()
    assert augment.p == 0.0 and augment(images) is images
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("bands", [1, 3, 4, 12])
@pytest.mark.parametrize("groups", [["blit"], ["geom"], ["color"], list(GROUPS)])
def test_shapes_dtype_and_gradients_for_any_band_count(bands, groups):
    torch.manual_seed(1)
    x = (torch.rand(4, bands, 16, 16) * 2 - 1).requires_grad_(True)
    out = AdaptiveAugment(groups, initial_p=0.9)(x)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_flips_and_quarter_turns_permute_pixels_exactly(images):
    torch.manual_seed(2)
    out = warp(images, blit_matrices(len(images), 1.0, 32, 32, translate=0.0))
    used = set()
    for x, y in zip(images, out, strict=True):
        candidates = {(f, k): torch.rot90(x.flip(-1) if f else x, k, dims=(-2, -1)) for f in (0, 1) for k in range(4)}
        match = [key for key, c in candidates.items() if (c - y).abs().max() < 1e-5]
        assert match, "not a flip or a quarter turn of its input"
        used.add(match[0])
    assert len(used) > 2  # parameters are drawn per image


def test_blit_translation_moves_whole_pixels(images):
    torch.manual_seed(3)
    out = warp(images, blit_matrices(len(images), 1.0, 32, 32))
    # every output value is one of the same image and band's input values (no interpolation, reflected borders)
    values = images.flatten(2).sort(dim=-1).values
    found = torch.searchsorted(values, out.flatten(2).contiguous()).clamp(max=values.shape[-1] - 1)
    below = torch.gather(values, -1, (found - 1).clamp(min=0))
    nearest = torch.minimum((torch.gather(values, -1, found) - out.flatten(2)).abs(), (below - out.flatten(2)).abs())
    assert nearest.max() < 1e-5
    # a single bright pixel moves by at most 1/8 of the size (4 px) in x and y after the flip / quarter turn
    dot = torch.zeros(64, 1, 32, 32)
    dot[:, :, 13, 18] = 1.0
    moved = warp(dot, blit_matrices(64, 1.0, 32, 32))
    assert torch.allclose(moved.amax(dim=(1, 2, 3)), torch.ones(64), atol=1e-5)
    assert len({int(m[0].argmax()) for m in moved}) > 10  # drawn per image
    for m in moved:
        row, col = divmod(int(m[0].argmax()), 32)
        assert any(abs(row - r) <= 4 and abs(col - c) <= 4 for r, c in [(13, 18), (13, 13), (18, 13), (18, 18)])


def test_geometric_transforms_change_every_image_and_rotate_with_probability_p():
    torch.manual_seed(4)
    x = smooth_images(16)
    out = warp(x, geom_matrices(16, 1.0, 32, 32))
    assert ((out - x).abs().amax(dim=(1, 2, 3)) > 1e-2).all()
    # at p: iso scale, rotation (two chances of 1 - sqrt(1 - p)), aniso scale, translation each with probability p
    n, p = 20000, 0.25
    identity = (geom_matrices(n, p, 32, 32) == torch.eye(3)).flatten(1).all(dim=1).float().mean()
    assert abs(identity - (1 - p) ** 4) < 0.015


def test_colour_operations_for_any_band_count(images):
    torch.manual_seed(5)
    offset = brightness(images, 1.0) - images  # one offset per image, the same in every band and pixel
    assert torch.allclose(offset, offset[:, :1, :1, :1].expand_as(offset), atol=1e-6) and offset.abs().max() > 0
    contrasted = contrast(images, 1.0)  # each image's mean is kept
    torch.testing.assert_close(contrasted.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=1e-5, rtol=0)
    saturated = saturation(images, 1.0)  # each pixel's mean over the bands is kept
    torch.testing.assert_close(saturated.mean(dim=1), images.mean(dim=1), atol=1e-5, rtol=0)
    assert not torch.allclose(saturated, images)
    single = images[:, :1]
    assert torch.equal(saturation(single, 1.0), single)  # a no-op for one band
    assert not torch.allclose(color(single, 1.0), single)  # brightness and contrast still apply
    applied = (brightness(torch.zeros(20000, 1, 1, 1), 0.3) != 0).float().mean()
    assert abs(applied - 0.3) < 0.015  # per image with probability p


def test_no_sampling_when_no_image_drew_a_transform(images, monkeypatch):
    def no_warp(*args):
        raise AssertionError("grid_sample ran though every matrix is the identity")

    monkeypatch.setattr(ada, "warp", no_warp)
    assert torch.equal(AdaptiveAugment(["blit", "geom"], initial_p=1e-9)(images), images)
    with pytest.raises(AssertionError, match="grid_sample ran"):
        AdaptiveAugment(["blit", "geom"], initial_p=0.5)(images)


def test_bfloat16_and_autocast_compute_the_geometry_in_float32():
    x = smooth_images(8, bands=4)
    augment = AdaptiveAugment(initial_p=0.9)
    torch.manual_seed(6)
    reference = augment(x)
    torch.manual_seed(6)
    half = augment(x.bfloat16())
    assert half.dtype == torch.bfloat16 and (half.float() - reference).abs().max() < 0.05
    torch.manual_seed(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = augment(x)
    assert torch.equal(under_autocast, reference)


def test_gradient_penalty_differentiates_through_the_augmentation():
    torch.manual_seed(7)
    critic = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(8 * 16 * 16, 1))
    x = smooth_images(4).requires_grad_(True)
    scores = critic(AdaptiveAugment(initial_p=0.9)(x))
    (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    grad.square().sum().backward()
    weight = critic[0].weight.grad
    assert weight is not None and torch.isfinite(weight).all() and weight.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"groups": ["blit", "cutout"]}, "unknown ADA groups \\['cutout'\\]"),
        ({"groups": []}, "at least one group"),
        ({"target": 1.0}, "target"),
        ({"interval": 0}, "interval"),
        ({"speed_kimg": 0}, "speed_kimg"),
        ({"initial_p": 1.0}, "initial_p"),
    ],
)
def test_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveAugment(**kwargs)


def test_p_moves_by_the_images_of_an_interval_and_stays_in_range():
    augment = AdaptiveAugment(interval=4, speed_kimg=0.5)
    step = 8 * 4 / (0.5 * 1000)
    for _ in range(3):
        augment.observe(torch.full((8, 1), 3.0))
        assert augment.adjust(8, SINGLE) is None and augment.p == 0.0
    augment.observe(torch.full((8, 1), 3.0))
    assert augment.adjust(8, SINGLE) == 1.0 and augment.p == step and augment.rt == 1.0
    for _ in range(4):  # mean sign 0 < target: down, by the same step
        augment.observe(torch.tensor([1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0]))
        rt = augment.adjust(8, SINGLE)
    assert rt == 0.0 and augment.p == 0.0 and augment.rt == 0.0
    for _ in range(4):  # never below 0
        augment.observe(-torch.ones(8))
        rt = augment.adjust(8, SINGLE)
    assert rt == -1.0 and augment.p == 0.0
    for _ in range(4 * 40):  # never 1 (the unaugmented image stays the most likely)
        augment.observe(torch.ones(8))
        augment.adjust(8, SINGLE)
    assert 0.99 < augment.p < 1.0
    for _ in range(4):  # nothing observed: p stays, no rt
        assert augment.adjust(8, SINGLE) is None
    assert 0.99 < augment.p < 1.0 and augment.rt == 1.0


def test_the_reduction_runs_over_a_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ctx = DistributedContext(0, 0, 1, torch.device("cpu"), "gloo")
        augment = AdaptiveAugment(interval=2, speed_kimg=1.0)
        for logits in ([2.0, 1.0, -1.0, 0.5], [1.0, 1.0, 1.0, -1.0]):
            augment.observe(torch.tensor(logits))
            rt = augment.adjust(4, ctx)
        assert rt == 0.5 and augment.p == 0.0
        for _ in range(2):
            augment.observe(torch.ones(4))
            rt = augment.adjust(4, ctx)
        assert rt == 1.0 and augment.p == 4 * 2 / 1000
    finally:
        dist.destroy_process_group()


def _discriminator():
    return nn.Sequential(
        nn.Conv2d(3, 16, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(16, 32, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(32, 1, 8),
        nn.Flatten(),
    )


def _train(reals, fakes, initial_p, steps=60, speed_kimg=0.1):
    """A tiny D (non-saturating loss, Adam) on augmented reals and fakes; (p, rt) after each adjustment."""
    torch.manual_seed(0)
    D = _discriminator()
    optimizer = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.99))
    augment = AdaptiveAugment(interval=4, speed_kimg=speed_kimg, initial_p=initial_p)
    history = []
    for _ in range(steps):
        real, fake = reals(), fakes()
        real_logits, fake_logits = D(augment(real)), D(augment(fake))
        augment.observe(real_logits)
        loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rt = augment.adjust(len(real), SINGLE)
        if rt is not None:
            history.append((augment.p, rt))
    return history


def test_p_rises_when_the_discriminator_memorises_a_few_reals():
    torch.manual_seed(10)
    fixed = smooth_images(4)  # four real images, seen every step
    history = _train(lambda: fixed, lambda: torch.rand(4, 3, 32, 32) * 2 - 1, initial_p=0.0)
    assert len(history) == 60 // 4
    assert history[-1][1] > 0.6 and history[-1][0] > 0.5  # D is sure of the reals; p went up from 0
    assert all(later >= earlier for (earlier, _), (later, _) in itertools.pairwise(history))


def test_p_falls_when_the_discriminator_cannot_tell():
    torch.manual_seed(11)  # reals and fakes from the same distribution: nothing to overfit
    history = _train(lambda: smooth_images(8), lambda: smooth_images(8), initial_p=0.5, speed_kimg=0.2)
    assert history[-1][0] == 0.0
    assert sum(rt < 0.6 for _, rt in history) >= len(history) - 2
    torch.manual_seed(11)
    history = _train(lambda: smooth_images(8), lambda: smooth_images(8), initial_p=0.0, speed_kimg=0.2)
    assert history[-1][0] == 0.0


def test_state_round_trips_and_adjusts_identically_after_a_resume():
    torch.manual_seed(12)
    augment = AdaptiveAugment(interval=3, speed_kimg=0.2)
    sequence = [torch.randn(6) + 0.8 for _ in range(11)]
    for logits in sequence[:7]:  # two adjustments, and one step into the third interval
        augment.observe(logits)
        augment.adjust(6, SINGLE)
    state = augment.state_dict()
    assert set(state) == {"p", "sign_sum", "sign_count", "steps", "last_rt"}
    assert state["p"].dtype == torch.float64 and state["steps"].dtype == torch.int64 and state["sign_count"] == 6
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = AdaptiveAugment(interval=3, speed_kimg=0.2)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.p == augment.p > 0 and resumed.rt == augment.rt is not None
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, state[key]), key
    for logits in sequence[7:]:
        for module in (augment, resumed):
            module.observe(logits)
        assert resumed.adjust(6, SINGLE) == augment.adjust(6, SINGLE)
        assert resumed.p == augment.p
    assert resumed.to(torch.float16).state_dict()["p"].dtype == torch.float64  # .to() leaves the state alone
