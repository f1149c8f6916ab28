"""Flow `train-gan` (deployment `satellite`): ingest new imagery -> torchrun training -> FID -> register/promote.

Training is skipped when nothing new was ingested and a champion exists, unless `force=True`. Every run trains
from scratch in `<train.run_dir>/<start time>-<flow run name>` (a retried flow run resumes from its checkpoint) and
reports FID, the champion decision and the sample grid as a markdown artifact.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from enum import StrEnum
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff
from pydantic import Field

from atlas_gan.config import AtlasConfig
from atlas_gan.metrics import main_scores
from atlas_gan.metrics.evaluate import checkpoint_to_register, evaluate_checkpoint, stored_checkpoint_evaluation
from atlas_gan.metrics.manifold import precision_recall_text
from atlas_gan.metrics.translation import summary_lines
from atlas_gan.metrics.unpaired import unpaired_summary
from atlas_gan.pipeline import (
    PipelineOutcome,
    champion_version,
    config_for_run,
    image_data_uri,
    mlflow_links,
    newest_sample_grid,
    pipeline_config,
    report_figure_images,
    run_figures,
    run_name,
    skip_reason,
    where_text,
    with_fid_curve,
)
from atlas_gan.runtime import distributed
from atlas_gan.runtime.environment import environment_restored
from atlas_gan.storage import StorageError, join_url
from atlas_gan.tracking.registry import register_generator
from atlas_gan.train.launch import LaunchFailed, launch_training
from atlas_gan.train.trainer import PROGRESS_LINE
from flows.ingest import ingest_imagery, task_runner_for


class IngestTaskRunner(StrEnum):
    """Where the ingest flow's per-scene tasks run."""

    threads = "threads"  # in this process (default)
    dask = "dask"  # a Dask cluster: DASK_SCHEDULER_ADDRESS, else a local one (prefect-dask)


def _retry_after_crash(task: Any, task_run: Any, state: Any) -> bool:
    """Retry training when a worker died or a node went away (it resumes from the newest checkpoint), not when the
    run itself refused its input (exit 1 after a `rank N:` error: bad config or data)."""
    failure = state.result(raise_on_failure=False)
    return isinstance(failure, LaunchFailed) and "worker errors:" not in str(failure)


def _retry_storage_or_server(task: Any, task_run: Any, state: Any) -> bool:
    """Retry what a retry can fix: S3 or the MLflow server failing, not a bad checkpoint or config."""
    failure = state.result(raise_on_failure=False)
    return isinstance(failure, StorageError) or (
        type(failure).__module__.startswith("mlflow") and "not found" not in str(failure).lower()
    )


# Evaluate and register: two retries with backoff when S3 or the MLflow server fails, none for bad input.
SERVER_RETRIES: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=10),
    "retry_condition_fn": _retry_storage_or_server,
}


@task(
    name="train",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=_retry_after_crash,
)
def train(
    config: AtlasConfig,
    nproc_per_node: int,
    nnodes: int,
    rdzv_endpoint: str | None,
    max_restarts: int,
    handoff_url: str | None,
) -> str:
    """torchrun as a subprocess; its output streams into this task's log (a line per `train.log_every` steps) and
    a progress artifact follows the steps; a non-zero exit fails with the tail. With several nodes, the others join
    through `python -m atlas_gan.train.join` (see infra/k8s)."""
    logger = get_run_logger()
    progress_id = create_progress_artifact(
        progress=0.0, key="train-progress", description=f"training {config.train.run_dir}"
    )

    def on_line(line: str) -> None:
        logger.info("%s", line)
        found = PROGRESS_LINE.search(line)
        if found:
            done = 100.0 * int(found["step"]) / max(1, int(found["steps"]))
            update_progress_artifact(artifact_id=progress_id, progress=min(100.0, done))

    launch_training(config, on_line, nproc_per_node, nnodes, rdzv_endpoint, max_restarts, handoff_url)
    update_progress_artifact(artifact_id=progress_id, progress=100.0)
    return checkpoint_to_register(config)


@task(name="evaluate", timeout_seconds=4 * 3600, **SERVER_RETRIES)
def evaluate(config: AtlasConfig, checkpoint: str) -> dict[str, Any]:
    """The final scores: the ones training made at its last step (the FID curve's last point) when they were made
    at evaluate.n on the current dataset, else computed now."""
    result = stored_checkpoint_evaluation(config, checkpoint)
    reused = result is not None
    if result is None:
        result = evaluate_checkpoint(config, checkpoint, distributed.setup(), progress=False)
    assert result is not None  # single process: rank 0
    if result.get("kind") in ("translation", "unpaired"):
        lines = summary_lines(result) if result["kind"] == "translation" else unpaired_summary(result)
        get_run_logger().info("%s", "\n".join(lines))
        return result
    main = main_scores(result)
    get_run_logger().info(
        "FID %.4f (real-vs-real floor %s) KID %.5f at N=%d; sample spread %s of the real tiles'; %s (%s%s)",
        result["fid"],
        result["floor_fid"],
        main["kid"],
        result["n_fake"],
        result["spread_ratio"],
        precision_recall_text(main),
        result["written_to"],
        ", made during training" if reused else "",
    )
    return result


@task(name="register", timeout_seconds=3600, **SERVER_RETRIES)
def register(config: AtlasConfig, checkpoint: str, evaluation: dict[str, Any]) -> dict[str, Any]:
    registration = register_generator(config, checkpoint, evaluation, progress=False)
    get_run_logger().info("%s", registration.summary())
    return asdict(registration)


def multinode_endpoint() -> str:
    """This node's rendezvous endpoint, from ATLAS_RDZV_HOST (the pod IP in infra/k8s) and ATLAS_RDZV_PORT."""
    host = os.environ.get("ATLAS_RDZV_HOST")
    if not host:
        raise ValueError("nnodes > 1 needs rdzv_endpoint, or ATLAS_RDZV_HOST set to this node's address")
    return f"{host}:{os.environ.get('ATLAS_RDZV_PORT', '29400')}"


@flow(name="train-gan")
def train_gan(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    nproc_per_node: Annotated[int, Field(ge=1, le=64)] = 1,
    nnodes: Annotated[int, Field(ge=1, le=1024)] = 1,
    rdzv_endpoint: str | None = None,
    max_restarts: Annotated[int, Field(ge=0, le=100)] = 0,
    force: bool = False,
    ingest_task_runner: IngestTaskRunner = IngestTaskRunner.threads,
    fid_points: Annotated[int, Field(ge=0, le=100)] = 4,
    train_timeout_hours: Annotated[float, Field(gt=0, le=24 * 14)] = 72.0,
) -> dict[str, Any]:
    """Ingest new imagery, train the configured GAN with torchrun, score it (FID/KID) and register it in MLflow.

    Args:
        config_path: YAML config file; empty: the deployment's ATLAS_CONFIG, else the packaged default.
        overrides: Config values as key=value (e.g. train.steps=20000), applied after ATLAS_OVERRIDES.
        nproc_per_node: Training processes (GPUs) on each node.
        nnodes: Nodes taking part in training; the others join with `python -m atlas_gan.train.join`.
        rdzv_endpoint: host:port of the rendezvous when nnodes > 1 (default: ATLAS_RDZV_HOST:ATLAS_RDZV_PORT).
        max_restarts: torchrun restarts of failed workers before the task fails (each resumes from a checkpoint).
        force: Train even when no new scene was ingested and a champion exists.
        ingest_task_runner: Where the per-scene ingest tasks run: in this process (threads) or on Dask.
        fid_points: Evaluations during training (an FID curve in MLflow), the last one at the final step; 0: only
            the final evaluation. Ignored when the config sets train.evaluate_every.
        train_timeout_hours: The training task fails after this long (a retry resumes from the newest checkpoint).
    """
    logger = get_run_logger()
    config = pipeline_config(config_path, overrides)
    runner = task_runner_for(ingest_task_runner.value, config.ingest.workers)
    with environment_restored():  # a Dask cluster started for ingest must not leave OMP_NUM_THREADS=1 to training
        ingested = ingest_imagery.with_options(task_runner=runner)(config_path, overrides)
    outcome = PipelineOutcome(ingested["added_scenes"], ingested["rejected"], ingested["manifest"])
    outcome.skipped = skip_reason(ingested["added_scenes"], champion_version(config), force)
    grid_image, links, figure_images = None, {}, {}
    if outcome.skipped:
        logger.info("training skipped: %s", outcome.skipped)
    else:
        started = flow_run.scheduled_start_time.strftime("%Y%m%d-%H%M%S")
        run_config = with_fid_curve(config_for_run(config, run_name(flow_run.name or "local", started)), fid_points)
        outcome.run_dir = run_config.train.run_dir
        handoff = None
        if nnodes > 1:  # the other nodes wait for this file (atlas_gan.train.join)
            rdzv_endpoint = rdzv_endpoint or multinode_endpoint()
            prefix = os.environ.get("ATLAS_HANDOFF_PREFIX") or join_url(config.train.run_dir, "handoff")
            handoff = join_url(prefix, f"{flow_run.id}.yaml")
        timed_train = train.with_options(timeout_seconds=train_timeout_hours * 3600)
        checkpoint = timed_train(run_config, nproc_per_node, nnodes, rdzv_endpoint, max_restarts, handoff)
        evaluation = evaluate(run_config, checkpoint)
        registration = register(run_config, checkpoint, evaluation)
        outcome.checkpoint = checkpoint
        outcome.scored(evaluation)
        outcome.registration, outcome.sample_grid = registration, newest_sample_grid(run_config)
        grid_image, links = image_data_uri(run_config, outcome.sample_grid), mlflow_links(run_config, registration)
        outcome.figures = run_figures(run_config)
        figure_images = report_figure_images(run_config, outcome.figures)
    create_markdown_artifact(
        key="train-gan-report",
        markdown=outcome.markdown(grid_image, links, figure_images),
        description="atlas-gan pipeline run",
    )
    return asdict(outcome)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the train-gan flow here, without a deployment or server.")
    parser.add_argument("--config", help="YAML config (default: ATLAS_CONFIG, else the packaged default)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value"
    )
    parser.add_argument("--nproc-per-node", type=int, default=1, help="training processes (GPUs) on this machine")
    parser.add_argument("--force", action="store_true", help="train even when nothing new was ingested")
    args = parser.parse_args()
    outcome = train_gan(args.config, args.overrides, nproc_per_node=args.nproc_per_node, force=args.force)
    print("\n" + where_text(outcome, pipeline_config(args.config, args.overrides)))
