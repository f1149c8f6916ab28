"""The GAN training loop that `torchrun` runs on every rank (or one process on its own).

One *step* is one generator update, preceded by the family's `n_critic` discriminator updates. Gradients are
averaged over ranks by hand (see `distributed.py`); a step whose loss is not finite on any rank is skipped on all
of them, and `nan_patience` such steps in a row roll the run back to its last checkpoint. On start the trainer
resumes from the newest checkpoint in `run_dir`, so `torchrun --max-restarts=K` simply continues after a failure.
MLflow and metrics plug in through `TrainHooks`; nothing here imports them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from functools import partial
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from atlas_gan.config import AtlasConfig, TrainConfig, config_to_dict
from atlas_gan.labels import LabelVocabulary, scene_labels
from atlas_gan.losses import discriminator_loss, generator_loss, gradient_penalty, r1_penalty
from atlas_gan.models import GANFamily, ModelSpec, build, get_family
from atlas_gan.shards import read_manifest, shard_urls
from atlas_gan.storage import Storage, join_url, storage_for
from atlas_gan.train import distributed as dist_utils
from atlas_gan.train.ada import AdaptiveAugment
from atlas_gan.train.checkpoint import (
    checkpoint_url,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from atlas_gan.train.data import TileStream, make_loader
from atlas_gan.train.diffaugment import DiffAugment
from atlas_gan.train.distributed import DistributedContext
from atlas_gan.train.ema import EMA
from atlas_gan.train.path_length import PathLengthRegularizer
from atlas_gan.train.sample_grid import write_sample_grids

log = logging.getLogger("atlas_gan.train")
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images, labels, epochs


class TrainingDiverged(RuntimeError):
    """Losses stayed non-finite after every allowed rollback."""


class TrainHooks:
    """Extension points (metrics, MLflow). Called on rank 0 unless noted; the defaults do nothing."""

    def on_start(self, trainer: Trainer) -> None: ...

    def on_step_start(self, trainer: Trainer) -> None:
        """Every rank, before each step."""

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None: ...

    def on_samples(self, trainer: Trainer, urls: list[str]) -> None: ...

    def on_checkpoint(self, trainer: Trainer, url: str) -> None: ...

    def on_evaluate(self, trainer: Trainer) -> None:
        """Every rank, every `evaluate_every` steps (evaluation may itself be distributed)."""

    def on_end(self, trainer: Trainer, summary: dict[str, Any]) -> None: ...


def attention_resolution(family: GANFamily, cfg: TrainConfig, image_size: int) -> int:
    if cfg.attention_resolution is None:
        return family.default_attention_resolution(image_size)
    if not family.attention:
        raise ValueError(f"train.attention_resolution: {family.name} has no self-attention block (sagan has)")
    return cfg.attention_resolution


def make_optimizer(
    family: GANFamily, parameters: Iterator[nn.Parameter], lr: float, lazy_interval: int = 0
) -> torch.optim.Optimizer:
    """The family's optimizer. `lazy_interval` > 0: a regularizer runs every that many steps as an extra term of
    the loss, so (as in StyleGAN2) lr and Adam's betas are scaled to keep the combined update's size."""
    if lazy_interval:
        ratio = lazy_interval / (lazy_interval + 1)
        lr, betas = lr * ratio, (family.betas[0] ** ratio, family.betas[1] ** ratio)
    else:
        betas = family.betas
    if family.optimizer == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr)
    return torch.optim.Adam(parameters, lr=lr, betas=betas)


def make_augment(cfg: TrainConfig) -> DiffAugment | AdaptiveAugment:
    if cfg.ada is None:
        return DiffAugment(cfg.diffaugment)
    ada = cfg.ada
    return AdaptiveAugment(ada.groups, ada.target, ada.interval, ada.speed_kimg, ada.initial_p)


class Trainer:
    def __init__(
        self, config: AtlasConfig, ctx: DistributedContext, hooks: Sequence[TrainHooks] = (), progress: bool = True
    ) -> None:
        self.config, self.ctx, self.hooks, self.progress = config, ctx, list(hooks), progress
        cfg = config.train
        self.store: Storage = storage_for(cfg.run_dir, config.storage)
        data_store = storage_for(config.dataset_url, config.storage)
        manifest = read_manifest(data_store, config.dataset_url)
        if manifest is None or not manifest["shards"]:
            raise ValueError(f"{config.dataset_url}: no ingested dataset there (manifest.json with shards)")
        self.manifest = manifest
        self.bands: list[str] = manifest["tile"]["bands"]
        tile_size = manifest["tile"]["size"]
        image_size = cfg.image_size or tile_size
        if tile_size % image_size or tile_size < image_size:
            raise ValueError(f"train.image_size {image_size} must divide the dataset's tile size {tile_size}")
        labels = scene_labels(manifest, cfg.condition, config.storage)
        self.scene_labels: dict[str, int] | None = labels.by_scene if labels else None
        self.vocabulary: LabelVocabulary | None = labels.vocabulary if labels else None
        family = get_family(cfg.model)
        self.spec = ModelSpec(
            len(self.bands),
            image_size,
            cfg.latent_dim,
            cfg.g_width,
            cfg.d_width,
            num_classes=len(self.vocabulary.classes) if self.vocabulary else 0,
            attention_resolution=attention_resolution(family, cfg, image_size),
        )
        torch.manual_seed(cfg.seed)  # the same initial weights for the same seed (rank 0's are broadcast anyway)
        family, generator, discriminator = build(cfg.model, self.spec)
        self.family: GANFamily = family
        self.n_critic = cfg.n_critic or family.n_critic
        self.augment = make_augment(cfg)
        self.ada = self.augment if isinstance(self.augment, AdaptiveAugment) else None
        if self.ada and family.loss == "wasserstein":
            raise ValueError(
                f"train.ada: {family.name}'s critic values have an arbitrary offset, so ADA's overfitting "
                "heuristic E[sign(D(real))] means nothing there; use train.diffaugment"
            )
        self.r1_gamma = (
            cfg.r1_gamma
            if cfg.r1_gamma is not None
            else family.default_r1_gamma(image_size, cfg.batch_size * ctx.world_size)
        )
        pl_weight = cfg.path_length_weight if cfg.path_length_weight is not None else family.pl_weight
        if pl_weight and not hasattr(generator, "styles"):
            raise ValueError(f"train.path_length_weight: {family.name} has no style space (stylegan2 has)")
        self.path_length = PathLengthRegularizer(pl_weight, family.pl_interval)
        device = ctx.device
        self.memory_format = torch.channels_last if (cfg.channels_last and device.type == "cuda") else None
        self.G = generator.to(device, memory_format=self.memory_format or torch.contiguous_format)
        self.D = discriminator.to(device, memory_format=self.memory_format or torch.contiguous_format)
        lazy_g = family.pl_interval if pl_weight else 0
        lazy_d = family.r1_interval if self.r1_gamma else 0
        self.opt_g = make_optimizer(family, self.G.parameters(), cfg.lr_g or family.lr_g, lazy_g)
        self.opt_d = make_optimizer(family, self.D.parameters(), cfg.lr_d or family.lr_d, lazy_d)
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.step = 0
        self.images_seen = 0
        self.epoch = 0
        self.rollbacks = 0
        self.resumed_from: int | None = None
        torch.manual_seed(cfg.seed * 1000 + ctx.rank)  # per-rank latents; replaced by the checkpoint's on resume
        fixed = torch.Generator().manual_seed(cfg.seed)
        self.fixed_latents = torch.randn(cfg.sample_count, cfg.latent_dim, generator=fixed).to(device)
        self.fixed_labels = None  # conditional: the sample grid shows the classes in equal blocks, in order
        if self.spec.conditional:
            self.fixed_labels = (torch.arange(cfg.sample_count) * self.spec.num_classes // cfg.sample_count).to(device)
        dist_utils.broadcast_module(self.G, ctx)
        dist_utils.broadcast_module(self.D, ctx)
        self.ema = EMA(self.G, cfg.ema_half_life_kimg, cfg.ema_rampup)
        self._log_lines: list[str] = []
        self.resume()

    @property
    def label_meta(self) -> dict[str, Any] | None:
        """The label vocabulary as saved with checkpoints and models (None: unconditional)."""
        return self.vocabulary.to_dict() if self.vocabulary else None

    # ---- state -------------------------------------------------------------------------------------------------

    def _payload(
        self, rng_states: list[object], epochs: list[object], augment_states: list[object] | None
    ) -> dict[str, Any]:
        return {
            "step": self.step,
            "images_seen": self.images_seen,
            "epochs": epochs,
            "world_size": self.ctx.world_size,
            "rng": rng_states,
            "model": self.family.name,
            "spec": asdict(self.spec),
            "bands": self.bands,
            "dataset_checksum": self.manifest.get("checksum"),
            "normalization": self.manifest["normalization"],
            "labels": self.label_meta,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.ema.model.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "grad_scaler": None,  # bf16 autocast needs none
            "augment": augment_states[0] if augment_states else None,  # p and the step counter: equal on all ranks
            "augment_ranks": augment_states,  # with each rank's own sign accumulators, for an exact resume
            "path_length": self.path_length.state_dict(),
            "rollbacks": self.rollbacks,
            "config": config_to_dict(self.config),
        }

    def save(self) -> str:
        """Checkpoint on every rank's behalf (collective: call on all ranks)."""
        dist_utils.average_buffers(self.G, self.ctx)
        dist_utils.average_buffers(self.D, self.ctx)
        self.ema.copy_buffers(self.G)
        rng_states = dist_utils.gather_objects(rng_state(), self.ctx)
        epochs = dist_utils.gather_objects(self.epoch, self.ctx)
        augment_states = None
        if self.ada:
            own = {key: value.cpu() for key, value in self.ada.state_dict().items()}
            augment_states = dist_utils.gather_objects(own, self.ctx)
        url = checkpoint_url(self.config.train.run_dir, self.step)
        if self.ctx.is_main:
            save_checkpoint(self.store, url, self._payload(rng_states, epochs, augment_states))
            prune_checkpoints(self.store, self.config.train.run_dir, self.config.train.keep_checkpoints)
            for hook in self.hooks:
                hook.on_checkpoint(self, url)
        dist_utils.barrier(self.ctx)
        return url

    def resume(self) -> bool:
        """Load the newest checkpoint of the run, if any (every rank reads it)."""
        found = list_checkpoints(self.store, self.config.train.run_dir)
        if not found:
            return False
        step, url = found[-1]
        state = load_checkpoint(self.store, url, map_location=self.ctx.device)
        if state["spec"] != asdict(self.spec) or state["model"] != self.family.name:
            raise ValueError(
                f"{url}: checkpoint is {state['model']} {state['spec']}, the config asks for "
                f"{self.family.name} {asdict(self.spec)}; use another train.run_dir"
            )
        if state.get("labels") != self.label_meta:
            raise ValueError(
                f"{url}: checkpoint was trained with labels {state.get('labels')}, the data now gives "
                f"{self.label_meta}; "
                "use another train.run_dir"
            )
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.ema.model.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        same_world = state["world_size"] == self.ctx.world_size
        if self.ada and state.get("augment"):
            ranks = state.get("augment_ranks")
            self.ada.load_state_dict(ranks[self.ctx.rank] if ranks and same_world else state["augment"])
        if state.get("path_length"):
            self.path_length.load_state_dict(state["path_length"])
        self.step, self.images_seen, self.rollbacks = state["step"], state["images_seen"], state["rollbacks"]
        self.epoch = int(state["epochs"][self.ctx.rank] if same_world else min(state["epochs"]))
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

    # ---- one step ------------------------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype)

    def _latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.spec.latent_dim, device=self.ctx.device)

    def _real(self, batches: Iterator[Batch]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Real images and, when conditional, their labels (which the fakes of the same step reuse, so G is
        asked for each label as often as the data holds it)."""
        real, labels, epochs = next(batches)
        self.epoch = max(self.epoch, int(epochs.max()))
        real = real.to(self.ctx.device, non_blocking=True)
        real = real.contiguous(memory_format=self.memory_format) if self.memory_format else real
        return real, labels.to(self.ctx.device) if self.spec.conditional else None

    def _discriminate(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """D's output on augmented images (DiffAugment or ADA; identity without either)."""
        augmented = self.augment(images)
        if self.memory_format and augmented is not images:  # ADA's resampling returns NCHW
            augmented = augmented.contiguous(memory_format=self.memory_format)
        return self.D(augmented, labels)

    def _clip_discriminator(self) -> None:
        if self.family.weight_clip:
            with torch.no_grad():
                for parameter in self.D.parameters():
                    parameter.clamp_(-self.family.weight_clip, self.family.weight_clip)

    def train_step(self, batches: Iterator[Batch]) -> dict[str, float] | None:
        """n_critic D updates and one G update; None when a non-finite loss made every rank skip it."""
        batch = self.config.train.batch_size
        loss_d_total = 0.0
        for critic_step in range(self.n_critic):
            real, labels = self._real(batches)
            # The last critic step's fakes keep their graph and serve the G update too (one G forward per step,
            # as pytorch/examples' DCGAN does); D only ever sees them detached.
            with torch.set_grad_enabled(critic_step == self.n_critic - 1), self._autocast():
                fake = self.G(self._latents(batch), labels)
            detached = fake.detach()
            # lazy R1 (StyleGAN2): every r1_interval steps, on the real images before augmentation
            r1_due = self.r1_gamma > 0 and critic_step == 0 and self.step % self.family.r1_interval == 0
            real = real.detach().requires_grad_(r1_due)
            with self._autocast():
                real_logits = self._discriminate(real, labels)
                loss_d = discriminator_loss(self.family.loss, real_logits, self._discriminate(detached, labels))
            if self.ada:
                self.ada.observe(real_logits)
            if r1_due:
                loss_d = loss_d + r1_penalty(real_logits, real) * (self.r1_gamma / 2 * self.family.r1_interval)
            if self.family.gradient_penalty:
                critic = partial(self._discriminate, labels=labels)
                loss_d = loss_d + self.family.gradient_penalty * gradient_penalty(critic, real, detached)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            dist_utils.average_gradients(self.D, self.ctx)
            if not dist_utils.all_true(bool(torch.isfinite(loss_d)), self.ctx):
                return None
            self.opt_d.step()
            self._clip_discriminator()
            loss_d_total += float(loss_d.detach())
            self.images_seen += batch * self.ctx.world_size

        self.D.requires_grad_(False)
        with self._autocast():
            loss_g = generator_loss(self.family.loss, self._discriminate(fake, labels))
            if self.path_length.due(self.step):
                loss_g = loss_g + self.path_length.penalty(self.G, batch, labels, self.ctx)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.D.requires_grad_(True)
        dist_utils.average_gradients(self.G, self.ctx)
        if not dist_utils.all_true(bool(torch.isfinite(loss_g)), self.ctx):
            return None
        self.opt_g.step()
        self.ema.update(self.G, batch * self.ctx.world_size, self.images_seen)
        if self.ada:
            self.ada.adjust(batch * self.ctx.world_size * self.n_critic, self.ctx)
        self.step += 1
        return {"loss_d": loss_d_total / self.n_critic, "loss_g": float(loss_g.detach())}

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
        """Rank 0 (hooks too): add a JSON line to run_dir/log.jsonl (rewritten whole, so S3 run dirs work too)."""
        self._log_lines.append(json.dumps(record))
        text = "\n".join(self._log_lines) + "\n"
        self.store.write_bytes(join_url(self.config.train.run_dir, "log.jsonl"), text.encode())

    def _load_log(self) -> None:
        url = join_url(self.config.train.run_dir, "log.jsonl")
        if self.store.exists(url):
            self._log_lines = [line for line in self.store.read_bytes(url).decode().splitlines() if line.strip()]

    def generator_meta(self) -> dict[str, Any]:
        """What evaluation needs to know about the generator being trained."""
        return {
            "step": self.step,
            "model": self.family.name,
            "spec": asdict(self.spec),
            "bands": self.bands,
            "labels": self.label_meta,
        }

    def write_samples(self) -> list[str]:
        """Rank 0: fixed-latent grids from the EMA generator (RGB triplet, then the other bands in threes)."""
        with torch.no_grad(), self._autocast():
            images = self.ema.model(self.fixed_latents, self.fixed_labels).float().cpu()
        prefix = join_url(self.config.train.run_dir, "samples", f"step-{self.step:08d}")
        return write_sample_grids(self.store, prefix, images, self.bands, self.config.train.rgb_bands)

    def fingerprint(self) -> str:
        """Digest of G's and D's parameters: equal on every rank when training is in sync."""
        digest = hashlib.sha256()
        for model in (self.G, self.D):
            for tensor in model.state_dict().values():
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    # ---- the loop ----------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg, ctx = self.config.train, self.ctx
        if ctx.is_main:
            self._load_log()
            self.store.write_bytes(
                join_url(cfg.run_dir, "config.json"), json.dumps(config_to_dict(self.config), indent=2).encode()
            )
            self.log_event(
                {
                    "event": "start",
                    "step": self.step,
                    "world_size": ctx.world_size,
                    "resumed_from": self.resumed_from,
                    "model": self.family.name,
                    "global_batch": cfg.batch_size * ctx.world_size,
                    "device": str(ctx.device),
                }
            )
            for hook in self.hooks:
                hook.on_start(self)
        stream = TileStream(
            shard_urls(self.manifest, self.config.dataset_url),
            ctx.rank,
            ctx.world_size,
            self.spec.image_size,
            cfg.seed,
            self.epoch,
            cfg.shuffle_buffer,
            cfg.augment,
            self.config.storage,
            self.scene_labels,
        )
        batches = iter(make_loader(stream, cfg.batch_size, cfg.num_workers, ctx.device.type == "cuda"))
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            unit="step",
            file=sys.stderr,
            disable=not (self.progress and ctx.is_main),
        )
        window_start, window_images, bad_steps = time.perf_counter(), self.images_seen, 0
        sums = torch.zeros(3, dtype=torch.float64)
        while self.step < cfg.steps:
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
            sums += torch.tensor([losses["loss_d"], losses["loss_g"], 1.0], dtype=torch.float64)
            bar.update()
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._log_step(sums, window_start, window_images)
                sums.zero_()
                window_start, window_images = time.perf_counter(), self.images_seen
            if self.step % cfg.sample_every == 0 and ctx.is_main:
                urls = self.write_samples()
                for hook in self.hooks:
                    hook.on_samples(self, urls)
            if cfg.evaluate_every and self.step % cfg.evaluate_every == 0:
                for hook in self.hooks:
                    hook.on_evaluate(self)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
        bar.close()
        return self._finish()

    def _log_step(self, sums: torch.Tensor, window_start: float, window_images: int) -> None:
        if self.ctx.enabled:
            torch.distributed.all_reduce(sums)  # losses averaged over ranks
        elapsed = time.perf_counter() - window_start
        record = {
            "step": self.step,
            "images_seen": self.images_seen,
            "epoch": self.epoch,
            "loss_d": float(sums[0] / sums[2]),
            "loss_g": float(sums[1] / sums[2]),
            "images_per_s": (self.images_seen - window_images) / elapsed if elapsed > 0 else None,
            "time": time.time(),
        }
        if self.ada:
            record["augment_p"] = self.ada.p
            record["augment_rt"] = self.ada.rt
        if self.ctx.is_main:
            self.log_event(record)
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
        }
        if self.ctx.is_main:
            self.log_event(summary)
            for hook in self.hooks:
                hook.on_end(self, summary)
        return summary


def load_generator(store: Storage, url: str, ema: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The (EMA) generator of a checkpoint, in eval mode on CPU, with the checkpoint's metadata."""
    state = load_checkpoint(store, url)
    spec = ModelSpec(**state["spec"])
    _, generator, _ = build(state["model"], spec)
    generator.load_state_dict(state["G_ema" if ema else "G"])
    meta = {k: state[k] for k in ("step", "images_seen", "model", "spec", "bands", "normalization")}
    return generator.eval(), {**meta, "labels": state.get("labels")}
