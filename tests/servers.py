"""Real servers for integration tests, on free loopback ports in temporary folders."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import boto3
from botocore.config import Config

LOOPBACK = "127.0.0.1"


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out to outgoing connections (Linux default 32768-60999)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port for a test server, drawn below the ephemeral range: a port drawn there (bind to 0) is
    released until the server binds it, and meanwhile any outgoing connection of the suite (MLflow, Prefect, Dask
    clients) may take it as its local port; CI saw SeaweedFS fail with 'address already in use' that way."""
    low = min(_ephemeral_range()[0], 32768)
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(10000, low)
        if port in _HANDED_OUT:
            continue
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


class SeaweedS3:
    """SeaweedFS `weed mini` (master, volume, filer and S3 gateway in one process) with an authenticated S3 API.

    Every port weed would otherwise pick by default is set to a free loopback port, so several servers (or a
    developer's own) never collide; `stop()` and `start()` keep the data folder and ports, like a real restart.
    """

    def __init__(self, root: Path, access_key: str = "atlas-test-key", secret_key: str = "atlas-test-secret"):
        self.root = root
        self.access_key, self.secret_key = access_key, secret_key
        self.ports = {
            name: free_port()
            for name in (
                "s3",
                "s3.grpc",
                "master",
                "master.grpc",
                "volume",
                "volume.grpc",
                "filer",
                "filer.grpc",
                "admin",
                "admin.grpc",
                "debug",
                "s3.debug",
                "metrics",
                "s3.metrics",
            )
        }
        self.endpoint = f"http://{LOOPBACK}:{self.ports['s3']}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "weed.log"

    def command(self) -> list[str]:
        weed = shutil.which("weed") or str(Path(os.sys.executable).parent / "weed")
        p = self.ports
        return [
            weed,
            "mini",
            f"-dir={self.root / 'data'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin.grpc']}",
            f"-debug.port={p['debug']}",
            f"-s3.debug.port={p['s3.debug']}",
            f"-metricsPort={p['metrics']}",
            f"-s3.metricsPort={p['s3.metrics']}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=256",
        ]

    def client(self, secret_key: str | None = None):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def start(self, timeout: float = 60.0) -> None:
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}; log: {self.log_path}")
            try:
                client.list_buckets()
                # the S3 gateway answers before the volume server accepts writes: probe a real write
                existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
                if "atlas-readiness" not in existing:
                    client.create_bucket(Bucket="atlas-readiness")
                client.put_object(Bucket="atlas-readiness", Key="probe", Body=b"ok")
                return
            except Exception as exc:  # not ready yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"SeaweedFS S3 not ready after {timeout:.0f} s ({exc}); log: {self.log_path}"
                    ) from exc
                time.sleep(0.3)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


class MlflowServer:
    """`mlflow server --workers 1` on a free loopback port: sqlite backend, artifacts proxied to S3 (SeaweedFS).

    `stop()` and `start()` keep the port and the database, like a real restart.
    """

    def __init__(self, root: Path, artifacts_destination: str, env: dict[str, str]):
        self.root, self.artifacts_destination, self.env = root, artifacts_destination, env
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "mlflow-server.log"

    def start(self, timeout: float = 90.0) -> None:
        import urllib.request

        mlflow = shutil.which("mlflow") or str(Path(os.sys.executable).parent / "mlflow")
        command = [
            mlflow,
            "server",
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            self.artifacts_destination,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        env = {**os.environ, **self.env, "MLFLOW_DISABLE_TELEMETRY": "true"}
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}; log: {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server not ready after {timeout:.0f} s; log: {self.log_path}")
            time.sleep(0.3)

    def stop(self) -> None:
        """Stop the server and every process it started (its own process group)."""
        import signal

        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # stragglers (job runners) of the group
        self.process = None
