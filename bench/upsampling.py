"""Nearest 2x upsampling + 3x3 convolution: one transposed convolution (atlas-gan) against the written-out pair.

    python bench/upsampling.py [--device cpu|cuda] [--batch 16] [--repeats 3]

Times forward + backward of (a) single layers shaped like FastGAN's at 64 px (widths 16) and (b) whole generators
(FastGAN, BigGAN, PGGAN at 64 px, widths 16 and 64) in both forms, in one run: the baseline swaps
`upsample_conv3x3` for `interpolate` + `conv2d` in the model modules. Prints ms per call for both and the ratio;
each figure is the best of --repeats timed runs after warm-up. Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from atlas_gan.models import ModelSpec, biggan, fastgan, pggan
from atlas_gan.models.upsampling import upsample_conv3x3

FAMILY_MODULES = (fastgan, biggan, pggan)
GENERATORS = (
    ("fastgan", fastgan.FastGANGenerator),
    ("biggan", biggan.BigGANGenerator),
    ("pggan", pggan.PGGANGenerator),
)
LAYERS = [(32, 32, 32), (64, 64, 16), (128, 128, 8), (256, 256, 4)]  # (in, out channels, input px)


def written_out(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


def best_ms(run: Callable[[], None], device: torch.device, repeats: int, calls: int = 10) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(calls):
            run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - started) / calls)
    return min(times)


def use(form: Callable[..., torch.Tensor]) -> None:
    for module in FAMILY_MODULES:
        module.upsample_conv3x3 = form


def layer_ms(c_in: int, c_out: int, size: int, batch: int, device: torch.device, repeats: int) -> list[float]:
    x = torch.randn(batch, c_in, size, size, device=device, requires_grad=True)
    weight = torch.randn(c_out, c_in, 3, 3, device=device, requires_grad=True)
    times = []
    for form in (written_out, upsample_conv3x3):
        times.append(best_ms(lambda form=form: form(x, weight).sum().backward(), device, repeats))
    return times


def generator_ms(generator: torch.nn.Module, batch: int, device: torch.device, repeats: int) -> list[float]:
    generator = generator.to(device)
    z = torch.randn(batch, generator.spec.latent_dim, device=device)
    times = []
    for form in (written_out, upsample_conv3x3):
        use(form)
        times.append(best_ms(lambda: generator(z).mean().backward(), device, repeats, calls=3))
    use(upsample_conv3x3)
    return times


def show(label: str, times: list[float]) -> None:
    print(f"{label:<34}{times[0]:>15.2f}{times[1]:>15.2f}{times[0] / times[1]:>7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'what':<34}{'written out ms':>15}{'transposed ms':>15}{'ratio':>8}")
    for c_in, c_out, size in LAYERS:
        times = layer_ms(c_in, c_out, size, args.batch, device, args.repeats)
        show(f"layer {c_in}->{c_out} ch, {size}->{2 * size} px", times)
    for family, generator_class in GENERATORS:
        for width in (16, 64):
            spec = ModelSpec(bands=3, image_size=64, latent_dim=128, g_width=width, d_width=width)
            show(
                f"{family} G 64 px, width {width}",
                generator_ms(generator_class(spec), args.batch, device, args.repeats),
            )


if __name__ == "__main__":
    main()
