"""Sample quality per GAN family against a plain DCGAN reference, at equal images shown and at equal wall clock.

    python bench/quality.py [--source landsat8-parana] [--size 64] [--kimg 36] [--minutes 10] [--points 4]
                            [--runs reference,fastgan,dcgan] [--n N] [--work runs/bench-quality] [--json FILE]
                            [--set KEY=VALUE ...] [--variant RUN-LABEL:KEY=VALUE[,KEY=VALUE...] ...] [--seeds 0,1,2]

Ingests one shared source (`../shared/data/geotiff/<source>`, bands B4,B3,B2 for Landsat 8, the first three
otherwise) into `--size` px tiles, then trains, one after the other on the same tiles:

- `reference`: the pytorch/examples dcgan/main.py loop, rewritten here (bench/train_step.py's networks: BCE, Adam
  2e-4 / beta1 0.5, batch norm, nz 100, ngf = ndf = 64, batch 64, samples drawn in train mode, no EMA);
- each atlas-gan family of `--runs` through the real trainer with its defaults for this dataset (whatever the
  trainer picks from the number of tiles: logged with the run), at the settings in RUNS below.

Every run trains until it has shown D `--kimg` thousand real images and trained for `--minutes` (evaluation
excluded), whichever comes later, and is scored (EMA generator for atlas-gan runs) with FID/KID against N real tiles
(default: half the dataset; TF-Inception, the same protocol for all) at `--points` evenly spaced kimg marks and once
at the minutes mark: a run that shows `--kimg` sooner keeps training, so equal wall clock means equal training time
for every run, the reference included. Its sample grid is drawn at the end. The table gives each
run's FID at the end (equal images) and at the minutes mark (equal wall clock on this machine), its ratio to the
reference's FID at the same mark, the distance to the real-vs-real floor at the same N (real tiles outside the
reference set scored against it), and the pixel spread of its samples against the real tiles'; the FID-against-kimg
points are in the JSON, which is rewritten after every run (an interrupted invocation keeps the runs it finished).
`--set` adds config overrides to every atlas-gan run (not the reference), to measure a variant against the same
reference. `--variant fastgan-ema:train.ema_rampup=0.1` adds a run named `fastgan-ema`: the `fastgan` run with those
overrides too, measured in the same invocation (several variants share one reference run). `--seeds 0,1,2` trains
every atlas-gan run and variant once per seed (`fastgan@1`, ...) and adds their means and ranges: one seed of a
64 px FastGAN at 36 kimg lands anywhere in a ~25 FID range, wider than most recipe changes. Sample grids are written
beside it. Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from shared_data import SHARED_DATA
from torch import nn
from train_step import RefDiscriminator, RefGenerator, weights_init
from variants import parse_variant

from atlas_gan.config import AtlasConfig, load_config
from atlas_gan.ingest import ingest
from atlas_gan.metrics import main_scores
from atlas_gan.metrics.evaluate import evaluate_generator
from atlas_gan.runtime import distributed
from atlas_gan.runtime.generator import generator_meta
from atlas_gan.sampling import grid_png
from atlas_gan.shards import read_manifest, shard_urls
from atlas_gan.storage import LocalStorage
from atlas_gan.train.data import TileStream, make_loader
from atlas_gan.train.hooks import TrainHooks
from atlas_gan.train.trainer import Trainer

RUNS: dict[str, list[str]] = {  # atlas-gan runs: overrides on top of the dataset's defaults
    "fastgan": ["train.model=fastgan", "train.g_width=16", "train.d_width=16", "train.batch_size=16"],
    "dcgan": ["train.model=dcgan", "train.latent_dim=100", "train.batch_size=64"],
    "sngan": ["train.model=sngan", "train.g_width=32", "train.d_width=32", "train.batch_size=32"],
    "sagan": ["train.model=sagan", "train.g_width=32", "train.d_width=32", "train.batch_size=32"],
    "stylegan2": ["train.model=stylegan2", "train.g_width=16", "train.d_width=16", "train.batch_size=32"],
    "wgan-gp": ["train.model=wgan-gp", "train.g_width=32", "train.d_width=32", "train.batch_size=32"],
    "biggan": ["train.model=biggan", "train.g_width=16", "train.d_width=16", "train.batch_size=32"],
    "pggan": ["train.model=pggan", "train.g_width=16", "train.d_width=16", "train.batch_size=32"],  # + fitted_schedule
}
REFERENCE = "reference"
REFERENCE_LATENT, REFERENCE_WIDTH, REFERENCE_BATCH = 100, 64, 64


@dataclass
class Point:
    kimg: float
    train_seconds: float
    fid: float
    kid: float
    spread_ratio: float | None
    floor_fid: float | None
    precision: float | None = None  # share of samples among the real tiles (Inception features, k = 3)
    recall: float | None = None  # share of real tiles among the samples
    floor_precision: float | None = None  # the same for real tiles outside the reference set
    floor_recall: float | None = None


@dataclass
class RunResult:
    run: str
    points: list[Point] = field(default_factory=list)
    at_minutes: Point | None = None

    @property
    def final(self) -> Point:
        return max(self.points, key=lambda p: p.kimg)


class Schedule:
    """When to score: at evenly spaced kimg marks and once at the wall-clock mark (training time only)."""

    def __init__(self, kimg: float, points: int, minutes: float) -> None:
        self.marks = [kimg * (i + 1) / points for i in range(points)]
        self.minutes_left = minutes * 60
        self.train_seconds = 0.0
        self._last: float | None = None

    def tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.train_seconds += now - self._last
        self._last = now

    def pause(self) -> None:
        self._last = None

    @property
    def done(self) -> bool:
        """Every kimg mark and the minutes mark scored: the run can end."""
        return not self.marks and self.minutes_left is None

    def due(self, kimg: float) -> tuple[bool, bool]:
        """(a kimg mark is reached, the minutes mark is reached); each fires once."""
        at_kimg = bool(self.marks) and kimg >= self.marks[0] - 1e-9
        if at_kimg:
            self.marks.pop(0)
        at_minutes = self.minutes_left is not None and self.train_seconds >= self.minutes_left
        if at_minutes:
            self.minutes_left = None
        return at_kimg, at_minutes


def score(
    config: AtlasConfig, generator: nn.Module, meta: dict[str, Any], n: int, kimg: float, seconds: float
) -> Point:
    result = evaluate_generator(config, generator, meta, distributed.setup(), n=n, progress=False, write=False)
    main = main_scores(result)
    return Point(
        kimg,
        seconds,
        main["fid"],
        main["kid"],
        main["spread_ratio"],
        main["floor_fid"],
        main["sample_precision"],
        main["sample_recall"],
        main["floor_precision"],
        main["floor_recall"],
    )


def record(result: RunResult, point: Point, at_kimg: bool, at_minutes: bool) -> None:
    if at_kimg:
        result.points.append(point)
    if at_minutes:
        result.at_minutes = point
    when = " (minutes mark)" if at_minutes else ""
    split = f", precision {point.precision:.3f}, recall {point.recall:.3f}" if point.recall is not None else ""
    print(
        f"   {result.run}: {point.kimg:6.1f} kimg, {point.train_seconds:6.0f} s: FID {point.fid:7.2f}{split}{when}",
        flush=True,
    )


class TrainMode(nn.Module):
    """pytorch/examples samples its generator in train mode (batch statistics); evaluation calls eval(), which this
    wrapper ignores. Takes latents (n, nz) like atlas-gan's generators."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.generator.train()
        return self.generator(z.view(z.shape[0], -1, 1, 1))


def run_reference(config: AtlasConfig, args: argparse.Namespace, n: int, bands: list[str]) -> RunResult:
    """The pytorch/examples DCGAN loop on the same tiles (flips and 90-degree turns as atlas-gan's stream)."""
    torch.manual_seed(args.seed)
    nc = len(bands)
    net_g, net_d = RefGenerator(REFERENCE_LATENT, REFERENCE_WIDTH, nc), RefDiscriminator(REFERENCE_WIDTH, nc)
    net_g.apply(weights_init)
    net_d.apply(weights_init)
    criterion = nn.BCELoss()
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    manifest = read_manifest(LocalStorage(), config.dataset_url)
    stream = TileStream(
        shard_urls(manifest, config.dataset_url), 0, 1, image_size=args.size, seed=args.seed, augment_config=None
    )
    batches = iter(make_loader(stream, REFERENCE_BATCH, args.workers, False))
    spec = {"bands": nc, "image_size": args.size, "latent_dim": REFERENCE_LATENT, "g_width": 64, "d_width": 64}
    spec |= {"num_classes": 0, "attention_resolution": 0}
    result, schedule, images = RunResult(REFERENCE), Schedule(args.kimg, args.points, args.minutes), 0
    sampler = TrainMode(net_g)

    def reference_meta(seen: int) -> dict[str, Any]:
        return generator_meta(
            model="reference-dcgan", signature="latent", spec=spec, bands=bands, labels=None,
            normalization=manifest["normalization"], step=seen // REFERENCE_BATCH, images_seen=seen,
        )  # fmt: skip

    while not schedule.done:
        schedule.tick()
        real = next(batches)["image"]
        net_d.zero_grad()
        label = torch.full((real.size(0),), 1.0)
        criterion(net_d(real), label).backward()
        fake = net_g(torch.randn(real.size(0), REFERENCE_LATENT, 1, 1))
        label.fill_(0.0)
        criterion(net_d(fake.detach()), label).backward()
        opt_d.step()
        net_g.zero_grad()
        label.fill_(1.0)
        criterion(net_d(fake), label).backward()
        opt_g.step()
        images += real.size(0)
        schedule.tick()
        at_kimg, at_minutes = schedule.due(images / 1000)
        if at_kimg or at_minutes:
            with torch.no_grad():
                point = score(config, sampler, reference_meta(images), n, images / 1000, schedule.train_seconds)
            record(result, point, at_kimg, at_minutes)
            schedule.pause()
    write_grid(args, REFERENCE, sampler, bands, config.train.rgb_bands)
    return result


class Scoring(TrainHooks):
    """Scores the trainer's EMA generator on the schedule; times training alone."""

    def __init__(self, result: RunResult, schedule: Schedule, n: int) -> None:
        self.result, self.schedule, self.n = result, schedule, n

    def on_step_start(self, trainer: Trainer) -> None:
        self.schedule.tick()
        at_kimg, at_minutes = self.schedule.due(trainer.images_seen / 1000)
        if at_kimg or at_minutes:
            point = score(
                trainer.config, trainer.generator, trainer.generator_meta(), self.n, trainer.images_seen / 1000,
                self.schedule.train_seconds,
            )  # fmt: skip
            record(self.result, point, at_kimg, at_minutes)
            self.schedule.pause()
        if self.schedule.done:
            trainer.request_stop()


def run_family(
    name: str,
    data: Path,
    args: argparse.Namespace,
    n: int,
    rgb: list[str],
    extra: list[str] | None = None,
    seed: int | None = None,
) -> RunResult:
    """The atlas-gan run `name` (a RUNS entry, or a variant `<entry>-<label>` whose overrides are `extra`), with
    `train.seed` = `seed` (default `--seed`); a seed from `--seeds` is appended to its name as `@seed`."""
    family = variant_base(name) if extra is not None else name
    if seed is not None:
        name = f"{name}@{seed}"
    run_dir = args.work / "runs" / f"{args.source}-{name}"
    if run_dir.exists():  # the trainer would resume it: a benchmark run starts from scratch
        shutil.rmtree(run_dir)
    overrides = [
        "ingest.source=unused",
        f"ingest.output={data}",
        f"train.run_dir={run_dir}",
        "train.steps=100000000",
        f"train.num_workers={args.workers}",
        "train.log_every=50",
        "train.sample_every=100000000",
        "train.checkpoint_every=100000000",
        f"train.seed={args.seed if seed is None else seed}",
        f"train.rgb_bands={json.dumps(rgb)}" if rgb else "train.rgb_bands=null",
        "tracking.enabled=false",
        *RUNS[family],
        *fitted_schedule(family, args),
        *args.set,
        *(extra or []),
    ]
    config = load_config(None, overrides)
    result, schedule = RunResult(name), Schedule(args.kimg, args.points, args.minutes)
    trainer = Trainer(config, distributed.setup(), hooks=[Scoring(result, schedule, n)], progress=False)
    for pick in trainer.data_defaults:
        print(f"   {name}: {pick.key} = {pick.value} ({pick.reason})", flush=True)
    trainer.run()  # until Scoring has scored every mark (train.steps above never binds)
    write_grid(args, name, trainer.generator, trainer.bands, rgb, trainer.fixed_inputs)
    return result


def variant_base(name: str) -> str:
    """The RUNS entry a variant run `<entry>-<label>` modifies."""
    return name.rsplit("-", 1)[0]


def fitted_schedule(name: str, args: argparse.Namespace) -> list[str]:
    """pggan's growing schedule fitted to `--kimg`: every fade and every stable phase gets an equal share, so the
    run ends with a stable phase at the full size (the paper's 600 kimg phases would never leave 4x4 here)."""
    if name != "pggan":
        return []
    levels = int(math.log2(args.size)) - 2
    phase = args.kimg / (2 * levels + 1)
    return [f"train.model.stable_kimg={phase:g}", f"train.model.fade_kimg={phase:g}"]


def write_grid(
    args: argparse.Namespace,
    name: str,
    generator: nn.Module,
    bands: list[str],
    rgb: list[str] | None = None,
    inputs: tuple[torch.Tensor | None, ...] | None = None,
) -> None:
    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        if inputs is None:
            inputs = (torch.randn(64, REFERENCE_LATENT, generator=torch.Generator().manual_seed(0)),)
        images = generator(*inputs).float().cpu().numpy()
    generator.train(was_training)
    out = args.work / f"{args.source}-{name}.png"
    out.write_bytes(grid_png(images, bands, rgb))
    print(f"   {name}: samples in {out}", flush=True)


def table(results: list[RunResult], minutes: float) -> str:
    ref = next((r for r in results if r.run == REFERENCE), None)
    width = max([12, *(len(r.run) + 2 for r in results)])  # variant names run long
    head = (
        f"{'run':<{width}}{'kimg':>7}{'FID end':>9}{'/ref':>7}{'-floor':>8}{'spread':>8}{'prec':>6}{'rec':>6}"
        f" {'FID ' + format(minutes, 'g') + ' min':>12}{'kimg then':>10}{'/ref':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        end, timed = r.final, r.at_minutes
        ratio_end = f"{end.fid / ref.final.fid:7.2f}" if ref else f"{'-':>7}"
        ratio_time = f"{timed.fid / ref.at_minutes.fid:7.2f}" if ref and timed and ref.at_minutes else f"{'-':>7}"
        above = f"{end.fid - end.floor_fid:8.1f}" if end.floor_fid is not None else f"{'-':>8}"
        spread = f"{end.spread_ratio:8.2f}" if end.spread_ratio is not None else f"{'-':>8}"
        spread += "".join(f"{v:6.2f}" if v is not None else f"{'-':>6}" for v in (end.precision, end.recall))
        timed_text = f"{timed.fid:13.2f}{timed.kimg:10.1f}" if timed else f"{'-':>13}{'-':>10}"
        lines.append(f"{r.run:<{width}}{end.kimg:7.1f}{end.fid:9.2f}{ratio_end}{above}{spread}{timed_text}{ratio_time}")
    floor = next((r.final for r in results if r.final.floor_fid is not None), None)
    lines.append(
        f"real vs real floor at the same N: FID {floor.floor_fid:.2f}, precision "
        + " recall ".join("n/a" if v is None else f"{v:.2f}" for v in (floor.floor_precision, floor.floor_recall))
        if floor is not None
        else "no floor (dataset)"
    )
    return "\n".join(lines + seed_summary(results, ref))


def seed_summary(results: list[RunResult], ref: RunResult | None) -> list[str]:
    """For runs repeated over `--seeds` (`name@seed`): the mean FID at the end and at the minutes mark, the range
    across seeds and the mean's ratio to the reference. One seed is one draw: compare means, and ranges."""
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        if "@" in r.run:
            groups.setdefault(r.run.rsplit("@", 1)[0], []).append(r)
    if not groups:
        return []
    width = max(12, *(len(name) + 2 for name in groups))
    columns = (("FID end", 9, lambda r: r.final, ref and ref.final), ("FID at minutes", 16, lambda r: r.at_minutes,
               ref and ref.at_minutes))  # fmt: skip
    head = f"{'over seeds':<{width}}{'seeds':>6}" + "".join(
        f"{t:>{w}}{'range':>15}{'/ref':>7}" for t, w, _, _ in columns
    )
    lines = ["", head, "-" * len(head)]
    for name, runs in groups.items():
        line = f"{name:<{width}}{len(runs):>6}"
        for _, column_width, point_of, ref_point in columns:
            fids = [point.fid for point in map(point_of, runs) if point is not None]
            if not fids:
                line += f"{'-':>{column_width}}{'-':>15}{'-':>7}"
                continue
            mean = sum(fids) / len(fids)
            ratio = f"{mean / ref_point.fid:7.2f}" if ref_point else f"{'-':>7}"
            line += f"{mean:{column_width}.2f}{f'{min(fids):.1f}-{max(fids):.1f}':>15}{ratio}"
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--source", default="landsat8-parana", help="a folder of ../shared/data/geotiff")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-quality"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--kimg", type=float, default=36.0, help="real images shown to D per run, in thousands")
    parser.add_argument("--minutes", type=float, default=10.0, help="the equal-wall-clock mark (training time)")
    parser.add_argument("--points", type=int, default=4, help="FID points per run (evenly spaced in kimg)")
    parser.add_argument("--n", type=int, default=None, help="FID samples (fake and real); default half the tiles")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        type=lambda text: [int(x) for x in text.split(",") if x.strip()],
        default=None,
        metavar="S[,S...]",
        help="train every atlas-gan run and variant once per seed (named RUN@SEED) and add a table of the means and "
        "ranges across seeds; the reference runs once (--seed)",
    )
    parser.add_argument("--runs", default="reference,fastgan,dcgan")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        type=parse_variant,
        metavar="RUN-LABEL:KEY=VALUE[,...]",
        help="another run of RUNS entry RUN with these overrides, named RUN-LABEL (repeatable)",
    )
    parser.add_argument("--json", type=Path, default=None, help="default: <work>/quality-<source>.json")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every atlas-gan run"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RUNS) - {REFERENCE})
    if unknown:
        parser.error(f"unknown runs {unknown}; known: {[REFERENCE, *RUNS]}")
    variants = dict(args.variant)
    bad = [v for v in variants if variant_base(v) not in RUNS or "-" not in v or v in names]
    if bad:
        parser.error(f"variants {bad}: name them <run>-<label> after one of {list(RUNS)}, once each")
    source = args.data / "geotiff" / args.source
    if not source.is_dir():
        parser.error(f"{source}: not found (set --data or ATLAS_SHARED_DATA)")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU benchmark: equal wall clock on this machine
    args.work.mkdir(parents=True, exist_ok=True)
    landsat8 = args.source.startswith("landsat8")
    bands = ["B4", "B3", "B2"] if landsat8 else None
    data = args.work / f"{args.source}-{args.size}"
    ingest_overrides = [f"ingest.source={source}", f"ingest.output={data}", f"ingest.tile_size={args.size}"]
    if bands:
        ingest_overrides.append(f"ingest.bands={json.dumps(bands)}")
    ingest(load_config(None, ingest_overrides), progress=False)
    manifest = read_manifest(LocalStorage(), str(data))
    total = manifest["totals"]["samples"]
    n = args.n or total // 2
    tile_bands = manifest["tile"]["bands"]
    print(f"{args.source}: {total} tiles of {args.size} px, bands {tile_bands}; FID at N = {n}", flush=True)
    base = load_config(
        None,
        [
            "ingest.source=unused",
            f"ingest.output={data}",
            f"evaluate.n={n}",
            f"evaluate.kid_subset_size={min(1000, n)}",
            f"train.rgb_bands={json.dumps(bands)}" if bands else "train.rgb_bands=null",
        ],
    )
    command = "python bench/quality.py " + " ".join(sys.argv[1:])
    out = args.json or args.work / f"quality-{args.source}.json"
    results: list[RunResult] = []
    for name in [*names, *variants]:
        print(f"== {name}", flush=True)
        for seed in [None] if name == REFERENCE else args.seeds or [None]:  # the reference runs once
            if name == REFERENCE:
                results.append(run_reference(base, args, n, tile_bands))
            else:
                results.append(run_family(name, data, args, n, bands, variants.get(name), seed))
            write_report(out, command, args, total, n, results)
    print(f"\n{command}\n{table(results, args.minutes)}")
    print(f"wrote {out}")


def write_report(
    out: Path, command: str, args: argparse.Namespace, tiles: int, n: int, results: list[RunResult]
) -> None:
    """The JSON of every finished run so far, written atomically."""
    report = {
        "command": command,
        "source": args.source,
        "tiles": tiles,
        "n": n,
        "kimg": args.kimg,
        "minutes": args.minutes,
        "runs": {
            r.run: {"points": [asdict(p) for p in r.points], "at_minutes": r.at_minutes and asdict(r.at_minutes)}
            for r in results
        },
        "settings": {
            **{name: [*overrides, *args.set] for name, overrides in RUNS.items()},
            **{name: [*RUNS[variant_base(name)], *args.set, *extra] for name, extra in args.variant},
        },
        "table": table(results, args.minutes),
    }
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)


if __name__ == "__main__":
    main()
