"""End to end on the real local stack (infra/local/stack.py): SeaweedFS, an MLflow server with S3 artifacts, a
Prefect server, a process worker and the deployments of flows/prefect.yaml, all on free loopback ports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import mlflow.pyfunc
import numpy as np
import pytest
from mlflow import MlflowClient

from tests.conftest import REPO
from tests.servers import LOOPBACK, free_port
from tests.test_tracking import EVAL
from tests.test_train import SMALL

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=230)]

PREFECT = str(Path(sys.executable).parent / "prefect")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def s3_port_block_ports(port: int) -> list[int]:
    """The ports SeaweedFS takes for an S3 port (port+1..+8, port+10000..+10004: see infra/local/s3.sh)."""
    return [*range(port, port + 9), *range(port + 10000, port + 10005)]


def s3_port_block() -> int:
    """A port whose SeaweedFS companions are free too."""
    for _ in range(50):
        port = free_port()
        if port + 10005 < 32768 and all(_free(p) for p in s3_port_block_ports(port)):  # below the ephemeral range
            return port
    raise RuntimeError("no free port block for SeaweedFS")


def free_port_outside(taken: list[int]) -> int:
    """A free port that none of `taken` is: SeaweedFS binds its block only when it starts, after the ports are drawn
    (CI once drew Prefect's port inside it)."""
    for _ in range(50):
        port = free_port()
        if port not in taken:
            return port
    raise RuntimeError("no free port outside the SeaweedFS block")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("stack")
    overrides = [
        "ingest.source=s3://atlas-imagery/incoming",
        "ingest.output=s3://atlas-data/shards/e2e",
        "ingest.tile_size=32",
        "train.run_dir=s3://atlas-data/runs/e2e",
        "tracking.registered_model=stack-e2e",
        *SMALL,
        "train.steps=2",
        *EVAL,
    ]
    s3_port = s3_port_block()
    taken = s3_port_block_ports(s3_port)
    mlflow_port = free_port_outside(taken)
    prefect_port = free_port_outside([*taken, mlflow_port])
    env = {
        **os.environ,
        "ATLAS_STATE": str(state),
        "ATLAS_S3_PORT": str(s3_port),
        "ATLAS_MLFLOW_PORT": str(mlflow_port),
        "ATLAS_PREFECT_PORT": str(prefect_port),
        "AWS_ACCESS_KEY_ID": "stack-e2e-key",
        "AWS_SECRET_ACCESS_KEY": "stack-e2e-secret",
        "ATLAS_SCHEDULES_ACTIVE": "false",
        "ATLAS_OVERRIDES": json.dumps(overrides),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "OMP_NUM_THREADS": "1",
    }
    for name in ("AWS_ENDPOINT_URL", "PREFECT_API_URL", "AWS_PROFILE"):
        env.pop(name, None)
    command = [sys.executable, str(REPO / "infra/local/stack.py")]
    up = subprocess.run([*command, "up"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        exports = dict(
            line.strip().removeprefix("export ").split("=", 1)
            for line in up.stdout.splitlines()
            if line.strip().startswith("export ")
        )
        assert up.stdout.count("started") == 3 or "already running" in up.stdout
        again = subprocess.run([*command, "up"], env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and again.stdout.count("already running") == 4  # idempotent
        yield {**env, **exports, "STATE": str(state)}
    finally:
        down = subprocess.run([*command, "down"], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        status = subprocess.run([*command, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode != 0 and "running" not in status.stdout.replace("stopped", "")


def _s3(env: dict[str, str]):
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def _run_deployment(env: dict[str, str], deployment: str, timeout: int) -> subprocess.CompletedProcess[str]:
    """`prefect deployment run NAME --watch`, as a user types it."""
    command = [PREFECT, "deployment", "run", deployment, "--watch", "--watch-timeout", str(timeout)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout + 60)


def _flow_runs(env: dict[str, str], deployment: str) -> list[dict]:
    body = {"deployments": {"name": {"any_": [deployment]}}, "sort": "EXPECTED_START_TIME_ASC"}
    response = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def _manifest(env: dict[str, str]) -> dict:
    body = _s3(env).get_object(Bucket="atlas-data", Key="shards/e2e/manifest.json")["Body"].read()
    return json.loads(body)


def test_deployment_run_then_new_imagery_triggers_a_second_run(stack, geotiff, monkeypatch):
    s3 = _s3(stack)
    scenes = geotiff / "landsat-pucallpa"
    s3.upload_file(str(scenes / "landsat_1985.tif"), "atlas-imagery", "incoming/landsat_1985.tif")
    deployment = httpx.get(f"{stack['PREFECT_API_URL']}/deployments/name/train-gan/satellite", timeout=30).json()
    assert deployment["global_concurrency_limit"]["limit"] == 1  # the schedule, trigger and manual runs: one slot
    assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    run = _run_deployment(stack, "train-gan/satellite", 600)
    worker_log = Path(stack["STATE"]) / "worker" / "worker.log"
    assert run.returncode == 0, run.stdout[-3000:] + worker_log.read_text()[-5000:]
    assert "Completed" in run.stdout

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="atlas-data", Prefix="shards/e2e/")["Contents"]}
    assert {"shards/e2e/manifest.json", "shards/e2e/tiles-000000.tar"} <= keys
    assert _manifest(stack)["runs"][-1]["added_scenes"] == ["landsat_1985"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack["MLFLOW_TRACKING_URI"])
    champion = mlflow.pyfunc.load_model("models:/stack-e2e@champion")
    out = champion.predict(np.zeros((0, 16), np.float32), params={"count": 4, "seed": 1})
    assert out["images"].shape == (4, 4, 32, 32) and out["bands"]
    artifacts = s3.list_objects_v2(Bucket="atlas-mlflow", Prefix="artifacts/")["Contents"]
    assert any(o["Key"].endswith("generator.pt") for o in artifacts)  # proxied artifacts landed in SeaweedFS

    # new imagery: the watcher emits atlas.imagery.arrived, the deployment's trigger starts train-gan again
    s3.upload_file(str(scenes / "landsat_1990.tif"), "atlas-imagery", "incoming/landsat_1990.tif")
    poll = _run_deployment(stack, "watch-imagery/poll", 300)
    assert poll.returncode == 0, poll.stdout[-3000:] + worker_log.read_text()[-3000:]
    deadline, runs = time.monotonic() + 600, []
    while True:
        try:
            runs = _flow_runs(stack, "satellite")
        except httpx.TimeoutException:  # the server shares 2 cores with the training it started: poll again
            pass
        else:
            if len(runs) >= 2 and runs[-1]["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
        assert time.monotonic() < deadline, f"no second train-gan run finished: {[r['state_type'] for r in runs]}"
        time.sleep(3)
    assert len(runs) == 2 and runs[-1]["state_type"] == "COMPLETED", worker_log.read_text()[-5000:]
    manifest = _manifest(stack)
    assert manifest["runs"][-1]["added_scenes"] == ["landsat_1990"]  # only the new scene was ingested
    assert manifest["totals"]["scenes"] == 2
    versions = MlflowClient(stack["MLFLOW_TRACKING_URI"]).search_model_versions("name='stack-e2e'")
    assert len(versions) == 2
