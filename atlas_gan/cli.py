"""The `atlas-gan` command line: thin wrappers over the library, with clear errors and exit codes.

Exit codes: 0 success, 1 input rejected under --strict, 2 bad configuration or source, 3 storage failure,
4 the output is busy (another ingest held it longer than ingest.lock_wait_minutes, or took the lock over).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from atlas_gan.config import load_config
from atlas_gan.locks import LockLost, LockTimeout
from atlas_gan.storage import StorageError

if TYPE_CHECKING:
    from atlas_gan.sampling import Sampler  # imported lazily at run time: torch is slow to import

app = typer.Typer(
    help="atlas-gan: train GANs on satellite imagery (ingest -> train -> evaluate -> register).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
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
            _fail(f"MLflow error: {exc}", 3)
        raise


@app.command()
def ingest(
    source: str = typer.Option(None, "--source", "-s", help="Folder, glob or s3://bucket/prefix of GeoTIFF scenes."),
    output: str = typer.Option(None, "--output", "-o", help="Folder or s3://bucket/prefix for shards + manifest."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (default: configs/satellite.yaml)."),
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
    with _exit_codes(rejected=(IngestRejected,)):
        report = run_ingest(load_config(config, [*overrides, *flags]), progress=not quiet)
    typer.echo(report.summary())
    if report_json is not None:
        report_json.write_text(json.dumps(vars(report), indent=2) + "\n")


@app.command()
def train(
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (default: configs/satellite.yaml)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set train.steps=2000."),
    nproc_per_node: int = typer.Option(
        1, "--nproc-per-node", min=1, help="Processes (GPUs) on this machine; >1 launches torchrun --standalone."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train the configured GAN on the ingested shards; resumes from run_dir's newest checkpoint.

    The global batch is train.batch_size x the number of processes. For several machines run torchrun yourself:
    torchrun --nnodes=N --nproc-per-node=G --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT -m atlas_gan.train --set ...
    """
    import subprocess
    import tempfile

    from atlas_gan.train.launch import torchrun_command, write_config_file

    with _exit_codes():
        cfg = load_config(config, overrides)  # fail fast, before any process starts
    if nproc_per_node == 1:
        from atlas_gan.train.__main__ import main as train_main

        args = ([f"--config={config}"] if config else []) + [f"--set={o}" for o in overrides]
        raise typer.Exit(train_main(args + (["--quiet"] if quiet else [])))
    with tempfile.TemporaryDirectory(prefix="atlas-train-") as folder:  # every rank reads the resolved config
        code = subprocess.call(torchrun_command(write_config_file(cfg, folder), nproc_per_node, quiet=quiet))
    raise typer.Exit(code)


@app.command()
def evaluate(
    checkpoint: str = typer.Option(None, "--checkpoint", help="Checkpoint URL; default: the newest in train.run_dir."),
    n: int = typer.Option(None, "--n", min=2, help="Generated samples (default: evaluate.n)."),
    out: Path = typer.Option(None, "--out", help="Also write the JSON result here."),
    weights: str = typer.Option(None, "--weights", help="Inception weights file (see evaluate.inception_weights)."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (default: configs/satellite.yaml)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set evaluate.n_real=5000."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """FID, KID and Inception Score of a checkpoint's EMA generator against its dataset (TF-Inception weights).

    Real-tile statistics are cached beside the dataset, so later evaluations only embed generated images. Compare
    FIDs only at equal N and equal protocol (the result records weights sha256, N, resize method and bands).
    """
    from atlas_gan.metrics.evaluate import evaluate_checkpoint, latest_checkpoint
    from atlas_gan.runtime import distributed

    extra = [f"evaluate.inception_weights={json.dumps(weights)}"] if weights else []
    with _exit_codes():
        cfg = load_config(config, [*overrides, *extra])
        ctx = distributed.setup()
        result = evaluate_checkpoint(cfg, checkpoint or latest_checkpoint(cfg), ctx, n=n, progress=not quiet)
    if result is None:
        return
    for label, scores in result["scores"].items():
        is_text = f"IS {scores['is']:.3f}" if scores["is"] is not None else "IS unavailable (no classifier head)"
        floor = scores["floor_fid"]
        floor_text = f"{floor:.3f} (N {scores['floor_n']})" if floor is not None else "n/a (too few tiles)"
        spread = scores["spread_ratio"]
        typer.echo(
            f"{label} {','.join(scores['bands'])}: FID {scores['fid']:.3f}  KID {scores['kid']:.5f}  {is_text}"
            f"  (N real {scores['n_real']}, N fake {result['n_fake']})\n"
            f"  real-vs-real floor {floor_text}; sample spread "
            f"{'n/a' if spread is None else format(spread, '.2f')} of the real tiles'"
        )
    typer.echo(
        f"step {result['step']}; weights sha256 {result['weights_sha256'][:16]}; {result['resize']}; "
        f"result: {result['written_to']}"
    )
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")


@app.command()
def register(
    checkpoint: str = typer.Option(None, "--checkpoint", help="Checkpoint URL; default: the newest in train.run_dir."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (default: configs/satellite.yaml)."),
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
        registration = register_generator(load_config(config, overrides), checkpoint, progress=not quiet)
    typer.echo(registration.summary())


def _load_sampler(model: str, config: Path | None, overrides: list[str]) -> Sampler:
    """The generator behind a registry URI (from the configured MLflow store) or a checkpoint path/URL."""
    from atlas_gan.sampling import is_mlflow_uri, load_sampler

    cfg = load_config(config, overrides)
    tracking = None
    if is_mlflow_uri(model):
        from atlas_gan.tracking.store import tracking_uri

        tracking = tracking_uri(cfg.tracking)
    return load_sampler(model, cfg.storage, tracking)


@app.command()
def sample(
    model: str = typer.Option(
        ..., "--model", "-m", help="models:/NAME@champion, models:/NAME/VERSION, runs:/ID/generator, or a checkpoint."
    ),
    count: int = typer.Option(64, "-n", min=1, max=100_000, help="Tiles to generate."),
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
        help="StyleGAN2 truncation psi: below 1 trades variety for typical tiles (0: the mean tile); 1: off.",
    ),
    out: Path = typer.Option(None, "--out", help="PNG grid to write (default grid.png unless --geotiff is given)."),
    bands: str = typer.Option(None, "--bands", help="Grid display bands R,G,B (or one), e.g. B4,B3,B2."),
    geotiff: Path = typer.Option(None, "--geotiff", help="Also write each tile as a GeoTIFF into this folder."),
    values: str = typer.Option(
        "physical", "--values", help="GeoTIFF values: physical (source units) or model ([-1, 1])."
    ),
    crs: str = typer.Option(None, "--crs", help="Claim this CRS for the GeoTIFFs (e.g. EPSG:32618); default none."),
    pixel_size: float = typer.Option(10.0, "--pixel-size", min=0.0, help="Pixel size in CRS units (with --crs)."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config: where MLflow is (tracking.uri)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set tracking.uri=..."),
) -> None:
    """Generate tiles from a registered generator (or a checkpoint): a PNG grid and/or GeoTIFFs with band names."""
    from atlas_gan.sampling import grid_png, write_geotiffs

    if values not in ("physical", "model"):
        _fail(f"--values must be physical or model; got {values!r}", 2)
    with _exit_codes():
        sampler = _load_sampler(model, config, overrides)
        images = sampler.generate(count, seed, label, truncation_psi=truncation_psi)
        wanted = [b.strip() for b in bands.split(",")] if bands else None
        if out is None and geotiff is None:
            out = Path("grid.png")
        if out is not None:
            png = grid_png(images, sampler.bands, wanted)
            out.parent.mkdir(parents=True, exist_ok=True)
            temp = out.with_name(f".{out.name}.tmp")
            temp.write_bytes(png)
            temp.replace(out)
            what = f"bands {','.join(sampler.bands)}, seed {seed}" + (f", label {label}" if label else "")
            what += f", truncation {truncation_psi}" if truncation_psi != 1.0 else ""
            typer.echo(f"wrote {out}: {count} tiles of {sampler.source} ({what})")
        if geotiff is not None:
            files = write_geotiffs(
                images, sampler.bands, geotiff, sampler.meta.get("normalization"), values, crs, pixel_size
            )
            typer.echo(f"wrote {len(files)} GeoTIFFs to {geotiff} ({values} values, bands {','.join(sampler.bands)})")


@app.command()
def export(
    model: str = typer.Option(
        ..., "--model", "-m", help="models:/NAME@champion, models:/NAME/VERSION, runs:/ID/generator, or a checkpoint."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="File to write (e.g. generator.onnx or generator.pt)."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx (onnxruntime, any language) or torchscript."),
    truncation_psi: float = typer.Option(
        1.0, "--truncation", "-t", min=0.0, max=2.0, help="StyleGAN2: truncation psi baked into the export; 1: off."
    ),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config: where MLflow is (tracking.uri)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set tracking.uri=..."),
) -> None:
    """Export the (EMA) generator to ONNX or TorchScript: inputs `latents` (n, latent_dim) float32 (and `labels`
    (n,) int64 for a conditional model), output `images` (n, bands, size, size) in [-1, 1], any batch size.
    The file carries the bands, label vocabulary and normalization as metadata (atlas_gan.export)."""
    from atlas_gan.export import export_generator
    from atlas_gan.models.base import ModelSpec
    from atlas_gan.runtime.generator import META_KEYS

    if fmt not in ("onnx", "torchscript"):
        _fail(f"--format must be onnx or torchscript; got {fmt!r}", 2)
    with _exit_codes():
        sampler = _load_sampler(model, config, overrides)
        spec = ModelSpec(**sampler.meta["spec"])
        info = {key: sampler.meta.get(key) for key in META_KEYS}
        info["source"] = model
        export_generator(sampler.generator, spec, out, fmt, truncation_psi, info)  # type: ignore[arg-type]
    inputs = "latents, labels" if spec.conditional else "latents"
    typer.echo(
        f"wrote {out}: {fmt}, {sampler.meta['model']} step {sampler.meta.get('step')}, inputs ({inputs}) -> images "
        f"({len(sampler.bands)} bands {spec.image_size}x{spec.image_size}), any batch size"
        + (f", truncation {truncation_psi}" if truncation_psi != 1.0 else "")
    )


@app.command()
def preview(
    dataset: str = typer.Argument(..., help="Folder or s3:// prefix holding manifest.json and the shards."),
    out: Path = typer.Option(Path("tiles.png"), "--out", help="PNG file to write."),
    count: int = typer.Option(64, "-n", min=1, max=4096, help="How many tiles (the first ones, in shard order)."),
    bands: str = typer.Option(None, "--bands", help="Display bands as R,G,B (or one for grey), e.g. B4,B3,B2."),
    columns: int = typer.Option(8, "--columns", min=1, max=256, help="Tiles per row."),
) -> None:
    """Write a PNG grid of tiles from an ingested dataset, to look at what the GAN will learn from."""
    from atlas_gan.preview import write_preview
    from atlas_gan.storage import storage_for

    wanted = [b.strip() for b in bands.split(",")] if bands else None
    with _exit_codes():
        png = write_preview(storage_for(dataset), dataset, count, wanted, columns)
    out.write_bytes(png)
    typer.echo(f"wrote {out} ({len(png):,} bytes)")


if __name__ == "__main__":
    app()
