"""Conditional GANs through the real pipeline: shards of 8 Landsat years -> conditional SAGAN with DiffAugment ->
evaluation -> MLflow registry -> sampling by label (pyfunc predict and the CLI); and the WGAN clip in training."""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from atlas_gan.cli import app
from atlas_gan.labels import UnknownLabel
from atlas_gan.runtime import distributed
from atlas_gan.runtime.checkpoint import load_checkpoint
from atlas_gan.sampling import load_sampler
from atlas_gan.shards import read_manifest, shard_urls
from atlas_gan.storage import LocalStorage
from atlas_gan.train.data import TileStream, to_training_range
from atlas_gan.train.trainer import Trainer
from tests.test_tracking import tracked_config, train_tracked
from tests.test_train import small_config

YEARS = ("1985", "1990", "1995", "2000", "2005", "2010", "2015", "2020")
CONDITIONAL = ["train.model=sagan", "train.condition.by=year", "train.diffaugment=[color,translation,cutout]"]


def test_the_stream_labels_every_tile_with_its_scenes_class(train_data):
    import webdataset as wds

    manifest = read_manifest(LocalStorage(), str(train_data))
    urls = shard_urls(manifest, str(train_data))
    scene_of = {
        to_training_range(s["tile.npy"], 32).tobytes(): s["json"]["scene_id"]
        for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), wds.decode())
    }
    index = {scene["id"]: i for i, scene in enumerate(manifest["scenes"])}
    index.pop("landsat_2020")  # an unlabelled scene (condition.unlabeled=drop) is left out
    off = small_config(train_data, "unused").train.augment.model_copy(update={"flips": False, "rot90": False})
    stream = TileStream(urls, 0, 1, image_size=32, seed=0, start_epoch=0, shuffle_buffer=64, augment_config=off,
                        scene_labels=index)  # fmt: skip
    labels = {}
    for sample in stream:
        if sample["epoch"]:
            break
        labels[sample["image"].numpy().tobytes()] = sample["label"]
    assert len(labels) == sum(s["tiles"] for s in manifest["scenes"] if s["id"] in index)
    assert all(index[scene_of[tile]] == label for tile, label in labels.items())


@pytest.fixture(scope="module")
def conditional(train_data, tmp_path_factory):
    """A conditional SAGAN with DiffAugment, trained, evaluated and tracked like any run, then registered."""
    from atlas_gan.tracking.registry import register_generator

    root = tmp_path_factory.mktemp("conditional")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = tracked_config(
        train_data, root / "run", root, "train.steps=4", "train.evaluate_every=4", f"tracking.uri={uri}", *CONDITIONAL,
        "train.shuffle_buffer=4000",  # all 8 years mixed from the first batch on
    )  # fmt: skip
    summary = train_tracked(config)
    registration = register_generator(config, progress=False)
    return {"config": config, "summary": summary, "registration": registration, "root": root, "uri": uri}


def test_conditional_sagan_trains_and_keeps_its_vocabulary(conditional):
    state = load_checkpoint(LocalStorage(), conditional["summary"]["checkpoint"])
    assert state["model"] == "sagan" and state["spec"]["num_classes"] == 8 and state["spec"]["attention_resolution"]
    assert state["labels"]["by"] == "year" and tuple(state["labels"]["classes"]) == YEARS
    assert sum(state["labels"]["weights"]) == pytest.approx(1.0)
    registration = conditional["registration"]
    assert np.isfinite(registration.fid)
    client = MlflowClient(conditional["uri"])
    for tags in (client.get_model_version("tiles-test", registration.version).tags,
                 client.get_run(registration.run_id).data.tags):  # fmt: skip
        assert tags["atlas.labels.by"] == "year" and tags["atlas.labels"] == ",".join(YEARS)
    samples = sorted((conditional["root"] / "run" / "samples").glob("*-rgb.png"))
    assert samples  # the grid shows the labels in blocks, drawn with the EMA generator


def trained_labels(checkpoint):
    """Years whose class embedding left its initial value: the labels the 4 training steps saw."""
    scales = load_checkpoint(LocalStorage(), checkpoint)["ema"]["G"]["net.1.scale.weight"]
    return [year for year, row in zip(YEARS, scales, strict=True) if not torch.all(row == 1.0)]


def test_registered_model_samples_by_label(conditional, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", conditional["uri"])
    model = mlflow.pyfunc.load_model("models:/tiles-test@champion")
    one, two = trained_labels(conditional["summary"]["checkpoint"])[:2]
    empty = np.zeros((0, 16), dtype=np.float32)
    first = model.predict(empty, params={"count": 6, "seed": 3, "label": one})
    again = model.predict(empty, params={"count": 6, "seed": 3, "label": one})
    other = model.predict(empty, params={"count": 6, "seed": 3, "label": two})
    assert first["labels"] == [one] * 6 and other["labels"] == [two] * 6
    np.testing.assert_array_equal(first["images"], again["images"])
    assert np.abs(first["images"] - other["images"]).max() > 0
    mixed = model.predict(empty, params={"count": 40, "seed": 1})  # no label: the data's label frequencies
    assert set(mixed["labels"]) <= set(YEARS) and len(set(mixed["labels"])) > 1
    with pytest.raises(UnknownLabel, match="unknown label '1999' .* known: 1985, 1990, 1995, 2000"):
        model.predict(empty, params={"count": 1, "label": "1999"})
    sampler = load_sampler(conditional["summary"]["checkpoint"])  # the checkpoint gives the same images
    np.testing.assert_array_equal(sampler.generate(6, seed=3, label=one), first["images"])


def test_sample_cli_takes_a_label_and_names_the_known_ones(conditional, tmp_path):
    runner = CliRunner()
    model = "models:/tiles-test@champion"
    base = ["sample", "--model", model, "-n", "4", "--set", f"tracking.uri={conditional['uri']}"]
    ok = runner.invoke(app, [*base, "--label", "2005", "--out", str(tmp_path / "2005.png")])
    assert ok.exit_code == 0, ok.output
    assert "label 2005" in ok.output and (tmp_path / "2005.png").read_bytes()[:4] == b"\x89PNG"
    bad = runner.invoke(app, [*base, "--label", "summer", "--out", str(tmp_path / "x.png")])
    assert bad.exit_code == 2 and "unknown label 'summer'" in bad.output and "1985, 1990" in bad.output
    assert not (tmp_path / "x.png").exists()


def test_resuming_with_other_labels_is_refused(conditional):
    config = conditional["config"]
    by_scene = config.train.condition.model_copy(update={"by": "scene"})  # still 8 classes, now meaning scenes
    other = config.model_copy(update={"train": config.train.model_copy(update={"condition": by_scene})})
    with pytest.raises(ValueError, match="trained with labels .*'by': 'year'.* the data now gives .*'by': 'scene'"):
        Trainer(other, distributed.setup(), progress=False)


def test_wgan_critic_weights_stay_inside_the_clip(train_data, tmp_path):
    trainer = Trainer(small_config(train_data, tmp_path / "run", "train.model=wgan", "train.steps=2"),
                      distributed.setup(), progress=False)  # fmt: skip
    recipe = trainer.recipe
    assert isinstance(recipe.optimizers["D"], torch.optim.RMSprop) and recipe.n_critic == 5
    trainer.run()
    assert max(p.abs().max().item() for p in recipe.D.parameters()) <= 0.01
