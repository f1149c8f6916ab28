import pytest
import torch

from atlas_gan.losses import discriminator_loss, generator_loss, gradient_penalty
from atlas_gan.models import ModelSpec, build, family_names, get_family

FAMILIES = ["dcgan", "wgan-gp", "sngan"]


def test_registry_knows_the_families_and_rejects_others():
    assert set(FAMILIES) <= set(family_names())
    with pytest.raises(ValueError, match=r"unknown model 'stylegan9'; known: \['dcgan'"):
        get_family("stylegan9")


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("bands", [3, 4, 12])
@pytest.mark.parametrize("size", [32, 64])
def test_shapes(name, bands, size):
    _, generator, discriminator = build(name, ModelSpec(bands, size, latent_dim=32, g_width=8, d_width=8))
    images = generator(torch.randn(5, 32))
    assert images.shape == (5, bands, size, size)
    assert images.abs().max() <= 1.0  # tanh
    assert discriminator(images).shape == (5,)


def test_dcgan_follows_the_paper():
    family, generator, discriminator = build("dcgan", ModelSpec(3, 64))
    assert (family.lr_g, family.lr_d, family.betas, family.loss) == (2e-4, 2e-4, (0.5, 0.999), "nonsaturating")
    d_layers = list(discriminator.net)
    assert isinstance(d_layers[0], torch.nn.Conv2d) and not isinstance(d_layers[1], torch.nn.BatchNorm2d)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in d_layers)
    assert not any(isinstance(m, torch.nn.Linear | torch.nn.MaxPool2d | torch.nn.AvgPool2d) for m in d_layers)
    assert all(
        isinstance(m, torch.nn.LeakyReLU) and m.negative_slope == 0.2
        for m in d_layers
        if isinstance(m, torch.nn.LeakyReLU)
    )
    weights = torch.cat([m.weight.flatten() for m in generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)])
    assert weights.mean().abs() < 1e-3 and abs(weights.std().item() - 0.02) < 1e-3


def test_critics_of_wgan_gp_and_sngan():
    _, _, critic = build("wgan-gp", ModelSpec(3, 32))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in critic.modules())
    family, _, sn_critic = build("sngan", ModelSpec(3, 32))
    convs = [m for m in sn_critic.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)  # spectral norm on every layer
    assert family.loss == "hinge"
    assert get_family("wgan-gp").n_critic == 5 and get_family("wgan-gp").gradient_penalty == 10.0


@pytest.mark.parametrize("name", FAMILIES)
def test_one_step_lowers_each_networks_own_loss(name):
    torch.manual_seed(0)
    family, generator, discriminator = build(name, ModelSpec(4, 32, latent_dim=16, g_width=8, d_width=8))
    real = torch.rand(16, 4, 32, 32) * 2 - 1
    z = torch.randn(16, 16)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=family.lr_d, betas=family.betas)
    opt_g = torch.optim.Adam(generator.parameters(), lr=family.lr_g, betas=family.betas)

    def d_loss():
        fake = generator(z).detach()
        loss = discriminator_loss(family.loss, discriminator(real), discriminator(fake))
        if family.gradient_penalty:
            torch.manual_seed(1)  # same interpolation points before and after
            loss = loss + family.gradient_penalty * gradient_penalty(discriminator, real, fake)
        return loss

    before = d_loss()
    opt_d.zero_grad()
    before.backward()
    opt_d.step()
    with torch.no_grad() if not family.gradient_penalty else torch.enable_grad():
        after = d_loss()
    assert after.item() < before.item()

    def g_loss():
        return generator_loss(family.loss, discriminator(generator(z)))

    before = g_loss()
    opt_g.zero_grad()
    before.backward()
    opt_g.step()
    with torch.no_grad():
        assert g_loss().item() < before.item()


def test_gradient_penalty_of_a_linear_critic():
    weight = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)  # ||grad|| = 5 everywhere

    def critic(x):
        return (x * weight).sum(dim=(1, 2, 3))

    penalty = gradient_penalty(critic, torch.randn(8, 2, 1, 1), torch.randn(8, 2, 1, 1))
    assert penalty.item() == pytest.approx((5.0 - 1.0) ** 2)


def test_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-1.0, 0.0])
    assert discriminator_loss("hinge", real, fake).item() == pytest.approx(0.0 + 0.25 + 0.0 + 0.5)
    assert discriminator_loss("wasserstein", real, fake).item() == pytest.approx(-0.5 - 1.25)
    assert generator_loss("wasserstein", fake).item() == pytest.approx(0.5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(real, torch.ones(2)) + bce(fake, torch.zeros(2))
    assert discriminator_loss("nonsaturating", real, fake).item() == pytest.approx(expected.item())
