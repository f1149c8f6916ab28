"""Settings left to the data: `null` in the config means "pick for this dataset", and the pick is recorded.

Satellite datasets are usually small (a few scenes: hundreds to thousands of tiles), where a discriminator memorizes
the training tiles within a few thousand images and its gradients stop teaching the generator anything (Karras et
al. 2020, Zhao et al. 2020). What is picked, from the number of tiles in the dataset:

- `train.diffaugment` (null): DiffAugment below `SMALL_DATASET` tiles with the family's small-data policy
  (`AdversarialDefaults.small_data_augmentation`: `[color, translation, cutout]`, FastGAN's authors'
  `[color, translation]` for `fastgan`), none above; none when `train.ada` is set (ADA augments instead).

Each pick comes with its reason; the trainer writes them to `log.jsonl` (event `data_defaults`), into the resolved
config (so `config.json`, checkpoints and the MLflow params show the value used) and as MLflow tags
`atlas.auto.<key>`. A resumed run keeps the picks of its checkpoint, even if the dataset has grown since.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atlas_gan.config import TrainConfig
from atlas_gan.models import get_family

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
            reason = (
                f"{train.model.family} translates images: no DiffAugment (pix2pix's D judges (input, output) pairs "
                "that augmenting would unpair; CycleGAN's paper trains D on plain images); the loader's flips and "
                "rotations still apply"
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
    return picks


def apply_data_defaults(train: TrainConfig, picks: list[DataDefault]) -> TrainConfig:
    return train.model_copy(update={pick.key.removeprefix("train."): pick.value for pick in picks})
