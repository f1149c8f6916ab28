"""Scaling on paper: measured per-step compute against the gradient all-reduce volume, projected to 8-GPU nodes.

    python bench/scaling.py [--measured bench/results/gpu-h200.json] [--mode bf16+cl] [--nodes 1,2,4,8]

Measured: each case's time per training step on one GPU (s/kimg x per-GPU batch, from a `bench/gpu.py` JSON) and
its gradient volume (G's and D's parameters counted from the networks atlas-gan builds for that case, fp32
gradients: atlas-gan all-reduces each network's gradients as one flattened fp32 tensor after its backward pass,
not overlapped with compute, plus one 1-element finiteness check per update).

Projected (a model, not a measurement; every constant below is an assumption):
    t_step(N) = t_compute + t_intra + t_inter(N) + updates * hops(N) * latency
    t_intra    = 2 * (8 - 1) / 8 * V / NVLINK_BUS        ring all-reduce among the node's 8 GPUs
    t_inter(N) = 2 * (N - 1) / N * V / link              ring all-reduce among N nodes, one link per node
    efficiency(N) = t_step(1) / t_step(N)                throughput of N nodes / (N x one node's)
with V the gradient bytes per step, NVLINK_BUS the intra-node all-reduce bus bandwidth and `link` 100 or 400 Gb/s.
Weak scaling: the per-GPU batch stays as measured. The issue's target: >= 0.9 per added node.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gpu import CASES, Case

from atlas_gan.config import load_config
from atlas_gan.models import build
from atlas_gan.recipes import model_spec
from atlas_gan.recipes.roles import band_roles

NVLINK_BUS_BYTES_S = 370e9  # assumption: NCCL all-reduce bus bandwidth within an 8 x H200 NVLink node
LATENCY_S = 10e-6  # assumption: per ring hop and all-reduce, small messages
GPUS_PER_NODE = 8


def parameter_counts(case: Case) -> tuple[int, int]:
    """(G parameters, D parameters) of the case's networks, as bench/gpu.py builds them."""
    overrides = ["ingest.output=unused", "train.run_dir=unused", f"train.image_size={case.size}"]
    cfg = load_config(None, overrides + case.overrides).train
    spec = model_spec(cfg, band_roles(cfg, ["B4", "B3", "B2"]), case.size, 0)
    _, generator, discriminator = build(cfg.model.family, spec)
    return sum(p.numel() for p in generator.parameters()), sum(p.numel() for p in discriminator.parameters())


def step_time(compute_s: float, volume: float, nodes: int, link_bytes_s: float, updates: int) -> float:
    intra = 2 * (GPUS_PER_NODE - 1) / GPUS_PER_NODE * volume / NVLINK_BUS_BYTES_S
    inter = 2 * (nodes - 1) / nodes * volume / link_bytes_s if nodes > 1 else 0.0
    hops = (GPUS_PER_NODE - 1) + (nodes - 1)
    return compute_s + intra + inter + 2 * updates * hops * LATENCY_S  # gradients and the finiteness check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parent / "results" / "gpu-h200.json"
    parser.add_argument("--measured", type=Path, default=default, help="a bench/gpu.py gpu.json")
    parser.add_argument("--mode", default="bf16+cl", help="which measured mode's step time to use")
    parser.add_argument("--nodes", default="1,2,4,8")
    args = parser.parse_args()
    report = json.loads(args.measured.read_text())
    nodes = [int(n) for n in args.nodes.split(",")]
    print(f"measured on {report['device']} (torch {report['torch']}), mode {args.mode}, from {args.measured}")
    print(
        f"projection: {GPUS_PER_NODE} GPUs per node, NVLink all-reduce bus {NVLINK_BUS_BYTES_S / 1e9:.0f} GB/s, "
        f"{LATENCY_S * 1e6:.0f} us per hop (assumptions); efficiency = t_step(1 node) / t_step(N nodes)"
    )
    header = f"{'case':<16}{'batch':>6}{'step ms':>9}{'G+D Mparam':>11}{'grad MB':>9}"
    for gbps in (100, 400):
        header += "".join(f"{f'{n}n@{gbps}G':>10}" for n in nodes if n > 1)
    print(header)
    for record in report["training"]:
        if record.get("mode") != args.mode or "s_per_kimg" not in record:
            continue
        family, size = record["family"], record["size"]
        case = next((c for c in CASES if (c.name, c.size) == (family, size)), None)
        if case is None:
            continue
        g_params, d_params = parameter_counts(case)
        volume = 4.0 * (g_params + d_params)  # fp32 gradients
        compute = record["s_per_kimg"] * record["batch"] / 1000
        line = f"{f'{family} {size}':<16}{record['batch']:>6}{compute * 1e3:>9.1f}"
        line += f"{(g_params + d_params) / 1e6:>11.1f}{volume / 1e6:>9.1f}"
        for gbps in (100, 400):
            one = step_time(compute, volume, 1, gbps * 1e9 / 8, updates=2)
            for n in nodes:
                if n > 1:
                    line += f"{one / step_time(compute, volume, n, gbps * 1e9 / 8, updates=2):>10.2f}"
        print(line)
    print("columns Nn@XG: projected weak-scaling efficiency on N nodes over X Gb/s per node (target >= 0.9)")


if __name__ == "__main__":
    main()
