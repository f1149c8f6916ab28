"""StyleGAN2 training speed: seconds per 1,000 images (s/kimg) and images/s of the full training step.

    python bench/stylegan2.py [--sizes 64] [--batch 32] [--width 64] [--latent 512] [--steps 16] [--repeats 1]
                              [--data ../shared/data] [--device cpu|cuda] [--no-ada]

Times `Trainer.train_step` of the real trainer on real Landsat-8 tiles (landsat8-parana, bands B2-B4, ingested at
each size and held in memory, so the figure is the training step alone) with everything a StyleGAN2 run does:
ADA (blit, geom, color), lazy R1 every 16 steps, path-length regularization every 4, style mixing, EMA. `--steps`
should be a multiple of 16 so every lazy regularizer runs its share. Precision is the trainer's (bf16 autocast on
GPU, fp32 on CPU).

Baselines, in the same run: the DCGAN training step at the same size and batch (what StyleGAN2's quality costs on
this machine). And the anchor of the issue: NVIDIA's StyleGAN2 (config at 128 and 256 px, its own CUDA kernels,
fp16) takes 6.79 s/kimg at 128 px and 12.53 at 256 px on one A100; the goal on an H100 is <= 3.4 s/kimg at 128 px.
The anchor ratio only means something on a GPU. `--width 64` gives config-f's channel counts (512 at 4-32 px,
halving per doubling above). Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from shared_data import SHARED_DATA
from train_step import InMemoryFeed, images_per_second

from atlas_gan.config import load_config
from atlas_gan.ingest import ingest
from atlas_gan.runtime import distributed
from atlas_gan.shards import read_manifest
from atlas_gan.storage import LocalStorage
from atlas_gan.train.data import TileStream
from atlas_gan.train.trainer import Trainer

NVIDIA_A100_S_PER_KIMG = {128: 6.79, 256: 12.53}
H100_GOAL_S_PER_KIMG = {128: 3.4}


def real_batches(source: Path, work: Path, size: int, batch: int, device: torch.device) -> tuple[Path, list]:
    data_dir = work / f"shards-{size}"
    ingest(
        load_config(None, [f"ingest.source={source}", f"ingest.output={data_dir}", f"ingest.tile_size={size}"]),
        progress=False,
    )
    manifest = read_manifest(LocalStorage(), str(data_dir))
    urls = [str(data_dir / s["url"]) for s in manifest["shards"]]
    stream = iter(TileStream(urls, 0, 1, image_size=size, seed=0, shuffle_buffer=256))
    tiles = torch.stack([next(stream)["image"] for _ in range(batch * 4)]).to(device)
    return data_dir, list(tiles.split(batch))


def trainer_step(data_dir: Path, run_dir: Path, model: str, args: argparse.Namespace, size: int):
    overrides = [
        f"ingest.output={data_dir}",
        f"train.run_dir={run_dir}",
        f"train.model={model}",
        f"train.latent_dim={args.latent}",
        f"train.g_width={args.width}",
        f"train.d_width={args.width}",
        f"train.batch_size={args.batch}",
        f"train.image_size={size}",
        "train.num_workers=0",
    ]
    if model == "stylegan2" and args.ada:
        overrides.append("train.ada.groups=[blit,geom,color]")
    trainer = Trainer(load_config(None, overrides), distributed.setup(), progress=False)
    feed = InMemoryFeed()

    def step(real: torch.Tensor) -> None:
        feed.batch = real
        trainer.train_step(feed)

    return step, trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default=None, help="comma-separated image sizes; default 64 on CPU, 128,256 on GPU")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=64, help="g_width = d_width (64: config-f channels)")
    parser.add_argument("--latent", type=int, default=512, help="z and w dimensions")
    parser.add_argument("--steps", type=int, default=16, help="timed steps per repeat (a multiple of 16)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-ada", dest="ada", action="store_false", help="time StyleGAN2 without ADA")
    args = parser.parse_args()
    device = torch.device(args.device)
    default_sizes = "128,256" if device.type == "cuda" else "64"
    sizes = [int(s) for s in (args.sizes or default_sizes).split(",")]
    source = args.data / "geotiff" / "landsat8-parana"
    if not source.is_dir():
        parser.error(f"{source}: not found (set --data or ATLAS_SHARED_DATA)")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"device {device} ({name}), torch {torch.__version__}, batch {args.batch}, width {args.width}, "
        f"latent {args.latent}, ADA {'on' if args.ada else 'off'}, best of {args.repeats} x {args.steps} steps"
    )
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="atlas-bench-stylegan2-") as tmp:
        for size in sizes:
            data_dir, batches = real_batches(source, Path(tmp), size, args.batch, device)
            rates = {}
            for model in ("dcgan", "stylegan2"):
                step, trainer = trainer_step(data_dir, Path(tmp) / f"run-{model}-{size}", model, args, size)
                rates[model] = images_per_second(step, batches, args.steps, args.repeats, device)
                precision = trainer.autocast_dtype or "fp32"
                print(
                    f"{size:>4} px {model:<10} {rates[model]:8.1f} images/s {1000 / rates[model]:9.2f} s/kimg  "
                    f"({precision})",
                    flush=True,
                )
            s_per_kimg = 1000 / rates["stylegan2"]
            print(f"{size:>4} px stylegan2 / dcgan time per image: {rates['dcgan'] / rates['stylegan2']:.2f}x")
            if size in NVIDIA_A100_S_PER_KIMG:
                anchor = NVIDIA_A100_S_PER_KIMG[size]
                print(
                    f"{size:>4} px vs NVIDIA StyleGAN2 on one A100 ({anchor} s/kimg): {s_per_kimg / anchor:.2f}x time"
                )
            if size in H100_GOAL_S_PER_KIMG:
                goal = H100_GOAL_S_PER_KIMG[size]
                print(f"{size:>4} px H100 goal <= {goal} s/kimg: {'met' if s_per_kimg <= goal else 'not met'} here")


if __name__ == "__main__":
    main()
