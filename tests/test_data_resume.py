"""A resumed run's data continues exactly where its checkpoint left it: the same batches, in the same order, as an
uninterrupted run's, across epochs, loader workers, grouped batches and a batch half taken."""

from __future__ import annotations

import itertools

import pytest
import torch

from atlas_gan.runtime import distributed
from atlas_gan.runtime.checkpoint import load_checkpoint
from atlas_gan.shards import read_manifest, shard_urls
from atlas_gan.storage import LocalStorage
from atlas_gan.train.data import TileStream, make_loader, read_tiles
from atlas_gan.train.data_resume import DataPosition, plan_resume
from atlas_gan.train.hooks import TrainHooks
from atlas_gan.train.trainer import Trainer
from tests.test_cyclegan import CYCLEGAN
from tests.test_fastgan import FASTGAN
from tests.test_pggan import FAST as PGGAN
from tests.test_superres import ESRGAN
from tests.test_train import small_config

BATCH, KEPT = 4, 42  # an epoch of 42 tiles: 10.5 batches, so batches straddle epochs


def _stream_factory(train_data, start_epoch=0):
    """TileStreams over KEPT of the dataset's tiles (the rest excluded), augmented as in training."""
    urls = shard_urls(read_manifest(LocalStorage(), str(train_data)), str(train_data))
    keys, _ = read_tiles(urls, None, 32, None, 10_000)
    kept = set(keys[:: len(keys) // KEPT][:KEPT])  # from both shards, so that either loader worker gets some
    excluded = frozenset(keys) - kept

    def stream(**resume):
        start = resume.pop("start_epoch", start_epoch)
        return TileStream(
            urls, 0, 1, image_size=32, seed=3, start_epoch=start, shuffle_buffer=16, exclude=excluded, **resume
        )

    return stream


def _draw(loader, count):
    return list(itertools.islice(iter(loader), count))


@pytest.mark.parametrize(
    ("workers", "group", "cuts", "origin"), [(0, 1, (3, 11), 0), (2, 1, (5,), 0), (2, 2, (5, 8), 0), (2, 1, (1,), 2)]
)
def test_a_resumed_loader_hands_out_what_an_uninterrupted_one_would(train_data, workers, group, cuts, origin):
    """Cut after `cut` batches (5 with groups of 2: a group half taken; 1 with 2 workers: one has sent nothing, and
    must start at the epoch its run started at), resume from the saved position."""
    stream = _stream_factory(train_data, origin)
    total = 32  # ~3 epochs
    straight = _draw(make_loader(stream(), BATCH, workers, False, group=group), total)
    first_epoch = {
        (int(consumer), int(index))
        for batch in straight
        for consumer, epoch, index in zip(batch["consumer"], batch["epoch"], batch["index"], strict=True)
        if epoch == origin
    }
    assert len(first_epoch) == KEPT  # each consumer's share of the epoch, whole
    for cut in cuts:
        first = make_loader(stream(), BATCH, workers, False, group=group)
        head = _draw(first, cut)
        saved = DataPosition.from_dict(first.position.to_dict())  # as a checkpoint stores it
        plan = plan_resume(saved, 0, BATCH, group, max(workers, 1))
        assert plan is not None
        resumed = stream(starts=plan.starts, rotation=plan.rotation, start_epoch=plan.position.origin)
        second = make_loader(resumed, BATCH, workers, False, group, plan)
        tail = _draw(second, total - cut)
        for i, (a, b) in enumerate(zip(straight, head + tail, strict=True)):
            assert all(torch.equal(a[key], b[key]) for key in a), f"cut at {cut}: batch {i} differs"


def test_a_position_saved_by_another_loader_shape_is_not_replayed():
    saved = DataPosition(batch_size=4, group=1, workers=2, consumers={0: [1, 8, 1], 1: [1, 4, 1]}, last=1)
    assert plan_resume(saved, 0, 4, 1, 2) is not None
    assert plan_resume(saved, 0, 8, 1, 2) is None  # batch size changed
    assert plan_resume(saved, 0, 4, 1, 1) is None  # loader workers changed
    assert plan_resume(saved, 0, 4, 4, 2) is None  # grouping changed (a GPU run resumed on the CPU)
    plan = plan_resume(saved, 0, 4, 1, 2)
    assert plan.starts == {0: (1, 12), 1: (1, 8)} and plan.rotation == 0 and plan.discard == {}


class StopAfter(TrainHooks):
    """Interrupts a run after `step` steps (checkpointed as a last step is), as a killed job's last checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_start(self, trainer: Trainer) -> None:
        if trainer.step == self.step - 1:
            trainer.request_stop()


RESUMED = {  # family: (dataset fixture, settings); each keeps state a resume must carry beyond the networks
    "dcgan": ("train_data", []),
    "dcgan, 2 loader workers": ("train_data", ["train.num_workers=2"]),
    "fastgan": ("train_data_64", FASTGAN),  # the reconstructed quarter, drawn from the training RNG
    "pggan": ("train_data", [*PGGAN, "train.model.batch_sizes={4: 8, 16: 4}"]),  # loader tiles not used yet
    "esrgan": ("train_data", ESRGAN),  # resumed at the change from the pixel phase to the GAN phase
    "cyclegan": ("train_data", CYCLEGAN),  # each rank's history pools
}


@pytest.mark.parametrize("family", list(RESUMED))
def test_training_resumed_midway_ends_bit_identical_to_an_uninterrupted_run(family, request, tmp_path):
    """7 steps straight vs interrupted after 3 and resumed: networks and EMA equal to the bit at the end."""
    fixture, settings = RESUMED[family]
    data = request.getfixturevalue(fixture)
    ctx = distributed.setup()
    settings = [*settings, "train.steps=7", "train.checkpoint_every=7", "train.sample_every=100"]
    Trainer(small_config(data, tmp_path / "a", *settings), ctx, progress=False).run()
    Trainer(small_config(data, tmp_path / "b", *settings), ctx, [StopAfter(3)], progress=False).run()
    resumed = Trainer(small_config(data, tmp_path / "b", *settings), ctx, progress=False)
    assert resumed.resumed_from == 3
    resumed.run()
    a, b = (load_checkpoint(LocalStorage(), str(tmp_path / run / "checkpoints" / "step-00000007.pt")) for run in "ab")
    for part in ("networks", "ema"):
        for name, weights in a[part].items():
            for key, value in weights.items():
                same = torch.equal(value, b[part][name][key]) if torch.is_tensor(value) else value == b[part][name][key]
                assert same, f"{part}.{name}.{key}"
    assert a["data_positions"] == b["data_positions"]


def test_a_checkpoint_without_a_usable_position_restarts_the_epoch(train_data, tmp_path):
    """Positions are replayed only onto the data and loader shape they were taken from."""
    ctx = distributed.setup()
    trainer = Trainer(small_config(train_data, tmp_path / "run", "train.steps=2"), ctx, progress=False)
    trainer.run()
    state = load_checkpoint(LocalStorage(), str(tmp_path / "run" / "checkpoints" / "step-00000002.pt"))
    assert trainer._plan_data_resume(state, same_world=True) is not None
    assert trainer._plan_data_resume(state, same_world=False) is None  # another rank count
    assert trainer._plan_data_resume({**state, "dataset_checksum": "other"}, same_world=True) is None  # new shards
    assert trainer._plan_data_resume({**state, "data_positions": None}, same_world=True) is None  # an old checkpoint
