"""Super-resolution quality: ESRGAN against the pixel-loss model at equal budget and against bicubic, in one
invocation.

    python bench/superres.py [--data ../shared/data] [--scenes landsat8-parana] [--tile 64] [--scale 4]
                             [--steps 2000] [--batch 16] [--width 32] [--blocks 3] [--blur 0] [--noise 0]
                             [--gan-weight W] [--feature-weight W] [--discriminator unet|vgg]
                             [--upsampler nearest|shuffle]
                             [--variant NAME:KEY=VALUE[,KEY=VALUE...]]... [--interpolate A[,A...]] [--reuse]
                             [--out runs/bench-superres]

Ingests the scenes as tiles of --tile px (the truth), holds out a spatially blocked 10 % (train.validation), and
trains twice on the rest for the same number of steps: the pixel-loss model (L1 + spectral angle only) and ESRGAN
(the same pixel phase for half the steps, then the GAN phase resumed from its checkpoint, as each --variant's is).
Both are scored on the held-out tiles, degraded as in training (area downsampling by --scale, plus --blur/--noise),
beside bicubic upscaling and the GAN run's own pixel-phase generator: PSNR/SSIM/SAM per band in normalized units,
FID/KID on the first three bands. The truth itself blurred by Gaussians of 0.5-1.5 px is scored too, as landmarks
of how sharp a given FID is, and every generator's lattice check is printed: the power of its detail over bicubic
at the frequencies of a --scale px lattice over their neighbours' (about 1 for the truth; far above where G's
upsampling stages draw a repeating pattern).
Prints the table, then the GAN's differences and ratios to the pixel-loss model and bicubic, and draws held-out
tiles as input | bicubic | pixel-loss | ESRGAN | each variant | the truth blurred by 1 px | truth into
`<out>/superres.png`; finally upscales the central 384 px of a scene beyond its native resolution (`atlas-gan
upscale`'s code path) into `<out>/scene.png` beside bicubic. Each --variant (e.g.
`lr:train.lr_d=4e-4,train.lr_g=4e-4`) trains the GAN phase again from ESRGAN's own pixel-phase checkpoint with those
config overrides (same D: the model spec cannot change), and is scored on the same tiles against the same pixel-loss
model: GAN-phase settings compared at the price of their GAN phase alone.
--interpolate scores ESRGAN and each variant again with their weights mixed with their own pixel phase's (ESRGAN's
network interpolation), points between the GAN and the pixel-loss model at no training cost. With
--reuse, the ESRGAN and pixel-loss runs of an earlier invocation into the same --out with the same settings are
scored again instead of retrained (CPU training is deterministic, so they are the runs this one would train), and
only the variants train.
Not a test: no thresholds.
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
import torch
from shared_data import SHARED_DATA
from variants import parse_variant

from atlas_gan.config import AtlasConfig, load_config
from atlas_gan.degrade import gaussian_blur
from atlas_gan.figures.canvas import new_figure, png_bytes
from atlas_gan.ingest import ingest
from atlas_gan.metrics.superres import SuperResEvaluator, bicubic
from atlas_gan.metrics.translation import summary_lines
from atlas_gan.models.esrgan import UPSAMPLERS
from atlas_gan.preview import band_triplets
from atlas_gan.runtime import distributed
from atlas_gan.runtime.checkpoint import checkpoint_url
from atlas_gan.runtime.generator import interpolate_generators, load_generator, load_reference_generators
from atlas_gan.sampling import load_sampler
from atlas_gan.storage import LocalStorage
from atlas_gan.tracking.store import flatten
from atlas_gan.train.figures_hook import FiguresHook
from atlas_gan.train.trainer import Trainer
from atlas_gan.translate import SceneTranslator, translate_scene

SHOWN_TILES = 6
SCENE_CROP = 384  # px of a scene upscaled whole at the end
TRUTH_BLURS = (0.5, 0.75, 1.0, 1.5)  # px: the held-out truth blurred by these Gaussians, the FID scale's landmarks
SHOWN_BLUR = 1.0  # px: the landmark drawn beside the truth in superres.png


def train(config: AtlasConfig) -> tuple[str, float]:
    """Train one run; its last checkpoint and the minutes it took."""
    ctx = distributed.setup()
    started = time.perf_counter()
    summary = Trainer(config, ctx, hooks=[FiguresHook()], progress=True).run()
    distributed.teardown(ctx)
    return summary["checkpoint"], (time.perf_counter() - started) / 60


BASELINE_ARGS = ("scenes", "tile", "scale", "steps", "batch", "width", "blocks", "blur", "noise")
BASELINE_ARGS += ("gan_weight", "feature_weight", "discriminator", "upsampler")
BASELINE_FILE = "baseline.json"  # in --out: the settings and minutes of the ESRGAN and pixel-loss runs there


def baseline_settings(args: argparse.Namespace) -> dict:
    return {"data": str(args.data.resolve()), **{key: getattr(args, key) for key in BASELINE_ARGS}}


def training_settings(config: AtlasConfig) -> dict[str, str]:
    """A run's train section as flat `key.sub: value` pairs (as its MLflow params), its own folders left out: what
    --reuse compares, so that a changed default is caught as surely as a changed flag."""
    return flatten(config.train.model_dump(mode="json", exclude={"run_dir", "data"}))


def reusable_minutes(args: argparse.Namespace, runs: dict[str, AtlasConfig]) -> tuple[float, float]:
    """The minutes of the ESRGAN and pixel-loss runs an earlier invocation left in --out, if they were trained with
    this invocation's settings and configs and finished; an error naming what differs otherwise. Options that did
    not exist when they were trained are not compared (a new option's default keeps the old behaviour)."""
    marker = args.out / BASELINE_FILE
    if not marker.is_file():
        raise SystemExit(f"--reuse: {marker} not found: run once without --reuse into {args.out} first")
    saved = json.loads(marker.read_text())
    wanted = baseline_settings(args)
    differing = [
        f"{k} {saved['settings'].get(k)!r} there, {wanted[k]!r} now"
        for k in wanted
        if saved["settings"].get(k) != wanted[k]
    ]
    for run, config in runs.items():
        trained = saved.get("training", {}).get(run, {})
        now = training_settings(config)
        differing += [
            f"{run} {k} {trained[k]!r} there, {now[k]!r} now"
            for k in sorted(now.keys() & trained.keys())
            if trained[k] != now[k]
        ]
    if differing:
        raise SystemExit(f"--reuse: the runs in {args.out} were trained with other settings ({', '.join(differing)})")
    return saved["esrgan_minutes"], saved["pixel_minutes"]


def train_variant(out: Path, name: str, overrides: list[str]) -> tuple[str, float]:
    """The GAN phase again, from the ESRGAN run's pixel-phase checkpoint, with `overrides`."""
    run_dir = out / f"variant-{name}"
    config = load_config(None, [*overrides, f"train.run_dir={run_dir}"])
    half = config.train.model.pixel_steps
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint_url(str(out / "esrgan"), half), run_dir / "checkpoints")
    shutil.copy(out / "esrgan" / "split.json", run_dir)
    return train(config)


def interpolated_generators(store: LocalStorage, checkpoint: str, alphas: list[float]) -> list[torch.nn.Module]:
    """ESRGAN's network interpolation between a GAN run's generator (as trained) and its own pixel-phase generator,
    at each weight of the GAN's in `alphas`."""
    gan, _ = load_generator(store, checkpoint, interpolated=False)
    pixel = load_reference_generators(store, checkpoint)["pixel"]
    return [interpolate_generators(gan, pixel, alpha) for alpha in alphas]


def blurred_truth_scores(evaluator: SuperResEvaluator) -> dict[float, dict]:
    """Scores of the held-out truth itself blurred by each Gaussian of TRUTH_BLURS: not models, but where an FID or
    PSNR sits on a scale of sharpness (FID counts blur heavily; a generator must draw close to the truth to reach
    the scores of its slightly blurred copy)."""
    return {sigma: evaluator.score(blurred(evaluator.pairs[1], sigma)) for sigma in TRUTH_BLURS}


def blurred(tiles: torch.Tensor, sigma: float) -> torch.Tensor:
    """(n, bands, h, w) tiles, each band blurred by a Gaussian of `sigma` px."""
    return gaussian_blur(tiles.float().flatten(0, 1), sigma).view(tiles.shape)


def scale_period_peak(images: torch.Tensor, low: torch.Tensor, scale: int) -> float:
    """How strongly `images` repeat with the scale's period: the mean power of their detail over bicubic (images -
    bicubic(low)) at the frequencies of a lattice of `scale` px, over the mean power of those frequencies' four
    nearest neighbours. Near 1 for natural detail; far above 1 where every `scale` x `scale` block of the output
    carries the same pattern (a generator's upsampling stages drawn apart)."""
    residual = (images - bicubic(low, scale)).double()
    power = torch.fft.fft2(residual).abs().square().mean((0, 1))
    h, w = power.shape
    lattice = [(i, j) for i in range(0, h, h // scale) for j in range(0, w, w // scale) if (i, j) != (0, 0)]
    at = torch.stack([power[i, j] for i, j in lattice]).mean()
    near = [power[(i + di) % h, (j + dj) % w] for i, j in lattice for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    return float(at / torch.stack(near).mean())


def alphas(text: str) -> list[float]:
    values = [float(v) for v in text.split(",")]
    if not all(0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"interpolation weights must be in [0, 1], got {text}")
    return values


def comparison_figure(columns: dict[str, torch.Tensor], bands: list[str], title: str) -> bytes:
    positions = band_triplets(bands, None)[0][1]
    shared = torch.cat(list(columns.values()))
    low, high = np.percentile(((shared[:, positions] + 1) / 2).numpy(), [2, 98], axis=(0, 2, 3))
    figure = new_figure(300 * len(columns), 300 * SHOWN_TILES + 80)
    figure.suptitle(title, fontsize="medium")
    grid = figure.subplots(SHOWN_TILES, len(columns), squeeze=False)
    for column, (name, images) in enumerate(columns.items()):
        rgb = ((images[:SHOWN_TILES, positions].float() + 1) / 2).permute(0, 2, 3, 1).numpy()
        rgb = np.clip((rgb - low) / np.maximum(high - low, 1e-6), 0, 1)
        for row in range(SHOWN_TILES):
            axes = grid[row][column]
            axes.imshow(rgb[row], interpolation="nearest")
            axes.set_axis_off()
            if row == 0:
                axes.set_title(name, fontsize="small")
    return png_bytes(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--scenes", default="landsat8-parana", help="folder under <data>/geotiff")
    parser.add_argument("--tile", type=int, default=64, help="high-resolution tile size (the truth)")
    parser.add_argument("--scale", type=int, default=4, choices=(2, 4))
    parser.add_argument("--steps", type=int, default=2000, help="steps of each run (ESRGAN: half pixel, half GAN)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=32, help="g_width and d_width")
    parser.add_argument("--blocks", type=int, default=3, help="RRDBs in G")
    parser.add_argument("--blur", type=float, default=0.0)
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--gan-weight", type=float, default=None, help="default: the config's")
    parser.add_argument("--feature-weight", type=float, default=None, help="default: the config's")
    parser.add_argument("--discriminator", choices=("unet", "vgg"), default=None, help="default: the config's")
    parser.add_argument(
        "--upsampler", choices=UPSAMPLERS, default=None, help="G's x2 stages, in every run; default: the config's"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        type=parse_variant,
        help="NAME:KEY=VALUE[,KEY=VALUE...]: another GAN phase from ESRGAN's pixel phase (repeatable)",
    )
    parser.add_argument(
        "--interpolate",
        type=alphas,
        default=[],
        metavar="A[,A...]",
        help="also score ESRGAN and each variant network-interpolated (ESRGAN's trade-off of PSNR for realism): "
        "A x the GAN's weights + (1 - A) x its pixel phase's",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="score the ESRGAN and pixel-loss runs already in --out (same settings) instead of training them again",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench-superres"))
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: ESRGAN spends half on the pixel phase and half on the GAN phase")
    command = "python bench/superres.py " + shlex.join(sys.argv[1:])
    source = args.data / "geotiff" / args.scenes
    with tempfile.TemporaryDirectory(prefix="atlas-bench-superres-") as work:
        common = [
            f"ingest.source={source}",
            f"ingest.output={Path(work) / 'tiles'}",
            f"ingest.tile_size={args.tile}",
            "train.model.family=esrgan",
            f"train.model.scale={args.scale}",
            f"train.model.blocks={args.blocks}",
            f"train.model.degradation.blur={args.blur}",
            f"train.model.degradation.noise={args.noise}",
            *([f"train.model.gan_weight={args.gan_weight}"] if args.gan_weight is not None else []),
            *([f"train.model.discriminator={args.discriminator}"] if args.discriminator is not None else []),
            *([f"train.model.upsampler={args.upsampler}"] if args.upsampler is not None else []),
            *([f"train.model.feature_weight={args.feature_weight}"] if args.feature_weight is not None else []),
            f"train.steps={args.steps}",
            f"train.batch_size={args.batch}",
            f"train.g_width={args.width}",
            f"train.d_width={args.width}",
            "train.num_workers=0",
            f"train.checkpoint_every={args.steps // 2}",  # the pixel phase's end: where variants start
            f"train.sample_every={args.steps}",
            "train.sample_count=16",
            "train.log_every=100",
            "evaluate.batch_size=100",
            "tracking.enabled=false",
        ]
        esrgan = [*common, f"train.run_dir={args.out / 'esrgan'}", f"train.model.pixel_steps={args.steps // 2}"]
        gan_config = load_config(None, esrgan)
        pixel_config = load_config(
            None, [*common, f"train.run_dir={args.out / 'pixel'}", f"train.model.pixel_steps={args.steps}"]
        )
        runs = {"esrgan": gan_config, "pixel": pixel_config}
        reused = reusable_minutes(args, runs) if args.reuse else None
        baselines = () if reused else ("esrgan", "pixel")
        for run in (*baselines, *(f"variant-{name}" for name, _ in args.variant)):
            shutil.rmtree(args.out / run, ignore_errors=True)  # fresh runs, no resume
        if not reused:
            (args.out / BASELINE_FILE).unlink(missing_ok=True)
        args.out.mkdir(parents=True, exist_ok=True)
        report = ingest(gan_config, progress=False)
        print(f"ingested {report.new_samples} tiles of {args.tile} px from {source}")
        # the pixel phase as a run of its own, then the GAN phase resumed from its checkpoint, which every --variant
        # shares (a resume is exact: ESRGAN's figures are those of the same run straight through)
        if reused:
            gan_minutes, pixel_minutes = reused
            gan_checkpoint = checkpoint_url(str(args.out / "esrgan"), args.steps)
            pixel_checkpoint = checkpoint_url(str(args.out / "pixel"), args.steps)
            print(f"reusing the ESRGAN and pixel-loss runs in {args.out}")
        else:
            _, pixel_phase_minutes = train(load_config(None, [*esrgan, f"train.steps={args.steps // 2}"]))
            gan_checkpoint, gan_phase_minutes = train(gan_config)
            gan_minutes = pixel_phase_minutes + gan_phase_minutes
            pixel_checkpoint, pixel_minutes = train(pixel_config)
            marker = {"settings": baseline_settings(args), "esrgan_minutes": gan_minutes}
            marker |= {"pixel_minutes": pixel_minutes, "training": {k: training_settings(c) for k, c in runs.items()}}
            (args.out / BASELINE_FILE).write_text(json.dumps(marker, indent=1))
        store = LocalStorage()
        generator, meta = load_generator(store, gan_checkpoint)
        pixel_model, _ = load_generator(store, pixel_checkpoint)
        references = {
            "pixel": pixel_model,
            **{f"{k}-phase": g for k, g in load_reference_generators(store, gan_checkpoint).items()},
        }
        evaluator = SuperResEvaluator(gan_config, meta)
        result = evaluator.evaluate(generator, meta, torch.device("cpu"), write=False, references=references)
        variants = {
            name: train_variant(args.out, name, [*common, f"train.model.pixel_steps={args.steps // 2}", *overrides])
            for name, overrides in args.variant
        }
        variant_generators = {name: load_generator(store, checkpoint)[0] for name, (checkpoint, _) in variants.items()}
        variant_results = {
            name: evaluator.evaluate(variant, meta, torch.device("cpu"), write=False)
            for name, variant in variant_generators.items()
        }
        checkpoints = {"ESRGAN": gan_checkpoint, **{f"variant {n}": c for n, (c, _) in variants.items()}}
        interpolated = {
            (name, alpha): evaluator.evaluate(mixed, meta, torch.device("cpu"), write=False)
            for name, checkpoint in checkpoints.items()
            for alpha, mixed in zip(
                args.interpolate, interpolated_generators(store, checkpoint, args.interpolate), strict=True
            )
        }
        landmarks = blurred_truth_scores(evaluator)
        low, truth = evaluator.pairs
        columns = {
            f"input (1/{args.scale})": low.repeat_interleave(args.scale, -1).repeat_interleave(args.scale, -2),
            "bicubic": bicubic(low, args.scale),
            "pixel-loss": evaluator.translate(pixel_model, torch.device("cpu")),
            "ESRGAN": evaluator.translate(generator, torch.device("cpu")),
            **{
                f"variant {name}": evaluator.translate(variant, torch.device("cpu"))
                for name, variant in variant_generators.items()
            },
            f"truth blurred {SHOWN_BLUR:g} px (landmark)": blurred(truth, SHOWN_BLUR),
            "truth": truth,
        }
        models = [name for name in columns if name not in (f"input (1/{args.scale})", "bicubic")]
        peaks = {name: scale_period_peak(columns[name], low, args.scale) for name in models}
    print(f"\n$ {command}")
    print(
        f"ESRGAN {args.steps} steps in {gan_minutes:.1f} min, "
        f"pixel-loss model {args.steps} steps in {pixel_minutes:.1f} min"
    )
    print("\n".join(summary_lines(result)))
    gan, pixel, cubic = result, result["baselines"]["pixel"], result["baselines"]["bicubic"]

    def compare(name: str, other: dict) -> str:
        fid = (
            ""
            if gan["fid"] is None
            else f", FID x{gan['fid'] / other['fid']:.2f} ({gan['fid']:.1f} vs {other['fid']:.1f})"
        )
        sam = "" if gan["sam_degrees"] is None else f", SAM x{gan['sam_degrees'] / other['sam_degrees']:.2f}"
        return (
            f"ESRGAN vs {name}: PSNR {gan['psnr'] - other['psnr']:+.2f} dB, SSIM {gan['ssim'] - other['ssim']:+.4f}"
            f"{sam}{fid}"
        )

    print(compare("pixel-loss model (equal steps)", pixel))
    print(compare("bicubic", cubic))

    def scored(scores: dict) -> str:
        fid = "" if scores["fid"] is None else f", FID {scores['fid']:.1f} (x{scores['fid'] / pixel['fid']:.3f})"
        return f"PSNR {scores['psnr']:.2f} dB ({scores['psnr'] - pixel['psnr']:+.2f} vs the pixel-loss model){fid}"

    for name, scores in variant_results.items():
        print(f"variant {name} (GAN phase {variants[name][1]:.1f} min): {scored(scores)}")
    for (name, alpha), scores in interpolated.items():
        print(f"{name} interpolated, {alpha:g} x its weights + {1 - alpha:g} x its pixel phase's: {scored(scores)}")
    for sigma, scores in landmarks.items():
        print(f"landmark, not a model: the truth blurred by a Gaussian of {sigma:g} px: {scored(scores)}")
    for name, peak in peaks.items():
        print(f"{name}: detail over bicubic at the {args.scale} px lattice's frequencies, x{peak:.2f} its neighbours")
    title = (
        f"held-out tiles, x{args.scale}: ESRGAN {args.steps} steps ({args.steps // 2} pixel + "
        f"{args.steps - args.steps // 2} GAN) vs the pixel-loss model {args.steps} steps; "
        f"bands {','.join(result['fid_bands'])}"
    )
    (args.out / "superres.png").write_bytes(comparison_figure(columns, meta["bands"], title))
    scene = scene_crop(source, meta["bands"], args.out / "scene-crop.tif")
    upscaled = args.out / "scene-crop-upscaled.tif"
    done = translate_scene(SceneTranslator(load_sampler(gan_checkpoint)), str(scene), str(upscaled), progress=False)
    print(f"upscaled a {SCENE_CROP} px crop of a scene at its native resolution x{args.scale} in {done.seconds:.1f} s")
    figure = scene_figure(
        scene, upscaled, args.scale, f"{scene.name}: native resolution, bicubic and ESRGAN x{args.scale}"
    )
    (args.out / "scene.png").write_bytes(figure)
    print(f"figures: {args.out / 'superres.png'}, {args.out / 'scene.png'}, {args.out / 'esrgan' / 'figures'}")


def scene_crop(source: Path, bands: list[str], out: Path) -> Path:
    """The central SCENE_CROP px of the first scene, its bands stacked and named as in the dataset (a scene of one
    file per band, like Landsat's, is stacked here; a multi-band file is cut as it is)."""
    import rasterio
    from rasterio.windows import Window

    files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    by_band = {f.stem.rsplit("_", 1)[-1]: f for f in files}
    stacked = [by_band[b] for b in bands] if all(b in by_band for b in bands) else [files[0]]
    layers = []
    for path in stacked:
        with rasterio.open(path) as scene:
            window = Window((scene.width - SCENE_CROP) // 2, (scene.height - SCENE_CROP) // 2, SCENE_CROP, SCENE_CROP)
            layers.append(scene.read(window=window))
            profile = {
                **scene.profile,
                "width": SCENE_CROP,
                "height": SCENE_CROP,
                "transform": scene.window_transform(window),
            }
    data = np.concatenate(layers)
    # MINISBLACK: GDAL would write 3-4 byte bands as RGB(A), and a 4th band read as alpha shadows the nodata mask
    profile.update(count=len(data), driver="GTiff", tiled=False, photometric="MINISBLACK")
    profile.pop("blockxsize", None), profile.pop("blockysize", None)
    with rasterio.open(out, "w", **profile) as crop:
        crop.write(data)
        crop.descriptions = tuple(bands)
    return out


def scene_figure(scene: Path, upscaled: Path, scale: int, title: str) -> bytes:
    """A quarter of the crop: as it is, bicubic and ESRGAN, natural colour when the bands allow (same stretch)."""
    import rasterio
    import torch.nn.functional as F

    with rasterio.open(scene) as low, rasterio.open(upscaled) as high:
        names = list(low.descriptions)
        order = (
            [names.index(b) for b in ("B4", "B3", "B2")] if {"B4", "B3", "B2"} <= set(names) else [0, 1, 2][: low.count]
        )
        quarter = SCENE_CROP // 4
        native = low.read().astype(np.float64)[order][:, quarter : 3 * quarter, quarter : 3 * quarter]
        sharp = high.read().astype(np.float64)[order][
            :, quarter * scale : 3 * quarter * scale, quarter * scale : 3 * quarter * scale
        ]
    cubic = F.interpolate(torch.from_numpy(native)[None], scale_factor=scale, mode="bicubic", align_corners=False)[0]
    low_p, high_p = np.nanpercentile(native, [2, 98], axis=(1, 2))
    figure = new_figure(1500, 560)
    figure.suptitle(title, fontsize="medium")
    panels = ((native, "native"), (cubic.numpy(), f"bicubic x{scale}"), (sharp, f"ESRGAN x{scale} (atlas-gan upscale)"))
    for axes, (image, name) in zip(figure.subplots(1, 3), panels, strict=True):
        rgb = (image.transpose(1, 2, 0) - low_p) / np.maximum(high_p - low_p, 1e-9)
        axes.imshow(np.clip(np.nan_to_num(rgb), 0, 1), interpolation="nearest")
        axes.set_title(name, fontsize="small")
        axes.set_axis_off()
    return png_bytes(figure)


if __name__ == "__main__":
    main()
