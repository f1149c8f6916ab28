import pytest
import torch

from atlas_gan.losses import discriminator_loss, generator_loss, gradient_penalty
from atlas_gan.models import ModelSpec, build, family_names, get_family
from atlas_gan.models.layers import ConditionalBatchNorm2d, SelfAttention
from atlas_gan.recipes.base import make_optimizer

FAMILIES = ["dcgan", "wgan", "wgan-gp", "sngan", "sagan"]


def spec_for(name, bands=4, size=32, classes=0, latent=16, width=8):
    attention = get_family(name).default_attention_resolution(size)
    return ModelSpec(bands, size, latent, width, width, num_classes=classes, attention_resolution=attention)


def test_registry_knows_the_families_and_rejects_others():
    assert set(FAMILIES) <= set(family_names())
    with pytest.raises(ValueError, match=r"unknown model 'stylegan9'; known: \[.*'dcgan'"):
        get_family("stylegan9")


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("bands", [3, 4, 12])
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("classes", [0, 3])
def test_shapes(name, bands, size, classes):
    _, generator, discriminator = build(name, spec_for(name, bands, size, classes, latent=32))
    labels = torch.tensor([0, 1, 2, 2, 0]) if classes else None
    images = generator(torch.randn(5, 32), labels)
    assert images.shape == (5, bands, size, size)
    assert images.abs().max() <= 1.0  # tanh
    assert discriminator(images, labels).shape == (5,)


def test_labels_are_required_exactly_when_conditional():
    _, generator, discriminator = build("sagan", spec_for("sagan", classes=3))
    with pytest.raises(ValueError, match="conditional on 3 labels"):
        generator(torch.randn(2, 16))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        discriminator(torch.zeros(2, 4, 32, 32), torch.tensor([0, 3]))
    _, plain, _ = build("dcgan", spec_for("dcgan"))
    with pytest.raises(ValueError, match="unconditional"):
        plain(torch.randn(2, 16), torch.tensor([0, 1]))


def test_conditioning_mechanisms_follow_the_papers():
    # DCGAN / WGAN family: one-hot labels concatenated to G's latent and as planes to D's input (Mirza & Osindero)
    _, generator, discriminator = build("dcgan", spec_for("dcgan", classes=5))
    assert generator.net[0].in_channels == 16 + 5 and discriminator.net[0].in_channels == 4 + 5
    # SN / SA families: conditional batch norm in G, projection discriminator (Miyato & Koyama)
    for name in ("sngan", "sagan"):
        _, generator, discriminator = build(name, spec_for(name, classes=5))
        assert any(isinstance(m, ConditionalBatchNorm2d) for m in generator.modules())
        assert not any(isinstance(m, torch.nn.BatchNorm2d) and m.affine for m in generator.modules())
        assert discriminator.embed is not None and discriminator.net[0].in_channels == 4


@pytest.mark.parametrize("name", ["dcgan", "sagan"])
def test_conditional_samples_differ_by_label_and_repeat_with_the_seed(name):
    torch.manual_seed(0)
    _, generator, _ = build(name, spec_for(name, classes=3))
    for layer in generator.modules():  # as after training: class embeddings that differ
        if isinstance(layer, ConditionalBatchNorm2d):
            torch.nn.init.normal_(layer.scale.weight, 1.0, 0.2)
            torch.nn.init.normal_(layer.shift.weight, 0.0, 0.2)
    generator.eval()
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(7))
    first = generator(z, torch.full((4,), 0))
    assert torch.equal(first, generator(z.clone(), torch.full((4,), 0)))
    assert not torch.allclose(first, generator(z, torch.full((4,), 2)), atol=1e-4)


def test_self_attention_rows_sum_to_one_and_start_as_identity():
    attention = SelfAttention(16)
    x = torch.randn(2, 16, 8, 8)
    weights = attention.attention_map(x)
    assert weights.shape == (2, 64, 64) and (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 64))
    assert torch.equal(attention(x), x)  # gamma starts at 0
    family, generator, discriminator = build("sagan", spec_for("sagan", size=64))
    g_blocks = [m for m in generator.modules() if isinstance(m, SelfAttention)]
    d_blocks = [m for m in discriminator.modules() if isinstance(m, SelfAttention)]
    assert len(g_blocks) == len(d_blocks) == 1 and generator.spec.attention_resolution == 32
    assert all(hasattr(m, "parametrizations") for m in generator.modules() if isinstance(m, torch.nn.ConvTranspose2d))
    training = family.training
    assert (training.lr_g, training.lr_d, training.betas, training.loss) == (1e-4, 4e-4, (0.0, 0.9), "hinge")
    with pytest.raises(ValueError, match="attention_resolution must be one of"):
        ModelSpec(4, 32, attention_resolution=32)


def test_wgan_follows_the_paper():
    family, _, critic = build("wgan", spec_for("wgan"))
    training = family.training
    assert (training.optimizer, training.lr_d, training.weight_clip, training.n_critic) == ("rmsprop", 5e-5, 0.01, 5)
    assert training.loss == "wasserstein" and not any(isinstance(m, torch.nn.BatchNorm2d) for m in critic.modules())
    assert isinstance(make_optimizer(training, critic.parameters(), training.lr_d), torch.optim.RMSprop)


def test_dcgan_follows_the_paper():
    family, generator, discriminator = build("dcgan", ModelSpec(3, 64))
    training = family.training
    assert (training.lr_g, training.lr_d, training.betas, training.loss) == (2e-4, 2e-4, (0.5, 0.999), "nonsaturating")
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
    assert family.training.loss == "hinge"
    wgan_gp = get_family("wgan-gp").training
    assert wgan_gp.n_critic == 5 and wgan_gp.gp_weight == 10.0


def _clip(model, clip):
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.clamp_(-clip, clip)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("classes", [0, 3])
def test_one_step_lowers_each_networks_own_loss(name, classes):
    torch.manual_seed(0)
    family, generator, discriminator = build(name, spec_for(name, classes=classes))
    training = family.training
    real = torch.rand(16, 4, 32, 32) * 2 - 1
    z = torch.randn(16, 16)
    labels = torch.arange(16) % 3 if classes else None
    opt_d = make_optimizer(training, discriminator.parameters(), training.lr_d)
    opt_g = make_optimizer(training, generator.parameters(), training.lr_g)
    if training.weight_clip:
        _clip(discriminator, training.weight_clip)  # WGAN's critic lives inside the clip box from the start

    def d_loss():
        fake = generator(z, labels).detach()
        loss = discriminator_loss(training.loss, discriminator(real, labels), discriminator(fake, labels))
        if training.gp_weight:
            torch.manual_seed(1)  # same interpolation points before and after
            critic = lambda x: discriminator(x, labels)  # noqa: E731
            loss = loss + training.gp_weight * gradient_penalty(critic, real, fake)
        return loss

    before = d_loss()
    opt_d.zero_grad()
    before.backward()
    opt_d.step()
    if training.weight_clip:
        _clip(discriminator, training.weight_clip)
        assert all(p.abs().max() <= training.weight_clip for p in discriminator.parameters())
    with torch.no_grad() if not training.gp_weight else torch.enable_grad():
        after = d_loss()
    assert after.item() < before.item()

    def g_loss():
        return generator_loss(training.loss, discriminator(generator(z, labels), labels))

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
