"""`python -m atlas_gan.train.join --handoff URL`: join a multi-node training started by the `train-gan` flow.

The flow's node (rank 0 of the rendezvous) publishes the resolved config and the rendezvous endpoint at the handoff
URL (local path or s3://); every other node waits for it, then runs the same torchrun command. In the Kubernetes
base job template the handoff URL is `$ATLAS_HANDOFF_PREFIX/$PREFECT__FLOW_RUN_ID.yaml`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from atlas_gan.config import load_config
from atlas_gan.storage import join_url, storage_for
from atlas_gan.train.launch import failure_message, run_streaming, torchrun_command


def wait_for_handoff(url: str, timeout_s: float, poll_s: float = 2.0) -> dict:
    store = storage_for(url)
    deadline = time.monotonic() + timeout_s
    while not store.exists(url):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}: no handoff from the flow's node after {timeout_s:.0f} s")
        time.sleep(poll_s)
    return yaml.safe_load(store.read_bytes(url))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atlas_gan.train.join", description=__doc__)
    parser.add_argument("--handoff", help="handoff URL; default: $ATLAS_HANDOFF_PREFIX/$PREFECT__FLOW_RUN_ID.yaml")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the handoff")
    args = parser.parse_args(argv)
    url = args.handoff
    if url is None:
        prefix, run_id = os.environ.get("ATLAS_HANDOFF_PREFIX"), os.environ.get("PREFECT__FLOW_RUN_ID")
        if not prefix or not run_id:
            parser.error("give --handoff, or set ATLAS_HANDOFF_PREFIX and PREFECT__FLOW_RUN_ID")
        url = join_url(prefix, f"{run_id}.yaml")
    record = wait_for_handoff(url, args.timeout)
    with tempfile.TemporaryDirectory(prefix="atlas-join-") as folder:
        config_file = Path(folder) / "config.yaml"
        config_file.write_text(yaml.safe_dump(record["config"], sort_keys=False))
        load_config(config_file)  # the same validation the flow's node ran
        command = torchrun_command(config_file, record["nproc_per_node"], record["nnodes"], record["rdzv_endpoint"])
        result = run_streaming(command, print)
    if result.returncode != 0:
        print(failure_message(result), file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
