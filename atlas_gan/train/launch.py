"""Launch training as `torchrun` worker processes and follow their output (for the CLI and the Prefect flow).

The config is handed over as a resolved YAML file, so what the workers run is exactly what the caller validated.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from atlas_gan.config import AtlasConfig, config_to_dict

_WORKER_ERROR = re.compile(r"(^|\]:)rank \d+: |^\w*(Error|Exception): ")

# libgomp (torch's OpenMP on Linux) lets a thread spin 300,000 times waiting for work before it sleeps. Two CPU
# trainings on one machine (a schedule and a new-imagery trigger on one worker) then spend each other's cores
# spinning: FastGAN 64 px on 2 cores ran 12 img/s each beside another against 63-66 alone. With 1,000 spins: 30
# img/s each, and 64 alone. A value the user set wins.
THREADING_DEFAULTS = {"GOMP_SPINCOUNT": "1000"}


def worker_environment() -> dict[str, str]:
    """The environment for training processes: this one, plus the THREADING_DEFAULTS it does not set."""
    return {**THREADING_DEFAULTS, **os.environ}


def apply_threading_defaults() -> None:
    """THREADING_DEFAULTS for training in this process; libgomp reads them when torch loads, so call it first."""
    for key, value in THREADING_DEFAULTS.items():
        os.environ.setdefault(key, value)


class LaunchFailed(RuntimeError):
    """torchrun exited non-zero; the message carries the exit code and the tail of the log."""


@dataclass(frozen=True)
class LaunchResult:
    returncode: int
    tail: list[str]


def torchrun_command(
    config_file: str | Path,
    nproc_per_node: int = 1,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    max_restarts: int = 0,
    quiet: bool = True,
) -> list[str]:
    """`python -m torch.distributed.run ... -m atlas_gan.train --config FILE`: standalone on one node, c10d
    rendezvous at `rdzv_endpoint` (host:port) across several."""
    if nproc_per_node < 1 or nnodes < 1:
        raise ValueError(f"nproc_per_node and nnodes must be >= 1; got {nproc_per_node}, {nnodes}")
    if nnodes > 1 and not rdzv_endpoint:
        raise ValueError("training on several nodes needs rdzv_endpoint (host:port of the rendezvous)")
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1:
        launcher.append("--standalone")
    else:
        launcher += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    launcher.append(f"--max-restarts={max_restarts}")
    entry = ["-m", "atlas_gan.train", f"--config={config_file}", "--resolved", *(["--quiet"] if quiet else [])]
    return [*launcher, *entry]


def write_config_file(config: AtlasConfig, folder: str | Path) -> Path:
    """The resolved config as YAML in `folder` (holds no secrets: the config never does)."""
    handle, path = tempfile.mkstemp(prefix="atlas-config-", suffix=".yaml", dir=folder)
    with os.fdopen(handle, "w") as out:
        yaml.safe_dump(config_to_dict(config), out, sort_keys=False)
    return Path(path)


def run_streaming(
    command: Sequence[str], on_line: Callable[[str], None], tail_lines: int = 200, env: dict[str, str] | None = None
) -> LaunchResult:
    """Run `command` (a training process: `worker_environment()` plus `env`), handing each output line (stdout and
    stderr merged) to `on_line` as it comes."""
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    child_env = {**worker_environment(), **(env or {}), "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=child_env
    ) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n").split("\r")[-1]  # progress bars redraw with \r: keep the last state
            if line.strip():
                tail.append(line)
                on_line(line)
    return LaunchResult(process.returncode, list(tail))


def write_handoff(url: str, config: AtlasConfig, nnodes: int, nproc_per_node: int, rdzv_endpoint: str) -> None:
    """What the other nodes of a multi-node run need to join it: the resolved config and the rendezvous."""
    from atlas_gan.storage import storage_for

    record = {"config": config_to_dict(config), "nnodes": nnodes, "nproc_per_node": nproc_per_node}
    record["rdzv_endpoint"] = rdzv_endpoint
    storage_for(url, config.storage).write_bytes(url, yaml.safe_dump(record, sort_keys=False).encode())


def launch_training(
    config: AtlasConfig,
    on_line: Callable[[str], None],
    nproc_per_node: int = 1,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    max_restarts: int = 0,
    handoff_url: str | None = None,
) -> LaunchResult:
    """Train `config` with torchrun; raises LaunchFailed with the log's tail when the workers fail. With several
    nodes, `handoff_url` publishes the config and rendezvous for `python -m atlas_gan.train.join` on the others."""
    if nnodes > 1 and handoff_url:
        if not rdzv_endpoint:
            raise ValueError("training on several nodes needs rdzv_endpoint (host:port of the rendezvous)")
        write_handoff(handoff_url, config, nnodes, nproc_per_node, rdzv_endpoint)
    with tempfile.TemporaryDirectory(prefix="atlas-launch-") as folder:
        config_file = write_config_file(config, folder)
        command = torchrun_command(config_file, nproc_per_node, nnodes, rdzv_endpoint, max_restarts)
        result = run_streaming(command, on_line)
    if result.returncode != 0:
        raise LaunchFailed(failure_message(result))
    return result


def failure_message(result: LaunchResult) -> str:
    """The workers' own error lines (`rank N: ...`) first, then the last lines (torchrun's summary)."""
    errors = [line for line in result.tail if _WORKER_ERROR.search(line)]
    text = f"torchrun exited with code {result.returncode}"
    if errors:
        text += "; worker errors:\n" + "\n".join(errors[-10:])
    return text + "\nlast lines:\n" + "\n".join(result.tail[-20:])
