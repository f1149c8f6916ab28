"""The pipeline's decisions, free of Prefect: which config a run uses, whether to train, where each run trains,
and the run's report. The flows in `flows/` only wire these to tasks.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from typing import Any

from atlas_gan.config import AtlasConfig, resolve_config
from atlas_gan.metrics import main_scores
from atlas_gan.storage import join_url, storage_for


def pipeline_config(config_path: str | None = None, overrides: list[str] | None = None) -> AtlasConfig:
    """Flow parameters -> validated config, under the CLI's precedence rule (`atlas_gan.config.config_origin`):
    the parameters, else the deployment's ATLAS_CONFIG / ATLAS_OVERRIDES, else the packaged default."""
    return resolve_config(config_path, overrides or [])


def run_name(flow_run_name: str, started: str) -> str:
    """A run directory name: sortable start time + the flow run's name (safe characters only)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", flow_run_name).strip("-") or "run"
    return f"{started}-{cleaned}"[:120]


def config_for_run(config: AtlasConfig, name: str) -> AtlasConfig:
    """Each pipeline run trains from scratch in `<train.run_dir>/<name>` (a retried flow run resumes there)."""
    train = config.train.model_copy(update={"run_dir": join_url(config.train.run_dir, name)})
    return config.model_copy(update={"train": train})


def champion_version(config: AtlasConfig) -> str | None:
    """The registered model's champion version, or None when there is none (or no such model yet)."""
    from mlflow.exceptions import MlflowException

    from atlas_gan.tracking.promotion import CHAMPION
    from atlas_gan.tracking.store import client_for

    try:
        return str(
            client_for(config.tracking).get_model_version_by_alias(config.tracking.registered_model, CHAMPION).version
        )
    except MlflowException:
        return None


def skip_reason(added_scenes: list[str], champion: str | None, force: bool) -> str | None:
    """Why training can be skipped (None: train). Nothing new and a champion already serving: nothing to gain."""
    if force:
        return None
    if not added_scenes and champion is not None:
        return f"no new imagery and champion version {champion} exists (run with force=True to retrain anyway)"
    return None


BASELINE_NAMES = {"linear": "linear-regression", "bicubic": "bicubic"}  # a translation's baseline, in reports
REPORT_FIGURES = {  # caption -> file in run_dir/figures (written by atlas_gan.train.figures_hook)
    "Training curves": "curves.png",
    "Real tiles beside generated ones": "real-vs-generated-rgb.png",
    "Held-out tiles: input, translation, target": "translation-rgb.png",
    "Band values, real vs generated": "band-histograms.png",
    "Latent walk of the new generator": "latent-walk.gif",
}


def report_figure_images(config: AtlasConfig, figures: dict[str, str]) -> dict[str, str | None]:
    """caption -> data URI of each figure for the report; an animation too large to inline is shown as its
    first frame, and the caption says where the animation is."""
    images: dict[str, str | None] = {}
    for caption, url in figures.items():
        image = image_data_uri(config, url, 900)
        if url.endswith(".gif") and image is not None and not image.startswith("data:image/gif"):
            caption = f"{caption} (first frame; the animation: {url})"
        images[caption] = image
    return images


def run_figures(config: AtlasConfig) -> dict[str, str]:
    """caption -> URL of the figures the run drew (those it did not are left out)."""
    folder = join_url(config.train.run_dir, "figures")
    store = storage_for(folder, config.storage)
    urls = {join_url(folder, name): caption for caption, name in REPORT_FIGURES.items()}
    present = {info.url for info in store.list(folder)}
    return {caption: url for url, caption in urls.items() if url in present}


def newest_sample_grid(config: AtlasConfig) -> str | None:
    """The run's latest RGB sample grid (URL), if it wrote any."""
    folder = join_url(config.train.run_dir, "samples")
    store = storage_for(folder, config.storage)
    grids = sorted(info.url for info in store.list(folder) if info.url.endswith("-rgb.png"))
    return grids[-1] if grids else None


@dataclass
class PipelineOutcome:
    """What one pipeline run did: the flow's return value and the source of its report."""

    added_scenes: list[str]
    rejected: list[dict[str, str]]
    shards: str
    skipped: str | None = None
    run_dir: str | None = None
    checkpoint: str | None = None
    fid: float | None = None
    kid: float | None = None
    fid_n: int | None = None
    floor_fid: float | None = None  # the real-vs-real floor at the same N
    spread_ratio: float | None = None  # samples' pixel spread / the real tiles'
    sample_precision: float | None = None  # share of samples among the real tiles (Inception features)
    sample_recall: float | None = None  # share of real tiles among the samples
    floor_precision: float | None = None  # what real tiles outside the reference set score
    floor_recall: float | None = None
    registration: dict[str, Any] | None = None
    sample_grid: str | None = None
    figures: dict[str, str] | None = None  # caption -> URL (run_dir/figures)
    translation: dict[str, Any] | None = None  # a translation's held-out scores (then no FID)

    def scored(self, evaluation: dict[str, Any]) -> None:
        """Take the final evaluation's headline scores (FID and friends, or a translation's)."""
        if evaluation.get("kind") == "unpaired":
            self.translation = {
                "fid": evaluation["fid"],
                "identity_fid": evaluation["identity_fid"],
                "n": f"{evaluation['n_a']} A / {evaluation['n_b']} B",
                "bands": f"{','.join(evaluation['domain_a'])} -> {','.join(evaluation['domain_b'])}",
            }
            return
        if evaluation.get("kind") == "translation":
            baseline = evaluation["baselines"][evaluation["baseline"]]
            scale = evaluation.get("scale")
            bands = f"{','.join(evaluation['input_bands'])} -> {','.join(evaluation['target_bands'])}"
            self.translation = {
                "psnr": evaluation["psnr"],
                "ssim": evaluation["ssim"],
                "baseline": BASELINE_NAMES.get(evaluation["baseline"], evaluation["baseline"]),
                "baseline_psnr": baseline["psnr"],
                "baseline_ssim": baseline["ssim"],
                "n_validation": evaluation["n_validation"],
                "bands": f"x{scale} super-resolution of {','.join(evaluation['target_bands'])}" if scale else bands,
            }
            return
        self.fid, self.fid_n = evaluation["fid"], evaluation["n_fake"]
        main = main_scores(evaluation)
        self.kid = main["kid"]
        self.floor_fid, self.spread_ratio = evaluation["floor_fid"], evaluation["spread_ratio"]
        self.sample_precision, self.sample_recall = main.get("sample_precision"), main.get("sample_recall")
        self.floor_precision, self.floor_recall = main.get("floor_precision"), main.get("floor_recall")

    def _score_rows(self) -> list[str]:
        if self.translation is not None and "fid" in self.translation:
            t = self.translation
            return [
                f"| translation (domains) | {t['bands']} |",
                f"| FID of held-out A translated vs B ({t['n']}) | {_number(t['fid'])} |",
                f"| not translating | {_number(t['identity_fid'])} |",
            ]
        if self.translation is not None:
            t = self.translation
            return [
                f"| translation | {t['bands']} |",
                f"| PSNR on {t['n_validation']} held-out tiles | {_number(t['psnr'])} dB |",
                f"| {t['baseline']} baseline | {_number(t['baseline_psnr'])} dB |",
                f"| SSIM (baseline) | {_number(t['ssim'])} ({_number(t['baseline_ssim'])}) |",
            ]
        return [
            f"| FID (N={self.fid_n}) | {_number(self.fid)} |",
            f"| real-vs-real floor at that N | {_number(self.floor_fid)} |",
            f"| KID | {_number(self.kid)} |",
            f"| sample spread / real tiles' | {_number(self.spread_ratio)} |",
            f"| precision: samples among real tiles (real tiles: {_number(self.floor_precision)}) "
            f"| {_number(self.sample_precision)} |",
            f"| recall: real tiles among samples (real tiles: {_number(self.floor_recall)}) "
            f"| {_number(self.sample_recall)} |",
        ]

    def markdown(
        self,
        grid_image: str | None = None,
        links: dict[str, str] | None = None,
        figure_images: dict[str, str | None] | None = None,
    ) -> str:
        """The Prefect report. `grid_image`: the sample grid as a data URI (`image_data_uri`); `links`: absolute
        URLs by label (`mlflow_links`); `figure_images`: caption -> data URI of the run's figures."""
        lines = ["# atlas-gan pipeline run", ""]
        lines.append(f"- **new scenes:** {len(self.added_scenes)} ({', '.join(self.added_scenes) or 'none'})")
        lines.append(f"- **rejected inputs:** {len(self.rejected)}")
        lines += [f"  - `{r['file']}`: {r['reason']}" for r in self.rejected]
        lines.append(f"- **shards:** `{self.shards}`")
        if self.skipped:
            lines += ["", f"**Training skipped:** {self.skipped}"]
            return "\n".join(lines) + "\n"
        reg = self.registration or {}
        lines += [
            f"- **run dir:** `{self.run_dir}`",
            f"- **checkpoint:** `{self.checkpoint}`",
            f"- **sample grid:** `{self.sample_grid}`",
            "",
            "| metric | value |",
            "|---|---|",
            *self._score_rows(),
            f"| model version | `{reg.get('model_uri')}` |",
            f"| decision | **{reg.get('alias')}**: {reg.get('reason')} |",
            f"| champion before | {reg.get('champion_version') or 'none'} (FID {_number(reg.get('champion_fid'))}) |",
        ]
        if links:
            lines += ["", " · ".join(f"[{label}]({url})" for label, url in links.items())]
        if grid_image:
            lines += ["", "## Samples of the new generator (fixed latents, EMA)", "", f"![sample grid]({grid_image})"]
        for caption, image in (figure_images or {}).items():
            if image is None:
                continue
            lines += ["", f"## {caption}", "", f"![{caption}]({image})"]
        return "\n".join(lines) + "\n"


# Larger animations are shown as their first frame: Prefect refuses events over 1.5 MB (PREFECT_SERVER_EVENTS_
# MAXIMUM_SIZE_BYTES), and a report holds the sample grid and four figures besides.
MAX_INLINE_GIF_BYTES = 600_000


def image_data_uri(config: AtlasConfig, url: str | None, max_side: int = 640) -> str | None:
    """A picture (PNG/GIF) as an inline JPEG data URI (at most `max_side` px), for reports that cannot fetch files;
    None when there is no such file."""
    if url is None or not storage_for(url, config.storage).exists(url):
        return None
    from PIL import Image

    data = storage_for(url, config.storage).read_bytes(url)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) <= MAX_INLINE_GIF_BYTES:  # keep the animation
        return "data:image/gif;base64," + base64.b64encode(data).decode()
    with Image.open(io.BytesIO(data)) as grid:
        image = grid.convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def ingest_markdown(summary: str, manifest: str, footprints: str | None) -> str:
    """The ingest flow's Prefect report: what was added and rejected, and where the tiles lie (`footprints`:
    the footprint map as a data URI)."""
    lines = ["# atlas-gan ingest", "", f"- **manifest:** `{manifest}`", "", "```", summary, "```"]
    if footprints:
        lines += ["", "## Where the tiles lie", "", f"![footprint map]({footprints})"]
    return "\n".join(lines) + "\n"


def mlflow_links(config: AtlasConfig, registration: dict[str, Any] | None) -> dict[str, str]:
    """Absolute MLflow UI URLs of the run and the registered version, when MLflow is a server (http/https)."""
    from atlas_gan.tracking.store import client_for, redact, tracking_uri

    base = tracking_uri(config.tracking).rstrip("/")
    if not base.startswith(("http://", "https://")) or not registration:
        return {}
    base = redact(base)
    experiment = client_for(config.tracking).get_run(registration["run_id"]).info.experiment_id
    name, version = registration["name"], registration["version"]
    return {
        "MLflow run": f"{base}/#/experiments/{experiment}/runs/{registration['run_id']}",
        f"model version {name}/{version}": f"{base}/#/models/{name}/versions/{version}",
        "all versions": f"{base}/#/models/{name}",
    }


def _score_text(outcome: dict[str, Any]) -> str:
    translation = outcome.get("translation")
    if translation and "fid" in translation:
        return (
            f"FID:           {_number(translation['fid'])} held-out A translated vs B ({translation['n']}; not "
            f"translating: {_number(translation['identity_fid'])}; {translation['bands']})"
        )
    if translation:
        return (
            f"PSNR:          {_number(translation['psnr'])} dB on {translation['n_validation']} held-out tiles "
            f"({translation['baseline']} baseline {_number(translation['baseline_psnr'])} dB; {translation['bands']})"
        )
    return (
        f"FID (N={outcome['fid_n']}):  {_number(outcome['fid'])} (real-vs-real floor at that N: "
        f"{_number(outcome.get('floor_fid'))}; sample spread {_number(outcome.get('spread_ratio'))} of the "
        "real tiles')\n"
        f"precision:     {_number(outcome.get('sample_precision'))}, recall {_number(outcome.get('sample_recall'))} "
        f"(real tiles outside the reference: {_number(outcome.get('floor_precision'))}, "
        f"{_number(outcome.get('floor_recall'))})"
    )


def where_text(outcome: dict[str, Any], config: AtlasConfig) -> str:
    """Where a pipeline run left things, for people: shards, samples, the MLflow run, the champion."""
    from atlas_gan.tracking.store import redact, tracking_uri

    uri = redact(tracking_uri(config.tracking))
    registration = outcome.get("registration") or {}
    name = config.tracking.registered_model
    lines = [f"shards:        {outcome['shards']}"]
    if outcome.get("skipped"):
        lines.append(f"training:      skipped - {outcome['skipped']}")
    else:
        lines += [
            f"run dir:       {outcome['run_dir']}",
            f"sample grid:   {outcome['sample_grid']}",
            _score_text(outcome),
            f"figures:       {join_url(outcome['run_dir'], 'figures')} (curves, real vs generated, band histograms,"
            " latent walk)",
            f"MLflow run:    {registration.get('run_id')} in {uri}",
            f"this model:    {registration.get('model_uri')} -> {registration.get('alias')}",
            f"               ({registration.get('reason')})",
        ]
    lines.append(f"champion:      models:/{name}@champion (version {champion_version(config) or 'none'})")
    if uri.startswith("sqlite:"):
        lines.append(f"look at it:    mlflow ui --backend-store-uri {uri}")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def with_fid_curve(config: AtlasConfig, points: int) -> AtlasConfig:
    """Evaluate `points` times during training (the last at the final step, which the evaluation then reuses),
    unless the config asks for its own `train.evaluate_every` or `points` is 0."""
    if points <= 0 or config.train.evaluate_every:
        return config
    every = -(-config.train.steps // points)  # ceil: points - 1 evaluations on the way, one at the last step
    train = config.train.model_copy(update={"evaluate_every": every})
    return config.model_copy(update={"train": train})
