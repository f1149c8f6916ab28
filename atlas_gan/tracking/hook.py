"""Track a training run in MLflow from rank 0: config as params, the dataset as the run's input (digest = manifest
checksum) and tags, losses and FID/KID as metrics over steps, sample grids as images per step, the resolved config
and scene list as artifacts.

Tracking never stops training: when MLflow is unreachable the hook warns once, keeps the metrics it could not send
and sends them with the next call that gets through (log.jsonl in the run directory holds every record anyway).
Every call waits for the server, even with MLFLOW_ENABLE_ASYNC_LOGGING set: a torchrun worker ends through
`os._exit` (see `distributed.exit_worker`), which would drop a queue.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from atlas_gan.config import config_to_dict
from atlas_gan.tracking.store import SCORE_KEYS, client_for, flatten, label_tags, log_dataset_input, open_run, redact
from atlas_gan.train.hooks import TrainHooks
from atlas_gan.train.trainer import Trainer

log = logging.getLogger(__name__)

TRANSLATION_KEYS = (  # a paired translation's held-out scores, and an unpaired one's FID/KID
    *(
        "psnr",
        "ssim",
        "l1",
        "sam_degrees",
        "baseline_psnr",
        "baseline_ssim",
        "psnr_over_baseline",
        "baseline_fid",
        "pixel_psnr",
        "pixel_fid",
    ),
    *("fid", "kid", "identity_fid"),
)
LOSS_KEYS = (  # and every loss_*
    "images_per_s",
    "epoch",
    "images_seen",
    "augment_p",
    "augment_rt",
    "level",  # pggan's growing
    "resolution",
    "alpha",
)


def git_commit(directory: Path) -> str | None:
    """HEAD of the git checkout `directory` is in, if it is one."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def dataset_tags(manifest: dict[str, Any], dataset_url: str) -> dict[str, str]:
    return {
        "atlas.dataset.checksum": str(manifest.get("checksum")),
        "atlas.dataset.url": redact(dataset_url),
        "atlas.dataset.scenes": str(len(manifest.get("scenes", []))),
        "atlas.dataset.samples": str(manifest["totals"]["samples"]),
        "atlas.dataset.bands": ",".join(manifest["tile"]["bands"]),
    }


def scene_list(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The source scenes of a dataset (ids, source files, dates): what the run learned from."""
    keys = ("id", "acquired", "tiles", "sources")
    return [{k: scene.get(k) for k in keys} for scene in manifest.get("scenes", [])]


class MLflowHook(TrainHooks):
    """One MLflow run per training run directory; a resumed training continues it."""

    def __init__(self) -> None:
        # fail fast rather than stall training on MLflow's default retry schedule (minutes); users may override
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.client: Any = None
        self.run_id: str | None = None
        self._pending: list[Any] = []
        self._warned = False

    # ---- resilience ------------------------------------------------------------------------------------------------

    def _set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value, synchronous=True)

    def _attempt(self, what: str, action) -> bool:
        try:
            action()
        except Exception as exc:  # MLflow or network: tracking must not end the training
            if not self._warned:
                log.warning(
                    "MLflow tracking failed while %s (%s): training continues; run_dir/log.jsonl keeps every "
                    "record and unsent metrics are retried",
                    what,
                    redact(str(exc))[:500],
                )
                self._warned = True
            return False
        if self._warned:
            log.info("MLflow tracking reachable again")
            self._warned = False
        return True

    def _send_metrics(self, step: int, values: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [
            Metric(key, float(value), now, step)
            for key, value in values.items()
            if isinstance(value, int | float) and math.isfinite(value)
        ]
        if self.run_id is None:
            return
        pending = self._pending

        def send() -> None:
            for start in range(0, len(pending), 1000):  # MLflow's batch limit
                self.client.log_batch(self.run_id, metrics=pending[start : start + 1000], synchronous=True)

        if self._attempt("logging metrics", send):
            self._pending = []

    def _log_file(self, name: str, data: bytes, folder: str | None) -> None:
        with tempfile.TemporaryDirectory(prefix="atlas-mlflow-") as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    # ---- hooks -------------------------------------------------------------------------------------------------------

    def on_start(self, trainer: Trainer) -> None:
        config = trainer.config
        self._attempt("opening the MLflow run", lambda: self._open(trainer))
        if self.run_id is not None:
            log.info("MLflow run %s (%s)", self.run_id, redact(self.client.tracking_uri))
        config_yaml = yaml.safe_dump(config_to_dict(config), sort_keys=False).encode()
        self._attempt("logging the config", lambda: self._log_file("config.yaml", config_yaml, None))
        scenes = json.dumps(scene_list(trainer.manifest), indent=2).encode()
        self._attempt("logging the scene list", lambda: self._log_file("scenes.json", scenes, "dataset"))
        url = config.dataset_url
        self._attempt("logging the dataset", lambda: log_dataset_input(self.client, self.run_id, trainer.manifest, url))
        if trainer.split is not None:  # which tiles were held out, so validation scores can be reproduced
            held_out = json.dumps({**trainer.split.summary(), "dataset_checksum": trainer.manifest.get("checksum")})
            self._attempt("logging the split", lambda: self._log_file("split.json", held_out.encode(), "dataset"))

    def _open(self, trainer: Trainer) -> None:
        from mlflow.entities import Param, RunTag

        self.client = client_for(trainer.config.tracking)
        self.run_id, resumed = open_run(self.client, trainer.config)
        params = flatten(config_to_dict(trainer.config))
        tags = {
            **dataset_tags(trainer.manifest, trainer.config.dataset_url),
            "atlas.run_dir": redact(trainer.config.train.run_dir),
            "atlas.model": trainer.model_name,
            "atlas.world_size": str(trainer.ctx.world_size),
            "atlas.device": str(trainer.ctx.device),
            **label_tags(trainer.label_meta),
            **{f"atlas.auto.{p.key}": f"{json.dumps(p.value)}: {p.reason}"[:5000] for p in trainer.data_defaults},
        }
        commit = git_commit(Path(__file__).resolve().parent)
        if commit:
            tags["mlflow.source.git.commit"] = commit
        if resumed:
            known = self.client.get_run(self.run_id).data.params
            for key, value in list(params.items()):
                if key in known:
                    if known[key] != value:
                        tags[f"atlas.changed_on_resume.{key}"] = f"{known[key]} -> {value} (step {trainer.step})"
                        log.warning("MLflow param %s changed on resume: %s -> %s", key, known[key], value)
                    del params[key]
            tags["atlas.resumed_at_step"] = str(trainer.step)
        param_items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(param_items), 100):
            self.client.log_batch(self.run_id, params=param_items[start : start + 100], synchronous=True)
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if record.get("event") == "evaluate":
            self._on_evaluation(record)
            return
        if record.get("event") in ("evaluate_translation", "evaluate_unpaired"):
            self._send_metrics(record["step"], {k: record.get(k) for k in TRANSLATION_KEYS})
            return
        if "event" in record:
            return
        keys = [k for k in record if k.startswith("loss_")] + list(LOSS_KEYS)
        self._send_metrics(record["step"], {k: record.get(k) for k in keys})

    def _on_evaluation(self, record: dict[str, Any]) -> None:
        self._send_metrics(record["step"], {k: record.get(k) for k in SCORE_KEYS})
        protocol = {
            "atlas.fid.n_fake": str(record["n_fake"]),
            "atlas.fid.n_real": str(record["n_real"]),
            "atlas.fid.weights_sha256": record["weights_sha256"],
            "atlas.fid.bands": ",".join(record["bands"]),
        }
        if self.run_id is not None:
            self._attempt(
                "tagging the metric protocol",
                lambda: [self._set_tag(k, v) for k, v in protocol.items()],
            )

    def on_samples(self, trainer: Trainer, urls: list[str]) -> None:
        """Each grid as an MLflow image at the training step (the UI's step slider), keyed by its band triplet."""
        self._each_file(trainer, urls, "sample grid", lambda data, name: self._log_image(trainer, data, name))

    def _each_file(self, trainer: Trainer, urls: list[str], what: str, log_one: Any) -> None:
        """`log_one(bytes, file name)` for each run_dir file, each attempt on its own (see `_attempt`)."""
        if self.run_id is None:
            return
        for url in urls:
            name = url.rsplit("/", 1)[-1]
            self._attempt(
                f"logging {what} {name}", lambda url=url, name=name: log_one(trainer.store.read_bytes(url), name)
            )

    def _log_image(self, trainer: Trainer, png: bytes, name: str) -> None:
        from PIL import Image

        triplet = name.removesuffix(".png").split("-", 2)[-1]  # step-00000200-rgb.png -> rgb
        with Image.open(io.BytesIO(png)) as image:
            self.client.log_image(
                self.run_id, image.convert("RGB"), key=f"samples-{triplet}", step=trainer.step, synchronous=True
            )

    def on_figures(self, trainer: Trainer, urls: list[str]) -> None:
        """The latest figures as artifacts under figures/ (each drawing replaces the previous one)."""
        self._each_file(trainer, urls, "figure", lambda data, name: self._log_file(name, data, "figures"))

    def on_checkpoint(self, trainer: Trainer, url: str) -> None:
        if self.run_id is not None:
            self._attempt("tagging the checkpoint", lambda: self._set_tag("atlas.checkpoint", url))

    def on_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if self._pending:
            self._send_metrics(summary["step"], {})
        if summary.get("stopped_by_time_budget") and self.run_id is not None:
            train = trainer.config.train
            why = f"train.max_minutes ({train.max_minutes:g}) at step {summary['step']} of {train.steps}"
            self._attempt("tagging the early end", lambda: self._set_tag("atlas.stopped_by", why))
        self.finish("FINISHED")

    def finish(self, status: str) -> None:
        """Mark the MLflow run FINISHED or FAILED (a restarted training sets it RUNNING again)."""
        if self.run_id is not None:
            self._attempt(f"marking the run {status}", lambda: self.client.set_terminated(self.run_id, status))
