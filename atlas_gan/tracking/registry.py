"""Register a trained generator as a version of the MLflow registered model and move `champion`/`challenger`.

`register_generator(config)` takes the newest checkpoint of `train.run_dir` (or the one given), its evaluation at
`evaluate.n` (reused from run_dir/eval when it matches the current dataset, else computed now), logs the EMA
generator as a pyfunc model into the training's MLflow run, and applies the promotion rule of `promotion.py`. When
the champion was scored under another protocol (say the dataset has grown since), it is scored again under the new
one first (`tracking.reevaluate_champion`), so the comparison is always like for like. An image-to-image generator
(pix2pix) is registered with its translation scores and promoted by PSNR (`promotion.decide_paired`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atlas_gan.config import AtlasConfig
from atlas_gan.metrics import main_scores
from atlas_gan.metrics.evaluate import (
    checkpoint_to_register,
    evaluate_checkpoint,
    evaluate_generator,
    stored_evaluation,
)
from atlas_gan.models.base import ModelSpec
from atlas_gan.runtime import distributed
from atlas_gan.runtime.generator import load_generator
from atlas_gan.runtime.signature import IMAGE, LATENT, signature_of
from atlas_gan.shards import read_manifest
from atlas_gan.storage import storage_for
from atlas_gan.tracking.generator_model import META_ARTIFACT, WEIGHTS_ARTIFACT, GeneratorModel
from atlas_gan.tracking.promotion import (
    CHAMPION,
    Decision,
    QualityGate,
    Score,
    TranslationScore,
    decide,
    decide_translation,
    family_key,
    protocol_key,
    translation_protocol_key,
)
from atlas_gan.tracking.store import (
    SCORE_KEYS,
    client_for,
    dataset_entity,
    describe_registered_model,
    label_tags,
    open_run,
    redact,
    tracking_uri,
)

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PYFUNC_CODE = Path(__file__).resolve().parent / "pyfunc_code.py"
MODEL_NAME_IN_RUN = "generator"
TAG_FID, TAG_PROTOCOL, TAG_FAMILY = "atlas.fid", "atlas.fid.protocol", "atlas.dataset.family"
TAG_PRIMARY, TAG_SCORE, TAG_SCORE_PROTOCOL = (
    "atlas.primary_metric",
    "atlas.translation.score",
    "atlas.translation.protocol",
)
TRANSLATION_SCORE_KEYS = ("psnr", "ssim", "l1", "sam_degrees", "psnr_over_baseline", "fid", "kid", "identity_fid")


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    alias: str
    reason: str
    fid: float | None
    champion_version: str | None  # the champion before this registration
    champion_fid: float | None  # its FID under this version's protocol
    model_uri: str
    run_id: str
    model_id: str  # MLflow's logged model: its metrics are the version's scores
    psnr: float | None = None  # a translation's primary metric (then fid is None)

    def summary(self) -> str:
        score = f"PSNR {self.psnr:.2f} dB" if self.psnr is not None else f"FID {self.fid}"
        return (
            f"registered {self.model_uri} ({score}) as {self.alias}: {self.reason}\n"
            f"load the best with: models:/{self.name}@{CHAMPION}"
        )


def quality_gate(config: AtlasConfig) -> QualityGate:
    promotion = config.tracking
    return QualityGate(
        min_spread_ratio=promotion.champion_min_spread,
        min_recall=promotion.champion_min_recall,
        max_fid=promotion.champion_max_fid,
        max_fid_over_floor=promotion.champion_max_fid_over_floor,
    )


MODEL_METADATA_KEYS = ("model", "signature", "spec", "bands", "input_bands", "step", "images_seen", "labels")


def model_signature(meta: dict[str, Any]):
    """The MLflow signature of a registered generator, from its generator signature (latent: latents in)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    spec = meta["spec"]
    float32 = np.dtype(np.float32)
    inputs = {
        LATENT: [TensorSpec(float32, (-1, spec["latent_dim"]), "latents")],
        IMAGE: [TensorSpec(float32, (-1, spec.get("input_bands", 0), -1, -1), "images")],  # any size the net takes
    }
    size, bands = spec["image_size"], spec["bands"]
    side = -1 if signature_of(meta).name == IMAGE else size
    return ModelSignature(
        inputs=Schema(inputs[signature_of(meta).name]),
        outputs=Schema([TensorSpec(float32, (-1, bands, side, side), "images")]),
        params=ParamSchema(
            [
                ParamSpec("count", "long", 0),
                ParamSpec("seed", "long", 0),
                ParamSpec("batch_size", "long", 256),
                ParamSpec("label", "string", ""),
                ParamSpec("truncation_psi", "double", 1.0),
            ]
        ),
    )


def _copy_code(target: Path) -> Path:
    """The atlas_gan package without caches: logged with the model so it loads where atlas-gan is not installed."""
    destination = target / "atlas_gan"
    shutil.copytree(PACKAGE_DIR, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


@contextlib.contextmanager
def _scoped_mlflow_uri(uri: str) -> Iterator[None]:
    """MLflow's `log_model` only logs to the process-wide tracking and registry URIs (and exports them to the
    environment): point both at `uri` for the call with MLflow's public setters, then put everything back, so
    registering never redirects the caller's own MLflow."""
    import mlflow

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {name: os.environ.get(name) for name in names}
    saved_tracking = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        # A URI that came from the environment (or was exported there by set_tracking_uri) is left to MLflow's own
        # resolution again, so a later change of MLFLOW_TRACKING_URI still counts.
        from_env = saved_tracking == saved_env["MLFLOW_TRACKING_URI"]
        mlflow.set_tracking_uri(None if from_env else saved_tracking)  # type: ignore[arg-type]
        mlflow.set_registry_uri(saved_env["MLFLOW_REGISTRY_URI"])  # type: ignore[arg-type]
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class LoggedGenerator:
    version: str  # of the registered model
    model_uri: str  # models:/NAME/VERSION
    model_id: str  # MLflow 3's logged model, which metrics link to


def log_generator_model(
    config: AtlasConfig, run_id: str, generator: torch.nn.Module, meta: dict[str, Any]
) -> LoggedGenerator:
    """Log the generator as a pyfunc model in `run_id` and register it as a new version."""
    import mlflow

    spec = meta["spec"]
    with (
        _scoped_mlflow_uri(tracking_uri(config.tracking)),
        tempfile.TemporaryDirectory(prefix="atlas-register-") as tmp,
    ):
        folder = Path(tmp)
        weights, meta_file = folder / "generator.pt", folder / "generator.json"
        state = generator.state_dict()  # tensors, and plain numbers of a module's extra state (pggan's level)
        torch.save({k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}, weights)
        meta_file.write_text(json.dumps(meta, indent=2))
        example = signature_of(meta).example_inputs(ModelSpec(**spec), 2)[0].numpy()
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                python_model=str(PYFUNC_CODE),
                artifacts={WEIGHTS_ARTIFACT: str(weights), META_ARTIFACT: str(meta_file)},
                code_paths=[str(_copy_code(folder / "code"))],
                signature=model_signature(meta),
                input_example=example,
                pip_requirements=["torch>=2.4", "numpy>=1.26"],
                metadata={"atlas_gan": {k: meta.get(k) for k in MODEL_METADATA_KEYS}},
                registered_model_name=config.tracking.registered_model,
            )
    version = str(info.registered_model_version)
    return LoggedGenerator(version, f"models:/{config.tracking.registered_model}/{version}", info.model_id)


def load_registered_generator(model_uri: str, tracking: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The generator module and its metadata from a registered model (models:/name@alias, models:/name/3, runs:/),
    from the `tracking` store (default: MLflow's own resolution, MLFLOW_TRACKING_URI)."""
    import mlflow.pyfunc

    # MLflow resolves models:/ URIs through the process-wide registry URI only (even when given another one)
    with _scoped_mlflow_uri(tracking) if tracking else contextlib.nullcontext():
        python_model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    if not isinstance(python_model, GeneratorModel):
        raise ValueError(f"{model_uri} is not an atlas-gan generator (it is {type(python_model).__name__})")
    return python_model.generator, python_model.meta


def registered_version(model_uri: str, tracking: str | None = None) -> str | None:
    """The version number behind `models:/NAME/VERSION` or `models:/NAME@ALIAS` (None for other URIs, or when the
    registry cannot say)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    found = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))/?", model_uri)
    if found is None:
        return None
    name, version, alias = found.groups()
    if version is not None:
        return version
    try:
        return str(MlflowClient(tracking, tracking).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _champion(client: Any, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _score(tags: dict[str, str]) -> Score:
    fid = tags.get(TAG_FID)
    return Score(float(fid) if fid not in (None, "", "None") else None, tags.get(TAG_PROTOCOL), tags.get(TAG_FAMILY))


def _rescore_champion(
    config: AtlasConfig, client: Any, champion: Any, protocol: str, ctx: distributed.DistributedContext
) -> Score:
    """Evaluate the champion under the new version's protocol and record it on the champion's tags."""
    name = config.tracking.registered_model
    log.info("scoring champion version %s under the new protocol", champion.version)
    generator, meta = load_registered_generator(f"models:/{name}/{champion.version}", tracking_uri(config.tracking))
    result = evaluate_generator(config, generator, meta, ctx, progress=False, write=False)
    fid = float(result["fid"])
    for key, value in {TAG_FID: str(fid), TAG_PROTOCOL: protocol, "atlas.fid.rescored": "true"}.items():
        client.set_model_version_tag(name, champion.version, key, value)
    return Score(fid, protocol, champion.tags.get(TAG_FAMILY))


def _log_model_and_scores(
    config: AtlasConfig,
    client: Any,
    run_id: str,
    checkpoint: str,
    generator: torch.nn.Module,
    meta: dict[str, Any],
    manifest: dict[str, Any],
    scores: dict[str, Any],
    keys: tuple[str, ...],
) -> LoggedGenerator:
    """Log the generator as a new model version in the run, then its `keys` of `scores` as the run's metrics,
    linked to that logged model and the dataset."""
    model_meta = {
        **meta,
        "checkpoint": redact(checkpoint),
        "dataset_checksum": manifest["checksum"],
        "dataset_url": redact(config.dataset_url),
    }
    logged = log_generator_model(config, run_id, generator, model_meta)
    dataset = dataset_entity(manifest, config.dataset_url)
    for key in keys:
        if scores.get(key) is not None:
            client.log_metric(
                run_id,
                key,
                float(scores[key]),
                step=meta["step"],
                model_id=logged.model_id,
                dataset_name=dataset.name,
                dataset_digest=dataset.digest,
            )
    return logged


def register_generator(
    config: AtlasConfig,
    checkpoint: str | None = None,
    evaluation: dict[str, Any] | None = None,
    progress: bool = True,
) -> Registration:
    """Register a checkpoint's EMA generator and decide champion/challenger (single process)."""
    if not progress:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    checkpoint = checkpoint or checkpoint_to_register(config)
    generator, meta = load_generator(storage_for(checkpoint, config.storage), checkpoint)
    manifest = read_manifest(storage_for(config.dataset_url, config.storage), config.dataset_url)
    if manifest is None:
        raise ValueError(f"{config.dataset_url}: no dataset manifest; the generator's dataset is needed to score it")
    ctx = distributed.setup()
    if evaluation is None:
        evaluation = stored_evaluation(config, meta["step"], manifest["checksum"])
    if evaluation is None:
        evaluation = evaluate_checkpoint(config, checkpoint, ctx, progress=progress)
    if evaluation.get("kind") in ("translation", "unpaired"):
        return _register_translation(config, checkpoint, generator, meta, manifest, evaluation)
    main = main_scores(evaluation)
    new = Score(
        float(evaluation["fid"]) if evaluation.get("fid") is not None else None,
        protocol_key(evaluation, config.evaluate.seed),
        family_key(config.dataset_url, manifest),
        evaluation.get("floor_fid"),
        evaluation.get("spread_ratio"),
        evaluation.get("sample_recall"),
        main.get("floor_recall"),
    )
    client = client_for(config.tracking)
    run_id, _ = open_run(client, config)
    logged = _log_model_and_scores(config, client, run_id, checkpoint, generator, meta, manifest, main, SCORE_KEYS)
    version, model_uri = logged.version, logged.model_uri
    name = config.tracking.registered_model
    describe_registered_model(client, name, meta, config.dataset_url)
    tags = {
        TAG_FID: str(new.fid),
        TAG_PROTOCOL: str(new.protocol),
        TAG_FAMILY: str(new.family),
        "atlas.kid": str(main.get("kid")),
        "atlas.fid.floor": str(new.floor_fid),
        "atlas.spread_ratio": str(new.spread_ratio),
        "atlas.sample_precision": str(main.get("sample_precision")),
        "atlas.sample_recall": str(new.recall),
        "atlas.fid.n_fake": str(evaluation["n_fake"]),
        "atlas.fid.n_real": str(main["n_real"]),
        "atlas.fid.weights_sha256": evaluation["weights_sha256"],
        "atlas.fid.bands": ",".join(main["bands"]),
        "atlas.dataset.checksum": manifest["checksum"],
        "atlas.checkpoint": redact(checkpoint),
        "atlas.step": str(meta["step"]),
        "atlas.model": meta["model"],
    }
    tags |= label_tags(meta.get("labels"))
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)

    champion = _champion(client, name)
    champion_score = _score(champion.tags) if champion is not None else None
    if (
        champion is not None
        and champion_score.family == new.family
        and champion_score.protocol != new.protocol
        and config.tracking.reevaluate_champion
    ):
        champion_score = _rescore_champion(config, client, champion, str(new.protocol), ctx)
    decision: Decision = decide(new, champion_score, quality_gate(config))
    client.set_registered_model_alias(name, decision.alias, version)
    if decision.alias == CHAMPION and champion is not None:
        client.set_model_version_tag(name, str(champion.version), "atlas.superseded_by", version)
    champion_fid = champion_score.fid if champion_score is not None else None
    record = {
        "atlas.promotion.decision": decision.alias,
        "atlas.promotion.reason": decision.reason,
        "atlas.promotion.champion_version": str(champion.version) if champion is not None else "none",
        "atlas.promotion.champion_fid": str(champion_fid),
    }
    for key, value in record.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(
        name,
        version,
        description=(
            f"{meta['model']} generator, step {meta['step']}, bands {','.join(meta['bands'])}. "
            f"FID {new.fid} (N={evaluation['n_fake']}); champion before: "
            f"{f'version {champion.version}' if champion else 'none'} with FID {champion_fid}. "
            f"Decision: {decision.alias} - {decision.reason}."
        ),
    )
    registration = Registration(
        name, version, decision.alias, decision.reason, new.fid,
        str(champion.version) if champion is not None else None, champion_fid, model_uri, run_id, logged.model_id,
    )  # fmt: skip
    log.info("%s", json.dumps(asdict(registration)))
    return registration


def _register_translation(
    config: AtlasConfig,
    checkpoint: str,
    generator: torch.nn.Module,
    meta: dict[str, Any],
    manifest: dict[str, Any],
    evaluation: dict[str, Any],
) -> Registration:
    """Register an image-to-image generator with its held-out scores; champion by its primary metric (PSNR for
    pix2pix and super-resolution, FID for CycleGAN) over the same split, and only above its baseline (linear
    regression, bicubic upscaling, not translating)."""
    metric = evaluation["primary_metric"]
    paired = evaluation["kind"] == "translation"
    baseline = evaluation["baselines"][evaluation["baseline"]]["psnr"] if paired else evaluation["identity_fid"]
    new = TranslationScore(
        metric,
        float(evaluation[metric]),
        translation_protocol_key(evaluation),
        family_key(config.dataset_url, manifest),
        float(baseline),
        "bicubic upscaling" if paired and evaluation["baseline"] == "bicubic" else None,
    )
    client = client_for(config.tracking)
    run_id, _ = open_run(client, config)
    logged = _log_model_and_scores(
        config, client, run_id, checkpoint, generator, meta, manifest, evaluation, TRANSLATION_SCORE_KEYS
    )
    version, name = logged.version, config.tracking.registered_model
    describe_registered_model(client, name, meta, config.dataset_url)
    if paired:
        what = f"{','.join(evaluation['input_bands'])} -> {','.join(evaluation['target_bands'])}"
        if evaluation.get("scale"):
            what = f"x{evaluation['scale']} super-resolution of {','.join(evaluation['target_bands'])}"
        held_out = str(evaluation["n_validation"])
    else:
        what = f"{','.join(evaluation['domain_a'])} -> {','.join(evaluation['domain_b'])}"
        held_out = f"{evaluation['n_a']} A, {evaluation['n_b']} B"
    tags = {
        TAG_PRIMARY: metric,
        TAG_SCORE: str(new.value),
        TAG_SCORE_PROTOCOL: str(new.protocol),
        TAG_FAMILY: str(new.family),
        "atlas.translation.baseline": str(new.baseline),
        "atlas.translation.held_out": held_out,
        "atlas.translation": what,
        "atlas.dataset.checksum": manifest["checksum"],
        "atlas.checkpoint": redact(checkpoint),
        "atlas.step": str(meta["step"]),
        "atlas.model": meta["model"],
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    champion = _champion(client, name)
    champion_score = None
    if champion is not None:
        value = champion.tags.get(TAG_SCORE)
        champion_score = TranslationScore(
            champion.tags.get(TAG_PRIMARY, "fid"),
            float(value) if value not in (None, "", "None") else None,
            champion.tags.get(TAG_SCORE_PROTOCOL),
            champion.tags.get(TAG_FAMILY),
        )
    decision = decide_translation(new, champion_score)
    client.set_registered_model_alias(name, decision.alias, version)
    if decision.alias == CHAMPION and champion is not None:
        client.set_model_version_tag(name, str(champion.version), "atlas.superseded_by", version)
    champion_value = champion_score.value if champion_score is not None else None
    for key, value in {
        "atlas.promotion.decision": decision.alias,
        "atlas.promotion.reason": decision.reason,
        "atlas.promotion.champion_version": str(champion.version) if champion is not None else "none",
        "atlas.promotion.champion_score": str(champion_value),
    }.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(
        name,
        version,
        description=(
            f"{meta['model']} translation {what}, step {meta['step']}. {metric.upper()} {new.value:.3f} on the "
            f"held-out split ({held_out}; baseline {new.baseline:.3f}). Decision: {decision.alias} - "
            f"{decision.reason}."
        ),
    )
    registration = Registration(
        name, version, decision.alias, decision.reason, new.value if metric == "fid" else None,
        str(champion.version) if champion is not None else None, None, logged.model_uri, run_id, logged.model_id,
        new.value if metric == "psnr" else None,
    )  # fmt: skip
    log.info("%s", json.dumps(asdict(registration)))
    return registration
