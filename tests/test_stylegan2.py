"""StyleGAN2: network properties (demodulation, truncation, shapes), the R1 penalty against finite differences,
and training on real 64 px Landsat shards with ADA, lazy R1 and path-length regularization, resumed exactly."""

from __future__ import annotations

import json
import warnings

import mlflow.pyfunc
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from typer.testing import CliRunner

from atlas_gan.cli import app
from atlas_gan.config import ConfigError
from atlas_gan.losses import r1_penalty
from atlas_gan.models import build, get_family
from atlas_gan.models.base import ModelSpec, generate_batched, seeded_latents, truncation
from atlas_gan.models.layers import MinibatchStd
from atlas_gan.models.stylegan2 import ModulatedConv2d
from atlas_gan.recipes.base import make_optimizer
from atlas_gan.runtime import distributed
from atlas_gan.runtime.checkpoint import load_checkpoint
from atlas_gan.storage import LocalStorage
from atlas_gan.tracking.registry import register_generator
from atlas_gan.train.trainer import Trainer
from tests.test_tracking import tracked_config, train_tracked
from tests.test_train import small_config

pytestmark = pytest.mark.slow(seconds=40)

TINY = ModelSpec(bands=4, image_size=64, latent_dim=32, g_width=8, d_width=8)
STYLEGAN2 = [
    "train.model=stylegan2",
    "train.latent_dim=32",
    "train.ada.speed_kimg=0.1",  # p moves 0.24 per 3-step adjustment at batch 8: visible in a few steps
    "train.ada.interval=3",  # so the step-4 checkpoint falls mid-interval, with sign accumulators to restore
]


@pytest.mark.parametrize("bands", [3, 4, 12])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_shapes_for_any_band_count(bands, num_classes):
    torch.manual_seed(0)
    spec = ModelSpec(bands=bands, image_size=64, latent_dim=32, g_width=8, d_width=8, num_classes=num_classes)
    _, G, D = build("stylegan2", spec)
    labels = torch.tensor([0, 1, 2, 1, 0]) if num_classes else None
    images = G(torch.randn(5, 32), labels)
    assert images.shape == (5, bands, 64, 64) and torch.isfinite(images).all()
    logits = D(images, labels)
    assert logits.shape == (5,)
    logits.sum().backward()
    assert all(p.grad is not None for p in G.parameters())


def test_stylegan2_needs_64_px_or_more():
    with pytest.raises(ValueError, match="stylegan2 needs image_size 64, 128 or 256; got 32"):
        build("stylegan2", ModelSpec(bands=4, image_size=32))


def test_demodulation_gives_unit_variance_outputs_on_unit_variance_inputs():
    torch.manual_seed(0)
    conv = ModulatedConv2d(in_channels=128, out_channels=64, kernel=3, w_dim=32)
    with torch.no_grad():
        conv.affine.weight.mul_(3.0)  # styles far from 1: demodulation must undo their scale, not rely on it
        x = torch.randn(16, 128, 24, 24)
        y = conv(x, torch.randn(16, 32))[:, :, 1:-1, 1:-1]  # interior: no zero padding in the receptive field
    per_sample_channel = y.var(dim=(2, 3))
    assert abs(float(y.var()) - 1.0) < 0.05
    assert float((per_sample_channel - 1.0).abs().max()) < 0.25  # every (sample, channel), not just on average
    undemodulated = ModulatedConv2d(128, 64, 3, 32, demodulate=False)
    undemodulated.load_state_dict(conv.state_dict())
    with torch.no_grad():
        assert abs(float(undemodulated(x, torch.randn(16, 32)).var()) - 1.0) > 0.5  # the test would see it missing


def test_truncation_psi_zero_returns_the_mean_image_for_any_latent():
    torch.manual_seed(0)
    _, G, _ = build("stylegan2", TINY)
    with torch.no_grad():
        for _ in range(20):  # training-mode mapping calls move w_avg away from 0
            G.mapping(torch.randn(16, 32), None)
        G.eval()
        assert float(G.mapping.w_avg.abs().sum()) > 0
        with truncation(G, 0.0):
            images = G(torch.randn(6, 32) * torch.arange(1, 7).view(6, 1))
        mean_image = G.synthesis(G.mapping.w_avg.view(1, 1, -1).repeat(1, G.num_ws, 1)).clamp(-1, 1)
        plain = G(torch.randn(6, 32))
    torch.testing.assert_close(images, mean_image.expand_as(images))
    assert float((plain - plain[:1]).abs().max()) > 1e-3  # psi = 1: the latents differ, so do the images
    assert G.truncation_psi == 1.0  # restored after the block


def test_truncation_is_refused_where_there_is_nothing_to_truncate():
    _, G, _ = build("dcgan", ModelSpec(bands=4, image_size=32))
    with pytest.raises(ValueError, match="nothing to truncate .stylegan2 and biggan have"), truncation(G, 0.5):
        pass
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\] for DCGANGenerator"), truncation(G, -1.0):
        pass


def test_r1_penalty_matches_finite_differences():
    """R1 = mean over images of ||grad_{x_i} sum_j D(x_j)||^2 (the sum, because minibatch stddev couples a batch):
    autograd against central differences along each image's gradient and along a random direction."""
    torch.manual_seed(0)
    _, _, D = build("stylegan2", TINY)
    D = D.double()
    x = torch.randn(2, 4, 64, 64, dtype=torch.float64, requires_grad=True)
    penalty = r1_penalty(D(x), x)
    (grad,) = torch.autograd.grad(D(x).sum(), x)
    eps = 1e-5  # small enough that no leaky-ReLU kink is crossed, large enough for float64 differences

    def slope(image: int, direction: torch.Tensor) -> float:
        step = torch.zeros_like(x)
        step[image] = eps * direction
        return float((D(x + step).sum() - D(x - step).sum()) / (2 * eps))

    squared_norms = []
    with torch.no_grad():
        for i in range(len(x)):
            squared_norms.append(slope(i, grad[i] / grad[i].norm()) ** 2)  # the slope along the gradient: its norm
            random_direction = torch.randn_like(x[i])
            random_direction /= random_direction.norm()
            assert slope(i, random_direction) == pytest.approx(float((grad[i] * random_direction).sum()), rel=1e-5)
    assert float(penalty.detach()) == pytest.approx(sum(squared_norms) / len(x), rel=1e-5)


def test_minibatch_std_groups_divide_any_batch():
    for n in (1, 3, 4, 6, 8):
        out = MinibatchStd()(torch.randn(n, 5, 4, 4))
        assert out.shape == (n, 6, 4, 4)
    same = MinibatchStd()(torch.ones(4, 5, 4, 4))
    assert float(same[:, -1].abs().max()) < 1e-3  # identical images: no variety to report


def test_lazy_regularization_rescales_adam():
    family = get_family("stylegan2")
    _, G, _ = build("stylegan2", TINY)
    optimizer = make_optimizer(family.training, G.parameters(), 0.0025, lazy_interval=16)
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.0025 * 16 / 17)
    assert group["betas"] == pytest.approx((0.0, 0.99 ** (16 / 17)))


def test_trains_with_ada_and_regularizers_and_resumes_exactly(train_data_64, tmp_path):
    ctx = distributed.setup()
    run_dir = tmp_path / "run"
    trainer = Trainer(small_config(train_data_64, run_dir, "train.steps=4", *STYLEGAN2), ctx, progress=False)
    first = trainer.recipe
    assert first.r1_gamma == pytest.approx(0.0002 * 64**2 / 8)  # StyleGAN2-ADA's heuristic at batch 8
    assert first.path_length.weight == 2.0 and first.ada is not None
    summary = trainer.run()
    assert summary["step"] == 4
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    logged = [e for e in events if "loss_d" in e]
    assert [e["step"] for e in logged] == [1, 2, 3, 4]
    assert all(e["augment_p"] >= 0 for e in logged) and any(e["augment_rt"] is not None for e in logged)
    assert float(first.path_length.mean) > 0  # path-length regularization ran (steps 0 and 4 are due)
    saved = load_checkpoint(LocalStorage(), str(run_dir / "checkpoints" / "step-00000004.pt"))
    augment, path_length = saved["recipe_ranks"][0]["augment"], saved["recipe_state"]["path_length"]
    assert float(augment["p"]) == first.ada.p and path_length["mean"] == float(first.path_length.mean)

    again = Trainer(small_config(train_data_64, run_dir, "train.steps=6", *STYLEGAN2), ctx, progress=False)
    resumed = again.recipe
    assert (again.step, again.images_seen) == (trainer.step, trainer.images_seen) == (4, 32)
    assert resumed.ada.state_dict().keys() == first.ada.state_dict().keys()
    assert float(first.ada.state_dict()["sign_count"]) == 8  # step 4's reals, observed after step 3's adjustment
    for key, value in first.ada.state_dict().items():
        assert torch.equal(resumed.ada.state_dict()[key], value), key
    assert float(resumed.path_length.mean) == float(first.path_length.mean)
    for key, value in trainer.generator.state_dict().items():
        assert torch.equal(again.generator.state_dict()[key], value), key  # EMA weights, w_avg, noise buffers
    assert again.run()["step"] == 6


def test_path_length_is_refused_for_families_without_styles(train_data, tmp_path):
    with pytest.raises(ConfigError, match="path_length_weight: dcgan has no style space .*stylegan2 has"):
        small_config(train_data, tmp_path / "run", "train.model.path_length_weight=2")
    with pytest.raises(ConfigError, match="train.path_length_weight moved to train.model.path_length_weight"):
        small_config(train_data, tmp_path / "run", "train.path_length_weight=2")


def test_ada_is_refused_for_wasserstein_critics(train_data, tmp_path):
    with pytest.raises(ValueError, match="train.ada: wgan-gp's critic values have an arbitrary offset"):
        Trainer(small_config(train_data, tmp_path / "run", "train.model=wgan-gp", "train.ada={}"), distributed.setup())


def test_ada_and_diffaugment_are_exclusive():
    from atlas_gan.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="choose one of diffaugment and ada"):
        load_config(None, ["train.ada={}", "train.diffaugment=[color]"])


@pytest.fixture(scope="module")
def registered(train_data_64, tmp_path_factory):
    """A conditional StyleGAN2 with ADA, trained on real 64 px shards, evaluated (FID, N=16) and tracked like any run,
    then registered in MLflow."""
    root = tmp_path_factory.mktemp("stylegan2-registered")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = tracked_config(
        train_data_64, root / "run", root, "train.steps=2", "train.evaluate_every=2", f"tracking.uri={uri}",
        "train.condition.by=year", *STYLEGAN2,
    )  # fmt: skip
    summary = train_tracked(config)
    return {"summary": summary, "registration": register_generator(config, progress=False), "uri": uri}


def test_registered_stylegan2_samples_with_truncation(registered, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered["uri"])
    assert np.isfinite(registered["registration"].fid)
    model = mlflow.pyfunc.load_model("models:/tiles-test@champion")
    empty = np.zeros((0, 32), dtype=np.float32)
    mean = model.predict(empty, params={"count": 5, "seed": 1, "label": "1990", "truncation_psi": 0.0})
    varied = model.predict(empty, params={"count": 5, "seed": 1, "label": "1990"})
    assert mean["images"].shape == (5, 4, 64, 64) and mean["labels"] == ["1990"] * 5
    assert np.abs(mean["images"] - mean["images"][:1]).max() < 1e-5  # psi 0: one image, whatever the latent
    assert np.abs(varied["images"] - varied["images"][:1]).max() > 0


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_cli_exports_the_registered_generator(registered, tmp_path, fmt, monkeypatch):
    """`atlas-gan export` from the registry; the file gives the registered model's images for the same inputs."""
    out = tmp_path / f"generator.{fmt}"
    args = ["export", "-m", "models:/tiles-test@champion", "--format", fmt, "--out", str(out), "--truncation", "0.7"]
    result = CliRunner().invoke(app, [*args, "--set", f"tracking.uri={registered['uri']}"])
    assert result.exit_code == 0, result.output
    assert "inputs (latents, labels) -> images (4 bands 64x64), any batch size, truncation 0.7" in result.output
    latents, labels = seeded_latents(3, 32, seed=5), torch.tensor([0, 7, 3])
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (images,) = session.run(["images"], {"latents": latents.numpy(), "labels": labels.numpy()})
        meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["atlas_gan.export"])
    else:
        extra = {"atlas_gan.json": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript
            images = torch.jit.load(str(out), _extra_files=extra)(latents, labels).numpy()
        meta = json.loads(extra["atlas_gan.json"])
    assert meta["labels"]["classes"][7] == "2020" and meta["bands"] == ["1", "2", "3", "4"]
    assert meta["truncation_psi"] == 0.7 and meta["model"] == "stylegan2"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered["uri"])
    generator = mlflow.pyfunc.load_model("models:/tiles-test@champion").unwrap_python_model().generator
    (expected,) = generate_batched(generator, (latents, labels), 8, truncation_psi=0.7)
    np.testing.assert_allclose(images, expected.numpy(), atol=1e-4, rtol=1e-4)


def test_bf16_autocast_trains_stylegan2_on_cpu(train_data_64, tmp_path):
    """The GPU default (bf16 autocast) with every StyleGAN2 term due at step 0 (R1, path length, ADA)."""
    config = small_config(train_data_64, tmp_path / "run", "train.steps=2", "train.precision=bf16", *STYLEGAN2)
    trainer = Trainer(config, distributed.setup(), progress=False)
    assert trainer.autocast_dtype == torch.bfloat16
    assert trainer.run()["step"] == 2
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trainer.recipe.G.parameters())
    path_length = trainer.recipe.path_length
    assert float(path_length.mean) > 0 and np.isfinite(float(path_length.mean))
