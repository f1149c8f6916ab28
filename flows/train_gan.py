"""Flow `train-gan` (deployment `satellite`): ingest new imagery -> torchrun training -> FID -> register/promote.

Training is skipped when nothing new was ingested and a champion exists, unless `force=True`. Every run trains
from scratch in `<train.run_dir>/<start time>-<flow run name>` (a retried flow run resumes from its checkpoint) and
reports FID, the champion decision and the sample grid as a markdown artifact.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from atlas_gan.config import AtlasConfig
from atlas_gan.metrics.evaluate import evaluate_checkpoint, latest_checkpoint
from atlas_gan.pipeline import (
    PipelineOutcome,
    champion_version,
    config_for_run,
    newest_sample_grid,
    pipeline_config,
    run_name,
    skip_reason,
    where_text,
)
from atlas_gan.runtime import distributed
from atlas_gan.storage import join_url
from atlas_gan.tracking.registry import register_generator
from atlas_gan.train.launch import launch_training
from flows.ingest import ingest_imagery, task_runner_for


@task(name="train", cache_policy=NO_CACHE)
def train(
    config: AtlasConfig,
    nproc_per_node: int,
    nnodes: int,
    rdzv_endpoint: str | None,
    max_restarts: int,
    handoff_url: str | None,
) -> str:
    """torchrun as a subprocess; its output streams into this task's log; a non-zero exit fails with the tail.
    With several nodes, the others join through `python -m atlas_gan.train.join` (see infra/k8s)."""
    logger = get_run_logger()
    launch_training(config, logger.info, nproc_per_node, nnodes, rdzv_endpoint, max_restarts, handoff_url)
    return latest_checkpoint(config)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(config: AtlasConfig, checkpoint: str) -> dict[str, Any]:
    result = evaluate_checkpoint(config, checkpoint, distributed.setup(), progress=False)
    assert result is not None  # single process: rank 0
    get_run_logger().info(
        "FID %.4f (real-vs-real floor %s) KID %.5f at N=%d; sample spread %s of the real tiles' (%s)",
        result["fid"],
        result["floor_fid"],
        next(iter(result["scores"].values()))["kid"],
        result["n_fake"],
        result["spread_ratio"],
        result["written_to"],
    )
    return result


@task(name="register", cache_policy=NO_CACHE)
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
    nproc_per_node: int = 1,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    max_restarts: int = 0,
    force: bool = False,
    ingest_task_runner: str = "threads",
) -> dict[str, Any]:
    """Ingest -> train -> evaluate -> register. Config: `config_path` + `overrides` (`key=value`), else the
    deployment's ATLAS_CONFIG / ATLAS_OVERRIDES, else the packaged default; validated before anything runs."""
    logger = get_run_logger()
    config = pipeline_config(config_path, overrides)
    runner = task_runner_for(ingest_task_runner, config.ingest.workers)
    ingested = ingest_imagery.with_options(task_runner=runner)(config_path, overrides)
    outcome = PipelineOutcome(ingested["added_scenes"], ingested["rejected"], ingested["manifest"])
    outcome.skipped = skip_reason(ingested["added_scenes"], champion_version(config), force)
    if outcome.skipped:
        logger.info("training skipped: %s", outcome.skipped)
    else:
        started = flow_run.scheduled_start_time.strftime("%Y%m%d-%H%M%S")
        run_config = config_for_run(config, run_name(flow_run.name or "local", started))
        outcome.run_dir = run_config.train.run_dir
        handoff = None
        if nnodes > 1:  # the other nodes wait for this file (atlas_gan.train.join)
            rdzv_endpoint = rdzv_endpoint or multinode_endpoint()
            prefix = os.environ.get("ATLAS_HANDOFF_PREFIX") or join_url(config.train.run_dir, "handoff")
            handoff = join_url(prefix, f"{flow_run.id}.yaml")
        checkpoint = train(run_config, nproc_per_node, nnodes, rdzv_endpoint, max_restarts, handoff)
        evaluation = evaluate(run_config, checkpoint)
        registration = register(run_config, checkpoint, evaluation)
        main = next(iter(evaluation["scores"].values()))
        outcome.checkpoint, outcome.fid, outcome.kid, outcome.fid_n = (
            checkpoint,
            evaluation["fid"],
            main["kid"],
            evaluation["n_fake"],
        )
        outcome.floor_fid, outcome.spread_ratio = evaluation["floor_fid"], evaluation["spread_ratio"]
        outcome.registration, outcome.sample_grid = registration, newest_sample_grid(run_config)
    create_markdown_artifact(key="train-gan-report", markdown=outcome.markdown(), description="atlas-gan pipeline run")
    return asdict(outcome)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the train-gan flow here, without a deployment or server.")
    parser.add_argument("--config", help="YAML config (default: ATLAS_CONFIG, else the packaged default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="train even when nothing new was ingested")
    args = parser.parse_args()
    outcome = train_gan(args.config, args.overrides, nproc_per_node=args.nproc_per_node, force=args.force)
    print("\n" + where_text(outcome, pipeline_config(args.config, args.overrides)))
