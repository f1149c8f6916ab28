"""DiffAugment: differentiable, shape-preserving, and each colour operation does what the module documents."""

import pytest
import torch

from atlas_gan.recipes.diffaugment import DiffAugment, brightness, contrast, cutout, saturation, translation


@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.rand(8, 5, 32, 32) * 2 - 1  # five bands in the training range


@pytest.mark.parametrize("policies", [["color"], ["translation"], ["cutout"], ["color", "translation", "cutout"]])
def test_shapes_and_gradients_flow(images, policies):
    x = images.clone().requires_grad_(True)
    out = DiffAugment(policies)(x)
    assert out.shape == images.shape and out.dtype == images.dtype
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_translation_and_cutout_stay_in_range_and_fill_with_zero(images):
    for op in (translation, cutout):
        out = op(images)
        assert out.min() >= images.min() and out.max() <= images.max()
    moved = translation(torch.ones(64, 1, 16, 16))
    assert set(moved.unique().tolist()) <= {0.0, 1.0}
    assert (moved == 0).any()  # some of 64 images were shifted
    assert (moved.flatten(1) == 1).sum(1).min() >= (16 - 2) ** 2  # at most 2 px (1/8 of 16) each way
    holes = cutout(torch.ones(64, 1, 16, 16))
    assert ((holes == 0).flatten(1).sum(1) <= 8 * 8).all() and (holes == 0).any()


def test_translation_moves_content_without_changing_it():
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 8, 8] = 1.0
    torch.manual_seed(3)
    out = translation(x.expand(32, 1, 16, 16))
    positions = [tuple((o[0] == 1).nonzero()[0].tolist()) for o in out]
    assert all(abs(r - 8) <= 2 and abs(c - 8) <= 2 for r, c in positions) and len(set(positions)) > 1


def test_colour_operations_for_multispectral_bands(images):
    shifted = brightness(images)
    offset = shifted - images  # one offset per image, the same in every band and pixel
    assert torch.allclose(offset, offset[:, :1, :1, :1].expand_as(offset), atol=1e-6)
    assert offset.abs().max() <= 0.5
    saturated = saturation(images)  # each pixel's mean over the bands is kept
    torch.testing.assert_close(saturated.mean(dim=1), images.mean(dim=1), atol=1e-5, rtol=0)
    single_band = images[:, :1]
    torch.testing.assert_close(saturation(single_band), single_band)  # a no-op for one band
    contrasted = contrast(images)  # each image's mean is kept
    torch.testing.assert_close(contrasted.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=1e-5, rtol=0)


def test_policies_are_checked_and_empty_is_identity(images):
    assert not DiffAugment([]) and torch.equal(DiffAugment([])(images), images)
    assert DiffAugment(["cutout", "color"]).policies == ["color", "cutout"]  # the paper's order
    with pytest.raises(ValueError, match="unknown DiffAugment policies \\['flip'\\]"):
        DiffAugment(["flip"])
