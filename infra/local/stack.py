"""The real local stack on loopback: SeaweedFS S3, an MLflow server (artifacts on S3), a Prefect server, a process
work pool with a worker, and the deployments of flows/prefect.yaml. Pids, logs and data live under one state folder.

    AWS_ACCESS_KEY_ID=dev AWS_SECRET_ACCESS_KEY=devsecret .venv/bin/python infra/local/stack.py up
    .venv/bin/python infra/local/stack.py status
    .venv/bin/python infra/local/stack.py down

`up` and `down` are idempotent: running parts are left alone, stopped parts are skipped. Settings (environment):
  ATLAS_STATE (.atlas-state)  ATLAS_S3_PORT (8333)  ATLAS_MLFLOW_PORT (5000)  ATLAS_PREFECT_PORT (4200)
  AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY   the S3 server's admin identity (required; never written anywhere)
  ATLAS_CONFIG     config file the deployed flows use (configs/satellite.yaml)
  ATLAS_OVERRIDES  JSON list of key=value for them (default: imagery from s3://atlas-imagery/incoming, shards and
                   runs in s3://atlas-data); ATLAS_SCHEDULES_ACTIVE (true): false deploys with schedules paused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BUCKETS = ("atlas-imagery", "atlas-data", "atlas-mlflow")
POOL = "atlas-process"
DEFAULT_OVERRIDES = [
    "ingest.source=s3://atlas-imagery/incoming",
    "ingest.output=s3://atlas-data/shards/satellite",
    "train.run_dir=s3://atlas-data/runs/satellite",
]


class Settings:
    def __init__(self) -> None:
        self.state = Path(os.environ.get("ATLAS_STATE", ".atlas-state")).resolve()
        self.s3_port = int(os.environ.get("ATLAS_S3_PORT", "8333"))
        self.mlflow_port = int(os.environ.get("ATLAS_MLFLOW_PORT", "5000"))
        self.prefect_port = int(os.environ.get("ATLAS_PREFECT_PORT", "4200"))
        self.s3_url = f"http://127.0.0.1:{self.s3_port}"
        self.mlflow_url = f"http://127.0.0.1:{self.mlflow_port}"
        self.prefect_url = f"http://127.0.0.1:{self.prefect_port}/api"

    def pidfile(self, name: str) -> Path:
        return self.state / name / f"{name}.pid"

    def log(self, name: str) -> Path:
        return self.state / name / f"{name}.log"

    def client_env(self) -> dict[str, str]:
        """What every client of the stack needs (credentials stay whatever the caller's environment holds)."""
        return {
            "AWS_ENDPOINT_URL": self.s3_url,
            "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "PREFECT_API_URL": self.prefect_url,
            "PREFECT_HOME": str(self.state / "prefect" / "home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }


def _alive(pidfile: Path) -> bool:
    if not pidfile.exists():
        return False
    try:
        os.kill(int(pidfile.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def _start(settings: Settings, name: str, command: list[str], env: dict[str, str], ready_url: str) -> None:
    pidfile = settings.pidfile(name)
    if _alive(pidfile):
        print(f"{name}: already running (pid {pidfile.read_text().strip()})")
        return
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with open(settings.log(name), "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=REPO, start_new_session=True
        )
    pidfile.write_text(str(process.pid))
    if ready_url:
        _wait(name, ready_url, process, settings.log(name))
    print(f"{name}: started (pid {process.pid}; log {settings.log(name)})")


def _wait(name: str, url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with code {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{name} did not answer {url} within {timeout:.0f} s; see {log}")


def _stop(settings: Settings, name: str) -> None:
    pidfile = settings.pidfile(name)
    if not _alive(pidfile):
        print(f"{name}: not running")
        pidfile.unlink(missing_ok=True)
        return
    pid = int(pidfile.read_text())
    os.killpg(pid, signal.SIGTERM)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)  # whatever the group left behind (uvicorn workers, job runners)
    pidfile.unlink(missing_ok=True)
    print(f"{name}: stopped")


def _s3_env(settings: Settings) -> dict[str, str]:
    return {"ATLAS_STATE": str(settings.state), "ATLAS_S3_PORT": str(settings.s3_port), "ATLAS_S3_BUCKETS": ""}


def _ensure_buckets(settings: Settings) -> None:
    """Create the buckets once the server accepts writes (the S3 gateway answers before its volume is ready)."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=settings.s3_url, config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            for bucket in BUCKETS:
                if bucket not in existing:
                    client.create_bucket(Bucket=bucket)
            client.put_object(Bucket="atlas-data", Key=".ready", Body=b"ok")
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"S3 at {settings.s3_url} does not accept writes: {exc}") from exc
            time.sleep(0.5)


def _prefect(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.client_env()}
    done = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=REPO, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def up(settings: Settings) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if not os.environ.get(name):
            raise SystemExit(f"set {name}: the S3 server's identity comes from the environment only")
    subprocess.run(
        ["bash", str(REPO / "infra/local/s3.sh"), "start"], env={**os.environ, **_s3_env(settings)}, check=True
    )
    _ensure_buckets(settings)
    mlflow_dir = settings.state / "mlflow"
    mlflow_dir.mkdir(parents=True, exist_ok=True)
    _start(
        settings,
        "mlflow",
        [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(settings.mlflow_port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{mlflow_dir / 'mlflow.db'}",
            "--artifacts-destination", "s3://atlas-mlflow/artifacts",
        ],
        {"MLFLOW_S3_ENDPOINT_URL": settings.s3_url, "AWS_DEFAULT_REGION": "us-east-1"},
        f"{settings.mlflow_url}/health",
    )  # fmt: skip
    server_env = {
        "PREFECT_HOME": str(settings.state / "prefect" / "home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": settings.prefect_url,
    }
    _start(
        settings,
        "prefect",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(settings.prefect_port),
         "--analytics-off"],
        server_env,
        f"{settings.prefect_url}/health",
    )  # fmt: skip
    _prefect(settings, "--no-prompt", "work-pool", "create", POOL, "--type", "process", "--overwrite")
    deploy_env_active = os.environ.get("ATLAS_SCHEDULES_ACTIVE", "true")
    os.environ["ATLAS_SCHEDULES_ACTIVE"] = deploy_env_active
    _prefect(settings, "--no-prompt", "deploy", "--all", "--prefect-file", "flows/prefect.yaml")
    worker_env = {
        **settings.client_env(),
        "ATLAS_CONFIG": os.environ.get("ATLAS_CONFIG", str(REPO / "configs/satellite.yaml")),
        "ATLAS_OVERRIDES": os.environ.get("ATLAS_OVERRIDES", json.dumps(DEFAULT_OVERRIDES)),
        "PYTHONPATH": str(REPO),
        "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "5"),
    }
    _start(settings, "worker", [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
           worker_env, "")  # fmt: skip
    print()
    print(f"S3 (SeaweedFS)  {settings.s3_url}   buckets: {', '.join(BUCKETS)}")
    print(f"MLflow          {settings.mlflow_url}")
    print(f"Prefect UI      http://127.0.0.1:{settings.prefect_port}")
    print(f"work pool       {POOL} (1 process worker); deployments: train-gan/satellite, watch-imagery/poll")
    print("clients:")
    for key, value in settings.client_env().items():
        print(f"  export {key}={value}")
    print("run it:  prefect deployment run train-gan/satellite --watch")


def down(settings: Settings) -> None:
    """Stops the parts side by side, since each takes seconds to drain; the worker goes before its Prefect server."""

    def prefect() -> None:
        _stop(settings, "worker")
        _stop(settings, "prefect")

    def s3() -> None:
        env = {**os.environ, **_s3_env(settings)}
        subprocess.run(["bash", str(REPO / "infra/local/s3.sh"), "stop"], env=env, check=True)

    with ThreadPoolExecutor(max_workers=3) as pool:
        stops = [pool.submit(prefect), pool.submit(_stop, settings, "mlflow"), pool.submit(s3)]
    for stop in stops:
        stop.result()  # the first failure, if any, after every part was asked to stop


def status(settings: Settings) -> int:
    code = 0
    for name in ("mlflow", "prefect", "worker"):
        alive = _alive(settings.pidfile(name))
        code = code or (0 if alive else 3)
        print(f"{name}: {'running' if alive else 'stopped'}")
    s3 = subprocess.run(["bash", str(REPO / "infra/local/s3.sh"), "status"], env={**os.environ, **_s3_env(settings)})
    return code or s3.returncode


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("up", "down", "status"):
        print(__doc__)
        return 2
    settings = Settings()
    if argv[0] == "up":
        up(settings)
    elif argv[0] == "down":
        down(settings)
    else:
        return status(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
