"""Settings left to the data: `null` in the config means "pick for this dataset", and the pick is recorded.

Satellite datasets are usually small (a few scenes: hundreds to thousands of tiles), where a discriminator memorizes
the training tiles within a few thousand images and its gradients stop teaching the generator anything (Karras et
al. 2020, Zhao et al. 2020). What is picked, from the number of tiles in the dataset:

- `train.diffaugment` (null): DiffAugment below `SMALL_DATASET` tiles with the family's small-data policy
  (`AdversarialDefaults.small_data_augmentation`: `[color, translation, cutout]`, FastGAN's authors'
  `[color, translation]` for `fastgan`), none above; none when `train.ada` is set (ADA augments instead).

- `train.model.vgg_weights` (esrgan, null): the VGG19 weights of the perceptual loss, from `ATLAS_VGG_WEIGHTS` or torch
  hub's checkpoint folder; when there are none, `train.model.perceptual_weight` is set to 0 with the reason
  "perceptual loss: unavailable (...)". Nothing is downloaded. (`perceptual_network: random` needs no weights.)

Each pick comes with its reason; the trainer writes them to `log.jsonl` (event `data_defaults`), into the resolved
config (so `config.json`, checkpoints and the MLflow params show the value used) and as MLflow tags
`atlas.auto.<key>`. A resumed run keeps the picks of its checkpoint, even if the dataset has grown since.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atlas_gan.config import SuperResOptions, TrainConfig
from atlas_gan.models import get_family
from atlas_gan.perceptual import VGGWeightsNotFound, resolve_vgg_weights

SMALL_DATASET = 20_000  # tiles: below this, D sees augmented images by default


@dataclass(frozen=True)
class DataDefault:
    key: str  # dotted config key
    value: Any
    reason: str


def pick_data_defaults(train: TrainConfig, tiles: int) -> list[DataDefault]:
    """The value and reason for every setting of `train` left to the data (null)."""
    picks = []
    if train.diffaugment is None:
        if train.ada is not None:
            picks.append(DataDefault("train.diffaugment", [], "train.ada is set: ADA augments what D sees"))
        elif not get_family(train.model.family).training.small_data_augmentation:
            family = get_family(train.model.family)
            if family.recipe == "pggan":
                reason = (
                    "pggan trains as its paper did, without DiffAugment (its growing schedule is the regularizer; "
                    "set train.diffaugment to try it); the loader's flips and rotations still apply"
                )
            else:
                reason = (
                    f"{family.name} translates images: no DiffAugment (pix2pix's D judges (input, output) pairs "
                    "that augmenting would unpair; the CycleGAN and ESRGAN papers train D on plain images); the "
                    "loader's flips and rotations still apply"
                )
            picks.append(DataDefault("train.diffaugment", [], reason))
        elif tiles < SMALL_DATASET:
            family = train.model.family
            reason = (
                f"{tiles} tiles (< {SMALL_DATASET:,}): without augmentation D memorizes a small dataset and stops "
                "teaching G; DiffAugment (Zhao et al. 2020) shows D every real and generated image augmented, "
                f"with {family}'s small-data policy"
            )
            policy = list(get_family(family).training.small_data_augmentation)
            picks.append(DataDefault("train.diffaugment", policy, reason))
        else:
            reason = f"{tiles} tiles (>= {SMALL_DATASET:,}): enough data for D without augmentation"
            picks.append(DataDefault("train.diffaugment", [], reason))
    options = train.model
    if (
        isinstance(options, SuperResOptions)
        and options.perceptual_weight > 0
        and options.perceptual_network == "vgg19"
        and options.vgg_weights is None
    ):
        picks.append(_perceptual_pick())
    return picks


def _perceptual_pick() -> DataDefault:
    """Where the VGG19 weights of ESRGAN's perceptual loss are, or that the loss is off without them."""
    try:
        found = resolve_vgg_weights(None)
    except VGGWeightsNotFound as exc:
        return DataDefault("train.model.perceptual_weight", 0.0, f"perceptual loss: unavailable ({exc})")
    return DataDefault("train.model.vgg_weights", str(found), "perceptual loss: VGG19 weights found")


def apply_data_defaults(train: TrainConfig, picks: list[DataDefault]) -> TrainConfig:
    """`train` with every pick applied (`train.key` or `train.model.key`), validated."""
    model = {p.key.removeprefix("train.model."): p.value for p in picks if p.key.startswith("train.model.")}
    update: dict[str, Any] = {p.key.removeprefix("train."): p.value for p in picks if p.key.count(".") == 1}
    if model:
        update["model"] = train.model.model_validate({**train.model.model_dump(), **model})
    return train.model_copy(update=update)
