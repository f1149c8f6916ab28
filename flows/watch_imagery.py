"""Flow `watch-imagery`: poll the imagery source and emit `atlas.imagery.arrived` for scenes not ingested yet.

The `satellite` deployment of `train-gan` has a trigger on that event. Each new scene is announced once (a Prefect
variable remembers announced scenes and their fingerprints until they are ingested), so a slow training run is not
started again by the next poll.
"""

from __future__ import annotations

import hashlib
from typing import Any

from prefect import flow, get_run_logger
from prefect.events import emit_event
from prefect.variables import Variable

from atlas_gan.ingest import pending_scenes
from atlas_gan.pipeline import pipeline_config

EVENT = "atlas.imagery.arrived"


def source_resource(source: str, output: str) -> str:
    """The event's resource id: one per (source, dataset) pair."""
    return f"atlas.imagery.{hashlib.sha256(f'{source}|{output}'.encode()).hexdigest()[:16]}"


@flow(name="watch-imagery")
def watch_imagery(config_path: str | None = None, overrides: list[str] | None = None) -> list[str]:
    """Emit one event for the scenes that arrived since the last poll; returns their ids.

    Args:
        config_path: YAML config file; empty: the deployment's ATLAS_CONFIG, else the packaged default.
        overrides: Config values as key=value, applied after ATLAS_OVERRIDES.
    """
    logger = get_run_logger()
    config = pipeline_config(config_path, overrides)
    pending = pending_scenes(config)
    resource = source_resource(config.ingest.source, config.ingest.output)
    key = resource.replace(".", "_")
    announced: dict[str, Any] = Variable.get(key, default={}) or {}
    fresh = [scene for scene in pending.new if announced.get(scene) != pending.fingerprints[scene]]
    if fresh:
        emit_event(
            event=EVENT,
            resource={"prefect.resource.id": resource, "prefect.resource.name": config.ingest.source},
            payload={"source": config.ingest.source, "output": config.ingest.output, "scenes": fresh},
        )
        logger.info("emitted %s for %d new scene(s): %s", EVENT, len(fresh), ", ".join(fresh))
    else:
        logger.info("no new scenes at %s", config.ingest.source)
    still_pending = {scene: pending.fingerprints[scene] for scene in pending.new}
    Variable.set(key, still_pending, overwrite=True)
    return fresh
