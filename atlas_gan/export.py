"""Export a trained generator to TorchScript or ONNX, to serve it without atlas-gan (or Python, for ONNX).

Both formats take the same inputs and give the same output, with a dynamic batch dimension `n`:

- `latents`: float32 (n, latent_dim), standard-normal latent vectors;
- `labels`: int64 (n,), class indexes in [0, num_classes); only for conditional generators (spec.num_classes > 0);
- `images`: float32 (n, bands, image_size, image_size) in the generator's output range ([-1, 1], tanh / clamp).

The generator is exported from a deep copy in eval mode, on the CPU, in float32: batch norm uses its running
statistics, StyleGAN2 its fixed noise buffers and the truncation psi given at export (baked into the graph;
`truncation_psi` != 1 needs a generator with a `truncation_psi` attribute). The caller's module is not touched.
Label values are not validated by the exported graphs: check them before calling. Out-of-range labels may raise
in the runtime (embedding / Gather) or not: ONNX Gather takes negative indexes from the end, and StyleGAN2's
one-hot gives NaN images in ONNX.

Running the exports::

    model = torch.jit.load("generator.pt")  # no atlas-gan import needed
    images = model(latents)  # or model(latents, labels)

    session = onnxruntime.InferenceSession("generator.onnx", providers=["CPUExecutionProvider"])
    (images,) = session.run(["images"], {"latents": z.numpy(), "labels": y.numpy()})  # no "labels": unconditional

Both files also carry the model spec and the psi as JSON (`atlas_gan.export`): TorchScript as an extra file
(`torch.jit.load(path, _extra_files={"atlas_gan.json": ""})`), ONNX as the metadata property `atlas_gan.export`.

How each is made:

- TorchScript by tracing (`torch.jit.trace`), not scripting: `torch.jit.script` rejects the generators' Python
  (the isinstance dispatch in `LabelSequential`, the spectral-norm parametrization, the ModelSpec attribute),
  and in eval mode their forward is straight-line tensor code, which tracing records exactly. Batch sizes stay
  dynamic because tracing records shape reads (`z.shape[0]`) as graph ops. PyTorch 2.14 deprecates TorchScript
  (`torch.jit.trace`/`save`/`load` warn with FutureWarning); those three warnings are silenced here because the
  format was asked for explicitly, and TorchScript is kept for C++/libtorch consumers. ONNX is the format to
  prefer going forward.
- ONNX with the torch.export-based exporter, the default and the one PyTorch develops (the TorchScript-based
  `dynamo=False` exporter still exists in 2.14 but warns with a DeprecationWarning on every call). The module is
  captured with `torch.export.export(strict=False)` and a `dynamic_shapes` batch Dim shared by latents and
  labels, and that ExportedProgram is handed to `torch.onnx.export`. Handing it the module instead would let it
  "fix" a capture that specialized the batch size by re-exporting with the example's batch size baked in, a
  silently fixed-batch model; done this way such a generator fails with torch.export's error. The result is
  also checked: dynamic batch axis on every input and the output, only standard ONNX operators (default opset:
  20 in PyTorch 2.14; no custom domains or functions), `onnx.checker.check_model(full_check=True)`. It is one
  self-contained file (no external data: a generator is far below protobuf's 2 GB limit). Nothing is
  downloaded, and the exporter's harmless noise (a log line per torchvision op when torchvision is absent, a
  warning that the shared batch axis is named once) is silenced; other warnings surface.

Label validation in `check_labels` branches on label values in Python (`int(labels.min())`), which tracing
would freeze and torch.export cannot trace at all; it skips the value-range check while tracing or exporting.

Writes are atomic: each file is written to a temporary name in the destination directory, then renamed over it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from atlas_gan.models.base import ModelSpec, check_truncation
from atlas_gan.runtime.signature import LatentSignature, signature_of
from atlas_gan.storage import make_readable

ExportFormat = Literal["torchscript", "onnx"]
OUTPUT_IMAGES = "images"
TRANSLATED_IMAGES = "translated"  # the output of an image-to-image generator, whose input is `images`
EXAMPLE_BATCH = 2  # torch.export specializes sizes 0 and 1, so the example batch must be larger for a dynamic axis
METADATA_KEY = "atlas_gan.export"
TORCHSCRIPT_EXTRA_FILE = "atlas_gan.json"
_INSTALL_HINT = "pip install 'atlas-gan[export]'"


class _OneInput(nn.Module):
    """`forward(x)`: fixes the exported graph's input count (one), nothing else."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, first: torch.Tensor) -> torch.Tensor:
        return self.generator(first)


class _TwoInputs(nn.Module):
    """`forward(x, y)`, e.g. latents and labels."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return self.generator(first, second)


def _prepare(
    generator: nn.Module, spec: ModelSpec, truncation_psi: float, signature: LatentSignature
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The wrapped eval-mode float32 CPU copy of `generator` with `truncation_psi` set, and example inputs."""
    truncation_psi = float(truncation_psi)
    check_truncation(generator, truncation_psi)
    model = copy.deepcopy(generator).to(device="cpu", dtype=torch.float32).eval()
    if hasattr(model, "truncation_psi"):
        model.truncation_psi = truncation_psi
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    example = signature.example_inputs(spec, EXAMPLE_BATCH)
    wrapper = _OneInput(model) if len(example) == 1 else _TwoInputs(model)
    return wrapper.eval(), example


def _metadata(
    spec: ModelSpec,
    generator: nn.Module,
    truncation_psi: float,
    info: dict[str, Any] | None,
    signature: LatentSignature,
) -> str:
    """The export's self-description; `info` adds what a consumer needs to read the images (bands, label
    vocabulary, normalization, model family and step)."""
    return json.dumps(
        {
            **(info or {}),
            "spec": asdict(spec),
            "truncation_psi": float(truncation_psi) if hasattr(generator, "truncation_psi") else None,
            "signature": signature.name,
            "inputs": signature.input_names(spec),
            "outputs": [OUTPUT_IMAGES],
        },
        sort_keys=True,
    )


@contextlib.contextmanager
def _atomic_destination(path: str | Path, suffix: str) -> Iterator[Path]:
    """A temporary path next to `path`; renamed over `path` if the block succeeds, removed if it fails."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f"{suffix}.tmp", dir=final.parent)
    os.close(fd)
    temporary = Path(name)
    make_readable(temporary)  # mkstemp's 0600 would otherwise survive the rename
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)


def export_torchscript(
    generator: nn.Module,
    spec: ModelSpec,
    path: str | Path,
    truncation_psi: float = 1.0,
    info: dict[str, Any] | None = None,
) -> Path:
    """Trace `generator` (see the module docstring) and save it as TorchScript at `path`; returns the path."""
    signature = signature_of(info or {})
    wrapper, example = _prepare(generator, spec, truncation_psi, signature)
    with warnings.catch_warnings():
        # PyTorch 2.14 deprecates TorchScript; everything else (TracerWarnings above all) is left to surface.
        warnings.filterwarnings("ignore", r"`torch\.jit\.(trace|trace_method|save)` is deprecated", FutureWarning)
        with torch.no_grad():
            # check_trace re-runs the traced graph against eager: a nondeterministic eval forward (random noise)
            # or a value-dependent branch shows up as a TracerWarning or TracingCheckError here.
            traced = torch.jit.trace(wrapper, example)
        extra_files = {TORCHSCRIPT_EXTRA_FILE: _metadata(spec, generator, truncation_psi, info, signature)}
        with _atomic_destination(path, ".pt") as temporary:
            torch.jit.save(traced, str(temporary), _extra_files=extra_files)
    return Path(path)


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """Hide the ONNX exporter's harmless noise, and only that."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    # One WARNING line per torchvision op ("torchvision is not installed. Skipping torchvision::nms" ...).
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # latents and labels share one batch Dim, so the exporter names the axis once and says so.
            warnings.filterwarnings("ignore", r"# The axis name: batch will not be used", UserWarning)
            yield
    finally:
        registration.setLevel(level)


def export_onnx(
    generator: nn.Module,
    spec: ModelSpec,
    path: str | Path,
    truncation_psi: float = 1.0,
    opset: int | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Export `generator` with the torch.export-based ONNX exporter and write a checked ONNX file at `path`.

    `opset`: the default ONNX opset version if None (20 in PyTorch 2.14); lower versions are converted down.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (the exporter needs it; checked here for a clear message)
    except ImportError as error:
        raise ImportError(f"ONNX export needs the onnx and onnxscript packages: {_INSTALL_HINT}") from error

    if truncation_psi != 1.0 and not getattr(generator, "truncation_in_onnx", True):
        raise ValueError(
            f"{type(generator).__name__}'s truncation needs erfinv, which ONNX has no operator for: export with "
            "truncation 1 (off) to ONNX, or with this truncation to TorchScript"
        )
    signature = signature_of(info or {})
    wrapper, example = _prepare(generator, spec, truncation_psi, signature)
    input_names = signature.input_names(spec)
    output_name = TRANSLATED_IMAGES if OUTPUT_IMAGES in input_names else OUTPUT_IMAGES
    dynamic_shapes = _dynamic_shapes(spec, input_names)
    if spec.input_bands:  # two tiles across: torch.export would fix a size-1 multiple of the tile to 1
        example = tuple(x.repeat(1, 1, 2, 2) for x in example)
    with _quiet_onnx_exporter(), torch.no_grad():
        # torch.export first, by hand: given the module, torch.onnx.export would retry a capture that specialized
        # the batch size with that size fixed ("suggested fixes"), silently giving a fixed-batch model.
        try:
            exported = torch.export.export(wrapper, example, dynamic_shapes=dynamic_shapes, strict=False)
        except Exception as error:
            error.add_note(
                "atlas-gan: the generator's eval forward must keep the batch size symbolic (x.shape[0], not len(x) "
                "or int(...)) and must not branch on tensor values in Python"
            )
            raise
        program = torch.onnx.export(
            exported,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,  # here only to name the axis "batch"
            input_names=input_names,
            output_names=[output_name],
            opset_version=opset,
            verbose=False,
        )
    model = program.model_proto
    custom = {node.domain for node in model.graph.node} - {"", "ai.onnx"}
    if custom or len(model.functions):
        raise RuntimeError(f"the ONNX graph needs custom operators or functions: domains {sorted(custom)}")
    for value in (*model.graph.input, *model.graph.output):
        if not value.type.tensor_type.shape.dim[0].dim_param:
            raise RuntimeError(f"the ONNX graph's {value.name!r} has a fixed batch size; it should be dynamic")
    onnx.helper.set_model_props(model, {METADATA_KEY: _metadata(spec, generator, truncation_psi, info, signature)})
    onnx.checker.check_model(model, full_check=True)
    with _atomic_destination(path, ".onnx") as temporary:
        onnx.save_model(model, str(temporary))
    return Path(path)


def _dynamic_shapes(spec: ModelSpec, input_names: list[str]) -> tuple[dict[int, Any], ...]:
    """A batch axis shared by every input; an image input also takes any multiple of the training size across
    (its U-Net halves it down to 1x1)."""
    batch = torch.export.Dim("batch")
    if not spec.input_bands:
        return tuple({0: batch} for _ in input_names)
    rows, columns = torch.export.Dim("tile_rows", min=1, max=64), torch.export.Dim("tile_columns", min=1, max=64)
    return ({0: batch, 2: spec.input_size * rows, 3: spec.input_size * columns},)


def export_generator(
    generator: nn.Module,
    spec: ModelSpec,
    path: str | Path,
    fmt: ExportFormat,
    truncation_psi: float = 1.0,
    info: dict[str, Any] | None = None,
) -> Path:
    """`export_torchscript` or `export_onnx`, by `fmt`."""
    if fmt == "torchscript":
        return export_torchscript(generator, spec, path, truncation_psi, info)
    if fmt == "onnx":
        return export_onnx(generator, spec, path, truncation_psi, info=info)
    raise ValueError(f"unknown export format {fmt!r}; choose 'torchscript' or 'onnx'")
