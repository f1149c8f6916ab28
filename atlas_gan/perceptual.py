"""ESRGAN's perceptual loss: L1 between VGG19 features (conv5_4, before its activation) of the upscaled and the true
tile, on three of its bands (the display triplet; one band repeated as grey) scaled like ImageNet photographs; or,
needing no weights, the same distance in a randomly weighted VGG-style network on every band (`RandomPerceptualLoss`).

The VGG19 weights are never downloaded. Resolution order: an explicit path (`train.model.vgg_weights`), the
`ATLAS_VGG_WEIGHTS` environment variable, torchvision's file in torch hub's checkpoint folder
(`$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth`). Without them the loss is off and the run says so
("perceptual loss: unavailable", a data default of `train.model.perceptual_weight`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ENV_VAR = "ATLAS_VGG_WEIGHTS"
HUB_FILE = "vgg19-dcbb9e9d.pth"
CONV5_4 = 35  # VGG19 features[:35] end with conv5_4, before its ReLU (torchvision's numbering)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGWeightsNotFound(FileNotFoundError):
    pass


def resolve_vgg_weights(explicit: str | Path | None = None) -> Path:
    """The VGG19 weights file the resolution order finds; an error naming every place looked at otherwise."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise VGGWeightsNotFound(f"VGG19 weights {path}: no such file")
        return path
    if os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR])
        if not path.is_file():
            raise VGGWeightsNotFound(f"{ENV_VAR}={path}: no such file")
        return path
    hub = Path(torch.hub.get_dir()) / "checkpoints" / HUB_FILE
    if hub.is_file():
        return hub
    raise VGGWeightsNotFound(
        f"no VGG19 weights: set train.model.vgg_weights or {ENV_VAR}, or place torchvision's {HUB_FILE} in {hub.parent}"
    )


VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)


def vgg19_features(end: int = CONV5_4) -> nn.Sequential:
    """VGG19's convolutional layers (Simonyan & Zisserman 2015: 3x3 convolutions, ReLU, 2x2 max pooling) up to
    layer `end`, numbered as in torchvision's `vgg19().features`, so its state dict loads by name."""
    layers: list[nn.Module] = []
    channels = 3
    for width in VGG19_LAYOUT:
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(width), 3, padding=1), nn.ReLU(inplace=True)]
            channels = int(width)
    return nn.Sequential(*layers[:end])


def load_vgg19_features(weights: Path) -> nn.Sequential:
    """VGG19's features up to conv5_4 with the weights of a torchvision VGG19 file (weights_only=True)."""
    features = vgg19_features()
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        wanted = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        wanted = {k: v for k, v in wanted.items() if int(k.split(".")[0]) < CONV5_4}
        features.load_state_dict(wanted)
    except Exception as exc:
        raise ValueError(f"{weights}: not torchvision VGG19 weights ({exc})") from None
    return features


class PerceptualLoss(nn.Module):
    """L1 distance of VGG19 conv5_4 features; frozen, in eval mode, weights loaded with weights_only=True."""

    def __init__(self, weights: Path, positions: list[int]) -> None:
        super().__init__()
        self.features = load_vgg19_features(weights).eval().requires_grad_(False)
        self.positions = (positions * 3)[:3] if len(positions) < 3 else positions[:3]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # always eval: no dropout, fixed features

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        rgb = (images[:, self.positions].float() + 1) / 2
        return self.features((rgb - self.mean) / self.std)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            reference = self._embed(target)
        return F.l1_loss(self._embed(pred), reference)


# VGG19's stages up to conv4_4 at half width: a random network needs no ImageNet widths, and on a CPU the full ones
# would cost more than the generator's own step. Features are compared at the end of each stage.
RANDOM_LAYOUT = ((32, 32), (64, 64), (128, 128, 128, 128), (256, 256, 256, 256))
RANDOM_SEED = 20210318  # fixed: every rank, every resume and every run draw the same network
TEXTURE_PATCH = 8  # feature-map px of the windows whose Gram matrices the texture loss compares


def gram_matrices(features: torch.Tensor, patch: int = TEXTURE_PATCH) -> torch.Tensor:
    """The Gram matrices (channel x channel feature correlations, over the window's area) of the non-overlapping
    `patch` x `patch` windows of a feature map (the whole map when it is smaller): (batch x windows, C, C)."""
    _, channels, height, width = features.shape
    rows, cols = min(patch, height), min(patch, width)
    windows = features.unfold(2, rows, rows).unfold(3, cols, cols)
    windows = windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels, rows * cols)
    return windows @ windows.transpose(1, 2) / (rows * cols)


class RandomPerceptualLoss(nn.Module):
    """The generic perceptual loss (Liu et al., CVPR 2021): L1 between the features of a randomly weighted,
    never-trained VGG-style network, averaged over its four stages (the last convolution of each, before its
    activation). The paper shows that the structure of a deep network, not ImageNet training, is what makes such a
    loss model the dependencies between neighbouring pixels that L1 alone ignores; a random network also takes any
    number of bands, so every band of a multispectral tile is compared, not a display triplet.

    Weights are He-normal (std sqrt(2 / fan_in), zero bias) drawn from `RANDOM_SEED` by a private generator, so
    the training RNG is untouched; frozen and kept in eval mode.

    `distances` also gives a texture loss from the same features: L1 between the Gram matrices of small windows of
    each stage (EnhanceNet's patch-wise texture loss, Sajjadi et al. 2017), which asks for the truth's local texture
    statistics rather than its exact pixels; random filters suffice for such statistics (Ustyuzhaninov et al.
    2017, texture synthesis with random shallow networks)."""

    def __init__(self, bands: int, seed: int = RANDOM_SEED) -> None:
        super().__init__()
        if bands < 1:
            raise ValueError(f"a perceptual loss needs at least one band, got {bands}")
        generator = torch.Generator().manual_seed(seed)
        stages: list[nn.Sequential] = []
        channels = bands
        with torch.random.fork_rng(devices=[]):  # Conv2d's own init draws from the global RNG: give it back
            for index, widths in enumerate(RANDOM_LAYOUT):
                layers: list[nn.Module] = [nn.MaxPool2d(2, 2)] if index else []
                for position, width in enumerate(widths):
                    if position:
                        layers.append(nn.ReLU())
                    conv = nn.Conv2d(channels, width, 3, padding=1)
                    with torch.no_grad():
                        conv.weight.normal_(0.0, (2.0 / (channels * 9)) ** 0.5, generator=generator)
                        conv.bias.zero_()
                    layers.append(conv)
                    channels = width
                stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> RandomPerceptualLoss:
        return super().train(False)

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        features, x = [], images.float()
        for index, stage in enumerate(self.stages):
            x = stage(F.relu(x) if index else x)
            features.append(x)
        return features

    def distances(
        self, pred: torch.Tensor, target: torch.Tensor, texture: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(perceptual, texture): the L1 distances between the stages' features and between their windows' Gram
        matrices, each averaged over the stages; texture None when not asked for."""
        with torch.no_grad():
            reference = self._features(target)
        features = self._features(pred)
        perceptual = torch.stack([F.l1_loss(a, b) for a, b in zip(features, reference, strict=True)]).mean()
        if not texture:
            return perceptual, None
        grams = [F.l1_loss(gram_matrices(a), gram_matrices(b)) for a, b in zip(features, reference, strict=True)]
        return perceptual, torch.stack(grams).mean()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.distances(pred, target, texture=False)[0]
