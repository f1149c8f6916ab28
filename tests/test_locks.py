"""Overlapping ingests into one output take turns and lose nothing, locally and on a real S3 server."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from atlas_gan.ingest import ingest
from atlas_gan.locks import LOCK_NAME, LockLost, LockTimeout, exclusive_output
from atlas_gan.shards import read_manifest
from atlas_gan.storage import S3Storage, join_url, storage_for

PUCALLPA_SCENES = 8


def start_ingest(source: str, output: str, log: Path) -> subprocess.Popen[bytes]:
    """`atlas-gan ingest` in its own process, as a cron run or a new-imagery trigger would start it."""
    command = [sys.executable, "-m", "atlas_gan.cli", "ingest", "-s", source, "-o", output, "-w", "1", "-q"]
    command += ["--set", "ingest.tile_size=32"]
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_for_text(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert process.poll() is None, f"exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"never said {text!r}:\n{log.read_text()}"
        time.sleep(0.2)


def assert_whole(output: str) -> dict:
    """Every scene of both runs is listed once, and every listed shard's bytes match its checksum."""
    store = storage_for(output)
    manifest = read_manifest(store, output)
    scene_ids = [scene["id"] for scene in manifest["scenes"]]
    assert len(scene_ids) == len(set(scene_ids)) == PUCALLPA_SCENES, scene_ids
    urls = [shard["url"] for shard in manifest["shards"]]
    assert len(urls) == len(set(urls))
    for shard in manifest["shards"]:
        data = store.read_bytes(join_url(output, shard["url"]))
        assert hashlib.sha256(data).hexdigest() == shard["sha256"], shard["url"]
    assert sum(s["samples"] for s in manifest["shards"]) == sum(s["tiles"] for s in manifest["scenes"])
    assert len(manifest["runs"]) == 2
    return manifest


def overlapping_ingests(geotiff: Path, output: str, tmp_path: Path) -> None:
    """Two runs over two halves of the time series start while the test holds the lock, so both must wait; then
    the lock is released and they race for it."""
    halves = [
        str(geotiff / "landsat-pucallpa" / "landsat_19*.tif"),
        str(geotiff / "landsat-pucallpa" / "landsat_20*.tif"),
    ]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    with exclusive_output(output, purpose="test holding the lock", lease_seconds=4):
        runs = [start_ingest(half, output, log) for half, log in zip(halves, logs, strict=True)]
        for run, log in zip(runs, logs, strict=True):
            wait_for_text(log, "waiting for another ingest into this output to finish: test holding the lock", run)
    for run, log in zip(runs, logs, strict=True):
        assert run.wait(timeout=300) == 0, log.read_text()
        assert "scenes added:" in log.read_text()


def test_overlapping_local_ingests_keep_every_scene_and_checksum(geotiff, tmp_path):
    output = str(tmp_path / "dataset")
    overlapping_ingests(geotiff, output, tmp_path)
    assert_whole(output)


@pytest.mark.integration
def test_overlapping_s3_ingests_keep_every_scene_and_checksum(s3, geotiff, tmp_path):
    output = f"s3://{s3.bucket}/dataset"
    overlapping_ingests(geotiff, output, tmp_path)
    assert_whole(output)
    assert not S3Storage().exists(join_url(output, LOCK_NAME)), "the lease is deleted when the run ends"


def test_a_crashed_local_holder_does_not_block_the_next_run(geotiff, make_config, tmp_path):
    output = tmp_path / "dataset"
    holder = textwrap.dedent(
        f"""
        import time
        from atlas_gan.locks import exclusive_output
        with exclusive_output({str(output)!r}, purpose="crashing run"):
            print("holding", flush=True)
            time.sleep(600)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE)
    assert process.stdout.readline().strip() == b"holding"
    config = make_config(geotiff / "landsat-pucallpa" / "landsat_1985.tif", output, tile_size=32, lock_wait_minutes=0)
    with pytest.raises(LockTimeout, match="crashing run on .* \\(pid \\d+\\)"):
        ingest(config, progress=False)
    process.send_signal(signal.SIGKILL)
    process.wait()
    report = ingest(config, progress=False)
    assert report.added_scenes == ["landsat_1985"]


@pytest.mark.integration
def test_an_expired_s3_lease_is_taken_over(s3, geotiff, make_config):
    """A holder that crashed leaves its lease object behind; the next run waits one lease, then takes it over."""
    output = f"s3://{s3.bucket}/dataset"
    stale = {"purpose": "ingest", "host": "gone", "pid": 1, "since": "2026-01-01T00:00:00+00:00", "lease_seconds": 2}
    S3Storage().write_bytes(join_url(output, LOCK_NAME), json.dumps(stale).encode())
    messages: list[str] = []
    config = make_config(geotiff / "landsat-pucallpa" / "landsat_1985.tif", output, tile_size=32)
    report = ingest(config, progress=False, on_wait=messages.append)
    assert report.added_scenes == ["landsat_1985"]
    assert any("waiting for another ingest" in m and "ingest on gone (pid 1)" in m for m in messages), messages
    assert any("took over the expired lock of ingest on gone" in m for m in messages), messages


@pytest.mark.integration
def test_a_lease_taken_over_stops_its_holder_before_it_writes(s3):
    output = f"s3://{s3.bucket}/dataset"
    url = join_url(output, LOCK_NAME)
    with exclusive_output(output, purpose="slow run", lease_seconds=2) as lease:
        lease.check()
        S3Storage().write_bytes(url, b'{"purpose": "impatient run"}')  # another run took it over
        time.sleep(1.5)  # past the next renewal (every lease / 4)
        with pytest.raises(LockLost, match="another run took the lock over"):
            lease.check()
    assert S3Storage().read_bytes(url) == b'{"purpose": "impatient run"}', "the new holder's lock is left alone"


def test_the_lock_file_names_its_holder_while_held(tmp_path):
    output = tmp_path / "dataset"
    with exclusive_output(str(output), purpose="ingest"):
        holder = json.loads((output / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["purpose"] == "ingest"
        busy = exclusive_output(str(output), purpose="ingest", wait_minutes=0, on_wait=lambda _: None)
        with pytest.raises(LockTimeout, match="held by ingest on"), busy:
            pass
    with exclusive_output(str(output), purpose="ingest", wait_minutes=0):
        pass  # released
