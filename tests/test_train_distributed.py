"""Real torchrun processes on loopback (gloo): 2 ranks, 2 'nodes' via c10d rendezvous, a worker killed mid-run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from atlas_gan.config import load_config
from atlas_gan.runtime.checkpoint import load_checkpoint
from atlas_gan.storage import LocalStorage
from atlas_gan.train.launch import launch_training
from tests.servers import free_port
from tests.test_conditional import CONDITIONAL
from tests.test_stylegan2 import STYLEGAN2
from tests.test_train import SMALL

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=220)]


def torchrun(*launcher_args, run_dir, data, steps, extra=()):
    overrides = [f"ingest.output={data}", f"train.run_dir={run_dir}", f"train.steps={steps}", *SMALL, *extra]
    command = [sys.executable, "-m", "torch.distributed.run", *launcher_args, "-m", "atlas_gan.train", "--quiet"]
    command += [f"--set={o}" for o in overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def events(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def finish(process, timeout=300):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def train_two_ranks(run_dir, data, steps, extra):
    """One machine, two gloo ranks, run to the end; the run's log events."""
    finish(torchrun("--standalone", "--nproc-per-node=2", run_dir=run_dir, data=data, steps=steps, extra=extra))
    return events(run_dir)


def test_two_ranks_stay_in_sync(train_data, tmp_path):
    run_dir = tmp_path / "run"
    extra = ["train.model=wgan-gp"]
    command = torchrun("--standalone", "--nproc-per-node=2", run_dir=run_dir, data=train_data, steps=4, extra=extra)
    output = finish(command)  # the workers leave through os._exit: what they printed must still arrive
    assert "trained to step 4 of 4 (320 images); ranks in sync: True" in output
    log = events(run_dir)
    end = log[-1]
    assert end["event"] == "end" and end["step"] == 4 and end["ranks_in_sync"] is True
    assert len(end["rank_fingerprints"]) == 2
    assert log[0]["world_size"] == 2 and log[0]["global_batch"] == 16
    assert end["images_seen"] == 4 * 5 * 16  # 5 critic steps per G step, global batch 16
    assert all(np.isfinite(e["loss_d"]) and np.isfinite(e["loss_g"]) for e in log if "loss_d" in e)


def test_two_ranks_end_together_when_the_time_budget_is_spent(train_data, tmp_path):
    """Asked only at log steps under DDP (every 2nd step here), one all-reduce agreeing: both ranks end at step 2."""
    extra = ["train.max_minutes=0.0001", "train.log_every=2"]
    log = train_two_ranks(tmp_path / "run", train_data, 50, extra)
    end = log[-1]
    assert end["event"] == "end" and end["step"] == 2 and end["ranks_in_sync"] is True
    assert [e["step"] for e in log if e.get("event") == "time_budget_spent"] == [2]


def test_two_nodes_rendezvous_on_loopback_through_the_handoff(train_data, tmp_path, monkeypatch):
    """Node 0 is what the train-gan flow runs (launch_training publishes config + rendezvous); node 1 is what the
    other pods of infra/k8s run (atlas_gan.train.join waits for the handoff, then joins)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_dir, handoff = tmp_path / "run", str(tmp_path / "handoff" / "flow-run-1.yaml")
    joiner = subprocess.Popen(
        [sys.executable, "-m", "atlas_gan.train.join", "--handoff", handoff, "--timeout", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    config = load_config(None, [f"ingest.output={train_data}", f"train.run_dir={run_dir}", "train.steps=3", *SMALL])
    lines: list[str] = []
    launch_training(config, lines.append, 1, nnodes=2, rdzv_endpoint=f"127.0.0.1:{free_port()}", handoff_url=handoff)
    finish(joiner)
    end = events(run_dir)[-1]
    assert end["step"] == 3 and end["ranks_in_sync"] is True and len(end["rank_fingerprints"]) == 2
    assert any("trained to step 3" in line for line in lines)  # rank 0 ran on the flow's node


def _worker_pids(agent_pid):
    out = subprocess.run(["pgrep", "-P", str(agent_pid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def test_killed_conditional_sagan_with_diffaugment_restarts_and_resumes(train_data, tmp_path):
    """The issue's end-to-end check: 2 ranks of a conditional SAGAN (labels by year) with DiffAugment on real
    shards; a worker is SIGKILLed after step 4's checkpoint, torchrun restarts the group, training resumes."""
    run_dir = tmp_path / "run"
    agent = torchrun(
        "--standalone",
        "--nproc-per-node=2",
        "--max-restarts=1",
        run_dir=run_dir,
        data=train_data,
        steps=10,
        extra=["train.checkpoint_every=2", *CONDITIONAL],
    )
    deadline = time.monotonic() + 240
    checkpoints = run_dir / "checkpoints"
    while not (checkpoints.is_dir() and any(p.name >= "step-00000004.pt" for p in checkpoints.iterdir())):
        assert agent.poll() is None, agent.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint at step 4 in time"
        time.sleep(0.2)
    victims = _worker_pids(agent.pid)
    assert len(victims) == 2
    os.kill(victims[0], signal.SIGKILL)
    output = finish(agent)
    log = events(run_dir)
    starts = [e for e in log if e.get("event") == "start"]
    assert len(starts) == 2 and starts[1]["resumed_from"] >= 4, output[-3000:]
    end = log[-1]
    assert end["event"] == "end" and end["step"] == 10 and end["ranks_in_sync"] is True
    assert starts[1]["model"] == "sagan"
    state = load_checkpoint(LocalStorage(), str(run_dir / "checkpoints" / "step-00000010.pt"))
    assert state["labels"]["by"] == "year" and len(state["labels"]["classes"]) == state["spec"]["num_classes"] == 8
    assert state["config"]["train"]["diffaugment"] == ["color", "translation", "cutout"]


def test_two_ranks_train_stylegan2_with_ada_in_sync(train_data_64, tmp_path):
    """StyleGAN2 + ADA on 2 torchrun ranks (64 px Landsat shards): lazy R1 (step 0), path length (steps 0, 4), ADA's
    p adjusted from both ranks' D outputs every 2 steps; both ranks end with identical weights and the same p."""
    run_dir = tmp_path / "run"
    log = train_two_ranks(run_dir, train_data_64, 5, STYLEGAN2)
    end = log[-1]
    assert end["event"] == "end" and end["step"] == 5 and end["ranks_in_sync"] is True
    assert log[0]["model"] == "stylegan2" and log[0]["global_batch"] == 16
    steps = [e for e in log if "augment_p" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(e["loss_d"]) and np.isfinite(e["loss_g"]) for e in steps)
    state = load_checkpoint(LocalStorage(), str(run_dir / "checkpoints" / "step-00000005.pt"))
    assert [float(own["augment"]["p"]) for own in state["recipe_ranks"]] == [steps[-1]["augment_p"]] * 2
    assert state["recipe_state"]["path_length"]["mean"] > 0


def test_two_ranks_train_pix2pix_in_sync_and_score_on_rank_zero(train_data, tmp_path):
    """pix2pix (red, green -> NIR) on 2 torchrun ranks: batch norm, dropout and both updates stay in sync, and
    rank 0 alone scores the held-out pairs (no collective in the translation evaluation)."""
    from tests.test_translation import PIX2PIX

    run_dir = tmp_path / "run"
    log = train_two_ranks(run_dir, train_data, 4, [*PIX2PIX, "train.evaluate_every=4"])
    end = next(e for e in log if e.get("event") == "end")
    assert end["ranks_in_sync"] and len(end["rank_fingerprints"]) == 2
    scores = [e for e in log if e.get("event") == "evaluate_translation"]
    assert [e["step"] for e in scores] == [4] and np.isfinite(scores[0]["psnr"])
    assert json.loads((run_dir / "split.json").read_text())["validation_tiles"] > scores[0]["n_validation"] == 32


def test_two_ranks_train_esrgan_in_sync_across_the_phase_change(train_data, tmp_path):
    """x4 super-resolution on 2 torchrun ranks: per-rank degradation seeds, the pixel phase (G alone) and the GAN
    phase (D then G) keep the ranks in sync, and rank 0 scores the held-out tiles beside bicubic and the kept
    pixel-loss model."""
    from tests.test_superres import ESRGAN

    run_dir = tmp_path / "run"
    log = train_two_ranks(
        run_dir, train_data, 4, [*ESRGAN, "train.evaluate_every=4", "train.model.perceptual_weight=0"]
    )
    end = next(e for e in log if e.get("event") == "end")
    assert end["ranks_in_sync"] and len(end["rank_fingerprints"]) == 2
    steps = [e for e in log if "loss_g" in e]
    assert [e["gan_phase"] for e in steps] == [0, 0, 0, 1] and steps[-1]["loss_d"] > 0
    scores = [e for e in log if e.get("event") == "evaluate_translation"]
    assert [e["step"] for e in scores] == [4] and scores[0]["baseline"] == "bicubic"
    assert np.isfinite(scores[0]["psnr"]) and np.isfinite(scores[0]["pixel_psnr"])
