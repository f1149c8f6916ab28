"""The GPU path measured in one prepared run: training throughput per precision, data-loader wait, FID 50k timing.

    python bench/gpu_pack.py                    # here (needs rasterio): real shards + fp16 Inception -> .gpu-pack
    python bench/gpu.py OUT [--pack .gpu-pack] [--budget-s 330] [--fid-n 50000] [--fid-batch 500]
    python bench/gpu.py OUT --smoke             # the same code paths on CPU in seconds (the test suite runs it)

For each case (DCGAN 64 px; FastGAN 128 px, the small-data family; StyleGAN2 128 and 256 px with config-f channels,
ADA, lazy R1 and path length) it builds the real `Trainer` on the packed landsat8-parana shards and times
`Trainer.train_step` on batches held on the device, in each mode:
  fp32             train.precision=fp32, train.channels_last=false
  bf16             bf16 autocast, NCHW
  bf16+cl          bf16 autocast, channels_last (atlas-gan's GPU default: finite checks stay on the device)
  bf16+cl+host-checks  the same with the loss read back on the host at every update (the CPU default; what the
                   GPU did before deferred checks), so the gain of keeping the host off the device's queue shows
  bf16+cl+compile  the same with every network compiled in place (`nn.Module.compile`): an experiment, not a
                   trainer option, since it fails on GPU (torch 2.11: see the README's GPU section)
printing images/s, s/kimg and peak memory. For the default mode it then feeds the same trainer from the real data
loader (`Trainer.training_loader`: TileStream + DataLoader, with train.num_workers workers) and reports the share of
throughput against the in-memory figure: 1 - that ratio is the share of each step data loading costs (the goal's
"GPU waits on data"; it includes the host time the loader takes from kernel launches), beside the share of wall
time spent blocked in the loader's next() (which misses that host time).
FID: 50,000 samples of the DCGAN generator at 64 px through atlas-gan's FID path (`generated_batches`, `embed_batches`,
`FeatureStats`, `frechet_distance`) against reference features of the packed real tiles embedded beforehand (the
cache), timed in fp32 and again in bf16 on the same samples, each against the reference embedded in the same
precision (as atlas-gan's evaluation does); prints both and their relative difference. With the
packed half-precision Inception weights (upcast to fp32) FID values are not comparable with published ones; the
timing and the bf16-vs-fp32 difference are what this measures.

Every figure goes to OUT/gpu.json, rewritten after each measurement (a run cut short keeps what it measured).
Compile modes run last and only while `--budget-s` lasts. Needs torch, numpy, pyyaml, tqdm and pydantic (carried
as wheels to the GPU machine: see the README's GPU section); no GDAL, webdataset, MLflow or Prefect.
Not a test: no thresholds; the goals of issue 20 are printed beside the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from atlas_gan.config import load_config
from atlas_gan.metrics.features import embed_batches, generated_batches
from atlas_gan.metrics.scores import FeatureStats, frechet_distance
from atlas_gan.metrics.weights import load_inception, resolve_weights
from atlas_gan.runtime import distributed
from atlas_gan.shards import shard_urls
from atlas_gan.storage import LocalStorage
from atlas_gan.train.data import read_tiles
from atlas_gan.train.trainer import Trainer

STYLEGAN2 = ["train.model=stylegan2", "train.g_width=64", "train.d_width=64", "train.latent_dim=512"]
STYLEGAN2 += ["train.ada.groups=[blit,geom,color]"]


@dataclass(frozen=True)
class Case:
    name: str
    size: int
    batch: int
    overrides: list[str]
    steps: int  # timed steps (StyleGAN2: a multiple of 16, so every lazy regularizer runs its share)


CASES = [
    Case("dcgan", 64, 64, ["train.model=dcgan", "train.latent_dim=100"], 48),
    Case("fastgan", 128, 32, ["train.model=fastgan"], 48),
    Case("stylegan2", 128, 32, STYLEGAN2, 32),
    Case("stylegan2", 256, 32, STYLEGAN2, 32),
]
SMOKE_OVERRIDES = ["train.g_width=8", "train.d_width=8", "train.latent_dim=16", "train.batch_size=4"]
MODES = {
    "fp32": ["train.precision=fp32", "train.channels_last=false"],
    "bf16": ["train.precision=bf16", "train.channels_last=false"],
    "bf16+cl": ["train.precision=bf16", "train.channels_last=true"],
    "bf16+cl+host-checks": ["train.precision=bf16", "train.channels_last=true"],  # + a host read per update
    "bf16+cl+compile": ["train.precision=bf16", "train.channels_last=true"],  # + each network compiled in place
}
HOST_CHECKED_MODES = {"bf16+cl+host-checks"}
# --smoke runs these for the first case only: every other case still runs fp32 and the default (bf16+cl)
SMOKE_FIRST_CASE_ONLY = {"bf16", "bf16+cl+host-checks"}
LOADER_MODE = "bf16+cl"
GOAL_S_PER_KIMG = {("stylegan2", 128): 3.4, ("stylegan2", 256): 6.3}
GOALS = "StyleGAN2 128 px <= 3.4 s/kimg, 256 px <= 6.3; FID 50k <= 60 s; bf16 FID within 0.1 %; loader wait <= 5 %"


class Report:
    """The figures so far, rewritten to OUT/gpu.json (atomically) after every measurement."""

    def __init__(self, out: Path, header: dict[str, Any]) -> None:
        self.path = out / "gpu.json"
        self.data: dict[str, Any] = {**header, "goals": GOALS, "training": [], "loader": [], "fid": None}
        self.save()

    def add(self, section: str, record: dict[str, Any]) -> None:
        if isinstance(self.data[section], list):
            self.data[section].append(record)
        else:
            self.data[section] = record
        self.save()

    def save(self) -> None:
        LocalStorage().write_bytes(str(self.path), (json.dumps(self.data, indent=2) + "\n").encode())


class TimedBatches:
    """Wraps a batch iterator and adds up the time spent waiting for each batch."""

    def __init__(self, batches: Iterator[Any]) -> None:
        self.batches, self.waited = batches, 0.0

    def __iter__(self) -> TimedBatches:
        return self

    def __next__(self) -> Any:
        started = time.perf_counter()
        batch = next(self.batches)
        self.waited += time.perf_counter() - started
        return batch


class HeldBatches:
    """The same few device-resident batches, round and round (the step without any loader)."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches, self.i = batches, 0

    def __iter__(self) -> HeldBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        self.i += 1
        return self.batches[self.i % len(self.batches)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_trainer(pack: Path, work: Path, case: Case, mode: str, smoke: bool, workers: int) -> Trainer:
    overrides = [
        f"ingest.output={pack / f'shards-{case.size}'}",
        f"train.run_dir={work / f'run-{case.name}-{case.size}-{mode}'}",
        f"train.batch_size={case.batch}",
        f"train.num_workers={workers}",
        "train.sample_count=4",
        *case.overrides,
        *MODES[mode],
        *(SMOKE_OVERRIDES if smoke else []),
    ]
    # None: the trainer's default for the device; the smoke takes the CUDA default (deferred) on the CPU
    deferred = False if mode in HOST_CHECKED_MODES else (True if smoke else None)
    return Trainer(load_config(None, overrides), distributed.setup(), progress=False, deferred_checks=deferred)


def held_batches(trainer: Trainer, count: int) -> list[dict[str, torch.Tensor]]:
    """`count` real batches from the trainer's own stream, moved to the device once."""
    loader = iter(trainer.training_loader())
    device = trainer.ctx.device
    return [{k: v.to(device) for k, v in next(loader).items() if torch.is_tensor(v)} for _ in range(count)]


def timed_steps(
    trainer: Trainer, batches: Iterator[Any], warmup: int, steps: int, min_seconds: float
) -> tuple[int, float, float | None]:
    """After `warmup` untimed steps, rounds of `steps` steps until at least `min_seconds` have passed (a GPU ramps
    its clocks up, and one short window is noise): (steps run, seconds, peak device memory in GiB or None on CPU)."""
    device = trainer.ctx.device
    for _ in range(warmup):
        trainer.train_step(batches)
    synchronize(device)
    if isinstance(batches, TimedBatches):
        batches.waited = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started, done, seconds = time.perf_counter(), 0, 0.0
    while done == 0 or seconds < min_seconds:
        for _ in range(steps):
            trainer.train_step(batches)
        done += steps
        synchronize(device)
        seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return done, seconds, peak


def measure_training(args: argparse.Namespace, work: Path, case: Case, mode: str) -> dict[str, Any]:
    record: dict[str, Any] = {"family": case.name, "size": case.size, "mode": mode}
    trainer = build_trainer(args.pack, work, case, mode, args.smoke, workers=0)
    if "compile" in mode:
        for network in trainer.recipe.networks.values():
            network.compile()  # parameters and state_dict keys stay as they are
    steps = 1 if args.smoke else case.steps
    warmup = 1 if args.smoke else 3  # step 0 runs lazy R1 and path length too: their kernels are warm
    batches = HeldBatches(held_batches(trainer, 2))
    started = time.perf_counter()
    steps, seconds, peak = timed_steps(trainer, batches, warmup, steps, 0 if args.smoke else args.min_seconds)
    images = steps * trainer.config.train.batch_size
    record |= {
        "batch": trainer.config.train.batch_size,
        "precision": str(trainer.autocast_dtype or "fp32"),
        "deferred_checks": trainer.update.deferred,
        "images_per_s": images / seconds,
        "s_per_kimg": 1000 * seconds / images,
        "peak_gib": peak,
        "timed_steps": steps,
        "wall_s": time.perf_counter() - started,
    }
    goal = GOAL_S_PER_KIMG.get((case.name, case.size))
    if goal is not None:
        record["goal_s_per_kimg"] = goal
    del trainer
    return record


def measure_loader(args: argparse.Namespace, work: Path, case: Case, held_rate: float, workers: int) -> dict[str, Any]:
    trainer = build_trainer(args.pack, work, case, LOADER_MODE, args.smoke, workers)
    steps = 2 if args.smoke else case.steps
    batches = TimedBatches(iter(trainer.training_loader()))
    warmup = 2 if args.smoke else 3  # workers started, shuffle buffer filled
    steps, seconds, _ = timed_steps(trainer, batches, warmup, steps, 0 if args.smoke else args.min_seconds)
    rate = steps * trainer.config.train.batch_size / seconds
    return {
        "family": case.name,
        "size": case.size,
        "mode": LOADER_MODE,
        "num_workers": workers,
        "images_per_s": rate,
        "held_images_per_s": held_rate,
        "rate_vs_held": rate / held_rate,
        "wait_share": batches.waited / seconds,
        "data_share": max(0.0, 1 - rate / held_rate),  # the step time data loading adds, host work included
    }


def measure_fid(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    trainer = build_trainer(args.pack, work, CASES[0], LOADER_MODE, args.smoke, workers=0)
    device = trainer.ctx.device
    held = HeldBatches(held_batches(trainer, 2))
    for _ in range(2):  # a few steps, so the generator is not its initialization
        trainer.train_step(held)
    generator = trainer.generator.eval()
    meta = trainer.generator_meta()
    weights = resolve_weights(args.inception if args.inception.is_file() else None)
    inception = load_inception(weights).to(device)
    positions = list(range(3))
    n, batch = (16, 8) if args.smoke else (args.fid_n, args.fid_batch)
    started = time.perf_counter()
    limit = 16 if args.smoke else 100_000  # the smoke: bf16 Inception on a CPU without bf16 units is slow
    _, tiles = read_tiles(shard_urls(trainer.manifest, trainer.config.dataset_url), None, CASES[0].size, None, limit)
    real = ((tiles[:, positions].float() + 1) / 2).split(batch)
    # the reference in each precision, as atlas-gan's evaluation embeds both sides in `evaluate.precision`
    references = {
        precision: FeatureStats.of(
            embed_batches(inception, iter(real), len(tiles), device, precision == "bf16", "real", False)[0]
        )
        for precision in ("fp32", "bf16")
    }
    reference_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "n": n,
        "batch": batch,
        "reference_tiles": references["fp32"].n,
        "reference_s": reference_s,
        "weights": f"{weights.path.name} ({weights.source})",
    }
    for precision in ("fp32", "bf16"):
        synchronize(device)
        started = time.perf_counter()
        images = generated_batches(generator, meta, n, batch, positions, device, seed=0)
        features, _ = embed_batches(inception, images, n, device, precision == "bf16", "fid", False)
        embedded = time.perf_counter()
        stats = FeatureStats.of(features)
        fid = frechet_distance(stats, references[precision])
        done = time.perf_counter()
        result[precision] = {"fid": fid, "wall_s": done - started, "statistics_s": done - embedded}
        if precision == "bf16":  # what this bench reported before: bf16 samples against the fp32 reference
            result["bf16_against_fp32_reference"] = frechet_distance(stats, references["fp32"])
    result["bf16_vs_fp32"] = abs(result["bf16"]["fid"] - result["fp32"]["fid"]) / abs(result["fp32"]["fid"])
    return result


def print_training(record: dict[str, Any]) -> None:
    label = f"{record['family']:<10}{record['size']:>4} px  {record['mode']:<20}"
    if "skipped" in record:
        print(f"{label} skipped: {record['skipped']}", flush=True)
        return
    if "error" in record:
        print(f"{label} failed: {record['error']}", flush=True)
        return
    goal = f"  (goal <= {record['goal_s_per_kimg']})" if "goal_s_per_kimg" in record else ""
    peak = "n/a on CPU" if record["peak_gib"] is None else f"{record['peak_gib']:6.2f} GiB"
    print(
        f"{label}{record['images_per_s']:9.1f} img/s {record['s_per_kimg']:8.2f} s/kimg{goal}  "
        f"peak {peak}  ({record['wall_s']:.0f} s incl. warm-up)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for gpu.json")
    parser.add_argument("--pack", type=Path, default=Path(".gpu-pack"), help="what bench/gpu_pack.py wrote")
    parser.add_argument("--inception", type=Path, default=None, help="default: PACK/inception-fp16.pt if present")
    parser.add_argument("--budget-s", type=float, default=330, help="no compile mode starts after this many s")
    parser.add_argument("--min-seconds", type=float, default=4.0, help="shortest timed window per figure")
    parser.add_argument("--fid-n", type=int, default=50_000)
    parser.add_argument("--fid-batch", type=int, default=500, help="images per Inception pass")
    parser.add_argument("--smoke", action="store_true", help="tiny networks, one step each, on CPU")
    parser.add_argument("--no-loader-fid", action="store_true", help="training throughput only")
    parser.add_argument(
        "--loader-workers", type=lambda t: [int(w) for w in t.split(",")], default=[2, 8], help="e.g. 2,8"
    )
    parser.add_argument("--cases", type=lambda t: t.split(","), default=None, help="e.g. dcgan-64,fastgan-128")
    parser.add_argument("--modes", type=lambda t: t.split(","), default=None, help=f"some of {','.join(MODES)}")
    args = parser.parse_args()
    args.inception = args.inception or args.pack / "inception-fp16.pt"
    for size in {case.size for case in CASES}:
        if not (args.pack / f"shards-{size}" / "manifest.json").is_file():
            parser.error(f"{args.pack}/shards-{size}: no manifest.json; run bench/gpu_pack.py first")
    if args.smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU form, whatever the machine has
    elif not torch.cuda.is_available():
        parser.error("no CUDA device; use --smoke for the CPU form")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    device_name = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name()
    header = {"device": device_name, "torch": torch.__version__, "cuda": torch.version.cuda, "smoke": args.smoke}
    report = Report(args.out, header)
    print(f"{device_name}, torch {torch.__version__}, CUDA {torch.version.cuda}; goals: {GOALS}", flush=True)
    held_rates: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory(prefix="atlas-gpu-") as tmp:
        work = Path(tmp)
        cases = [case for case in CASES if args.cases is None or f"{case.name}-{case.size}" in args.cases]
        modes = [mode for mode in MODES if args.modes is None or mode in args.modes]
        plan = [(case, mode) for case in cases for mode in modes if "compile" not in mode]
        last_eager = len(plan) - 1
        smoke_ran: dict[tuple[str, str], int] = {}  # (family, mode) -> the size it ran at
        plan += [(case, mode) for case in cases for mode in modes if "compile" in mode]
        for i, (case, mode) in enumerate(plan):
            skip = compile_skip(args, time.perf_counter() - started) if "compile" in mode else None
            if args.smoke and mode in SMOKE_FIRST_CASE_ONLY and case != cases[0]:
                skip = "--smoke: the first case covers this mode (bf16 on a CPU without bf16 units is slow)"
            elif args.smoke and mode != "fp32" and (case.name, mode) in smoke_ran:
                skip = f"--smoke: {smoke_ran[(case.name, mode)]} px covers this family's mode (bf16 on a CPU is slow)"
            if skip:
                record = {"family": case.name, "size": case.size, "mode": mode, "skipped": skip}
            else:
                record = guarded(case, mode, measure_training, args, work, case, mode)
                smoke_ran.setdefault((case.name, mode), case.size)
            report.add("training", record)
            print_training(record)
            if mode == LOADER_MODE and "images_per_s" in record:
                held_rates[(case.name, case.size)] = record["images_per_s"]
            # every eager mode measured: the loader and FID, before the compile modes
            if i == last_eager and LOADER_MODE in modes and not args.no_loader_fid:
                run_loader_and_fid(args, work, report, held_rates, cases)
    print(f"done in {time.perf_counter() - started:.0f} s; figures in {report.path}", flush=True)


def compile_skip(args: argparse.Namespace, elapsed: float) -> str | None:
    """Why a compile mode does not run now: a CPU compile takes minutes (the smoke covers the other modes)."""
    if args.smoke:
        return "--smoke: compiling on CPU takes minutes"
    return "time budget spent" if elapsed > args.budget_s else None


def guarded(case: Case, mode: str, measure: Callable[..., dict[str, Any]], *arguments: Any) -> dict[str, Any]:
    """`measure(*arguments)`; an exception becomes the record's error (the other figures still get measured)."""
    try:
        return measure(*arguments)
    except Exception as exc:  # a bench reports every failure and goes on
        traceback.print_exc()
        return {"family": case.name, "size": case.size, "mode": mode, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


def run_loader_and_fid(
    args: argparse.Namespace,
    work: Path,
    report: Report,
    held_rates: dict[tuple[str, int], float],
    cases: list[Case],
) -> None:
    for case in cases[:1] if args.smoke else cases:  # the smoke: one case covers the loader's code
        held = held_rates.get((case.name, case.size))
        if held is None:
            continue
        for workers in args.loader_workers[:1] if args.smoke else args.loader_workers:
            record = guarded(case, LOADER_MODE, measure_loader, args, work, case, held, workers)
            report.add("loader", record)
            if "error" in record:
                continue
            print(
                f"loader {case.name:<10}{case.size:>4} px  {workers} workers: {record['images_per_s']:9.1f} img/s = "
                f"{record['rate_vs_held']:.2f} x held batches (data costs the step {100 * record['data_share']:.1f} "
                f"%); blocked in next() {100 * record['wait_share']:.1f} % of the time",
                flush=True,
            )
    try:
        fid = measure_fid(args, work)
    except Exception as exc:
        traceback.print_exc()
        report.add("fid", {"error": f"{type(exc).__name__}: {exc}"})
        return
    report.add("fid", fid)
    print(
        f"FID of {fid['n']} generated 64 px tiles (batch {fid['batch']}) vs cached features of "
        f"{fid['reference_tiles']} real tiles: fp32 {fid['fp32']['fid']:.3f} in {fid['fp32']['wall_s']:.1f} s "
        f"(statistics {fid['fp32']['statistics_s']:.1f} s), bf16 {fid['bf16']['fid']:.3f} in "
        f"{fid['bf16']['wall_s']:.1f} s; bf16 vs fp32: {100 * fid['bf16_vs_fp32']:.3f} % (bf16 samples against the "
        f"fp32 reference: {fid['bf16_against_fp32_reference']:.3f}); weights {fid['weights']}",
        flush=True,
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
