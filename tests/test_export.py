"""TorchScript and ONNX exports of generators give the eager model's images, at batch sizes other than the one
they were exported with.

Tolerances: the TorchScript graph runs the same ATen kernels as eager PyTorch, so it must agree to float32
rounding (atol 1e-6). ONNX Runtime uses its own convolution kernels, which sum in another order: observed
differences are ~3e-7 for the DCGAN-layout families and ~7e-6 for StyleGAN2 (about 15 modulated convolutions at
these widths). atol = rtol = 1e-4 leaves a margin of 10x over that and is 1/20000 of the [-1, 1] output range:
a few 16-bit steps, a fraction of a 12-bit one.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from atlas_gan.export import (
    METADATA_KEY,
    TORCHSCRIPT_EXTRA_FILE,
    export_generator,
    export_onnx,
    export_torchscript,
)
from atlas_gan.models import build
from atlas_gan.models.base import ModelSpec, seeded_latents

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

TINY = {"bands": 4, "image_size": 64, "latent_dim": 32, "g_width": 8, "d_width": 8}
EXPORT_CASES: list[tuple[str, dict]] = [
    ("dcgan", {}),
    ("sngan", {"num_classes": 3}),  # conditional batch norm: embedding lookups on the labels input
    ("sagan", {"attention_resolution": 32}),  # spectral norm and self-attention
    ("stylegan2", {"num_classes": 3}),  # conditional, exported with truncation psi 0.7
]
RUN_BATCHES = (1, 5)  # the exports are traced with a batch of 2
TS_TOLERANCE = {"atol": 1e-6, "rtol": 1e-6}
ONNX_TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}


def inputs(spec: ModelSpec, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    labels = torch.arange(count, dtype=torch.int64) % spec.num_classes if spec.conditional else None
    return seeded_latents(count, spec.latent_dim, seed), labels


def trained_like(generator: nn.Module, spec: ModelSpec) -> nn.Module:
    """Weights moved off their init (SAGAN's attention gamma and the conditional BN shifts start at 0, DCGAN's
    weights are small) and batch-norm statistics from training-mode batches, in eval mode: images with enough
    range that a wrong export cannot pass the tolerance."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.add_(torch.randn_like(parameter), alpha=0.1)
        generator.train()
        for seed in (100, 101):
            generator(*inputs(spec, 16, seed))
    return generator.eval()


@dataclass
class Exported:
    spec: ModelSpec
    eager: nn.Module  # eval mode, with the psi the exports baked in
    torchscript: Path
    onnx: Path


@pytest.fixture(scope="module", params=EXPORT_CASES, ids=[name for name, _ in EXPORT_CASES])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    name, options = request.param
    spec = ModelSpec(**TINY, **options)
    generator = trained_like(build(name, spec)[1], spec)
    eager = copy.deepcopy(generator)
    psi = 1.0
    if hasattr(generator, "truncation_psi"):
        psi = eager.truncation_psi = 0.7
    directory = tmp_path_factory.mktemp(f"export-{name}")
    torchscript = export_torchscript(generator, spec, directory / "generator.pt", truncation_psi=psi)
    onnx_path = export_onnx(generator, spec, directory / "generator.onnx", truncation_psi=psi)
    assert sorted(p.name for p in directory.iterdir()) == ["generator.onnx", "generator.pt"]  # no temp files
    return Exported(spec, eager, torchscript, onnx_path)


def eager_images(case: Exported, count: int) -> torch.Tensor:
    with torch.no_grad():
        images = case.eager(*inputs(case.spec, count, seed=count))
    assert images.shape == (count, case.spec.bands, case.spec.image_size, case.spec.image_size)
    assert images.std() > 0.01  # enough signal for the tolerance to mean something
    return images


@pytest.mark.parametrize("count", RUN_BATCHES)
def test_torchscript_gives_the_eager_images(exported: Exported, count: int) -> None:
    model = torch.jit.load(str(exported.torchscript))
    latents, labels = inputs(exported.spec, count, seed=count)
    with torch.no_grad():
        images = model(latents) if labels is None else model(latents, labels)
    torch.testing.assert_close(images, eager_images(exported, count), **TS_TOLERANCE)


@pytest.mark.parametrize("count", RUN_BATCHES)
def test_onnx_gives_the_eager_images(exported: Exported, count: int) -> None:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(exported.onnx), options, providers=["CPUExecutionProvider"])
    latents, labels = inputs(exported.spec, count, seed=count)
    feed = {"latents": latents.numpy()} | ({} if labels is None else {"labels": labels.numpy()})
    (images,) = session.run(["images"], feed)
    torch.testing.assert_close(torch.from_numpy(images), eager_images(exported, count), **ONNX_TOLERANCE)


def test_onnx_graph_is_standard_with_a_dynamic_batch(exported: Exported) -> None:
    model = onnx.load(str(exported.onnx))
    onnx.checker.check_model(model, full_check=True)
    expected_inputs = ["latents", "labels"] if exported.spec.conditional else ["latents"]
    assert [value.name for value in model.graph.input] == expected_inputs
    assert [value.name for value in model.graph.output] == ["images"]
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}  # no custom operators
    assert not model.functions
    assert {opset.domain for opset in model.opset_import} <= {"", "ai.onnx"}
    meta = json.loads({prop.key: prop.value for prop in model.metadata_props}[METADATA_KEY])
    assert meta["spec"]["num_classes"] == exported.spec.num_classes


def test_torchscript_carries_the_spec(exported: Exported) -> None:
    extra = {TORCHSCRIPT_EXTRA_FILE: ""}
    torch.jit.load(str(exported.torchscript), _extra_files=extra)
    meta = json.loads(extra[TORCHSCRIPT_EXTRA_FILE])
    assert meta["spec"]["bands"] == exported.spec.bands
    assert meta["inputs"] == (["latents", "labels"] if exported.spec.conditional else ["latents"])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_truncation_needs_a_style_space(fmt: str, tmp_path: Path) -> None:
    spec = ModelSpec(**TINY)
    _, generator, _ = build("dcgan", spec)
    with pytest.raises(ValueError, match="truncation_psi"):
        export_generator(generator, spec, tmp_path / "generator", fmt, truncation_psi=0.5)
    assert list(tmp_path.iterdir()) == []


def test_unknown_format(tmp_path: Path) -> None:
    spec = ModelSpec(**TINY)
    with pytest.raises(ValueError, match="unknown export format"):
        export_generator(build("dcgan", spec)[1], spec, tmp_path / "generator", "tflite")  # type: ignore[arg-type]


def test_export_leaves_the_generator_alone_and_eager_label_checks_on(tmp_path: Path) -> None:
    spec = ModelSpec(**TINY, num_classes=3)
    _, generator, _ = build("sngan", spec)
    generator.train()
    before = {key: value.clone() for key, value in generator.state_dict().items()}
    export_torchscript(generator, spec, tmp_path / "generator.pt")
    assert generator.training
    assert all(torch.equal(before[key], value) for key, value in generator.state_dict().items())
    latents, _ = inputs(spec, 2, seed=0)
    with pytest.raises(ValueError, match="label indexes"):
        generator.eval()(latents, torch.tensor([0, 3]))


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ModelSpec(**TINY)
    generator = build("dcgan", spec)[1]
    target = export_torchscript(generator, spec, tmp_path / "generator.pt")
    previous = target.read_bytes()

    def failing_save(*args, **kwargs) -> None:
        Path(args[1]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch.jit, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_torchscript(generator, spec, target)
    assert target.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["generator.pt"]
