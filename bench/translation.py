"""Translation quality: pix2pix against the per-band linear-regression baseline, and CycleGAN year to year against
not translating at all, in one invocation each.

    python bench/translation.py [--data ../shared/data] [--scenes landsat-pucallpa] [--inputs 3 4] [--targets 2]
                                [--tile 32] [--steps 3000] [--batch 16] [--width 32] [--out runs/bench-translation]
    python bench/translation.py --cyclegan [--domain-a 1985 1990] [--domain-b 2015 2020] [--steps 2000] ...

Ingests the scenes (default: the eight Landsat years of Pucallpa; bands 1 SWIR1, 2 NIR, 3 red, 4 green) as tiles,
holds out a spatially blocked 10 % (train.validation: 4x4-tile blocks of ground with every date, plus a buffer of
neighbouring tiles), trains pix2pix on the rest from --inputs to --targets (default: red, green -> NIR) and scores
it on the held-out tiles every quarter of the run, beside the linear regression from input to target bands fitted on
training pixels. Prints PSNR/SSIM/L1 of both, their differences and ratios, then translates one whole scene
(`atlas-gan translate`'s code path) and draws it beside the true target bands: `<out>/scene.png`.

With --cyclegan: trains CycleGAN from the --domain-a years to the --domain-b years (labels by acquisition year) on
the same blocked split and reports the FID of held-out A tiles translated against held-out B tiles beside the FID of
A as it is (not translating), and their ratio; translates --scene (an A year) whole into `<out>/cyclegan-scene.png`
beside the scene and a B-year scene of the same ground. Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from shared_data import SHARED_DATA

from atlas_gan.config import load_config
from atlas_gan.figures.canvas import new_figure, png_bytes
from atlas_gan.ingest import ingest
from atlas_gan.metrics.hook import EvaluationHook
from atlas_gan.metrics.translation import summary_lines
from atlas_gan.metrics.unpaired import unpaired_summary
from atlas_gan.runtime import distributed
from atlas_gan.sampling import load_sampler
from atlas_gan.train.figures_hook import FiguresHook
from atlas_gan.train.trainer import Trainer
from atlas_gan.translate import SceneTranslator, translate_scene


def scene_figure(source: Path, translated: Path, input_indexes: list[int], target_index: int, title: str) -> bytes:
    """The scene's input bands (first as grey), its translation, the true target band and their difference."""
    import rasterio

    with rasterio.open(source) as scene, rasterio.open(translated) as out:
        shown_input = scene.read(input_indexes[0]).astype(float)
        truth = scene.read(target_index).astype(float)
        predicted = out.read(1).astype(float)
    low, high = np.nanpercentile(truth, [2, 98])
    panels = [
        (shown_input, f"input band {input_indexes[0]}", np.nanpercentile(shown_input, [2, 98]), "gray"),
        (predicted, "translated", (low, high), "gray"),
        (truth, f"true band {target_index}", (low, high), "gray"),
        (predicted - truth, "translated - true", (-(high - low) / 2, (high - low) / 2), "RdBu_r"),
    ]
    figure = new_figure(1600, int(1600 / 4 * truth.shape[0] / truth.shape[1]) + 120)
    figure.suptitle(title, fontsize="medium")
    for axes, (image, name, (vmin, vmax), cmap) in zip(figure.subplots(1, 4), panels, strict=True):
        shown = axes.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        axes.set_title(name, fontsize="small")
        axes.set_axis_off()
        if cmap != "gray":
            figure.colorbar(shown, ax=axes, shrink=0.6)
    return png_bytes(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--scenes", default="landsat-pucallpa", help="folder under <data>/geotiff")
    parser.add_argument("--inputs", nargs="+", type=int, default=[3, 4], help="1-based input bands")
    parser.add_argument("--targets", nargs="+", type=int, default=[2], help="1-based target bands")
    parser.add_argument("--tile", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=32, help="g_width and d_width")
    parser.add_argument(
        "--scene", default=None, help="translated whole at the end (default: 2020, or 1985 for CycleGAN)"
    )
    parser.add_argument("--cyclegan", action="store_true", help="unpaired: CycleGAN between two sets of years")
    parser.add_argument("--domain-a", nargs="+", default=["1985", "1990"])
    parser.add_argument("--domain-b", nargs="+", default=["2015", "2020"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-translation"))
    args = parser.parse_args()
    command = "python bench/translation.py " + shlex.join(sys.argv[1:])
    source = args.data / "geotiff" / args.scenes
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.out / ("cyclegan" if args.cyclegan else "run"), ignore_errors=True)  # a fresh run, no resume
    if args.cyclegan:
        run_cyclegan(args, source, command)
        return
    family = [
        "train.model.family=pix2pix",
        f"train.model.input_bands={json.dumps(args.inputs)}",
        f"train.model.target_bands={json.dumps(args.targets)}",
    ]
    summary, evaluation = train_and_score(args, source, command, "run", family)
    for result in evaluation.results:
        base = result["baselines"]["linear"]
        print(
            f"  step {result['step']:>6}: PSNR {result['psnr']:.2f} dB (linear {base['psnr']:.2f})"
            f"  SSIM {result['ssim']:.4f} (linear {base['ssim']:.4f})"
        )
    final, linear = evaluation.results[-1], evaluation.results[-1]["baselines"]["linear"]
    print("\n".join(summary_lines(final)))
    print(
        f"pix2pix vs linear: PSNR {final['psnr'] - linear['psnr']:+.2f} dB, "
        f"SSIM x{final['ssim'] / linear['ssim']:.2f}, L1 x{final['l1'] / linear['l1']:.2f} (lower is better)"
    )
    translator = SceneTranslator(load_sampler(summary["checkpoint"]), batch_size=64)
    name = args.scene or "landsat_2020.tif"
    scene, translated = source / name, args.out / f"translated-{name}"
    done = translate_scene(translator, str(scene), str(translated), progress=False)
    print(f"translated {scene.name} whole: {done.width}x{done.height} px in {done.seconds:.1f} s -> {translated}")
    title = (
        f"pix2pix step {summary['step']}: bands {args.inputs} -> {args.targets} of {scene.name} (its held-out "
        "blocks are in the scores above; the rest was seen in training)"
    )
    (args.out / "scene.png").write_bytes(scene_figure(scene, translated, args.inputs, args.targets[0], title))
    print(f"figures: {args.out / 'scene.png'}, {args.out / 'run' / 'figures'}")


def train_and_score(
    args: argparse.Namespace, source: Path, command: str, run: str, family: list[str]
) -> tuple[dict, EvaluationHook]:
    """Ingest the scenes into a temp folder, train the family (`family`: its config overrides) into <out>/<run>
    with evaluations every quarter of the run; prints how long it took."""
    with tempfile.TemporaryDirectory(prefix="atlas-bench-translation-") as work:
        config = load_config(
            None,
            [
                f"ingest.source={source}",
                f"ingest.output={Path(work) / 'tiles'}",
                f"ingest.tile_size={args.tile}",
                *family,
                f"train.steps={args.steps}",
                f"train.batch_size={args.batch}",
                f"train.g_width={args.width}",
                f"train.d_width={args.width}",
                "train.num_workers=0",
                f"train.run_dir={args.out / run}",
                f"train.evaluate_every={max(1, args.steps // 4)}",
                f"train.checkpoint_every={args.steps}",
                f"train.sample_every={args.steps}",
                "train.sample_count=16",
                "train.log_every=100",
                "evaluate.batch_size=100",
                "tracking.enabled=false",
            ],
        )
        report = ingest(config, progress=False)
        print(f"ingested {report.new_samples} tiles of {args.tile} px from {source}")
        ctx = distributed.setup()
        evaluation = EvaluationHook()
        started = time.perf_counter()
        summary = Trainer(config, ctx, hooks=[evaluation, FiguresHook()], progress=True).run()
        seconds = time.perf_counter() - started
        distributed.teardown(ctx)
    print(f"\n$ {command}\ntrained {summary['step']} steps in {seconds / 60:.1f} min on {ctx.device}")
    return summary, evaluation


def run_cyclegan(args: argparse.Namespace, source: Path, command: str) -> None:
    family = [
        "train.model.family=cyclegan",
        f"train.model.domain_a={json.dumps(args.domain_a)}",
        f"train.model.domain_b={json.dumps(args.domain_b)}",
        "train.condition.by=year",
        "train.condition.unlabeled=drop",
        "train.shuffle_buffer=4000",  # every year in every batch's reach
    ]
    summary, evaluation = train_and_score(args, source, command, "cyclegan", family)
    for result in evaluation.results:
        print(f"  step {result['step']:>6}: FID {result['fid']:.2f} (not translating: {result['identity_fid']:.2f})")
    print("\n".join(unpaired_summary(evaluation.results[-1])))
    name = args.scene or "landsat_1985.tif"
    scene, translated = source / name, args.out / f"cyclegan-{name}"
    translator = SceneTranslator(load_sampler(summary["checkpoint"]), batch_size=64)
    done = translate_scene(translator, str(scene), str(translated), progress=False)
    print(f"translated {scene.name} whole: {done.width}x{done.height} px in {done.seconds:.1f} s -> {translated}")
    title = f"CycleGAN step {summary['step']}: {scene.name} translated toward {','.join(args.domain_b)}"
    figure = domains_figure(scene, translated, source / "landsat_2020.tif", title)
    (args.out / "cyclegan-scene.png").write_bytes(figure)
    print(f"figures: {args.out / 'cyclegan-scene.png'}, {args.out / 'cyclegan' / 'figures'}")


def domains_figure(scene: Path, translated: Path, reference: Path, title: str) -> bytes:
    """The scene, its translation and a scene of the other domain, as false colour (bands 1, 2, 3), one stretch
    per panel from the 2nd to the 98th percentile."""
    import rasterio

    panels = []
    for path, name in ((scene, scene.name), (translated, "translated"), (reference, reference.name)):
        with rasterio.open(path) as source:
            image = source.read([1, 2, 3]).astype(float)
        low, high = np.nanpercentile(image, [2, 98], axis=(1, 2), keepdims=True)
        panels.append((np.clip((image - low) / np.maximum(high - low, 1e-9), 0, 1).transpose(1, 2, 0), name))
    height, width = panels[0][0].shape[:2]
    figure = new_figure(1500, int(500 * height / width) + 90)
    figure.suptitle(title, fontsize="medium")
    for axes, (image, name) in zip(figure.subplots(1, 3), panels, strict=True):
        axes.imshow(np.nan_to_num(image), interpolation="nearest")
        axes.set_title(name, fontsize="small")
        axes.set_axis_off()
    return png_bytes(figure)


if __name__ == "__main__":
    main()
