"""Sample quality per GAN family at an equal training budget, next to the real-vs-real floor.

    python bench/quality.py [--data ../shared/data] [--kimg 20] [--n 1000] [--size 64] [--width 32]
                            [--runs dcgan,wgan-gp,sngan,sagan,sagan-cond,stylegan2] [--augment both|on|off]
                            [--work runs/bench-quality] [--json quality.json] [--device cpu|cuda]

Ingests ../shared/data/geotiff/landsat8-parana (2 Landsat-8 scenes, bands B2-B4) into 64 px tiles once, then trains
each family through the real trainer (`Trainer` + `EvaluationHook` + `MLflowHook`, what torchrun runs on one rank)
for the same number of real images shown to D (`--kimg` thousands; a WGAN-GP step shows 5 batches, so it gets 1/5
of the generator steps) and scores the EMA generator with FID and KID against N real tiles (TF-Inception, same
protocol for all). `sagan-cond` is SAGAN conditioned on the scene (2 labels). Each family runs without and with
augmentation: DiffAugment (color, translation, cutout; `+da`) for the DCGAN-layout families, adaptive
discriminator augmentation (blit, geom, color; `+ada`) for StyleGAN2. ADA's p may move from 0 to 1 in a tenth of
the budget (`train.ada.speed_kimg` = kimg / 10; the paper's 500 kimg would leave p near 0 in a short run).

The floor is the FID/KID between two disjoint random halves of the real tiles, N each: what a perfect generator
would score with this N. The table prints each run's FID, its ratio to DCGAN's FID (the goal: the best family at
<= 0.5x) and its distance to the floor; it is written as JSON, and every run is logged to MLflow (experiment
atlas-gan-quality-bench in <work>/mlflow unless MLFLOW_TRACKING_URI is set). Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from atlas_gan.config import AtlasConfig, load_config
from atlas_gan.ingest import ingest
from atlas_gan.metrics.features import embed_batches, real_tile_batches
from atlas_gan.metrics.hook import EvaluationHook
from atlas_gan.metrics.inception import RESIZE_METHOD
from atlas_gan.metrics.scores import FeatureStats, frechet_distance, kernel_inception_distance
from atlas_gan.metrics.weights import load_inception, resolve_weights
from atlas_gan.preview import band_triplets
from atlas_gan.runtime import distributed
from atlas_gan.shards import read_manifest
from atlas_gan.storage import LocalStorage
from atlas_gan.train.trainer import Trainer

RUNS = {  # name -> (family, extra overrides)
    "dcgan": ("dcgan", []),
    "wgan": ("wgan", []),
    "wgan-gp": ("wgan-gp", []),
    "sngan": ("sngan", []),
    "sagan": ("sagan", []),
    "sagan-cond": ("sagan", ["train.condition.by=scene"]),
    "stylegan2": ("stylegan2", []),
}
DIFFAUGMENT = "train.diffaugment=[color,translation,cutout]"


def augmentation(family: str, kimg: float) -> tuple[str, list[str]]:
    """The suffix and overrides of a family's augmented run: ADA for StyleGAN2, DiffAugment for the others."""
    if family == "stylegan2":
        return "+ada", ["train.ada.groups=[blit,geom,color]", f"train.ada.speed_kimg={max(kimg / 10, 0.1)}"]
    return "+da", [DIFFAUGMENT]


class TimedEvaluation(EvaluationHook):
    """EvaluationHook that also keeps how long evaluating took, so training time can be reported alone."""

    seconds = 0.0

    def on_evaluate(self, trainer: Trainer) -> None:
        started = time.perf_counter()
        super().on_evaluate(trainer)
        self.seconds += time.perf_counter() - started


def prepare_data(source: Path, work: Path, size: int) -> Path:
    output = work / f"parana-{size}"
    config = load_config(
        None,
        [f"ingest.source={source}", f"ingest.output={output}", f"ingest.tile_size={size}", "ingest.workers=2"],
    )
    ingest(config, progress=True)
    return output


def run_config(args: argparse.Namespace, data: Path, name: str, augmented: bool) -> tuple[AtlasConfig, int]:
    family, extra = RUNS[name]
    from atlas_gan.models import get_family

    n_critic = get_family(family).training.n_critic
    steps = max(1, round(args.kimg * 1000 / (args.batch * n_critic)))
    suffix, augment = augmentation(family, args.kimg)
    label = f"{name}{suffix if augmented else ''}"
    overrides = [
        "ingest.source=unused",
        f"ingest.output={data}",
        f"train.run_dir={args.work / 'runs' / label}",
        f"train.model={family}",
        f"train.steps={steps}",
        f"train.batch_size={args.batch}",
        f"train.g_width={args.width}",
        f"train.d_width={args.width}",
        f"train.latent_dim={args.latent}",
        f"train.num_workers={args.workers}",
        f"train.log_every={max(1, steps // 20)}",
        f"train.sample_every={steps}",
        f"train.checkpoint_every={steps}",
        f"train.evaluate_every={steps}",
        f"train.seed={args.seed}",
        "train.rgb_bands=[B4,B3,B2]",
        f"train.precision={'bf16' if args.device == 'cuda' else 'fp32'}",
        f"evaluate.n={args.n}",
        f"evaluate.batch_size={args.eval_batch}",
        f"evaluate.kid_subset_size={min(1000, args.n)}",
        "tracking.experiment=atlas-gan-quality-bench",
        "tracking.registered_model=atlas-gan-quality-bench",
        f"tracking.store_dir={args.work / 'mlflow'}",
        *extra,
        *(augment if augmented else []),
        *(
            [f"train.model.attention_resolution={args.attention}"]
            if args.attention and get_family(family).attention
            else []
        ),
    ]
    return load_config(None, overrides), steps


def train_and_score(config: AtlasConfig, ctx: distributed.DistributedContext) -> dict[str, Any]:
    from atlas_gan.tracking.hook import MLflowHook

    evaluation, tracker = TimedEvaluation(), MLflowHook()
    started = time.perf_counter()
    try:
        summary = Trainer(config, ctx, hooks=[evaluation, tracker], progress=True).run()
    except BaseException:
        tracker.finish("FAILED")
        raise
    wall = time.perf_counter() - started
    result = evaluation.results[-1]
    main = next(iter(result["scores"].values()))
    return {
        "images_seen": summary["images_seen"],
        "steps": summary["step"],
        "train_seconds": wall - evaluation.seconds,
        "eval_seconds": evaluation.seconds,
        "fid": main["fid"],
        "kid": main["kid"],
        "n_fake": result["n_fake"],
        "n_real": main["n_real"],
        "mlflow_run": tracker.run_id,
    }


def real_floor(config: AtlasConfig, n: int, device: torch.device) -> dict[str, Any]:
    """FID and KID between two disjoint random halves of the real tiles, n each (same protocol as the runs)."""
    store = LocalStorage()
    manifest = read_manifest(store, config.dataset_url)
    total = manifest["totals"]["samples"]
    if 2 * n > total:
        raise SystemExit(f"--n {n}: the floor needs 2n real tiles and the dataset has {total}; lower --n")
    weights = resolve_weights(config.evaluate.inception_weights)
    model = load_inception(weights).to(device)
    _, positions = band_triplets(manifest["tile"]["bands"], config.train.rgb_bands)[0]
    batches = real_tile_batches(store, config.dataset_url, manifest, positions, 2 * n, config.evaluate.batch_size, 7)
    features, _ = embed_batches(model, batches, 2 * n, device, False, "embed real tiles (floor)", True)
    order = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(0))
    first, second = features[order[:n]], features[order[n:]]
    kid, _ = kernel_inception_distance(first, second, config.evaluate.kid_subsets, min(1000, n), 0)
    return {"fid": frechet_distance(FeatureStats.of(first), FeatureStats.of(second)), "kid": kid, "n": n}


def table(rows: list[dict[str, Any]], floor: dict[str, Any]) -> str:
    dcgan = next((r["fid"] for r in rows if r["run"] == "dcgan"), None)
    head = (
        f"{'run':<16}{'kimg':>7}{'G steps':>9}{'train s':>9}{'img/s':>8}{'FID':>9}{'KID':>9}{'/DCGAN':>8}{'-floor':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r['fid'] / dcgan:8.2f}" if dcgan else f"{'-':>8}"
        lines.append(
            f"{r['run']:<16}{r['images_seen'] / 1000:7.1f}{r['steps']:9d}{r['train_seconds']:9.0f}"
            f"{r['images_seen'] / r['train_seconds']:8.0f}{r['fid']:9.2f}{r['kid']:9.4f}{ratio}"
            f"{r['fid'] - floor['fid']:9.2f}"
        )
    lines.append(f"{'real vs real':<16}{'':>7}{'':>9}{'':>9}{'':>8}{floor['fid']:9.2f}{floor['kid']:9.4f}")
    if dcgan and rows:
        best = min(rows, key=lambda r: r["fid"])
        lines.append(
            f"best: {best['run']} FID {best['fid']:.2f} = {best['fid'] / dcgan:.2f}x DCGAN's {dcgan:.2f} "
            f"(goal <= 0.5x: {'met' if best['fid'] <= 0.5 * dcgan else 'not met'}); "
            f"{best['fid'] - floor['fid']:.2f} above the real-vs-real floor {floor['fid']:.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("ATLAS_SHARED_DATA", "../shared/data")))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-quality"))
    parser.add_argument("--kimg", type=float, default=20.0, help="real images shown to D per run, in thousands")
    parser.add_argument("--n", type=int, default=1000, help="FID/KID sample count (fake and real)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=32, help="g_width = d_width")
    parser.add_argument("--latent", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--attention", type=int, default=None, help="SAGAN attention resolution (default: 32)")
    parser.add_argument("--eval-batch", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default=",".join(k for k in RUNS if k != "wgan"))
    parser.add_argument(
        "--augment",
        "--diffaugment",
        choices=["both", "on", "off"],
        default="both",
        help="runs without and/or with augmentation (DiffAugment; ADA for stylegan2)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None, help="default: <work>/quality.json")
    args = parser.parse_args()
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        parser.error(f"unknown runs {unknown}; known: {sorted(RUNS)}")
    source = args.data / "geotiff" / "landsat8-parana"
    if not source.is_dir():
        parser.error(f"{source}: not found (set --data or ATLAS_SHARED_DATA)")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    data = prepare_data(source, args.work, args.size)
    ctx = distributed.setup()
    variants = {"both": [False, True], "on": [True], "off": [False]}[args.augment]
    rows: list[dict[str, Any]] = []
    floor = None
    for name in names:
        for augmented in variants:
            config, steps = run_config(args, data, name, augmented)
            if floor is None:
                floor = real_floor(config, args.n, ctx.device)
                print(f"real-vs-real floor at N={args.n}: FID {floor['fid']:.2f}, KID {floor['kid']:.4f}", flush=True)
            label = Path(config.train.run_dir).name
            run_dir = Path(config.train.run_dir)
            if run_dir.exists():  # the trainer would resume it: a benchmark run starts from scratch
                shutil.rmtree(run_dir)
                print(f"removed the previous benchmark run {run_dir}", flush=True)
            print(f"== {label}: {config.train.model}, {steps} G steps of batch {args.batch}", flush=True)
            row = {"run": label, "family": config.train.model, "augmented": augmented, **train_and_score(config, ctx)}
            rows.append(row)
            print(f"   FID {row['fid']:.2f}  KID {row['kid']:.4f}  ({row['train_seconds']:.0f} s training)", flush=True)
    assert floor is not None
    text = table(rows, floor)
    print(text)
    report = {
        "device": str(ctx.device) + (f" ({torch.cuda.get_device_name()})" if ctx.device.type == "cuda" else ""),
        "dataset": str(data),
        "protocol": {"n": args.n, "resize": RESIZE_METHOD, "bands": ["B4", "B3", "B2"], "size": args.size},
        "budget_kimg": args.kimg,
        "settings": {
            "batch": args.batch,
            "width": args.width,
            "latent": args.latent,
            "seed": args.seed,
            "sagan_attention_resolution": args.attention or 32,
        },
        "floor": floor,
        "runs": rows,
        "table": text,
    }
    out = args.json or args.work / "quality.json"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
