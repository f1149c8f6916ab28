"""Where one case's training step spends its GPU time, per precision mode: torch.profiler's top operators.

    python bench/gpu_profile.py OUT [--pack .gpu-pack] [--case fastgan-128] [--modes fp32,bf16] [--steps 8]

Builds the case's trainer as `bench/gpu.py` does (same pack, same overrides), warms up, then profiles `--steps`
steps of each mode and prints the operators with the most device time (CUDA; CPU time on CPU) and the step's wall
time, so a mode that is slower than it should be (FastGAN is slower in bf16 than in fp32 on an H200) can be read
operator by operator. Writes OUT/profile-<case>-<mode>.txt ('+' written as '_'). `--smoke`: on CPU, tiny networks.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from gpu import CASES, MODES, HeldBatches, build_trainer, held_batches, synchronize
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--pack", type=Path, default=Path(".gpu-pack"))
    parser.add_argument("--case", default="fastgan-128", help="name-size of one of bench/gpu.py's cases")
    parser.add_argument("--modes", default="fp32,bf16", help=f"some of {','.join(MODES)}")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rows", type=int, default=18)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    case = next((c for c in CASES if f"{c.name}-{c.size}" == args.case), None)
    if case is None:
        parser.error(f"--case {args.case}: not one of {[f'{c.name}-{c.size}' for c in CASES]}")
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and not args.smoke
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    sort_key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    with tempfile.TemporaryDirectory(prefix="atlas-gpu-profile-") as tmp:
        for mode in args.modes.split(","):
            trainer = build_trainer(args.pack, Path(tmp), case, mode, args.smoke, workers=0)
            device = trainer.ctx.device
            batches = HeldBatches(held_batches(trainer, 2))
            for _ in range(3):
                trainer.train_step(batches)
            synchronize(device)
            started = time.perf_counter()
            with profile(activities=activities) as prof:
                for _ in range(args.steps):
                    trainer.train_step(batches)
                synchronize(device)
            step_ms = 1000 * (time.perf_counter() - started) / args.steps
            table = prof.key_averages().table(sort_by=sort_key, row_limit=args.rows, max_name_column_width=60)
            text = f"{case.name} {case.size} px, {mode}: {step_ms:.1f} ms per step (profiled)\n{table}\n"
            (args.out / f"profile-{args.case}-{mode.replace('+', '_')}.txt").write_text(text)
            print(text, flush=True)
            del trainer
            if cuda:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
