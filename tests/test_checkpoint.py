"""Checkpoint formats: a file written before the training recipes (format 1) still loads, resumes and samples;
which checkpoints a run keeps, and which one it registers."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from atlas_gan.metrics.evaluate import checkpoint_to_register, scored_checkpoints
from atlas_gan.runtime import distributed
from atlas_gan.runtime.checkpoint import CHECKPOINT_VERSION, list_checkpoints, load_checkpoint, save_checkpoint
from atlas_gan.runtime.generator import load_generator
from atlas_gan.shards import read_manifest
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


def test_pruning_keeps_the_best_evaluated_checkpoint_and_the_flow_registers_it(train_data, tmp_path):
    run_dir = tmp_path / "run"
    settings = ["train.steps=3", "train.checkpoint_every=1", "train.keep_checkpoints=1"]
    config = small_config(train_data, run_dir, *settings)
    trainer = Trainer(config, distributed.setup())
    trainer.best_step = 1  # what the evaluation hook sets when step 1 scored the lowest FID
    trainer.run()
    assert [step for step, _ in list_checkpoints(LocalStorage(), str(run_dir))] == [1, 3]  # 2 pruned, 1 kept

    checksum = read_manifest(LocalStorage(), str(train_data))["checksum"]
    (run_dir / "eval").mkdir()
    for step, fid in ((1, 210.0), (3, 240.0)):  # as EvaluationHook stores them
        result = {"fid": fid, "n_fake": config.evaluate.n, "dataset_checksum": checksum, "sample_recall": 0.0}
        (run_dir / "eval" / f"step-{step:08d}.json").write_text(json.dumps(result))
    assert [(fid, step) for fid, step, _ in scored_checkpoints(config)] == [(210.0, 1), (240.0, 3)]
    assert checkpoint_to_register(config).endswith("step-00000001.pt")
    last = small_config(train_data, run_dir, *settings, "evaluate.register_checkpoint=last")
    assert checkpoint_to_register(last).endswith("step-00000003.pt")
    other_n = small_config(train_data, run_dir, *settings, "evaluate.n=77")  # scored under another protocol
    assert checkpoint_to_register(other_n).endswith("step-00000003.pt")
