"""The Prefect flows on tiny real data under `prefect_test_harness` (embedded MLflow store, local folders), plus the
pieces they are made of: pipeline decisions, the torchrun launcher, the deployment file and the infra templates."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.testing.utilities import prefect_test_harness

from atlas_gan.config import ConfigError, load_config
from atlas_gan.pipeline import (
    MAX_INLINE_GIF_BYTES,
    PipelineOutcome,
    config_for_run,
    pipeline_config,
    run_name,
    skip_reason,
    with_fid_curve,
)
from atlas_gan.train.launch import LaunchFailed, launch_training, torchrun_command
from tests.conftest import REPO
from tests.test_tracking import EVAL
from tests.test_train import SMALL

pytestmark = pytest.mark.slow(seconds=90)

# ---- pieces -------------------------------------------------------------------------------------------------------


def test_pipeline_config_falls_back_to_the_deployment_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_OVERRIDES", json.dumps(["train.steps=7", "ingest.tile_size=32"]))
    config = pipeline_config(None, ["train.steps=9"])
    assert config.train.steps == 9 and config.ingest.tile_size == 32  # parameters win over the environment
    monkeypatch.setenv("ATLAS_OVERRIDES", "train.steps=7")
    with pytest.raises(ConfigError, match="ATLAS_OVERRIDES must be a JSON list"):
        pipeline_config()
    monkeypatch.setenv("ATLAS_OVERRIDES", "[]")
    monkeypatch.setenv("ATLAS_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="cannot read config file .*missing.yaml"):
        pipeline_config()
    with pytest.raises(ConfigError, match="train.steps"):
        pipeline_config(str(REPO / "configs/satellite.yaml"), ["train.steps=0"])


def test_pipeline_decisions():
    assert skip_reason([], "3", force=False).startswith("no new imagery and champion version 3")
    assert skip_reason([], "3", force=True) is None
    assert skip_reason(["scene"], "3", force=False) is None
    assert skip_reason([], None, force=False) is None  # no champion yet: train
    assert run_name("gray mongrel/1", "20261122-101500") == "20261122-101500-gray-mongrel-1"
    config = config_for_run(load_config(None, ["train.run_dir=s3://bucket/runs"]), "20261122-x")
    assert config.train.run_dir == "s3://bucket/runs/20261122-x"
    outcome = PipelineOutcome(["a"], [{"file": "f.tif", "reason": "all nodata"}], "out/manifest.json")
    outcome.skipped = "no new imagery"
    assert "**Training skipped:** no new imagery" in outcome.markdown() and "`f.tif`: all nodata" in outcome.markdown()


def test_the_flow_evaluates_a_few_times_during_training_unless_told_otherwise():
    config = load_config(None, ["train.steps=850"])
    assert with_fid_curve(config, 4).train.evaluate_every == 213  # 213, 426, 639 and the last step, 850
    assert with_fid_curve(config, 0).train.evaluate_every == 0
    own = load_config(None, ["train.steps=850", "train.evaluate_every=100"])
    assert with_fid_curve(own, 4).train.evaluate_every == 100  # the config's own choice stands


def test_torchrun_command():
    single = torchrun_command("c.yaml", nproc_per_node=2)
    assert (
        "--standalone" in single
        and "--nproc-per-node=2" in single
        and single[-3:] == ["--config=c.yaml", "--resolved", "--quiet"]
    )
    multi = torchrun_command("c.yaml", 8, nnodes=4, rdzv_endpoint="head:29400")
    assert "--nnodes=4" in multi and "--rdzv-endpoint=head:29400" in multi and "--standalone" not in multi
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_command("c.yaml", 1, nnodes=2)


def test_a_failing_training_reports_the_tail_of_its_log(tmp_path):
    empty = tmp_path / "no-dataset"
    empty.mkdir()
    config = load_config(None, [f"ingest.output={empty}", f"train.run_dir={tmp_path / 'run'}", *SMALL])
    lines: list[str] = []
    with pytest.raises(LaunchFailed, match=r"(?s)torchrun exited with code 1.*no ingested dataset there"):
        launch_training(config, lines.append)
    assert any("no ingested dataset" in line for line in lines)  # streamed as it came


def test_deployment_file_is_valid():
    spec = yaml.safe_load((REPO / "flows/prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    satellite = deployments["satellite"]
    assert satellite["entrypoint"] == "flows/train_gan.py:train_gan" and satellite["work_pool"]["name"]
    assert satellite["schedules"][0]["cron"]
    trigger = DeploymentEventTrigger(**{k: v for k, v in satellite["triggers"][0].items() if k != "type"})
    assert trigger.expect == {"atlas.imagery.arrived"}
    assert deployments["poll"]["entrypoint"] == "flows/watch_imagery.py:watch_imagery"
    assert satellite["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}  # overlapping runs queue
    assert deployments["poll"]["concurrency_limit"]["collision_strategy"] == "CANCEL_NEW"
    for deployment in deployments.values():  # entrypoints resolve to the flows
        path, name = deployment["entrypoint"].split(":")
        assert f"def {name}(" in (REPO / path).read_text()


def test_infra_templates_are_valid():
    compose = yaml.safe_load((REPO / "infra/compose/docker-compose.yml").read_text())
    services = compose["services"]
    assert {"minio", "postgres", "mlflow", "prefect-server", "gpu-worker"} <= set(services)
    gpu = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    text = (REPO / "infra/compose/docker-compose.yml").read_text()
    assert "SECRET_ACCESS_KEY: ${" in text or "PASSWORD: ${" in text  # credentials only from the environment
    template = json.loads((REPO / "infra/k8s/base-job-template.json").read_text())
    job = template["job_configuration"]["job_manifest"]
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus_per_node }}"
    assert {"nnodes", "gpus_per_node", "rdzv_port", "image"} <= set(template["variables"]["properties"])


# ---- the flows, under the test harness -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _flow_overrides(source: Path | str, root: Path) -> list[str]:
    return [
        f"ingest.source={source}",
        f"ingest.output={root / 'shards'}",
        "ingest.tile_size=32",
        f"train.run_dir={root / 'runs'}",
        f"tracking.uri=sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        *SMALL,
        "train.steps=2",
        *EVAL,
    ]


def test_train_gan_flow_ingests_trains_registers_then_skips(harness, geotiff, tmp_path):
    from flows.train_gan import train_gan

    (tmp_path / "mlflow").mkdir()
    source = tmp_path / "incoming"
    source.mkdir()
    shutil.copy(geotiff / "landsat-pucallpa" / "landsat_1985.tif", source)
    overrides = [*_flow_overrides(source, tmp_path), "train.keep_checkpoints=1"]
    first = train_gan(overrides=overrides)
    assert first["added_scenes"] == ["landsat_1985"] and first["skipped"] is None
    assert first["registration"]["alias"] == "champion" and first["fid"] > 0
    assert first["sample_grid"].endswith("-rgb.png") and Path(first["sample_grid"]).exists()
    assert Path(first["run_dir"]).parent == tmp_path / "runs"

    # an FID curve by default (fid_points): evaluated during training; the checkpoint of the lowest FID is kept
    # (keep_checkpoints 1 prunes the others) and registered, its evaluation reused as the version's score
    history = MlflowClient(overrides_uri(overrides)).get_metric_history(first["registration"]["run_id"], "fid")
    assert [m.step for m in history[:2]] == [1, 2]  # two training evaluations, then the registered version's score
    best = min(history[:2], key=lambda m: (m.value, -m.step))
    assert history[2].step == best.step and history[2].value == pytest.approx(best.value) == first["fid"]
    assert first["checkpoint"].endswith(f"step-{best.step:08d}.pt") and Path(first["checkpoint"]).exists()
    kept = sorted(p.name for p in (Path(first["run_dir"]) / "checkpoints").glob("*.pt"))
    assert kept == sorted({f"step-{best.step:08d}.pt", "step-00000002.pt"})
    recall = MlflowClient(overrides_uri(overrides)).get_metric_history(first["registration"]["run_id"], "sample_recall")
    assert [m.step for m in recall] == [1, 2, best.step] and recall[-1].value == pytest.approx(first["sample_recall"])
    artifacts = asyncio.run(latest_artifacts())
    assert artifacts["train-progress"].data == 100.0  # the progress artifact followed training to the end
    report = artifacts["train-gan-report"].data
    assert "![sample grid](data:image/jpeg;base64," in report and "| decision | **champion**" in report
    assert "![Training curves](data:image/jpeg;base64," in report
    assert "| recall: real tiles among samples (real tiles: " in report
    walk_gif = Path(first["run_dir"]) / "figures" / "latent-walk.gif"
    if walk_gif.stat().st_size <= MAX_INLINE_GIF_BYTES:
        assert "![Latent walk of the new generator](data:image/gif;base64," in report  # animated, inline
    else:  # too large for a Prefect event: its first frame, and where the animation is
        assert f"![Latent walk of the new generator (first frame; the animation: {walk_gif})](data:image/jpeg" in report
    figures = sorted(p.name for p in (Path(first["run_dir"]) / "figures").iterdir())
    assert figures == [
        "band-histograms.png",
        "curves.png",
        "latent-walk.gif",
        "real-vs-generated-4.png",
        "real-vs-generated-rgb.png",
    ]
    logged = MlflowClient(overrides_uri(overrides)).list_artifacts(first["registration"]["run_id"], "figures")
    assert sorted(Path(a.path).name for a in logged) == figures
    logs = asyncio.run(flow_run_logs(first_flow_run_id()))
    assert any(line.endswith("step 2/2 (100%)") or "step 2/2 (100%) |" in line for line in logs), logs[-20:]

    second = train_gan(overrides=overrides)  # nothing new, a champion exists
    assert second["added_scenes"] == [] and second["skipped"].startswith("no new imagery")
    assert second["registration"] is None
    assert "Training skipped" in asyncio.run(latest_artifacts())["train-gan-report"].data


def overrides_uri(overrides: list[str]) -> str:
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("tracking.uri="))


async def latest_artifacts() -> dict:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return {artifact.key: artifact for artifact in await client.read_latest_artifacts()}


def first_flow_run_id():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def find():
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["train-gan"])))
            return sorted(runs, key=lambda run: run.start_time)[-1].id

    return asyncio.run(find())


async def flow_run_logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    return [log.message for log in logs]


def test_flow_parameters_make_a_typed_form():
    from prefect.utilities.callables import parameter_schema

    from flows.train_gan import train_gan

    schema = parameter_schema(train_gan.fn).model_dump()
    properties = schema["properties"]
    assert all(p.get("description") for p in properties.values()), "every parameter is described (Args:)"
    assert schema["definitions"]["IngestTaskRunner"]["enum"] == ["threads", "dask"]  # a choice, not free text
    assert properties["nproc_per_node"]["minimum"] == 1 and properties["fid_points"]["default"] == 4


def test_watch_imagery_announces_each_new_scene_once(harness, geotiff, tmp_path):
    from flows.watch_imagery import watch_imagery

    source = tmp_path / "incoming"
    source.mkdir()
    overrides = _flow_overrides(source, tmp_path)
    shutil.copy(geotiff / "landsat-pucallpa" / "landsat_1985.tif", source)
    assert watch_imagery(overrides=overrides) == ["landsat_1985"]
    assert watch_imagery(overrides=overrides) == []  # announced already
    shutil.copy(geotiff / "landsat-pucallpa" / "landsat_1990.tif", source)
    assert watch_imagery(overrides=overrides) == ["landsat_1990"]


def test_ingest_flow_maps_one_task_per_scene_and_reports_rejections(harness, geotiff, tmp_path):
    from flows.ingest import ingest_imagery

    source = tmp_path / "incoming"
    source.mkdir()
    for name in ("landsat_1985.tif", "landsat_1990.tif"):
        shutil.copy(geotiff / "landsat-pucallpa" / name, source)
    (source / "broken.tif").write_bytes(b"II*\x00 not a raster")
    result = ingest_imagery(overrides=_flow_overrides(source, tmp_path))
    assert sorted(result["added_scenes"]) == ["landsat_1985", "landsat_1990"]
    assert [r["scene"] for r in result["rejected"]] == ["broken"] and result["wrote"]
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["totals"]["scenes"] == 2
    report = asyncio.run(latest_artifacts())["ingest-report"].data
    assert "rejected" in report and "![footprint map](data:image/jpeg;base64," in report
    assert os.environ.get("PREFECT_API_URL") is None or "127.0.0.1" in os.environ["PREFECT_API_URL"]


def test_ingest_flow_runs_its_scene_tasks_on_a_dask_cluster(harness, geotiff, tmp_path, monkeypatch):
    """The claim that ingest scales out on an existing engine: a real dask.distributed LocalCluster of worker
    processes, joined through DASK_SCHEDULER_ADDRESS as a deployment would."""
    from distributed import Client, LocalCluster, get_task_stream

    from atlas_gan.runtime.environment import environment_restored
    from flows.ingest import ingest_imagery, task_runner_for

    source = tmp_path / "incoming"
    source.mkdir()
    for name in ("landsat_1985.tif", "landsat_1990.tif", "landsat_1995.tif"):
        shutil.copy(geotiff / "landsat-pucallpa" / name, source)
    environment = dict(os.environ)
    with (
        environment_restored(),  # the Nanny writes OMP_NUM_THREADS=1 into this process: later tests would inherit it
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        worker_pids = set(client.run(os.getpid).values())
        workers = set(client.scheduler_info()["workers"])
        with get_task_stream(client) as stream:
            flow = ingest_imagery.with_options(task_runner=task_runner_for("dask"))
            result = flow(overrides=[*_flow_overrides(source, tmp_path), "ingest.workers=2"])
        ran_on = {task["worker"] for task in stream.data}
    assert sorted(result["added_scenes"]) == ["landsat_1985", "landsat_1990", "landsat_1995"]
    assert len(stream.data) >= 6  # both passes, one task per scene (part) each, all on the cluster
    assert ran_on and ran_on <= workers
    assert os.getpid() not in worker_pids  # worker processes, not threads of this one
    assert dict(os.environ) == environment
    local = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert local["totals"]["scenes"] == 3 and all(len(s["sha256"]) == 64 for s in local["shards"])
