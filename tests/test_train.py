"""Training on real shards (Landsat, 4 bands, 32 px tiles) in one process: data stream, resume, NaN rollback."""

import itertools
import json
import time

import numpy as np
import pytest
import torch

from atlas_gan.config import load_config
from atlas_gan.ingest import ingest
from atlas_gan.preview import band_triplets
from atlas_gan.runtime import distributed
from atlas_gan.runtime.checkpoint import list_checkpoints, load_checkpoint
from atlas_gan.runtime.generator import load_generator
from atlas_gan.samples import TarFormatError, read_members
from atlas_gan.shards import read_manifest, shard_urls
from atlas_gan.storage import LocalStorage, StorageError
from atlas_gan.train.data import LOADER_GROUP, TileStream, augment, make_loader, to_training_range
from atlas_gan.train.hooks import TrainHooks
from atlas_gan.train.trainer import Trainer

SMALL = [
    "train.latent_dim=16",
    "train.g_width=8",
    "train.d_width=8",
    "train.batch_size=8",
    "train.num_workers=0",
    "train.log_every=1",
    "train.sample_every=2",
    "train.checkpoint_every=2",
    "train.shuffle_buffer=64",
    "train.sample_count=9",
]


def small_config(train_data, run_dir, *overrides):
    return load_config(None, [f"ingest.output={train_data}", f"train.run_dir={run_dir}", *SMALL, *overrides])


def test_stream_splits_an_epoch_exactly_over_consumers(train_data):
    manifest = read_manifest(LocalStorage(), str(train_data))
    urls = shard_urls(manifest, str(train_data))
    assert len(urls) == 2
    total = manifest["totals"]["samples"]
    off = load_config().train.augment.model_copy(update={"flips": False, "rot90": False})
    for world in (2, 4):  # 2 consumers: one shard each; 4 consumers: every 4th sample of all shards
        seen = []
        for rank in range(world):
            tiles = []
            for sample in TileStream(
                urls, rank, world, image_size=32, seed=5, start_epoch=3, shuffle_buffer=50, augment_config=off
            ):
                if sample["epoch"] != 3:
                    break
                tiles.append(sample["image"].numpy().tobytes())
            seen.append(tiles)
        assert sum(len(t) for t in seen) == total
        assert len(set().union(*map(set, seen))) == total  # disjoint, and everything once


def test_workers_send_batches_in_groups_and_every_tile_still_comes_once_per_epoch(train_data):
    manifest = read_manifest(LocalStorage(), str(train_data))
    urls, total = shard_urls(manifest, str(train_data)), manifest["totals"]["samples"]
    off = load_config().train.augment.model_copy(update={"flips": False, "rot90": False})
    stream = TileStream(urls, 0, 1, image_size=32, seed=5, start_epoch=3, shuffle_buffer=50, augment_config=off)
    loader = make_loader(stream, 8, 2, pin_memory=False, group=LOADER_GROUP)
    assert loader.loader.batch_size == 8 * LOADER_GROUP and loader.loader.num_workers == 2
    epoch_3 = []
    for batch in itertools.islice(loader, 3 * total // 8):  # past epoch 3 in both workers
        assert batch["image"].shape[:1] == batch["label"].shape == batch["epoch"].shape == (8,)
        pairs = zip(batch["image"], batch["epoch"], strict=True)
        epoch_3 += [image.numpy().tobytes() for image, epoch in pairs if epoch == 3]
    assert len(epoch_3) == len(set(epoch_3)) == total


def test_a_consumer_without_tiles_fails_instead_of_waiting_forever(train_data):
    manifest = read_manifest(LocalStorage(), str(train_data))
    urls = shard_urls(manifest, str(train_data))
    with open(urls[0], "rb") as shard:
        keys = [name.partition(".")[0] for name, _ in read_members(shard)]
    held_out = frozenset(keys[1:])  # one training tile left: the second of two consumers gets none
    stream = iter(TileStream(urls[:1], 1, 2, image_size=32, seed=0, shuffle_buffer=4, exclude=held_out))
    with pytest.raises(ValueError, match=r"no training tiles reach data consumer 2 of 2 .*lower train.num_workers"):
        next(stream)


def test_float16_tiles_reach_the_training_range_by_table_exactly_as_by_arithmetic():
    """Every float16 value (NaN and infinities included), and rotated views as the loader passes them."""
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(16, 64, 64)
    with np.errstate(invalid="ignore"):
        expected = np.clip(every.astype(np.float32) * 2.0 - 1.0, -1.0, 1.0)
    looked_up = to_training_range(every, 64)
    assert looked_up.dtype == np.float32 and looked_up.flags.c_contiguous
    np.testing.assert_array_equal(looked_up.view(np.uint32), expected.view(np.uint32))
    view = np.rot90(every[:3], k=1, axes=(1, 2))[:, :, ::-1]
    np.testing.assert_array_equal(to_training_range(view, 64), np.clip(view.astype(np.float32) * 2.0 - 1.0, -1, 1))


def test_training_range_and_augmentations():
    tile = np.linspace(-0.2, 1.3, 4 * 8 * 8, dtype=np.float16).reshape(4, 8, 8)
    x = to_training_range(tile, 8)
    assert x.dtype == np.float32 and x.min() == -1.0 and x.max() == 1.0
    pooled = to_training_range(np.full((4, 8, 8), 0.25, np.float16), 4)
    assert pooled.shape == (4, 4, 4) and np.allclose(pooled, -0.5)
    config = load_config().train.augment
    rng = np.random.default_rng(0)
    base = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    variants = {augment(base, rng, config).tobytes() for _ in range(200)}
    assert len(variants) == 8  # the dihedral group: 4 rotations x optional flip
    for variant in variants:  # each band moves the same way: pixels stay aligned across bands
        arr = np.frombuffer(variant, dtype=base.dtype).reshape(2, 4, 4)
        assert np.array_equal(arr[1] - arr[0], np.full((4, 4), 16))


def test_sample_grid_triplets():
    assert band_triplets(["B2", "B3", "B4", "B8"], ["B4", "B3", "B2"]) == [("rgb", [2, 1, 0]), ("B8", [3, 3, 3])]
    assert band_triplets(["1", "2", "3", "4"], [4, 3, 2]) == [("rgb", [3, 2, 1]), ("1", [0, 0, 0])]
    assert band_triplets(["x"], None) == [("rgb", [0, 0, 0])]


def test_train_resume_restores_everything(train_data, tmp_path):
    ctx = distributed.setup()
    run_dir = tmp_path / "run"
    first = Trainer(
        small_config(train_data, run_dir, "train.steps=4", "train.ema_half_life_kimg=0.05"), ctx, progress=False
    )
    summary = first.run()
    assert summary["step"] == 4 and summary["images_seen"] == 32
    store = LocalStorage()
    assert [step for step, _ in list_checkpoints(store, str(run_dir))] == [2, 4]
    saved = load_checkpoint(store, str(run_dir / "checkpoints" / "step-00000004.pt"))

    resumed = Trainer(
        small_config(train_data, run_dir, "train.steps=6", "train.ema_half_life_kimg=0.05"), ctx, progress=False
    )
    assert (resumed.step, resumed.images_seen, resumed.resumed_from) == (4, 32, 4)
    recipe = resumed.recipe
    models = [(saved["networks"][name], model) for name, model in recipe.networks.items()]
    models += [(saved["ema"][name], ema.model) for name, ema in resumed.emas.items()]
    assert [name for name in recipe.networks] == ["G", "D"] and list(resumed.emas) == ["G"]
    for saved_state, model in models:
        for key, value in model.state_dict().items():
            assert torch.equal(value, saved_state[key]), key
    for name, opt in recipe.optimizers.items():
        state = opt.state_dict()["state"]
        for index, entry in saved["optimizers"][name]["state"].items():
            assert torch.equal(state[index]["exp_avg"], entry["exp_avg"])
            assert torch.equal(state[index]["exp_avg_sq"], entry["exp_avg_sq"])
            assert float(state[index]["step"]) == float(entry["step"])
    assert torch.equal(torch.get_rng_state(), saved["rng"][0]["torch"])
    assert not all(
        torch.equal(a, b) for a, b in zip(recipe.G.parameters(), resumed.generator.parameters(), strict=True)
    )  # EMA is its own average, not a copy of G
    assert resumed.run()["step"] == 6
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    starts = [e for e in events if e.get("event") == "start"]
    assert [s["resumed_from"] for s in starts] == [None, 4]
    losses = [e for e in events if "loss_d" in e]
    assert [e["step"] for e in losses] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(e["loss_d"]) and np.isfinite(e["loss_g"]) for e in losses)
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        f"step-0000000{s}-{label}.png" for s in (2, 4, 6) for label in ("4", "rgb")
    ]
    generator, meta = load_generator(store, str(run_dir / "checkpoints" / "step-00000006.pt"))
    assert meta["bands"] == ["1", "2", "3", "4"] and generator(torch.randn(2, 16)).shape == (2, 4, 32, 32)


class PoisonOnce(TrainHooks):
    """Turns G's weights to NaN once, at step 3: a real divergence, as bad data or a bad LR would cause."""

    def __init__(self):
        self.done = False

    def on_step_start(self, trainer):
        if trainer.step == 3 and not self.done:
            self.done = True
            with torch.no_grad():
                next(trainer.recipe.G.parameters()).fill_(float("nan"))


def test_non_finite_losses_roll_back_to_the_last_checkpoint(train_data, tmp_path, caplog):
    ctx = distributed.setup()
    config = small_config(train_data, tmp_path / "run", "train.steps=5", "train.nan_patience=2")
    summary = Trainer(config, ctx, hooks=[PoisonOnce()], progress=False).run()
    assert summary["step"] == 5
    assert "rolled back to the checkpoint of step 2" in caplog.text
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"event": "rollback", "step": 2, "rollback": 1} in events
    assert all(np.isfinite(e["loss_g"]) for e in events if "loss_g" in e)
    assert all(torch.isfinite(p).all() for p in load_generator(LocalStorage(), summary["checkpoint"])[0].parameters())


class StopAt(TrainHooks):
    """A budget of the hook's own: asks the trainer to end at step `step`."""

    def __init__(self, step):
        self.step = step

    def on_step_start(self, trainer):
        if trainer.step == self.step - 1:
            trainer.request_stop()


def test_a_hook_can_end_the_run_early_and_the_last_step_is_still_logged_and_saved(train_data, tmp_path):
    config = small_config(train_data, tmp_path / "run", "train.steps=50", "train.checkpoint_every=100")
    summary = Trainer(config, distributed.setup(), hooks=[StopAt(3)], progress=False).run()
    assert summary["step"] == 3 and summary["checkpoint"].endswith("step-00000003.pt")
    assert load_generator(LocalStorage(), summary["checkpoint"])[1]["step"] == 3
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if "loss_g" in e] == [1, 2, 3]


class SlowSteps(TrainHooks):
    """Every step takes at least `seconds` of wall clock."""

    def __init__(self, seconds):
        self.seconds = seconds

    def on_step_start(self, trainer):
        time.sleep(self.seconds)


def test_a_time_budget_ends_the_run_at_the_first_step_past_it(train_data, tmp_path):
    budget = 0.001  # minutes: 60 ms, less than the one step that sleeps 70 ms
    config = small_config(train_data, tmp_path / "run", "train.steps=50", f"train.max_minutes={budget}")
    summary = Trainer(config, distributed.setup(), hooks=[SlowSteps(0.07)], progress=False).run()
    assert summary["step"] == 1 and load_generator(LocalStorage(), summary["checkpoint"])[1]["step"] == 1
    assert summary["stopped_by_time_budget"] is True
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    spent = [e for e in events if e.get("event") == "time_budget_spent"]
    assert len(spent) == 1 and spent[0]["step"] == 1 and spent[0]["max_minutes"] == budget
    assert [e["step"] for e in events if "loss_g" in e] == [1] and events[-1]["event"] == "end"
    # a budget that is not reached changes nothing: the run ends at train.steps
    roomy = small_config(train_data, tmp_path / "roomy", "train.steps=2", "train.max_minutes=60")
    roomy_summary = Trainer(roomy, distributed.setup(), hooks=[SlowSteps(0.07)], progress=False).run()
    assert roomy_summary["step"] == 2 and roomy_summary["stopped_by_time_budget"] is False
    assert load_checkpoint(LocalStorage(), roomy_summary["checkpoint"])["train_seconds"] >= 0.14
    # the budget is the run's: resumed with 120 ms, the 140+ ms already trained make the first new step the last
    resumed = small_config(train_data, tmp_path / "roomy", "train.steps=50", "train.max_minutes=0.002")
    assert Trainer(resumed, distributed.setup(), progress=False).run()["step"] == 3


class ArbitraryObject:
    """Unpickling this would run code of the file's choosing; weights_only loading must refuse it."""


def test_unsafe_or_foreign_checkpoints_are_refused(tmp_path):
    torch.save({"format": "atlas-gan/checkpoint", "evil": ArbitraryObject()}, tmp_path / "bad.pt")
    with pytest.raises(StorageError, match="not a readable atlas-gan checkpoint"):
        load_checkpoint(LocalStorage(), str(tmp_path / "bad.pt"))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(StorageError, match="not an atlas-gan checkpoint"):
        load_checkpoint(LocalStorage(), str(tmp_path / "other.pt"))


def test_a_resumed_run_takes_its_learning_rates_from_the_config(train_data, tmp_path):
    ctx = distributed.setup()
    Trainer(small_config(train_data, tmp_path / "run", "train.steps=2", "train.lr_d=1e-4"), ctx, progress=False).run()
    resumed = Trainer(small_config(train_data, tmp_path / "run", "train.lr_d=4e-4"), ctx, progress=False)
    assert resumed.step == 2
    optimizer = resumed.recipe.optimizers["D"]
    assert optimizer.param_groups[0]["lr"] == 4e-4  # not the checkpoint's 1e-4
    assert all(float(entry["step"]) == 2 for entry in optimizer.state_dict()["state"].values())  # moments kept


def test_resuming_with_another_model_is_refused(train_data, tmp_path):
    ctx = distributed.setup()
    Trainer(small_config(train_data, tmp_path / "run", "train.steps=2"), ctx, progress=False).run()
    with pytest.raises(ValueError, match="checkpoint is dcgan .* the config asks for sngan"):
        Trainer(small_config(train_data, tmp_path / "run", "train.model=sngan"), ctx, progress=False)


def test_image_size_must_divide_the_tile_size(train_data, tmp_path):
    with pytest.raises(ValueError, match="image_size 64 must divide the dataset's tile size 32"):
        Trainer(small_config(train_data, tmp_path / "run", "train.image_size=64"), distributed.setup())


@pytest.mark.integration
def test_shards_and_run_dir_on_s3(s3, geotiff, tmp_path):
    """Data streamed from S3 through webdataset's in-process boto3 opener; checkpoints, samples, log on S3."""
    data, run_dir = f"s3://{s3.bucket}/shards", f"s3://{s3.bucket}/runs/one"
    ingest(
        load_config(
            None,
            [
                f"ingest.source={geotiff / 'landsat-pucallpa' / 'landsat_2020.tif'}",
                f"ingest.output={data}",
                "ingest.tile_size=32",
                "ingest.workers=1",
            ],
        ),
        progress=False,
    )
    ctx = distributed.setup()
    config = load_config(None, [f"ingest.output={data}", f"train.run_dir={run_dir}", *SMALL, "train.steps=2"])
    assert Trainer(config, ctx, progress=False).run()["step"] == 2
    resumed = Trainer(
        config.model_copy(update={"train": config.train.model_copy(update={"steps": 3})}), ctx, progress=False
    )
    assert resumed.resumed_from == 2
    assert resumed.run()["ranks_in_sync"] is True
    keys = sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="runs/one/")["Contents"])
    assert "runs/one/checkpoints/step-00000003.pt" in keys and "runs/one/log.jsonl" in keys
    assert "runs/one/samples/step-00000002-rgb.png" in keys and "runs/one/config.json" in keys
    log = s3.client().get_object(Bucket=s3.bucket, Key="runs/one/log.jsonl")["Body"].read().decode().splitlines()
    assert json.loads(log[-1])["step"] == 3


def test_bf16_autocast_path_runs_on_cpu(train_data, tmp_path):
    """The GPU default (bf16 autocast) exercised on CPU, where CI runs: finite losses, fp32 weights."""
    config = small_config(train_data, tmp_path / "run", "train.steps=2", "train.precision=bf16", "train.model=wgan-gp")
    trainer = Trainer(config, distributed.setup(), progress=False)
    assert trainer.autocast_dtype == torch.bfloat16
    summary = trainer.run()
    assert summary["step"] == 2
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trainer.recipe.G.parameters())


def test_ema_half_life_and_rampup():
    from atlas_gan.train.ema import EMA

    model = torch.nn.Linear(2, 2)
    ema = EMA(model, half_life_kimg=1.0, rampup=None)
    assert ema.decay(1000, 10**6) == pytest.approx(0.5)  # one half-life of images halves the old weight
    ramped = EMA(model, half_life_kimg=1.0, rampup=0.05)
    assert ramped.decay(10, 2000) == pytest.approx(0.5 ** (10 / 100))  # early: half-life 0.05 x 2000 images
    assert ramped.decay(10, 10**7) == pytest.approx(0.5 ** (10 / 1000))  # later: the configured half-life
    assert EMA(model, half_life_kimg=0.0).decay(10, 100) == 0.0  # off: the EMA is a copy
    before = ema.model.weight.detach().clone()
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, 1000, 10**6)
    assert torch.allclose(ema.model.weight, 0.5 * before + 0.5)


def test_a_damaged_shard_is_named(train_data, tmp_path):
    shard = sorted(train_data.glob("*.tar"))[0]
    damaged = tmp_path / shard.name
    data = bytearray(shard.read_bytes())
    data[5 * 512 + 10] ^= 0xFF  # somewhere in the middle of the archive: a header or a payload
    damaged.write_bytes(bytes(data[: len(data) // 2]))  # and cut short
    stream = TileStream([str(damaged)], 0, 1, image_size=32, seed=0, shuffle_buffer=4)
    with pytest.raises(TarFormatError, match=str(damaged)):
        for _ in stream:
            pass


def test_deferred_checks_roll_back_like_host_checks(train_data, tmp_path, caplog):
    """The CUDA default (finite checks on the device, read when logging), here on the CPU: the poisoned steps are
    found at the next log step, the checkpoint due then is not written, and training rolls back."""
    ctx = distributed.setup()
    config = small_config(train_data, tmp_path / "run", "train.steps=5", "train.nan_patience=2")
    trainer = Trainer(config, ctx, hooks=[PoisonOnce()], progress=False, deferred_checks=True)
    assert trainer.update.deferred
    summary = trainer.run()
    assert summary["step"] == 5
    assert "steps up to step 4 skipped an update" in caplog.text
    assert "rolled back to the checkpoint of step 2" in caplog.text
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"event": "rollback", "step": 2, "rollback": 1} in events
    assert all(np.isfinite(e["loss_g"]) for e in events if "loss_g" in e)
    assert sorted(step for step, _ in list_checkpoints(LocalStorage(), str(tmp_path / "run")))[-1] == 5
    assert all(torch.isfinite(p).all() for p in load_generator(LocalStorage(), summary["checkpoint"])[0].parameters())
