"""Shared fixtures: the real imagery in ../shared/data, a real SeaweedFS S3 server, S3 credentials in env."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from atlas_gan.config import AtlasConfig, load_config
from atlas_gan.ingest import ingest
from tests.servers import SeaweedS3

REPO = Path(__file__).resolve().parent.parent

# Prefect reads its settings when it is imported (at collection, before any fixture): its home (profiles, logs,
# the test harness's database) goes to a temp dir from the start.
PREFECT_SANDBOX = tempfile.mkdtemp(prefix="atlas-tests-prefect-")
os.environ["PREFECT_HOME"] = PREFECT_SANDBOX


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules marked `slow` first, longest first, each module's tests together and in order: under `make
    test`'s xdist workers each takes one file at a time, so the long files start at once and the short ones fill in
    at the end. In one process (`TEST_WORKERS=0`) the order stays pytest's own."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    seconds: dict[Path, float] = {}
    for item in items:
        marker = item.get_closest_marker("slow")
        own = float(marker.kwargs.get("seconds", 60)) if marker else 0.0
        seconds[item.path] = max(seconds.get(item.path, 0.0), own)
    items.sort(key=lambda item: -seconds[item.path])


@pytest.fixture(scope="session", autouse=True)
def mlflow_sandbox(tmp_path_factory: pytest.TempPathFactory):
    """MLflow and Prefect never write outside temp dirs in tests: training runs track into a session sqlite store
    (tests of the embedded default unset this), Prefect keeps its home in a temp dir; no telemetry."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY", "PREFECT_SERVER_ANALYTICS_ENABLED")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    yield
    shutil.rmtree(PREFECT_SANDBOX, ignore_errors=True)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`ATLAS_SHARED_DATA` (default ../shared/data): read in place, never copied into the repo."""
    root = Path(os.environ.get("ATLAS_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()
    if not (root / "geotiff").is_dir():
        pytest.fail(f"real imagery not found at {root}/geotiff: set ATLAS_SHARED_DATA to the shared data folder")
    return root


@pytest.fixture(scope="session")
def geotiff(shared_data: Path) -> Path:
    return shared_data / "geotiff"


@pytest.fixture
def make_config(tmp_path: Path):
    """Build a validated config from the default file plus `key=value` overrides."""

    def build(source: str | Path, output: str | Path | None = None, **ingest: object) -> AtlasConfig:
        values = {"source": str(source), "output": str(output or tmp_path / "shards"), **ingest}
        # JSON is valid YAML, which is how override values are parsed
        return load_config(None, [f"ingest.{key}={json.dumps(value)}" for key, value in values.items()])

    return build


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch):
    """The running server with this test's credentials and endpoint in the standard AWS variables, and a fresh
    bucket. Restarts the server first if an earlier test stopped it."""
    if s3_server.process is None or s3_server.process.poll() is not None:
        s3_server.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"atlas-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    s3_server.bucket = bucket
    return s3_server


def ingest_pucallpa(geotiff: Path, output: Path, tile_size: int) -> Path:
    config = load_config(
        None,
        [
            f"ingest.source={geotiff / 'landsat-pucallpa'}",
            f"ingest.output={output}",
            f"ingest.tile_size={tile_size}",
            "ingest.workers=2",
            "ingest.shard_max_samples=1000",
        ],
    )
    ingest(config, progress=False)
    return output


@pytest.fixture(scope="session")
def train_data(geotiff, tmp_path_factory):
    """The Pucallpa time series (8 scenes, 4 bands, uint8) as 32 px tiles in 2 shards."""
    return ingest_pucallpa(geotiff, tmp_path_factory.mktemp("train-data") / "shards", 32)


@pytest.fixture(scope="session")
def train_data_64(geotiff, tmp_path_factory):
    """The Pucallpa time series as 64 px tiles (StyleGAN2's smallest size), in one shard."""
    return ingest_pucallpa(geotiff, tmp_path_factory.mktemp("train-data-64") / "shards", 64)
