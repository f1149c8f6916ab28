"""Labels for conditional GANs: from scene metadata or a label file, with a fixed vocabulary and clear errors."""

import json

import pytest
import torch

from atlas_gan.config import ConditionConfig, ConfigError, load_config
from atlas_gan.labels import (
    LabelVocabulary,
    UnknownLabel,
    generation_labels,
    metadata_label,
    read_label_file,
    scene_labels,
)

SCENES = [
    {"id": "LC08_L1TP_224077_20200518_20200518_01_RT", "acquired": "2020-05-18", "tiles": 30},
    {"id": "LE07_L1TP_224077_20191201_20191201_01_RT", "acquired": "2019-12-01", "tiles": 10},
    {"id": "S2A_MSIL2A_20170613T101031", "acquired": "2017-06-13", "tiles": 40},
    {"id": "landsat_1985", "acquired": "1985", "tiles": 20},
]
MANIFEST = {"scenes": SCENES}


def test_labels_from_scene_metadata():
    by = {kind: [metadata_label(s, kind) for s in SCENES] for kind in ("year", "month", "season", "sensor")}
    assert by["year"] == ["2020", "2019", "2017", "1985"]
    assert by["month"] == ["05", "12", "06", None]  # a year-only date has no month
    assert by["season"] == ["MAM", "DJF", "JJA", None]
    assert by["sensor"] == ["landsat-8", "landsat-7", "sentinel-2a", None]
    assert metadata_label(SCENES[3], "scene") == "landsat_1985"


def test_vocabulary_is_sorted_with_tile_shares():
    labels = scene_labels(MANIFEST, ConditionConfig(by="year"))
    assert labels.vocabulary.classes == ("1985", "2017", "2019", "2020")
    assert labels.vocabulary.weights == pytest.approx((0.2, 0.4, 0.1, 0.3))
    assert labels.by_scene["landsat_1985"] == 0 and labels.by_scene[SCENES[0]["id"]] == 3
    assert scene_labels(MANIFEST, ConditionConfig()) is None  # by: none


def test_scenes_without_a_label_fail_by_name_or_are_dropped():
    with pytest.raises(ValueError, match=r"no label in their metadata for 1 of 4 scenes \(landsat_1985\)"):
        scene_labels(MANIFEST, ConditionConfig(by="season"))
    labels = scene_labels(MANIFEST, ConditionConfig(by="season", unlabeled="drop"))
    assert labels.vocabulary.classes == ("DJF", "MAM", "JJA")  # seasons in calendar order
    assert "landsat_1985" not in labels.by_scene


def test_label_files_csv_and_json(tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("scene,label\n# comment\nlandsat_1985, forest\nS2A_MSIL2A_20170613T101031,urban\n\n")
    assert read_label_file(str(csv_file)) == {"landsat_1985": "forest", "S2A_MSIL2A_20170613T101031": "urban"}
    json_file = tmp_path / "labels.json"
    json_file.write_text(json.dumps({s["id"]: "x" if s["tiles"] > 15 else "y" for s in SCENES}))
    labels = scene_labels(MANIFEST, ConditionConfig(by="file", label_file=str(json_file)))
    assert labels.vocabulary.classes == ("x", "y")
    with pytest.raises(ValueError, match=r"labels.csv for 2 of 4 scenes"):
        scene_labels(MANIFEST, ConditionConfig(by="file", label_file=str(csv_file)))
    bad = tmp_path / "bad.csv"
    bad.write_text("landsat_1985,forest,extra\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 1: expected 'scene,label'"):
        read_label_file(str(bad))
    with pytest.raises(ValueError, match="cannot read it"):
        read_label_file(str(tmp_path / "missing.csv"))


def test_condition_config_is_validated():
    with pytest.raises(ConfigError, match="label_file is required with by=file"):
        load_config(None, ["ingest.source=x", "ingest.output=y", "train.condition.by=file"])
    with pytest.raises(ConfigError, match="train.condition.by"):
        load_config(None, ["ingest.source=x", "ingest.output=y", "train.condition.by=weather"])
    with pytest.raises(ConfigError, match="train.diffaugment"):
        load_config(None, ["ingest.source=x", "ingest.output=y", "train.diffaugment=[color,color]"])


def test_unknown_labels_list_the_known_ones():
    vocabulary = LabelVocabulary("season", ("DJF", "JJA"), (0.5, 0.5))
    with pytest.raises(UnknownLabel, match=r"unknown label 'MAM' \(labels are by season\); known: DJF, JJA"):
        vocabulary.index("MAM")
    assert LabelVocabulary.from_dict(vocabulary.to_dict()) == vocabulary
    assert generation_labels(vocabulary, 3, "JJA", 0).tolist() == [1, 1, 1]
    drawn = generation_labels(vocabulary, 1000, None, 5)
    assert torch.equal(drawn, generation_labels(vocabulary, 1000, "", 5)) and 400 < int(drawn.sum()) < 600
    with pytest.raises(UnknownLabel, match="unconditional"):
        generation_labels(None, 3, "JJA", 0)
