"""The `atlas-gan` command line: thin wrappers over the library, with clear errors and exit codes (`EXIT_CODES`)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from atlas_gan import __version__
from atlas_gan.config import resolve_config
from atlas_gan.locks import LockLost, LockTimeout
from atlas_gan.storage import LocalStorage, StorageError

if TYPE_CHECKING:
    from atlas_gan.sampling import Sampler  # imported lazily at run time: torch is slow to import

EXIT_CODES = {
    0: "success",
    1: "input rejected under --strict",
    2: "bad configuration, input or argument (the message names it)",
    3: "storage or MLflow server failure",
    4: "output busy: another ingest held it past ingest.lock_wait_minutes, or took its lock over",
}
_EXIT_CODES_HELP = "Exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()) + "."
_CONFIG_HELP = "YAML config (default: $ATLAS_CONFIG, else the packaged default; see `atlas-gan config show`)."
# Options several commands declare alike (Typer reads each declaration afresh, so one object serves them all).
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")
_DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ...; default: cuda when there is one.")
_MODEL_CONFIG = typer.Option(None, "--config", "-c", help=_CONFIG_HELP + " Says where MLflow and S3 are.")
_TRACKING_OVERRIDES = typer.Option([], "--set", help="Override a config value, e.g. --set tracking.uri=...")
_SCENE_BATCH = typer.Option(32, "--batch-size", min=1, max=4096, help="Tiles per generator forward pass.")

app = typer.Typer(
    help="atlas-gan: train GANs on satellite imagery (ingest -> train -> evaluate -> register).\n\n"
    "Configuration, for every command and the Prefect flows alike: --config FILE, else $ATLAS_CONFIG, else the "
    "packaged default; then $ATLAS_OVERRIDES (a JSON list of key=value); then --set key=value, which wins. "
    "`atlas-gan config show` prints the result.",
    epilog=_EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(
    help="Show the resolved configuration, or write a starter file.", no_args_is_help=True, epilog=_EXIT_CODES_HELP
)
app.add_typer(config_app, name="config")


class ExportFormat(StrEnum):
    onnx = "onnx"
    torchscript = "torchscript"


class GeoTiffValues(StrEnum):
    physical = "physical"
    model = "model"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"atlas-gan {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """atlas-gan: train GANs on satellite imagery."""


def _fail(message: str, code: int) -> None:
    typer.secho(message, err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


@contextlib.contextmanager
def _exit_codes(rejected: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """`rejected` input under --strict -> exit 1; bad configuration or input -> exit 2; storage or MLflow server
    failures -> exit 3; the message names why."""
    try:
        yield
    except rejected as exc:
        _fail(str(exc), 1)
    except (ValueError, FileNotFoundError) as exc:  # ConfigError, WeightsNotFound, a missing checkpoint
        _fail(str(exc), 2)
    except StorageError as exc:
        _fail(f"storage error: {exc}", 3)
    except (LockTimeout, LockLost) as exc:
        _fail(f"output busy: {exc}", 4)
    except Exception as exc:
        if type(exc).__module__.startswith("mlflow"):
            if getattr(exc, "error_code", None) in _MLFLOW_NOT_FOUND:  # an unknown model, alias or version
                _fail(f"not found in MLflow: {exc}", 2)
            _fail(f"MLflow error: {exc}", 3)
        raise


_MLFLOW_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}


def _writable(path: Path, what: str) -> Path:
    """Create `path`'s folder now, so a bad --out fails before any work is done, with exit 2 and the reason."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"{what} {path}: cannot create its folder: {exc.strerror or exc}", 2)
    if path.is_dir():
        _fail(f"{what} {path}: is a folder; give a file name", 2)
    if not os.access(path.parent, os.W_OK):
        _fail(f"{what} {path}: its folder is not writable", 2)
    return path


def _write_file(path: Path, data: bytes, what: str) -> None:
    """Write atomically (LocalStorage: temp file + rename): an interrupted write never leaves a half file."""
    _writable(path, what)
    try:
        LocalStorage().write_bytes(str(path), data)
    except StorageError as exc:
        _fail(f"{what}: {exc}", 2)


@app.command(epilog=_EXIT_CODES_HELP)
def ingest(
    source: str = typer.Option(None, "--source", "-s", help="Folder, glob or s3://bucket/prefix of GeoTIFF scenes."),
    output: str = typer.Option(None, "--output", "-o", help="Folder or s3://bucket/prefix for shards + manifest."),
    config: Path = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config value, e.g. --set ingest.tile_size=128 --set 'ingest.bands=[B4,B3,B2]'."
    ),
    workers: int = typer.Option(None, "--workers", "-w", help="Scenes read in parallel (processes)."),
    strict: bool = typer.Option(None, "--strict/--no-strict", help="Fail (exit 1) if any input is rejected."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    report_json: Path = typer.Option(None, "--report", help="Also write the run's report as JSON here."),
) -> None:
    """Tile and normalize GeoTIFF scenes into WebDataset shards with a manifest.json.

    Incremental: scenes already in the output's manifest are skipped, new ones add shards. Rejected inputs
    (unreadable files, missing bands, all-nodata scenes, ...) are listed with the reason in the manifest.
    """
    from atlas_gan.ingest import IngestRejected
    from atlas_gan.ingest import ingest as run_ingest

    flags = [
        f"ingest.{k}={json.dumps(v)}"
        for k, v in {"source": source, "output": output, "workers": workers, "strict": strict}.items()
        if v is not None
    ]
    if report_json is not None:
        _writable(report_json, "--report")
    with _exit_codes(rejected=(IngestRejected,)):
        report = run_ingest(resolve_config(config, [*overrides, *flags]), progress=not quiet)
    typer.echo(report.summary())
    if report_json is not None:
        _write_file(report_json, (json.dumps(vars(report), indent=2) + "\n").encode(), "--report")


@app.command(epilog=_EXIT_CODES_HELP)
def train(
    config: Path = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set train.steps=2000."),
    nproc_per_node: int = typer.Option(
        1, "--nproc-per-node", min=1, help="Processes (GPUs) on this machine; >1 launches torchrun --standalone."
    ),
    quiet: bool = _QUIET,
) -> None:
    """Train the configured GAN on the ingested shards; resumes from run_dir's newest checkpoint.

    The global batch is train.batch_size x the number of processes. For several machines run torchrun yourself:
    torchrun --nnodes=N --nproc-per-node=G --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT -m atlas_gan.train --set ...
    """
    import subprocess
    import tempfile

    from atlas_gan.train.launch import apply_threading_defaults, torchrun_command, write_config_file

    with _exit_codes():
        cfg = resolve_config(config, overrides)  # fail fast, before any process starts
    apply_threading_defaults()  # before torch loads here, and inherited by torchrun's workers
    if nproc_per_node == 1:
        from atlas_gan.train.__main__ import main as train_main

        args = ([f"--config={config}"] if config else []) + [f"--set={o}" for o in overrides]
        raise typer.Exit(train_main(args + (["--quiet"] if quiet else [])))
    with tempfile.TemporaryDirectory(prefix="atlas-train-") as folder:  # every rank reads the resolved config
        code = subprocess.call(torchrun_command(write_config_file(cfg, folder), nproc_per_node, quiet=quiet))
    raise typer.Exit(code)


@app.command(epilog=_EXIT_CODES_HELP)
def evaluate(
    checkpoint: str = typer.Option(None, "--checkpoint", help="Checkpoint URL; default: the newest in train.run_dir."),
    count: int = typer.Option(None, "--count", "-n", min=2, help="Generated samples (default: evaluate.n)."),
    out: Path = typer.Option(None, "--out", help="Also write the JSON result here."),
    weights: str = typer.Option(None, "--weights", help="Inception weights file (see evaluate.inception_weights)."),
    config: Path = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set evaluate.n_real=5000."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Score a checkpoint's EMA generator: FID, KID, Inception Score; PSNR/SSIM/SAM for translations.

    Unconditional and conditional generators: FID, KID and Inception Score against the dataset (TF-Inception
    weights). A translation (pix2pix) or upscaling (esrgan): PSNR/SSIM/L1/SAM on the held-out split beside its
    baseline (linear regression, bicubic).

    Real-tile statistics are cached beside the dataset, so later evaluations only embed generated images. Compare
    FIDs only at equal N and equal protocol (the result records weights sha256, N, resize method and bands). When
    the checkpoint's run directory has an MLflow run, the scores are logged into it at the checkpoint's step.
    """
    from atlas_gan.metrics.evaluate import evaluate_checkpoint, latest_checkpoint
    from atlas_gan.metrics.manifold import precision_recall_text
    from atlas_gan.runtime import distributed

    extra = [f"evaluate.inception_weights={json.dumps(weights)}"] if weights else []
    if out is not None:
        _writable(out, "--out")
    with _exit_codes():
        cfg = resolve_config(config, [*overrides, *extra])
        ctx = distributed.setup()
        result = evaluate_checkpoint(cfg, checkpoint or latest_checkpoint(cfg), ctx, n=count, progress=not quiet)
    if result is None:
        return
    if result.get("kind") in ("translation", "unpaired"):
        from atlas_gan.metrics.translation import summary_lines
        from atlas_gan.metrics.unpaired import unpaired_summary

        lines = summary_lines(result) if result["kind"] == "translation" else unpaired_summary(result)
        typer.echo("\n".join([*lines, f"result: {result['written_to']}"]))
        if out is not None:
            _write_file(out, (json.dumps(result, indent=2) + "\n").encode(), "--out")
        return
    logged_to = None
    if cfg.tracking.enabled:  # the scores are written already: MLflow failing is a warning, not a failure
        from atlas_gan.tracking.store import log_evaluation, redact

        try:
            logged_to = log_evaluation(cfg, result)
        except Exception as exc:
            if not type(exc).__module__.startswith("mlflow"):
                raise
            typer.secho(f"warning: scores not logged to MLflow: {redact(str(exc))[:300]}", err=True, fg="yellow")
    for label, scores in result["scores"].items():
        is_text = f"IS {scores['is']:.3f}" if scores["is"] is not None else "IS unavailable (no classifier head)"
        floor = scores["floor_fid"]
        floor_text = f"{floor:.3f} (N {scores['floor_n']})" if floor is not None else "n/a (too few tiles)"
        spread = scores["spread_ratio"]
        typer.echo(
            f"{label} {','.join(scores['bands'])}: FID {scores['fid']:.3f}  KID {scores['kid']:.5f}  {is_text}"
            f"  (N real {scores['n_real']}, N fake {result['n_fake']})\n"
            f"  real-vs-real floor {floor_text}; sample spread "
            f"{'n/a' if spread is None else format(spread, '.2f')} of the real tiles'\n"
            f"  {precision_recall_text(scores)}"
        )
    typer.echo(
        f"step {result['step']}; weights sha256 {result['weights_sha256'][:16]}; {result['resize']}; "
        f"result: {result['written_to']}" + (f"; logged to MLflow run {logged_to}" if logged_to else "")
    )
    if out is not None:
        _write_file(out, (json.dumps(result, indent=2) + "\n").encode(), "--out")


@app.command(epilog=_EXIT_CODES_HELP)
def register(
    checkpoint: str = typer.Option(
        None,
        "--checkpoint",
        help="Checkpoint URL; default: train.run_dir's checkpoint of lowest FID among those training evaluated, "
        "else the newest (evaluate.register_checkpoint=last: the newest).",
    ),
    config: Path = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set evaluate.n=5000."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Register a checkpoint's EMA generator in the MLflow model registry and promote it if it is the best.

    The version gets alias `champion` when its FID beats the current champion's under the same protocol (N,
    Inception weights, bands, dataset); otherwise `challenger`. The evaluation in run_dir/eval is reused when it
    was made at evaluate.n on the current dataset; otherwise the generator is scored now. Tracking store:
    tracking.uri, else MLFLOW_TRACKING_URI, else the embedded sqlite store in tracking.store_dir.
    """
    from atlas_gan.tracking.registry import register_generator

    with _exit_codes():
        registration = register_generator(resolve_config(config, overrides), checkpoint, progress=not quiet)
    typer.echo(registration.summary())


def _load_sampler(model: str, config: Path | None, overrides: list[str]) -> Sampler:
    """The generator behind a registry URI (from the configured MLflow store) or a checkpoint path/URL."""
    from atlas_gan.sampling import load_configured_sampler

    return load_configured_sampler(model, resolve_config(config, overrides))


@app.command(epilog=_EXIT_CODES_HELP)
def sample(
    model: str = typer.Option(
        ..., "--model", "-m", help="models:/NAME@champion, models:/NAME/VERSION, runs:/ID/generator, or a checkpoint."
    ),
    count: int = typer.Option(
        None, "--count", "-n", min=1, max=100_000, help="Tiles to generate (default 64), or walks with --walk (16)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Latent seed: the same seed gives the same tiles."),
    label: str = typer.Option(
        None,
        "--label",
        "-l",
        help="Conditional generators: the label to draw (e.g. a year or DJF); default: labels in the training "
        "data's proportions. An unknown label lists the known ones.",
    ),
    truncation_psi: float = typer.Option(
        1.0,
        "--truncation",
        "-t",
        min=0.0,
        max=2.0,
        help="Truncation psi (stylegan2, biggan): below 1 trades variety for typical tiles (0: the most typical "
        "tile, per label); 1: off. stylegan2 pulls w toward its mean; biggan keeps z inside the threshold that "
        "holds a share psi of its mass (0.68: the paper's threshold 1).",
    ),
    out: Path = typer.Option(None, "--out", help="PNG grid to write (default grid.png unless --geotiff is given)."),
    bands: str = typer.Option(None, "--bands", help="Grid display bands R,G,B (or one), e.g. B4,B3,B2."),
    geotiff: Path = typer.Option(
        None,
        "--geotiff",
        help="Also write each tile as a Cloud-Optimized GeoTIFF into this folder (tags: model, seed...).",
    ),
    values: GeoTiffValues = typer.Option(
        GeoTiffValues.physical, "--values", help="GeoTIFF values: physical (source units) or model ([-1, 1])."
    ),
    walk: Path = typer.Option(
        None,
        "--walk",
        help="Write a looping latent walk as an animated GIF instead: --count walks side by side, each through "
        "--keyframes seeded latents by spherical interpolation (a conditional model: a row per label, or --label).",
    ),
    keyframes: int = typer.Option(4, "--keyframes", min=2, max=64, help="--walk: latents each walk passes through."),
    frames_between: int = typer.Option(
        16, "--frames-between", min=1, max=240, help="--walk: frames from one keyframe to the next (80 ms each)."
    ),
    crs: str = typer.Option(None, "--crs", help="Claim this CRS for the GeoTIFFs (e.g. EPSG:32618); default none."),
    pixel_size: float = typer.Option(10.0, "--pixel-size", min=0.0, help="Pixel size in CRS units (with --crs)."),
    config: Path = typer.Option(None, "--config", "-c", help=_CONFIG_HELP + " Says where MLflow is (tracking.uri)."),
    overrides: list[str] = _TRACKING_OVERRIDES,
) -> None:
    """Generate tiles from a registered generator (or a checkpoint): a PNG grid, GeoTIFFs or a latent walk.

    A PNG grid (--out) and/or Cloud-Optimized GeoTIFFs (--geotiff FOLDER) with band names and provenance tags, or an
    animated latent walk (--walk)."""
    from atlas_gan.sampling import grid_png, write_geotiffs

    wanted = [b.strip() for b in bands.split(",")] if bands else None
    if walk is not None:
        _writable(walk, "--walk")
        walks = count or 16
        from atlas_gan.figures.animation import walk_gif
        from atlas_gan.preview import band_positions

        with _exit_codes():
            sampler = _load_sampler(model, config, overrides)
            frames = sampler.walk(
                walks, seed, label, keyframes=keyframes, frames_between=frames_between, truncation_psi=truncation_psi
            )
            _write_file(walk, walk_gif(frames, band_positions(sampler.bands, wanted)), "--walk")
        typer.echo(
            f"wrote {walk}: {walks} latent walks of {sampler.source}, {len(frames)} frames "
            f"({keyframes} keyframes from seed {seed}, {frames_between} frames apart)"
        )
        return
    count = count or 64
    if out is None and geotiff is None:
        out = Path("grid.png")
    if out is not None:
        _writable(out, "--out")
    with _exit_codes():
        sampler = _load_sampler(model, config, overrides)
        images = sampler.generate(count, seed, label, truncation_psi=truncation_psi)
        if out is not None:
            _write_file(out, grid_png(images, sampler.bands, wanted), "--out")
            what = f"bands {','.join(sampler.bands)}, seed {seed}" + (f", label {label}" if label else "")
            what += f", truncation {truncation_psi}" if truncation_psi != 1.0 else ""
            typer.echo(f"wrote {out}: {count} tiles of {sampler.source} ({what})")
        if geotiff is not None:
            files = write_geotiffs(
                images,
                sampler.bands,
                geotiff,
                sampler.meta.get("normalization"),
                values.value,
                crs,
                pixel_size,
                tags=sampler.provenance(seed, truncation_psi, label),
            )
            bands_text = ",".join(sampler.bands)
            typer.echo(
                f"wrote {len(files)} Cloud-Optimized GeoTIFFs to {geotiff} ({values.value} values, bands {bands_text};"
                " tags name the model, seed, truncation and label)"
            )


@app.command(epilog=_EXIT_CODES_HELP)
def translate(
    source: str = typer.Argument(..., help="The scene to translate: a GeoTIFF path or s3:// URL."),
    model: str = typer.Option(
        ..., "--model", "-m", help="An image-to-image model (pix2pix): models:/NAME@champion, ... or a checkpoint."
    ),
    out: str = typer.Option(..., "--out", "-o", help="The COG to write: a path or s3:// URL."),
    batch_size: int = _SCENE_BATCH,
    device: str = _DEVICE,
    config: Path = _MODEL_CONFIG,
    overrides: list[str] = _TRACKING_OVERRIDES,
    quiet: bool = _QUIET,
) -> None:
    """Translate a whole scene with a pix2pix generator into a Cloud-Optimized GeoTIFF.

    The scene is read a strip at a time (memory bounded), cut into tiles of the model's size overlapping by half,
    and the translations are blended with windows that sum to one, so tile borders leave no seam. The output has
    the scene's CRS and transform, the target band names, values in the target bands' physical units (float32,
    NaN where the scene has no valid pixel), and tags naming the model URI and version. Input bands are found by
    name (band descriptions), or by the training dataset's band order for a scene without names.
    """
    _scene_command(source, model, out, batch_size, device, config, overrides, quiet, None)


@app.command(epilog=_EXIT_CODES_HELP)
def upscale(
    source: str = typer.Argument(..., help="The scene to upscale: a GeoTIFF path or s3:// URL."),
    model: str = typer.Option(
        ..., "--model", "-m", help="A super-resolution model (esrgan): models:/NAME@champion, ... or a checkpoint."
    ),
    out: str = typer.Option(..., "--out", "-o", help="The COG to write: a path or s3:// URL."),
    scale: int = typer.Option(None, "--scale", help="Check the model upscales by this factor (2 or 4)."),
    batch_size: int = _SCENE_BATCH,
    device: str = _DEVICE,
    config: Path = _MODEL_CONFIG,
    overrides: list[str] = _TRACKING_OVERRIDES,
    quiet: bool = _QUIET,
) -> None:
    """Upscale a whole scene with a super-resolution (esrgan) generator into a Cloud-Optimized GeoTIFF.

    Every band the model was trained on is upscaled by its factor: the output covers the same extent in the same
    CRS with the pixel size divided by the factor. The scene is read a strip at a time, cut into tiles of the
    model's input size overlapping by half, and the upscaled tiles are blended with windows that sum to one (no
    seams). Values are in the bands' physical units (float32, NaN where the scene has no valid pixel); band names
    and tags naming the model URI and version are kept.
    """
    _scene_command(source, model, out, batch_size, device, config, overrides, quiet, scale or 0)


def _scene_command(
    source: str,
    model: str,
    out: str,
    batch_size: int,
    device: str | None,
    config: Path | None,
    overrides: list[str],
    quiet: bool,
    scale: int | None,
) -> None:
    """translate (`scale` None) and upscale (`scale`: 0 any factor, else the factor the model must have)."""
    from atlas_gan.translate import SceneTranslator, translate_scene

    if not source.startswith("s3://") and not Path(source).exists():
        _fail(f"{source}: no such file", 2)
    if not out.startswith("s3://"):
        _writable(Path(out), "--out")
    with _exit_codes():
        cfg = resolve_config(config, overrides)
        sampler = _load_sampler(model, config, overrides)
        translator = SceneTranslator(sampler, batch_size, device)
        if scale is not None and translator.scale == 1:
            raise ValueError(f"{model}: a {sampler.meta['model']} model does not upscale; use `atlas-gan translate`")
        if scale and translator.scale != scale:
            raise ValueError(f"{model}: upscales by {translator.scale}, not by --scale {scale}")
        report = translate_scene(translator, source, out, cfg.storage, progress=not quiet)
    what = (
        f"x{translator.scale} super-resolution of {','.join(report.output_bands)}"
        if translator.scale > 1
        else f"{','.join(report.input_bands)} -> {','.join(report.output_bands)}"
    )
    typer.echo(
        f"wrote {report.output}: {report.width}x{report.height} px, {what} ({report.tiles} overlapping tiles "
        f"blended, {report.seconds:.1f} s); model {model}" + (f" version {sampler.version}" if sampler.version else "")
    )


@app.command(epilog=_EXIT_CODES_HELP)
def export(
    model: str = typer.Option(
        ..., "--model", "-m", help="models:/NAME@champion, models:/NAME/VERSION, runs:/ID/generator, or a checkpoint."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="File to write (e.g. generator.onnx or generator.pt)."),
    fmt: ExportFormat = typer.Option(
        ExportFormat.onnx, "--format", "-f", help="onnx (onnxruntime, any language) or torchscript."
    ),
    truncation_psi: float = typer.Option(
        1.0,
        "--truncation",
        "-t",
        min=0.0,
        max=2.0,
        help="stylegan2, biggan: truncation psi baked into the export; 1: off.",
    ),
    config: Path = typer.Option(None, "--config", "-c", help=_CONFIG_HELP + " Says where MLflow is (tracking.uri)."),
    overrides: list[str] = _TRACKING_OVERRIDES,
) -> None:
    """Export the (EMA) generator to ONNX or TorchScript, with its bands and normalization.

    Inputs `latents` (n, latent_dim) float32 (and `labels` (n,) int64 for a conditional model), output `images`
    (n, bands, size, size) in [-1, 1], any batch size. A translation (pix2pix) takes `images` (n, input bands, h, w)
    and gives `translated` (n, bands, h, w), with h and w any multiples of its training size. The file carries the
    bands, label vocabulary and normalization as metadata (atlas_gan.export)."""
    from atlas_gan.export import export_generator
    from atlas_gan.models.base import ModelSpec
    from atlas_gan.runtime.generator import META_KEYS

    _writable(out, "--out")
    with _exit_codes():
        sampler = _load_sampler(model, config, overrides)
        spec = ModelSpec(**sampler.meta["spec"])
        info = {key: sampler.meta.get(key) for key in META_KEYS}
        info["source"] = model
        export_generator(sampler.generator, spec, out, fmt.value, truncation_psi, info)  # type: ignore[arg-type]
    from atlas_gan.runtime.signature import signature_of

    inputs = ", ".join(signature_of(sampler.meta).input_names(spec))
    if spec.input_bands:
        size = f"any multiple of {spec.image_size} px across"
        outputs = f"translated ({len(sampler.bands)} bands, the input's size)"
    else:
        size, outputs = "", f"images ({len(sampler.bands)} bands {spec.image_size}x{spec.image_size})"
    typer.echo(
        f"wrote {out}: {fmt.value}, {sampler.meta['model']} step {sampler.meta.get('step')}, "
        f"inputs ({inputs}) -> {outputs}, any batch size"
        + (f", {size}" if size else "")
        + (f", truncation {truncation_psi}" if truncation_psi != 1.0 else "")
    )


@app.command(epilog=_EXIT_CODES_HELP)
def preview(
    dataset: str = typer.Argument(..., help="Folder or s3:// prefix holding manifest.json and the shards."),
    out: Path = typer.Option(
        None, "--out", help="PNG file to write (default tiles.png, or footprints.png with --map)."
    ),
    footprint_map: bool = typer.Option(
        False, "--map", help="Draw where the tiles lie instead: scene outlines and tile density in lon/lat."
    ),
    count: int = typer.Option(
        64, "--count", "-n", min=1, max=4096, help="How many tiles (the first ones, in shard order)."
    ),
    bands: str = typer.Option(None, "--bands", help="Display bands as R,G,B (or one for grey), e.g. B4,B3,B2."),
    columns: int = typer.Option(8, "--columns", min=1, max=256, help="Tiles per row."),
) -> None:
    """Draw an ingested dataset's tiles as a PNG grid, or (--map) where they lie.

    The grid shows what the GAN will learn from; the map, scene outlines and tile density from the dataset's
    tile-index.parquet (readable by GeoPandas/DuckDB)."""
    from atlas_gan.preview import write_preview
    from atlas_gan.storage import storage_for
    from atlas_gan.tile_index import dataset_map

    wanted = [b.strip() for b in bands.split(",")] if bands else None
    out = out or Path("footprints.png" if footprint_map else "tiles.png")
    _writable(out, "--out")
    with _exit_codes():
        store = storage_for(dataset)
        png = dataset_map(store, dataset) if footprint_map else write_preview(store, dataset, count, wanted, columns)
    _write_file(out, png, "--out")
    typer.echo(f"wrote {out} ({len(png):,} bytes)")


class ConfigFormat(StrEnum):
    yaml = "yaml"
    json = "json"


@config_app.command("show", epilog=_EXIT_CODES_HELP)
def config_show(
    config: Path = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set train.steps=2000."),
    fmt: ConfigFormat = typer.Option(ConfigFormat.yaml, "--format", "-f", help="yaml (with its sources) or json."),
) -> None:
    """Print the configuration a command would run with, every value validated and every default filled in.

    The file (--config, else $ATLAS_CONFIG, else the packaged default), then $ATLAS_OVERRIDES, then --set."""
    import yaml

    from atlas_gan.config import config_origin, config_to_dict

    with _exit_codes():
        origin = config_origin(config, overrides)
        resolved = config_to_dict(resolve_config(config, overrides))
    if fmt is ConfigFormat.json:
        typer.echo(json.dumps(resolved, indent=2))
        return
    header = "".join(f"# {line}\n" for line in ["atlas-gan resolved configuration", *origin.describe()])
    typer.echo(header + yaml.safe_dump(resolved, sort_keys=False), nl=False)


@config_app.command("init", epilog=_EXIT_CODES_HELP)
def config_init(
    path: Path = typer.Argument(..., help="File to write, e.g. atlas.yaml."),
    force: bool = typer.Option(False, "--force", help="Replace the file if it exists."),
) -> None:
    """Write a commented starter config to edit (the packaged default, every key explained).

    Then run with --config PATH or ATLAS_CONFIG=PATH."""
    from atlas_gan.config import DEFAULT_CONFIG_PATH

    if path.exists() and not force:
        _fail(f"{path}: exists; pass --force to replace it", 2)
    _write_file(path, DEFAULT_CONFIG_PATH.read_bytes(), "config file")
    typer.echo(f"wrote {path}: edit it, then run with --config {path} (or ATLAS_CONFIG={path})")


if __name__ == "__main__":
    app()
