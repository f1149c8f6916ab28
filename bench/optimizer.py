"""Adam's step: the fused kernel atlas-gan uses (`make_optimizer`) against the foreach kernel, in one run.

    python bench/optimizer.py [--device cpu|cuda] [--steps 20] [--repeats 3]

Times `optimizer.step()` alone on synthetic parameters shaped like a GAN's (40 conv weights of 64x64x3x3 and 20 of
256x256x3x3: 13.3 M parameters) with fixed gradients, betas (0, 0.99) as the small-data families use, and prints
ms per step for both and the ratio. Each figure is the best of --repeats runs after 3 warm-up steps. Not a test: no
thresholds.
"""

from __future__ import annotations

import argparse
import time

import torch

SHAPES = [(64, 64, 3, 3)] * 40 + [(256, 256, 3, 3)] * 20


def ms_per_step(params: list[torch.nn.Parameter], fused: bool, steps: int, device: torch.device) -> float:
    optimizer = torch.optim.Adam(params, lr=1e-4, betas=(0.0, 0.99), fused=fused, foreach=None if fused else True)
    for _ in range(3):
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, device=device)) for shape in SHAPES]
    for param in params:
        param.grad = torch.randn_like(param)
    count = sum(p.numel() for p in params)
    times = {
        name: min(ms_per_step(params, name == "fused", args.steps, device) for _ in range(args.repeats))
        for name in ("foreach", "fused")
    }
    print(f"Adam step, {count / 1e6:.1f} M parameters on {device} ({torch.get_num_threads()} threads):")
    ratio = times["foreach"] / times["fused"]
    print(f"  foreach {times['foreach']:.1f} ms   fused {times['fused']:.1f} ms   fused is {ratio:.2f}x faster")


if __name__ == "__main__":
    main()
