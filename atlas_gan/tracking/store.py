"""Where MLflow lives for a config, and the one MLflow run that belongs to a training run directory.

The tracking URI comes from `tracking.uri`, else `MLFLOW_TRACKING_URI`, else an embedded sqlite store in
`tracking.store_dir` (artifacts in `store_dir/artifacts`). The run id is kept in `<run_dir>/mlflow-run.json`, so a
resumed (or torchrun-restarted) training continues the same MLflow run. Nothing secret is ever logged: config values
are the only params, URLs lose their user-info, and credentials stay in the environment.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from atlas_gan.config import AtlasConfig, TrackingConfig
from atlas_gan.metrics import main_scores
from atlas_gan.storage import join_url, storage_for

RUN_FILE = "mlflow-run.json"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_SECRET_KEY = re.compile(r"secret|password|passwd|token|credential|access_key", re.IGNORECASE)
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param value


class TrackingError(RuntimeError):
    """MLflow could not be reached or refused a request; the message names the store and the reason."""


def tracking_uri(config: TrackingConfig) -> str:
    """The tracking (and registry) URI for this config; creates the embedded store's folder when it is used."""
    if config.uri:
        return config.uri
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    root = Path(config.store_dir).resolve()
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def redact(text: str) -> str:
    """Drop `user:password@` from every URL in `text`."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def client_for(config: TrackingConfig):
    """An MlflowClient for tracking and registry (the same store)."""
    from mlflow import MlflowClient

    uri = tracking_uri(config)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: Any, config: TrackingConfig) -> str:
    """Get or create the experiment; the embedded store keeps its artifacts under store_dir/artifacts."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(config.experiment)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {config.experiment!r} is deleted; restore it or set tracking.experiment"
            )
        return found.experiment_id
    location = None
    uri = tracking_uri(config)
    if uri.startswith("sqlite:///"):  # an embedded store keeps its artifacts beside the database, not in ./mlruns
        location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "artifacts").as_uri()
    try:
        return client.create_experiment(config.experiment, artifact_location=location)
    except MlflowException:  # created by another process in between
        found = client.get_experiment_by_name(config.experiment)
        if found is None:
            raise
        return found.experiment_id


def label_tags(labels: dict[str, Any] | None) -> dict[str, str]:
    """A conditional generator's label vocabulary as tags (run and model version): what --label accepts."""
    if not labels:
        return {}
    return {"atlas.labels.by": str(labels["by"]), "atlas.labels": ",".join(labels["classes"])[:5000]}  # tag limit


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"train.lr_g": "0.0002", ...}; secrets masked, URLs without user-info, values capped."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
            continue
        text = "***" if _SECRET_KEY.search(key) else redact(json.dumps(value) if not isinstance(value, str) else value)
        flat[name] = text[:PARAM_VALUE_LIMIT]
    return flat


def read_run_id(config: AtlasConfig) -> str | None:
    """The MLflow run id recorded in the training run directory, if any."""
    url = join_url(config.train.run_dir, RUN_FILE)
    store = storage_for(url, config.storage)
    if not store.exists(url):
        return None
    return json.loads(store.read_bytes(url))["run_id"]


def write_run_id(config: AtlasConfig, run_id: str, experiment: str) -> None:
    url = join_url(config.train.run_dir, RUN_FILE)
    record = {"run_id": run_id, "experiment_id": experiment, "tracking_uri": redact(tracking_uri(config.tracking))}
    storage_for(url, config.storage).write_bytes(url, (json.dumps(record, indent=2) + "\n").encode())


def open_run(client: Any, config: AtlasConfig, run_name: str | None = None) -> tuple[str, bool]:
    """The training run's MLflow run: the recorded one if the store has it, else a new one. (run_id, resumed)."""
    from mlflow.exceptions import MlflowException

    recorded = read_run_id(config)
    if recorded is not None:
        try:
            run = client.get_run(recorded)
        except MlflowException:
            run = None
        if run is not None and run.info.lifecycle_stage == "active":
            if run.info.status != "RUNNING":
                client.update_run(recorded, status="RUNNING")
            return recorded, True
    experiment = experiment_id(client, config.tracking)
    run = client.create_run(experiment, run_name=run_name or Path(config.train.run_dir.rstrip("/")).name)
    write_run_id(config, run.info.run_id, experiment)
    return run.info.run_id, False


SCORE_KEYS = (
    "fid",
    "kid",
    "is",
    "floor_fid",
    "fid_above_floor",
    "spread_ratio",
    "sample_precision",
    "sample_recall",
    "floor_precision",
    "floor_recall",
)  # an evaluation's metrics
DATASET_DIGEST_CHARS = 32  # MLflow stores dataset digests in 36 characters: the manifest checksum's first 32 hex


def dataset_entity(manifest: dict[str, Any], dataset_url: str):
    """The ingested dataset as an MLflow dataset: digest = the manifest checksum, source = the dataset URL."""
    from mlflow.entities import Dataset

    bands = manifest["tile"]["bands"]
    schema = {"tile.npy": f"{manifest['tile']['dtype']} ({len(bands)}, {manifest['tile']['size']}, "
              f"{manifest['tile']['size']})", "bands": bands}  # fmt: skip
    return Dataset(
        name=manifest.get("name", "tiles"),
        digest=str(manifest["checksum"])[:DATASET_DIGEST_CHARS],
        source_type="s3" if dataset_url.startswith("s3://") else "local",
        source=json.dumps({"uri": redact(dataset_url)}),
        schema=json.dumps(schema),
        profile=json.dumps(manifest.get("totals", {})),
    )


def log_dataset_input(client: Any, run_id: str, manifest: dict[str, Any], dataset_url: str) -> None:
    """Record the dataset as the run's training input (MLflow's Datasets panel)."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = DatasetInput(dataset_entity(manifest, dataset_url), [InputTag(MLFLOW_DATASET_CONTEXT, "training")])
    client.log_inputs(run_id, datasets=[dataset])


def describe_registered_model(client: Any, name: str, meta: dict[str, Any], dataset_url: str) -> None:
    """A description and tags on the registered model, so the registry says what it holds."""
    client.update_registered_model(
        name,
        description=(
            f"atlas-gan generators of {','.join(meta['bands'])} satellite tiles "
            f"({meta['spec']['image_size']} px) trained on {redact(dataset_url)}. Alias `champion` = the best FID "
            "under one evaluation protocol; load it with atlas_gan.load_generator('models:/" + name + "@champion') "
            "or mlflow.pyfunc.load_model."
        ),
    )
    tags = {
        "atlas.bands": ",".join(meta["bands"]),
        "atlas.image_size": str(meta["spec"]["image_size"]),
        "atlas.dataset.url": redact(dataset_url),
        "atlas.signature": str(meta.get("signature", "latent")),
    }
    for key, value in tags.items():
        client.set_registered_model_tag(name, key, value)


def log_evaluation(config: AtlasConfig, result: dict[str, Any]) -> str | None:
    """Log an evaluation's scores into the MLflow run of the checkpoint's training run directory, at the checkpoint's
    step; returns that run id, or None when the run directory has no MLflow run."""
    run_id = read_run_id(config)
    if run_id is None:
        return None
    from mlflow.entities import Metric

    client = client_for(config.tracking)
    step = int(result["step"])
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, step)
        for key in SCORE_KEYS
        if (value := main_scores(result).get(key)) is not None
    ]
    client.log_batch(run_id, metrics=metrics)
    return run_id
