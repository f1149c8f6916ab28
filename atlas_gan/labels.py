"""Class labels for conditional GANs: one label per scene, from the dataset manifest's scene metadata or a file.

`train.condition.by` picks the source:
- `scene`: the scene id; `year`, `month` (01-12): from the acquisition date ingest found in the file names;
- `season`: meteorological seasons by month, named by their months so they mean the same in both hemispheres:
  DJF (Dec-Feb), MAM, JJA, SON;
- `sensor`: from Landsat / Sentinel-2 product ids in the scene id (landsat-8, sentinel-2a, ...);
- `file`: a user file keyed by scene id: CSV rows `scene,label` (a `scene,label` header is allowed) or a JSON
  object `{"scene id": "label"}`.

The vocabulary (sorted labels, and each label's share of the training tiles) is fixed when training starts and is
saved with every checkpoint and registered model, so a label always means the same class index.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from atlas_gan.config import ConditionConfig, StorageConfig

SEASONS = ("DJF", "MAM", "JJA", "SON")
_SEASON_OF_MONTH = {12: "DJF", 1: "DJF", 2: "DJF", 3: "MAM", 4: "MAM", 5: "MAM"}
_SEASON_OF_MONTH |= {6: "JJA", 7: "JJA", 8: "JJA", 9: "SON", 10: "SON", 11: "SON"}
_LANDSAT = re.compile(r"^L([CEMOT])0?(\d)_", re.IGNORECASE)
_SENTINEL2 = re.compile(r"(?:^|_)S2([ABCD])_", re.IGNORECASE)


class UnknownLabel(ValueError):
    """A label the generator was not trained on."""


@dataclass(frozen=True)
class LabelVocabulary:
    by: str
    classes: tuple[str, ...]
    weights: tuple[float, ...]  # each class's share of the training tiles

    def __post_init__(self) -> None:
        if not self.classes or len(self.classes) != len(self.weights):
            raise ValueError("a label vocabulary needs at least one class and one weight per class")

    def index(self, label: str | int) -> int:
        try:
            return self.classes.index(str(label))
        except ValueError:
            raise UnknownLabel(
                f"unknown label {str(label)!r} (labels are by {self.by}); known: {', '.join(self.classes)}"
            ) from None

    def indexes(self, labels: Iterable[str | int]) -> torch.Tensor:
        return torch.tensor([self.index(label) for label in labels], dtype=torch.long)

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` class indexes drawn with the training tiles' label frequencies."""
        weights = torch.tensor(self.weights, dtype=torch.float64)
        return torch.multinomial(weights, count, replacement=True, generator=generator)

    def to_dict(self) -> dict[str, Any]:
        return {"by": self.by, "classes": list(self.classes), "weights": list(self.weights)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> LabelVocabulary | None:
        if not data:
            return None
        return cls(str(data["by"]), tuple(str(c) for c in data["classes"]), tuple(float(w) for w in data["weights"]))


@dataclass(frozen=True)
class SceneLabels:
    """The vocabulary and each labelled scene's class index (unlabelled scenes are absent)."""

    vocabulary: LabelVocabulary
    by_scene: dict[str, int]


def sensor_of(scene_id: str) -> str | None:
    landsat = _LANDSAT.match(scene_id)
    if landsat:
        return f"landsat-{landsat.group(2)}"
    sentinel = _SENTINEL2.search(scene_id)
    return f"sentinel-2{sentinel.group(1).lower()}" if sentinel else None


def metadata_label(scene: dict[str, Any], by: str) -> str | None:
    """A scene's label from its manifest entry, or None when its metadata does not say."""
    if by == "scene":
        return scene["id"]
    if by == "sensor":
        return sensor_of(scene["id"])
    acquired = scene.get("acquired") or ""
    match = re.match(r"^(\d{4})(?:-(\d{2}))?", acquired)
    if not match:
        return None
    if by == "year":
        return match.group(1)
    if match.group(2) is None:
        return None
    month = int(match.group(2))
    return f"{month:02d}" if by == "month" else _SEASON_OF_MONTH[month]


def read_label_file(url: str, storage: StorageConfig | None = None) -> dict[str, str]:
    """`scene,label` CSV or a JSON object, from a local path or s3://."""
    from atlas_gan.storage import storage_for

    store = storage_for(url, storage)
    if not store.exists(url):  # a server outage raises StorageError from here, a missing file is a config error
        raise ValueError(f"label file {url}: cannot read it (no such file)")
    try:
        text = store.read_bytes(url).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"label file {url}: cannot read it ({exc})") from exc
    if url.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"label file {url}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f'label file {url}: must hold one object, {{"scene id": "label", ...}}')
        return {str(k): str(v) for k, v in data.items()}
    labels: dict[str, str] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(f"label file {url}, line {number}: expected 'scene,label', got {row}")
        scene, label = row[0].strip(), row[1].strip()
        if number == 1 and (scene.lower(), label.lower()) == ("scene", "label"):
            continue
        if scene in labels and labels[scene] != label:
            raise ValueError(f"label file {url}, line {number}: scene {scene!r} labelled twice")
        labels[scene] = label
    return labels


def _order(by: str, classes: set[str]) -> list[str]:
    if by == "season":
        return [s for s in SEASONS if s in classes]
    return sorted(classes)


def scene_labels(
    manifest: dict[str, Any], condition: ConditionConfig, storage: StorageConfig | None = None
) -> SceneLabels | None:
    """Labels for the scenes of an ingested dataset (None when training is unconditional)."""
    if condition.by == "none":
        return None
    scenes = manifest["scenes"]
    if condition.by == "file":
        assert condition.label_file is not None  # the config validates this
        from_file = read_label_file(condition.label_file, storage)
        found = {scene["id"]: from_file.get(scene["id"]) for scene in scenes}
    else:
        found = {scene["id"]: metadata_label(scene, condition.by) for scene in scenes}
    missing = [scene for scene, label in found.items() if label is None]
    if missing and condition.unlabeled == "error":
        where = condition.label_file if condition.by == "file" else "their metadata"
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ValueError(
            f"train.condition.by={condition.by}: no label in {where} for {len(missing)} of {len(scenes)} scenes "
            f"({shown}); label them, or set train.condition.unlabeled=drop to train without them"
        )
    labelled = {scene: label for scene, label in found.items() if label is not None}
    if not labelled:
        raise ValueError(f"train.condition.by={condition.by}: no scene of the dataset has a label")
    classes = _order(condition.by, set(labelled.values()))
    tiles = {scene["id"]: int(scene.get("tiles", 0)) for scene in scenes}
    per_class = [sum(tiles[s] for s, label in labelled.items() if label == c) for c in classes]
    total = sum(per_class) or 1
    vocabulary = LabelVocabulary(condition.by, tuple(classes), tuple(count / total for count in per_class))
    return SceneLabels(vocabulary, {scene: classes.index(label) for scene, label in labelled.items()})


def generation_labels(
    vocabulary: LabelVocabulary | None, count: int, label: str | int | None, seed: int
) -> torch.Tensor | None:
    """Labels for `count` generated samples: all `label`, or (none given) drawn with the training frequencies
    from `seed`; None for an unconditional generator, which refuses a label."""
    given = label is not None and str(label) != ""
    if vocabulary is None:
        if given:
            raise UnknownLabel(f"this generator is unconditional: it takes no label (got {str(label)!r})")
        return None
    if given:
        return torch.full((count,), vocabulary.index(label), dtype=torch.long)
    return vocabulary.sample(count, torch.Generator(device="cpu").manual_seed(seed))
