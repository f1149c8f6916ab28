"""DCGAN training throughput: atlas-gan's training step against the pytorch/examples dcgan/main.py loop.

    python bench/train_step.py [--data ../shared/data] [--size 64] [--batch 64] [--steps 20] [--device cpu|cuda]

Both train the same DCGAN (64x64, 3 bands, nz=100, ngf=ndf=64, Adam 2e-4/0.5, batch 64) on the same real Landsat
tiles held in memory, so the figure compares the training steps alone. The reference is a faithful rewrite of the
example's loop (sigmoid + BCELoss, real and fake through D separately, the D step's fakes reused for the G step).
atlas-gan's step adds what the example lacks: EMA of G, finiteness checks, gradient averaging hooks. Prints
images/s for both and the ratio; each is the best of --repeats timed runs after a warm-up. Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from shared_data import SHARED_DATA
from torch import nn

from atlas_gan.config import load_config
from atlas_gan.ingest import ingest
from atlas_gan.models import ModelSpec
from atlas_gan.runtime import distributed
from atlas_gan.shards import read_manifest
from atlas_gan.storage import LocalStorage
from atlas_gan.train.data import TileStream
from atlas_gan.train.trainer import Trainer


# ---- the reference: pytorch/examples dcgan/main.py, rewritten (same layers, same loop) ----------------------------
class RefGenerator(nn.Module):
    def __init__(self, nz: int, ngf: int, nc: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class RefDiscriminator(nn.Module):
    def __init__(self, ndf: int, nc: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1, 1).squeeze(1)


def weights_init(m: nn.Module) -> None:
    name = m.__class__.__name__
    if name.find("Conv") != -1:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif name.find("BatchNorm") != -1:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def reference_loop(batches: list[torch.Tensor], device: torch.device, nz: int = 100):
    nc = batches[0].shape[1]
    net_g, net_d = RefGenerator(nz, 64, nc).to(device), RefDiscriminator(64, nc).to(device)
    net_g.apply(weights_init)
    net_d.apply(weights_init)
    criterion = nn.BCELoss()
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def step(real: torch.Tensor) -> None:
        net_d.zero_grad()
        label = torch.full((real.size(0),), 1.0, device=device)
        err_d_real = criterion(net_d(real), label)
        err_d_real.backward()
        fake = net_g(torch.randn(real.size(0), nz, 1, 1, device=device))
        label.fill_(0.0)
        err_d_fake = criterion(net_d(fake.detach()), label)
        err_d_fake.backward()
        opt_d.step()
        net_g.zero_grad()
        label.fill_(1.0)
        err_g = criterion(net_d(fake), label)
        err_g.backward()
        opt_g.step()

    return step


# ---- atlas-gan ----------------------------------------------------------------------------------------------------
class InMemoryFeed:
    """Hands the trainer whichever in-memory batch the timing loop put in `batch`."""

    batch: torch.Tensor

    def __iter__(self) -> InMemoryFeed:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return {"image": self.batch, "label": torch.zeros(len(self.batch), dtype=torch.long)}


def atlas_loop(data_dir: Path, run_dir: Path, size: int, batch: int):
    config = load_config(
        None,
        [
            f"ingest.output={data_dir}",
            f"train.run_dir={run_dir}",
            "train.latent_dim=100",
            f"train.batch_size={batch}",
            f"train.image_size={size}",
            "train.num_workers=0",
        ],
    )
    trainer = Trainer(config, distributed.setup(), progress=False)
    feed = InMemoryFeed()

    def step(real: torch.Tensor) -> None:
        feed.batch = real
        trainer.train_step(feed)

    return step, trainer


def images_per_second(step, batches: list[torch.Tensor], steps: int, repeats: int, device: torch.device) -> float:
    for real in batches[:2]:  # warm-up
        step(real)
    best = 0.0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(steps):
            step(batches[i % len(batches)])
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, steps * batches[0].shape[0] / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        data_dir = Path(tmp) / "shards"
        ingest(
            load_config(
                None,
                [
                    f"ingest.source={args.data / 'geotiff' / 'landsat8-parana'}",
                    f"ingest.output={data_dir}",
                    f"ingest.tile_size={args.size}",
                ],
            ),
            progress=False,
        )
        manifest = read_manifest(LocalStorage(), str(data_dir))
        urls = [str(data_dir / s["url"]) for s in manifest["shards"]]
        stream = iter(TileStream(urls, 0, 1, image_size=args.size, seed=0, shuffle_buffer=256))
        tiles = torch.stack([next(stream)["image"] for _ in range(args.batch * 4)]).to(device)
        batches = list(tiles.split(args.batch))
        ref = images_per_second(reference_loop(batches, device), batches, args.steps, args.repeats, device)
        step, trainer = atlas_loop(data_dir, Path(tmp) / "run", args.size, args.batch)
        ours = images_per_second(step, batches, args.steps, args.repeats, device)
    spec: ModelSpec = trainer.spec
    print(
        f"DCGAN {spec.image_size}x{spec.image_size}, {spec.bands} bands, batch {args.batch}, device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats} x {args.steps} steps"
    )
    print(f"pytorch/examples dcgan loop: {ref:8.1f} images/s")
    print(f"atlas-gan Trainer.train_step: {ours:8.1f} images/s   (precision {trainer.autocast_dtype or 'fp32'})")
    print(f"ratio atlas-gan / reference: {ours / ref:.2f} (goal >= 1.0 on CPU)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
