"""Parameter fingerprints of short seeded training runs: proof that a refactoring changed no arithmetic.

    python bench/fingerprints.py --out before.json            # record
    python bench/fingerprints.py --compare before.json        # after the change: identical or not, per run

Trains dcgan, wgan-gp, conditional sagan (+ DiffAugment) and stylegan2 (+ ADA, lazy R1, path length) on the
Landsat Pucallpa series (64 px tiles, 4 bands) for `--steps` generator steps with a fixed seed, stopping halfway and
resuming from the checkpoint, so the resume path is part of what is fingerprinted. Each run's fingerprint is the
sha256 of every tensor of its last checkpoint's networks (G, D, EMA G) and optimizer states, in a fixed order,
plus the logged losses. Reads both checkpoint layouts (v1 flat keys, v2 named networks). Same machine, same torch:
CPU kernels may differ between machines, so compare fingerprints recorded on one machine. Not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from shared_data import SHARED_DATA

from atlas_gan.config import load_config
from atlas_gan.ingest import ingest

RUNS: dict[str, list[str]] = {
    "dcgan": ["train.model=dcgan"],
    "wgan-gp": ["train.model=wgan-gp"],
    "sagan-conditional": [
        "train.model=sagan",
        "train.condition.by=year",
        "train.diffaugment=[color,translation,cutout]",
    ],
    "stylegan2-ada": ["train.model=stylegan2", "train.ada.speed_kimg=0.1", "train.ada.interval=3"],
}
SMALL = [
    "train.latent_dim=32",
    "train.g_width=8",
    "train.d_width=8",
    "train.batch_size=8",
    "train.num_workers=0",
    "train.log_every=1",
    "train.shuffle_buffer=64",
    "train.sample_count=4",
    "train.seed=3",
    "tracking.enabled=false",
]


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor inside a (nested) state dict, in a deterministic order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for key in sorted(value, key=str) for t in _tensors(value[key])]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    return []


def _parts(state: dict[str, Any]) -> dict[str, Any]:
    """G, D, EMA G and the two optimizers of a checkpoint, whichever layout it has."""
    if "networks" in state:  # v2: named networks
        return {
            "G": state["networks"]["G"],
            "D": state["networks"]["D"],
            "G_ema": state["ema"]["G"],
            "opt_g": state["optimizers"]["G"],
            "opt_d": state["optimizers"]["D"],
        }
    return {key: state[key] for key in ("G", "D", "G_ema", "opt_g", "opt_d")}


def fingerprint(run_dir: Path) -> dict[str, Any]:
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*.pt"))
    state = torch.load(io.BytesIO(checkpoints[-1].read_bytes()), map_location="cpu", weights_only=True)
    digests = {}
    for name, part in _parts(state).items():
        digest = hashlib.sha256()
        for tensor in _tensors(part):
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digests[name] = digest.hexdigest()[:16]
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    losses = [(r["step"], r["loss_d"], r["loss_g"]) for r in records if "loss_d" in r]
    digests["losses"] = hashlib.sha256(json.dumps(losses).encode()).hexdigest()[:16]
    digests["step"] = state["step"]
    return digests


def run(data: Path, work: Path, name: str, steps: int) -> dict[str, Any]:
    from atlas_gan.runtime import distributed
    from atlas_gan.train.trainer import Trainer

    run_dir = work / name
    base = [f"ingest.output={data}", f"train.run_dir={run_dir}", *SMALL, *RUNS[name]]
    half = steps // 2
    ctx = distributed.setup()
    for until in (half, steps):  # stop halfway, then resume from the checkpoint
        config = load_config(None, [*base, f"train.steps={until}", f"train.checkpoint_every={half}"])
        Trainer(config, ctx, progress=False).run()
    return fingerprint(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, help="write the fingerprints as JSON here")
    parser.add_argument("--compare", type=Path, help="fingerprints recorded earlier: say which runs differ")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="atlas-fingerprints-") as tmp:
        data = Path(tmp) / "shards"
        config = load_config(
            None,
            [
                f"ingest.source={args.data / 'geotiff' / 'landsat-pucallpa'}",
                f"ingest.output={data}",
                "ingest.tile_size=64",
                "ingest.workers=1",
            ],
        )
        ingest(config, progress=False)
        results = {name: run(data, Path(tmp) / "runs", name, args.steps) for name in RUNS}
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        same = True
        for name, digests in results.items():
            match = before.get(name) == digests
            same &= match
            print(f"{name:<20} {'identical' if match else 'DIFFERENT'}")
            if not match:
                print(f"  before: {before.get(name)}\n  after:  {digests}")
        print("all runs bit-identical" if same else "some runs differ")


if __name__ == "__main__":
    main()
