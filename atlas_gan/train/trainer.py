"""The training loop that `torchrun` runs on every rank (or one process on its own), for any recipe.

The loop does the mechanics; the recipe (`atlas_gan/recipes/`) does the maths of each step. The loop builds the
recipe for the dataset, keeps an EMA of the networks the recipe names, streams the data, counts steps and images,
writes sample grids, checkpoints and `log.jsonl`, and calls the hooks. A step whose loss is not finite on any rank
is skipped on all of them (the recipe's `Update` checks), and `nan_patience` such steps in a row roll the run back to
its last checkpoint. On start the trainer resumes from the newest checkpoint in `run_dir`, so
`torchrun --max-restarts=K` simply continues after a failure. MLflow and metrics plug in through `TrainHooks`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from atlas_gan.config import AtlasConfig, TrainConfig, config_to_dict
from atlas_gan.labels import LabelVocabulary, scene_labels
from atlas_gan.models import get_family
from atlas_gan.models.base import ModelSpec
from atlas_gan.recipes import RECIPES, Batch, Progress, Recipe, Update, band_roles, build_recipe, model_spec
from atlas_gan.runtime import distributed as dist_utils
from atlas_gan.runtime.checkpoint import (
    checkpoint_url,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from atlas_gan.runtime.distributed import DistributedContext
from atlas_gan.runtime.generator import generator_meta
from atlas_gan.runtime.precision import autocast_dtype
from atlas_gan.runtime.signature import IMAGE
from atlas_gan.shards import read_manifest, shard_urls
from atlas_gan.split import TileSplit, dataset_split, validation_fraction
from atlas_gan.storage import Storage, join_url, storage_for
from atlas_gan.train.data import GroupedBatches, TileStream, loader_group, make_loader, read_tiles
from atlas_gan.train.data_defaults import DataDefault, apply_data_defaults, pick_data_defaults
from atlas_gan.train.data_resume import DataPosition, DataResume, plan_resume
from atlas_gan.train.ema import EMA
from atlas_gan.train.hooks import TrainHooks
from atlas_gan.train.run_log import RunLog
from atlas_gan.train.sample_grid import write_sample_grids

log = logging.getLogger("atlas_gan.train")


class TrainingDiverged(RuntimeError):
    """Losses stayed non-finite after every allowed rollback."""


SPLIT_NAME = "split.json"  # run_dir: the validation split's settings, counts and held-out tile keys
PROGRESS_LINE = re.compile(r"\bstep (?P<step>\d+)/(?P<steps>\d+) \(")  # inside any log prefix


def progress_line(record: dict[str, Any], steps: int) -> str:
    """`step 200/2000 (10%) | 12.8 kimg | loss_d 0.412 loss_g 2.310 | 180 img/s` (parsed back by PROGRESS_LINE)."""
    losses = " ".join(f"{k} {v:.3f}" for k, v in record.items() if k.startswith("loss_") and v is not None)
    speed = record.get("images_per_s")
    return (
        f"step {record['step']}/{steps} ({100 * record['step'] / steps:.0f}%) | {record['images_seen'] / 1000:.1f} kimg"
        f" | {losses} | {'?' if speed is None else f'{speed:.0f}'} img/s"
    )


def add_losses(sums: dict[str, torch.Tensor], counts: dict[str, torch.Tensor], losses: dict[str, torch.Tensor]) -> None:
    """Add one step's losses to the running sums, on the device (no wait): non-finite values are left out."""
    for key, value in losses.items():
        value = torch.as_tensor(value, dtype=torch.float32).detach()
        finite = torch.isfinite(value)
        sums[key] = sums.get(key, 0) + torch.where(finite, value, 0.0)
        counts[key] = counts.get(key, 0) + finite.float()


def loss_mean(total: torch.Tensor, count: torch.Tensor) -> float | None:
    return float(total / count) if count > 0 else None


class Trainer:
    def __init__(
        self,
        config: AtlasConfig,
        ctx: DistributedContext,
        hooks: Sequence[TrainHooks] = (),
        progress: bool = True,
        deferred_checks: bool | None = None,
    ) -> None:
        """`deferred_checks`: check losses for non-finite values on the device and read the result only when
        logging (see `Update`); None: on CUDA, where a host read at every update would stall the queue."""
        self.config, self.ctx, self.hooks, self.progress = config, ctx, list(hooks), progress
        cfg = config.train
        self.store: Storage = storage_for(cfg.run_dir, config.storage)
        data_store = storage_for(config.dataset_url, config.storage)
        manifest = read_manifest(data_store, config.dataset_url)
        if manifest is None or not manifest["shards"]:
            raise ValueError(f"{config.dataset_url}: no ingested dataset there (manifest.json with shards)")
        self.manifest = manifest
        self.roles = band_roles(cfg, manifest["tile"]["bands"])
        self.bands: list[str] = self.roles.output_names  # what the generator draws
        self.input_bands: list[str] | None = self.roles.input_names  # what it reads (None: latent vectors)
        tile_size = manifest["tile"]["size"]
        image_size = cfg.image_size or tile_size
        if tile_size % image_size or tile_size < image_size:
            raise ValueError(f"train.image_size {image_size} must divide the dataset's tile size {tile_size}")
        found = list_checkpoints(self.store, cfg.run_dir)
        saved = load_checkpoint(self.store, found[-1][1], map_location=ctx.device) if found else None
        self.data_defaults = self._data_defaults(cfg, manifest, saved)
        cfg = apply_data_defaults(cfg, self.data_defaults)
        self.config = config = config.model_copy(update={"train": cfg})
        labels = scene_labels(manifest, cfg.condition, config.storage)
        self.scene_labels: dict[str, int] | None = labels.by_scene if labels else None
        self.vocabulary: LabelVocabulary | None = labels.vocabulary if labels else None
        num_classes = len(self.vocabulary.classes) if self.vocabulary else 0
        self.spec = model_spec(cfg, self.roles, image_size, num_classes)
        self.model_name = cfg.model.family
        device = ctx.device
        memory_format = torch.channels_last if (cfg.channels_last and device.type == "cuda") else None
        self.autocast_dtype = autocast_dtype(cfg.precision, device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN times its algorithms once, keeps the fastest
        torch.manual_seed(cfg.seed)  # the same initial weights for the same seed (rank 0's are broadcast anyway)
        self.split = self._split(data_store, cfg)
        self.recipe: Recipe = build_recipe(
            cfg, self.spec, ctx, self.autocast_dtype, memory_format, self.roles, self.vocabulary
        )
        self.state = Progress()
        self.rollbacks = 0
        self.resumed_from: int | None = None
        self._data_resume: DataResume | None = None  # where the data starts again (resume), None: at `epoch`
        self._loader: GroupedBatches | None = None  # run()'s, whose position checkpoints save
        torch.manual_seed(cfg.seed * 1000 + ctx.rank)  # per-rank randomness; replaced by the checkpoint's on resume
        self.examples = self._examples(cfg.sample_count)  # held-out tiles, for generators that read images
        self.fixed_inputs = self.recipe.fixed_inputs(cfg.sample_count, cfg.seed, self.examples)
        for network in self.recipe.networks.values():
            dist_utils.broadcast_module(network, ctx)
        self.emas = {
            name: EMA(self.recipe.networks[name], cfg.ema_half_life_kimg, cfg.ema_rampup)
            for name in self.recipe.ema_networks
        }
        self.update = Update(ctx, deferred=device.type == "cuda" if deferred_checks is None else deferred_checks)
        # deferred checks: the run of consecutive steps with a skipped update ending now, and such steps since the
        # last log record (device tensors, read when logging)
        self._bad_run = torch.zeros((), device=device)
        self._skipped_steps = torch.zeros((), device=device)
        self._stop_requested = False  # request_stop(): end after the step in progress, before `steps`
        self._resumed_seconds = 0.0  # training time of the invocations before, from the checkpoint resumed
        self._clock_zero = time.perf_counter()  # when the run would have started; run() sets it from the above
        self._budget_stopped = False  # the run ended on `train.max_minutes`, before `train.steps`
        self._calibrated_at: int | None = None  # the step the EMA generator was last made ready to sample at
        self.best_step: int | None = None  # rank 0: the evaluated checkpoint a hook scored best; pruning keeps it
        self.run_log: RunLog | None = None  # rank 0, from run()
        self.resume(saved)
        del saved

    def _split(self, data_store: Storage, cfg: TrainConfig) -> TileSplit | None:
        """The held-out tiles (`train.validation`; null fraction: 0.1 when the generator reads images, else 0)."""
        reads_images = RECIPES[get_family(cfg.model.family).recipe].signature == IMAGE
        fraction = validation_fraction(cfg.validation, reads_images)
        if fraction == 0:
            return None
        return dataset_split(data_store, self.config.dataset_url, self.manifest, cfg.validation, fraction)

    def _examples(self, count: int) -> torch.Tensor | None:
        """Up to `count` held-out tiles (any tiles without a split) in [-1, 1], for generators that read images."""
        if self.recipe.signature != IMAGE:
            return None
        keys = None
        if self.split is not None:
            labels = self.scene_labels or {}
            keys = frozenset(
                key
                for key in self.split.validation
                if self.recipe.takes_example(labels.get(self.split.scene_of[key]) if labels else None)
            )
        urls = shard_urls(self.manifest, self.config.dataset_url)
        return read_tiles(urls, keys, self.spec.image_size, self.config.storage, count)[1]

    @staticmethod
    def _data_defaults(cfg: TrainConfig, manifest: dict[str, Any], saved: dict[str, Any] | None) -> list[DataDefault]:
        """Settings left to the data: picked for this dataset, or (resuming) the values the run started with."""
        picks = pick_data_defaults(cfg, manifest["totals"]["samples"])
        if saved is None:
            return picks
        kept = []
        for pick in picks:
            value: Any = saved["config"]
            for part in pick.key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            reason = f"kept from the checkpoint of step {saved['step']}"
            kept.append(pick if value is None else DataDefault(pick.key, value, reason))
        return kept

    # ---- what hooks read ------------------------------------------------------------------------------------------

    def reference_generators(self) -> dict[str, nn.Module]:
        """Generators the recipe keeps to be scored beside the EMA generator (super-resolution's pixel-loss model)."""
        return self.recipe.reference_generators()

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def images_seen(self) -> int:
        return self.state.images_seen

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def label_meta(self) -> dict[str, Any] | None:
        """The label vocabulary as saved with checkpoints and models (None: unconditional)."""
        return self.vocabulary.to_dict() if self.vocabulary else None

    @property
    def generator(self) -> nn.Module:
        """The network the recipe calls the generator, as evaluated and registered: its EMA when it has one, made
        ready to sample by the recipe (batch-norm statistics) once per step, as the recipe serves it."""
        name = self.recipe.generator_name
        if name not in self.emas:
            return self.recipe.served(self.recipe.networks[name])
        self._calibrate_ema()
        return self.recipe.served(self.emas[name].model)

    def _calibrate_ema(self) -> None:
        """Let the recipe make the EMA generator ready to sample, unless it already did since the last update."""
        name = self.recipe.generator_name
        if name in self.emas and self._calibrated_at != self.step:
            self.recipe.calibrate(self.emas[name].model)
            self._calibrated_at = self.step

    def generator_meta(self) -> dict[str, Any]:
        """What evaluation, sampling and the registry need to know about the generator being trained."""
        return generator_meta(
            model=self.model_name,
            signature=self.recipe.signature,
            spec=asdict(self.spec),
            bands=self.bands,
            input_bands=self.input_bands,
            labels=self.label_meta,
            normalization=self.manifest["normalization"],
            step=self.step,
            images_seen=self.images_seen,
        )

    # ---- state -------------------------------------------------------------------------------------------------

    def _payload(
        self,
        rng_states: list[object],
        epochs: list[object],
        data_positions: list[object],
        recipe_ranks: list[object] | None,
    ) -> dict[str, Any]:
        recipe = self.recipe
        return {
            "step": self.step,
            "images_seen": self.images_seen,
            "epochs": epochs,
            "data_positions": data_positions,  # each rank's place in its data, for an exact resume
            "world_size": self.ctx.world_size,
            "rng": rng_states,
            "recipe": recipe.name,
            "model": self.model_name,
            "spec": asdict(self.spec),
            "bands": self.bands,
            "input_bands": self.input_bands,
            "dataset_checksum": self.manifest.get("checksum"),
            "normalization": self.manifest["normalization"],
            "labels": self.label_meta,
            "generator": {"network": recipe.generator_name, "signature": recipe.signature},
            "networks": {name: network.state_dict() for name, network in recipe.networks.items()},
            "ema": {name: ema.model.state_dict() for name, ema in self.emas.items()},
            "optimizers": {name: optimizer.state_dict() for name, optimizer in recipe.optimizers.items()},
            "grad_scaler": None,  # bf16 autocast needs none
            "recipe_state": recipe.state_dict(),
            "recipe_ranks": recipe_ranks,  # each rank's own recipe state, for an exact resume
            "rollbacks": self.rollbacks,
            "train_seconds": self.train_seconds,
            "config": config_to_dict(self.config),
        }

    def save(self) -> str:
        """Checkpoint on every rank's behalf (collective: call on all ranks)."""
        for network in self.recipe.networks.values():
            dist_utils.average_buffers(network, self.ctx)
        for name, ema in self.emas.items():
            ema.copy_buffers(self.recipe.networks[name])
        self._calibrated_at = None
        self._calibrate_ema()  # the saved EMA generator samples as it was evaluated
        rng_states = dist_utils.gather_objects(rng_state(), self.ctx)
        epochs = dist_utils.gather_objects(self.epoch, self.ctx)
        position = self._data_position()
        data_positions = dist_utils.gather_objects(position.to_dict() if position else None, self.ctx)
        own = self.recipe.rank_state_dict()
        recipe_ranks = dist_utils.gather_objects(own, self.ctx) if own is not None else None
        url = checkpoint_url(self.config.train.run_dir, self.step)
        if self.ctx.is_main:
            save_checkpoint(self.store, url, self._payload(rng_states, epochs, data_positions, recipe_ranks))
            prune_checkpoints(self.store, self.config.train.run_dir, self.config.train.keep_checkpoints, self.best_step)
            if self.run_log is not None:
                self.run_log.flush()
            for hook in self.hooks:
                hook.on_checkpoint(self, url)
        dist_utils.barrier(self.ctx)
        return url

    def resume(self, state: dict[str, Any] | None = None) -> bool:
        """Load the newest checkpoint of the run, if any (every rank reads it), or the already loaded `state`."""
        if state is None:
            found = list_checkpoints(self.store, self.config.train.run_dir)
            if not found:
                return False
            state = load_checkpoint(self.store, found[-1][1], map_location=self.ctx.device)
        step, url = state["step"], checkpoint_url(self.config.train.run_dir, state["step"])
        if ModelSpec(**state["spec"]) != self.spec or state["model"] != self.model_name:
            raise ValueError(
                f"{url}: checkpoint is {state['model']} {state['spec']}, the config asks for "
                f"{self.model_name} {asdict(self.spec)}; use another train.run_dir"
            )
        if state.get("labels") != self.label_meta:
            raise ValueError(
                f"{url}: checkpoint was trained with labels {state.get('labels')}, the data now gives "
                f"{self.label_meta}; "
                "use another train.run_dir"
            )
        recipe = self.recipe
        for name, network in recipe.networks.items():
            network.load_state_dict(state["networks"][name])
        for name, ema in self.emas.items():
            ema.model.load_state_dict(state["ema"][name])
        self._calibrated_at = None
        for name, optimizer in recipe.optimizers.items():
            configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
            optimizer.load_state_dict(state["optimizers"][name])
            for group, settings in zip(optimizer.param_groups, configured, strict=True):
                group.update(settings)  # the checkpoint gives the moments; the config, the hyperparameters
        same_world = state["world_size"] == self.ctx.world_size
        ranks = state.get("recipe_ranks")
        own = (ranks[self.ctx.rank] if same_world else ranks[0]) if ranks else None
        recipe.load_state_dict(state.get("recipe_state") or {}, own)
        self.state.step, self.state.images_seen = state["step"], state["images_seen"]
        self.rollbacks = state["rollbacks"]
        self._resumed_seconds = float(state.get("train_seconds", 0.0))  # 0 for checkpoints from before it was kept
        self.state.epoch = int(state["epochs"][self.ctx.rank] if same_world else min(state["epochs"]))
        self._data_resume = self._plan_data_resume(state, same_world)
        if same_world:
            restore_rng_state(state["rng"][self.ctx.rank])
        elif self.ctx.is_main:
            log.warning(
                "resuming %s saved by %d ranks on %d: RNG streams restart",
                url,
                state["world_size"],
                self.ctx.world_size,
            )
        self.resumed_from = step
        return True

    def _data_position(self) -> DataPosition | None:
        """This rank's place in its data: the running loader's, else the one resumed from (None: neither)."""
        if self._loader is not None:
            return self._loader.position
        return self._data_resume.position if self._data_resume else None

    def _plan_data_resume(self, state: dict[str, Any], same_world: bool) -> DataResume | None:
        """Where this rank's data continues from the checkpoint `state`; None: at the start of the newest epoch
        it drew from (checkpoints before data positions, another rank count or loader shape, a dataset that has
        changed since). Logged, except on a rollback, where the running loader goes on."""
        cfg, ctx = self.config.train, self.ctx
        same_data = state.get("dataset_checksum") == self.manifest.get("checksum")  # new shards: other streams
        positions = state.get("data_positions") or [None] * state["world_size"]
        saved = positions[ctx.rank] if same_world and same_data else None
        plan = None
        if saved is not None:
            pin = ctx.device.type == "cuda"
            workers, group = max(cfg.num_workers, 1), loader_group(cfg.num_workers, pin)
            plan = plan_resume(DataPosition.from_dict(saved), ctx.rank, cfg.batch_size, group, workers)
        if not ctx.is_main or self._loader is not None:  # a rollback: the running loader goes on
            return plan
        if plan is not None:
            log.info(
                "resuming step %d: the data continues where it stopped (each loader stream passes over what it "
                "had drawn of its current epoch first)",
                state["step"],
            )
        else:
            log.info(
                "resuming step %d: the data restarts at the start of epoch %d (the checkpoint has no data position "
                "for these ranks, loader workers, batch size and dataset), so the run leaves an uninterrupted one's "
                "path",
                state["step"],
                self.epoch,
            )
        return plan

    def training_loader(self) -> GroupedBatches:
        """This rank's batches of training tiles, as `run` reads them: where the checkpoint resumed from left them
        (else from the start of the current epoch)."""
        cfg, ctx = self.config.train, self.ctx
        resume = self._data_resume
        stream = TileStream(
            shard_urls(self.manifest, self.config.dataset_url),
            ctx.rank,
            ctx.world_size,
            image_size=self.spec.image_size,
            seed=cfg.seed,
            start_epoch=resume.position.origin if resume else self.epoch,
            shuffle_buffer=cfg.shuffle_buffer,
            augment_config=cfg.augment,
            storage=self.config.storage,
            scene_labels=self.scene_labels,
            exclude=self.split.excluded if self.split else frozenset(),
            starts=resume.starts if resume else None,
            rotation=resume.rotation if resume else 0,
        )
        return make_loader(stream, cfg.batch_size, cfg.num_workers, ctx.device.type == "cuda", resume=resume)

    # ---- one step ------------------------------------------------------------------------------------------------

    def train_step(self, batches: Iterator[Batch]) -> dict[str, torch.Tensor] | None:
        """The recipe's step, then the EMAs; the losses as (device) tensors, or None when a non-finite loss made
        every rank skip it (with deferred checks such a step counts as done and shows in the bad-step counters)."""
        losses = self.recipe.step(batches, self.update, self.state)
        if losses is None:
            return None
        images = self.recipe.images_per_step * self.ctx.world_size
        for name, ema in self.emas.items():
            ema.update(self.recipe.networks[name], images, self.images_seen)
        if self.update.deferred:
            bad = (self.update.skipped > 0).float()
            self._bad_run.add_(1).mul_(bad)
            self._skipped_steps.add_(bad)
            self.update.skipped.zero_()
        self.state.step += 1
        self._calibrated_at = None
        return losses

    def _rollback(self, bad_steps: int) -> None:
        self.rollbacks += 1
        if self.rollbacks > self.config.train.max_rollbacks:
            raise TrainingDiverged(
                f"losses non-finite for {bad_steps} steps in a row at step {self.step}, after "
                f"{self.config.train.max_rollbacks} rollbacks; lower the learning rates or check the data"
            )
        rollbacks = self.rollbacks
        if not self.resume():
            raise TrainingDiverged(f"losses non-finite at step {self.step} and no checkpoint to roll back to")
        self.rollbacks = rollbacks
        if self.ctx.is_main:
            log.warning(
                "losses non-finite for %d steps: rolled back to the checkpoint of step %d (rollback %d/%d)",
                bad_steps,
                self.step,
                self.rollbacks,
                self.config.train.max_rollbacks,
            )
            self.log_event({"event": "rollback", "step": self.step, "rollback": self.rollbacks})

    # ---- outputs ---------------------------------------------------------------------------------------------------

    def log_event(self, record: dict[str, Any]) -> None:
        """Rank 0 (hooks too): add a record to run_dir/log.jsonl."""
        if self.run_log is None:
            self.run_log = RunLog(self.store, self.config.train.run_dir)
        self.run_log.write(record)

    def fixed_samples(self) -> torch.Tensor:
        """Rank 0: the (EMA) generator's images of the fixed inputs, float32 on the CPU, in [-1, 1] (drawn in
        eval mode: a live generator's batch-norm statistics are not touched)."""
        generator = self.generator
        was_training = generator.training
        try:
            with torch.no_grad(), self.recipe.autocast():
                return generator.eval()(*self.fixed_inputs).float().cpu()
        finally:
            generator.train(was_training)

    @property
    def display_bands(self) -> list[str | int] | None:
        """`train.rgb_bands` where the generator draws them (a translation may draw other bands)."""
        rgb = self.config.train.rgb_bands
        if rgb is None or self.input_bands is None:
            return rgb
        named = [self.roles.names[b - 1] if isinstance(b, int) else b for b in rgb]
        return named if all(name.lower() in map(str.lower, self.bands) for name in named) else None

    def write_samples(self) -> list[str]:
        """Rank 0: fixed-input grids from the (EMA) generator (RGB triplet, then the other bands in threes)."""
        prefix = join_url(self.config.train.run_dir, "samples", f"step-{self.step:08d}")
        return write_sample_grids(self.store, prefix, self.fixed_samples(), self.bands, self.display_bands)

    def fingerprint(self) -> str:
        """Digest of every network's parameters: equal on every rank when training is in sync."""
        digest = hashlib.sha256()
        for network in self.recipe.networks.values():
            for value in network.state_dict().values():
                if isinstance(value, torch.Tensor):
                    digest.update(value.detach().cpu().contiguous().numpy().tobytes())
                else:  # a module's extra state (a growing network's level)
                    digest.update(repr(value).encode())
        return digest.hexdigest()

    # ---- the loop ----------------------------------------------------------------------------------------------------

    def _tracking_epochs(self, loader: Iterable[Batch]) -> Iterator[Batch]:
        """The loader's batches, noting the newest data epoch seen (checkpoints restart the stream there)."""
        for batch in loader:
            self.state.epoch = max(self.state.epoch, int(batch["epoch"].max()))
            yield batch

    def request_stop(self) -> None:
        """End the run after the step in progress, as if it were the last of `train.steps` (logged, evaluated and
        checkpointed). For hooks with a budget of their own (a wall-clock one in bench/quality.py); under DDP every
        rank must request it at the same step."""
        self._stop_requested = True

    @property
    def train_seconds(self) -> float:
        """Wall-clock seconds this run has trained, evaluations included: the invocations before (up to the
        checkpoint resumed from; time after a crashed invocation's last checkpoint is not counted) and this one."""
        return time.perf_counter() - self._clock_zero

    def _budget_spent(self) -> bool:
        """Whether the run has trained `train.max_minutes`, the same answer on every rank: alone, asked after every
        step; under DDP only at log steps (the ranks synchronize there anyway), where one all-reduce makes the
        slowest rank's clock decide."""
        budget = self.config.train.max_minutes
        if budget is None:
            return False
        if self.ctx.enabled and self.step % self.config.train.log_every != 0:
            return False
        spent = self.train_seconds >= budget * 60
        if self.ctx.enabled:
            flag = torch.tensor([float(spent)], device=self.ctx.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            spent = bool(flag.item())
        if spent and self.ctx.is_main:
            log.info(
                "train.max_minutes (%g) spent at step %d of %d: this step is the last",
                budget,
                self.step,
                self.config.train.steps,
            )
            self.log_event({"event": "time_budget_spent", "step": self.step, "max_minutes": budget})
        return spent

    def run(self) -> dict[str, Any]:
        cfg, ctx = self.config.train, self.ctx
        self._clock_zero = time.perf_counter() - self._resumed_seconds  # fixed here: rollbacks do not move it
        if ctx.is_main:
            self.run_log = RunLog(self.store, cfg.run_dir)
            self.store.write_bytes(
                join_url(cfg.run_dir, "config.json"), json.dumps(config_to_dict(self.config), indent=2).encode()
            )
            self.log_event(
                {
                    "event": "start",
                    "step": self.step,
                    "world_size": ctx.world_size,
                    "resumed_from": self.resumed_from,
                    "model": self.model_name,
                    "global_batch": cfg.batch_size * ctx.world_size,
                    "device": str(ctx.device),
                }
            )
            if self.split is not None:
                summary = {**self.split.summary(), "dataset_checksum": self.manifest.get("checksum")}
                self.store.write_bytes(join_url(cfg.run_dir, SPLIT_NAME), json.dumps(summary, indent=1).encode())
                counts = {k: v for k, v in summary.items() if k != "validation_keys"}
                self.log_event({"event": "split", "step": self.step, **counts})
                log.info(
                    "validation split (%s): %d tiles held out, %d in the buffer around them, %d train",
                    self.split.settings["by"],
                    len(self.split.validation),
                    len(self.split.buffer),
                    self.split.train_count,
                )
            if self.data_defaults:
                self.log_event(
                    {
                        "event": "data_defaults",
                        "step": self.step,
                        "picked": {p.key: {"value": p.value, "reason": p.reason} for p in self.data_defaults},
                    }
                )
                for pick in self.data_defaults:
                    log.info("%s = %s: %s", pick.key, pick.value, pick.reason)
            for hook in self.hooks:
                hook.on_start(self)
        loader = self._loader = self.training_loader()
        batches = self._tracking_epochs(loader)
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            unit="step",
            file=sys.stderr,
            disable=not (self.progress and ctx.is_main),
        )
        window_start, window_images, bad_steps = time.perf_counter(), self.images_seen, 0
        sums: dict[str, torch.Tensor] = {}  # each loss summed over the steps since the last log record
        counts: dict[str, torch.Tensor] = {}  # steps that reported it finite (a recipe's losses change with its phase)
        while self.step < cfg.steps and not self._stop_requested:
            for hook in self.hooks:
                hook.on_step_start(self)
            losses = self.train_step(batches)
            if losses is None:
                bad_steps += 1
                if ctx.is_main:
                    log.warning("non-finite loss at step %d: step skipped (%d in a row)", self.step, bad_steps)
                if bad_steps >= cfg.nan_patience:
                    self._rollback(bad_steps)
                    bad_steps = 0
                continue
            bad_steps = 0
            add_losses(sums, counts, losses)
            bar.update()
            if self.step < cfg.steps and self._budget_spent():
                self._stop_requested = self._budget_stopped = True
            last = self.step == cfg.steps or self._stop_requested
            evaluating = bool(cfg.evaluate_every) and (self.step % cfg.evaluate_every == 0 or last)
            # an evaluated generator is checkpointed too, so the best scored can be registered
            # (evaluate.register_checkpoint)
            at_checkpoint = self.step % cfg.checkpoint_every == 0 or last or evaluating
            checked = self.update.deferred and (at_checkpoint or self.step % cfg.log_every == 0)
            if checked and not self._deferred_checks_pass(at_checkpoint):
                sums, counts = {}, {}
                window_start, window_images = time.perf_counter(), self.images_seen
                continue
            if self.step % cfg.log_every == 0 or last:
                self._log_step(sums, counts, window_start, window_images)
                sums, counts = {}, {}
                window_start, window_images = time.perf_counter(), self.images_seen
            if self.step % cfg.sample_every == 0 and ctx.is_main:
                urls = self.write_samples()
                for hook in self.hooks:
                    hook.on_samples(self, urls)
            if evaluating:
                evaluation_started = time.perf_counter()
                for hook in self.hooks:
                    hook.on_evaluate(self)
                window_start += time.perf_counter() - evaluation_started  # images/s counts training time only
            if at_checkpoint:
                self.save()
        bar.close()
        return self._finish()

    def _deferred_checks_pass(self, at_checkpoint: bool) -> bool:
        """Deferred checks, read at a log or checkpoint step (one wait for the device): warn about steps whose
        update was skipped; roll back when the last `nan_patience` steps all were, or when any of the last steps
        were and a checkpoint is due (its weights may be what made the losses non-finite). False after a
        rollback."""
        bad_run, skipped = (int(v) for v in torch.stack([self._bad_run, self._skipped_steps]).tolist())
        self._skipped_steps.zero_()
        if skipped and self.ctx.is_main:
            log.warning("non-finite loss: %d steps up to step %d skipped an update", skipped, self.step)
        if bad_run >= self.config.train.nan_patience or (bad_run and at_checkpoint):
            self._bad_run.zero_()
            self._rollback(bad_run)
            return False
        return True

    def _log_step(
        self,
        sums: dict[str, torch.Tensor],
        counts: dict[str, torch.Tensor],
        window_start: float,
        window_images: int,
    ) -> None:
        """One log record: each loss averaged over the steps (and ranks) that reported it since the last one."""
        first = [key for key in ("loss_d", "loss_g") if key in sums]
        keys = [*first, *sorted(set(sums) - set(first))]  # the same on every rank: every rank runs the same phase
        totals = torch.stack([sums[key] for key in keys] + [counts[key] for key in keys]).double()
        if self.ctx.enabled:
            torch.distributed.all_reduce(totals)  # losses averaged over ranks (on the device: NCCL needs it there)
        totals = totals.cpu()
        elapsed = time.perf_counter() - window_start
        record = {
            "step": self.step,
            "images_seen": self.images_seen,
            "epoch": self.epoch,
            **{key: loss_mean(totals[i], totals[len(keys) + i]) for i, key in enumerate(keys)},
            "images_per_s": (self.images_seen - window_images) / elapsed if elapsed > 0 else None,
            "time": time.time(),
            **self.recipe.log_values(),
        }
        if self.ctx.is_main:
            self.log_event(record)
            if not self.progress:  # no bar to watch: one line per log record (the Prefect task's log shows these)
                log.info("%s", progress_line(record, self.config.train.steps))
            for hook in self.hooks:
                hook.on_log(self, record)

    def _finish(self) -> dict[str, Any]:
        fingerprints = dist_utils.gather_objects(self.fingerprint(), self.ctx)
        summary = {
            "event": "end",
            "step": self.step,
            "images_seen": self.images_seen,
            "checkpoint": checkpoint_url(self.config.train.run_dir, self.step),
            "rank_fingerprints": fingerprints,
            "ranks_in_sync": len(set(fingerprints)) == 1,
            "stopped_by_time_budget": self._budget_stopped,
        }
        if self.ctx.is_main:
            self.log_event(summary)
            if self.run_log is not None:
                self.run_log.flush()
            for hook in self.hooks:
                hook.on_end(self, summary)
        return summary
