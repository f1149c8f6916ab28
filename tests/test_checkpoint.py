"""Checkpoint formats: a file written before the training recipes (format 1) still loads, resumes and samples."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import torch

from atlas_gan.runtime import distributed
from atlas_gan.runtime.checkpoint import CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from atlas_gan.runtime.generator import load_generator
from atlas_gan.storage import LocalStorage, StorageError
from atlas_gan.train.trainer import Trainer
from tests.test_train import small_config

V1 = Path(__file__).parent / "fixtures" / "checkpoint-v1-dcgan-ada.pt"
V1_SETTINGS = ["train.g_width=4", "train.d_width=4", "train.ada.speed_kimg=0.1", "train.ada.interval=3"]


def raw_v1() -> dict:
    return torch.load(io.BytesIO(V1.read_bytes()), map_location="cpu", weights_only=True)


def test_a_version_1_checkpoint_loads_in_the_named_network_layout():
    raw = raw_v1()
    assert raw["version"] == 1 and "G" in raw and "networks" not in raw
    state = load_checkpoint(LocalStorage(), str(V1))
    assert state["version"] == CHECKPOINT_VERSION == 2
    assert state["generator"] == {"network": "G", "signature": "latent"} and state["recipe"] == "adversarial"
    for new, old in (
        (state["networks"]["G"], raw["G"]),
        (state["networks"]["D"], raw["D"]),
        (state["ema"]["G"], raw["G_ema"]),
    ):
        assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in old)
    assert state["optimizers"]["G"]["state"].keys() == raw["opt_g"]["state"].keys()
    exact = {"rtol": 0, "atol": 0, "equal_nan": True}  # ADA's last_rt is NaN before its first adjustment
    torch.testing.assert_close(state["recipe_ranks"], [{"augment": raw["augment_ranks"][0]}], **exact)
    torch.testing.assert_close(
        state["recipe_state"], {"augment": raw["augment"], "path_length": raw["path_length"]}, **exact
    )


def test_training_resumes_from_a_version_1_checkpoint(train_data, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(V1, run_dir / "checkpoints" / "step-00000002.pt")
    raw = raw_v1()
    trainer = Trainer(
        small_config(train_data, run_dir, "train.steps=4", *V1_SETTINGS), distributed.setup(), progress=False
    )
    assert (trainer.resumed_from, trainer.step, trainer.images_seen) == (2, 2, raw["images_seen"])
    for key, value in raw["G"].items():
        assert torch.equal(trainer.recipe.G.state_dict()[key], value), key
    # ADA's p, counters and sign accumulators (last_rt is NaN before the first adjustment)
    torch.testing.assert_close(trainer.recipe.ada.state_dict(), raw["augment_ranks"][0], rtol=0, atol=0, equal_nan=True)
    summary = trainer.run()
    assert summary["step"] == 4 and summary["ranks_in_sync"]
    assert load_checkpoint(LocalStorage(), summary["checkpoint"])["version"] == CHECKPOINT_VERSION


def test_the_generator_of_a_version_1_checkpoint_samples():
    generator, meta = load_generator(LocalStorage(), str(V1))
    assert meta["signature"] == "latent" and meta["model"] == "dcgan" and meta["step"] == 2
    for key, value in raw_v1()["G_ema"].items():
        assert torch.equal(generator.state_dict()[key], value), key
    assert generator(torch.randn(3, meta["spec"]["latent_dim"])).shape == (3, 4, 32, 32)


def test_a_newer_format_is_refused_by_name(tmp_path):
    url = str(tmp_path / "future.pt")
    save_checkpoint(LocalStorage(), url, {"step": 1})
    data = torch.load(url, weights_only=True)
    data["version"] = CHECKPOINT_VERSION + 1
    torch.save(data, url)
    with pytest.raises(StorageError, match="format version 3 is newer than this atlas-gan reads"):
        load_checkpoint(LocalStorage(), url)
