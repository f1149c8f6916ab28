"""Flow `ingest`: one Prefect task per scene and pass (retried with backoff on storage errors), one manifest merge.

The task runner is the flow's: threads in-process by default; `task_runner_for("dask")` (prefect-dask) runs the
scene tasks on a Dask cluster for large backfills, without code changes (spool files then need a shared
`TMPDIR`, since pass 2 reads what pass 1 spooled and writes into shards staged there or in a local output folder).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from atlas_gan.ingest import ingest, scene_of
from atlas_gan.pipeline import image_data_uri, ingest_markdown, pipeline_config
from atlas_gan.storage import StorageError, join_url
from atlas_gan.tile_index import MAP_NAME


def _storage_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what a retry can fix: the storage (S3 endpoint, network) failing, not bad input."""
    return isinstance(state.result(raise_on_failure=False), StorageError)


@task(
    name="ingest-scene",
    task_run_name="{stage}: {label}",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=_storage_failure,
    cache_policy=NO_CACHE,
)
def scene_task(fn: Callable[[Any], Any], item: Any, stage: str, label: str) -> Any:
    return fn(item)


class PrefectSceneMapper:
    """atlas_gan.ingest's SceneMapper as Prefect tasks: every scene (part) of a pass is a task run."""

    def map(self, fn: Callable[..., Any], items: list[Any], desc: str, unit: str, progress: bool) -> Iterator[Any]:
        futures = scene_task.map(unmapped(fn), items, unmapped(desc), [scene_of(item) for item in items])
        for future in futures:
            yield future.result()

    def close(self) -> None:
        """Nothing to release: the flow owns the task runner."""


def task_runner_for(name: str, workers: int = 2) -> Any:
    """`threads` (in-process, default) or `dask` (prefect-dask; DASK_SCHEDULER_ADDRESS joins an existing cluster)."""
    if name == "threads":
        return ThreadPoolTaskRunner(max_workers=max(1, workers))
    if name == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise ValueError("ingest_task_runner 'dask' needs prefect-dask: pip install prefect-dask") from None
        address = os.environ.get("DASK_SCHEDULER_ADDRESS")
        return DaskTaskRunner(address=address) if address else DaskTaskRunner()
    raise ValueError(f"unknown ingest_task_runner {name!r}: use 'threads' or 'dask'")


@flow(name="ingest", task_runner=ThreadPoolTaskRunner(max_workers=2))
def ingest_imagery(config_path: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Tile and normalize new scenes into shards; returns what was added and rejected. Runs into the same output
    take turns (the output's ingest lock); one that waits says so in this flow's log.

    Args:
        config_path: YAML config file; empty: the deployment's ATLAS_CONFIG, else the packaged default.
        overrides: Config values as key=value (e.g. ingest.tile_size=128), applied after ATLAS_OVERRIDES.
    """
    logger = get_run_logger()
    config = pipeline_config(config_path, overrides)
    report = ingest(config, progress=False, mapper=PrefectSceneMapper(), on_wait=logger.warning)
    logger.info("%s", report.summary())
    footprints = image_data_uri(config, join_url(config.ingest.output, MAP_NAME), max_side=900)
    create_markdown_artifact(
        key="ingest-report",
        markdown=ingest_markdown(report.summary(), report.manifest_url, footprints),
        description="atlas-gan ingest: scenes added and where the tiles lie",
    )
    return {
        "manifest": report.manifest_url,
        "added_scenes": report.added_scenes,
        "unchanged_scenes": report.unchanged_scenes,
        "rejected": report.rejected,
        "new_shards": report.new_shards,
        "new_samples": report.new_samples,
        "wrote": report.wrote,
    }
