"""bench/gpu.py's CPU form (`--smoke`): the prepared GPU run's code paths, so the script never rots between GPU
sessions. Runs as the GPU machine would: bench/gpu_pack.py packs real shards, then gpu.py reads only the pack,
with the packages the GPU machine lacks (GDAL, webdataset, MLflow, Prefect, boto3) made unimportable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ABSENT_ON_GPU = ["rasterio", "webdataset", "mlflow", "prefect", "boto3", "botocore", "shapely", "geopandas"]
RUN_WITHOUT = (
    "import runpy, sys\n"
    f"for name in {ABSENT_ON_GPU!r}:\n"
    "    sys.modules[name] = None  # import fails, as on the GPU machine\n"
    "sys.argv = sys.argv[1:]\n"
    "sys.path.insert(0, 'bench')\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)

pytestmark = pytest.mark.slow(seconds=90)


def run(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def pack(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu") / "pack"
    arguments = ["--out", str(out), "--data", str(shared_data), "--crop", "512", "--no-inception"]
    done = run([sys.executable, "bench/gpu_pack.py", *arguments])
    assert done.returncode == 0, done.stderr[-3000:]
    for size in (64, 128, 256):
        manifest = json.loads((out / f"shards-{size}" / "manifest.json").read_text())
        assert manifest["tile"]["size"] == size and manifest["tile"]["bands"] == ["B4", "B3", "B2"]
    return out


def test_smoke_measures_every_case_without_the_packages_the_gpu_machine_lacks(pack: Path, tmp_path: Path) -> None:
    done = run([sys.executable, "-c", RUN_WITHOUT, "bench/gpu.py", str(tmp_path), "--pack", str(pack), "--smoke"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["smoke"] is True and report["device"] == "cpu (smoke)"
    training = {(r["family"], r["size"], r["mode"]): r for r in report["training"]}
    cases = [("dcgan", 64), ("fastgan", 128), ("stylegan2", 128), ("stylegan2", 256)]
    for family, size in cases:
        measured = ("fp32", "bf16", "bf16+cl") if family == "dcgan" else ("fp32", "bf16+cl")
        for mode in measured if size != 256 else ("fp32",):
            record = training[(family, size, mode)]
            assert "error" not in record, record
            assert record["images_per_s"] > 0 and record["s_per_kimg"] == pytest.approx(1000 / record["images_per_s"])
            assert record["precision"] == ("fp32" if mode == "fp32" else "torch.bfloat16")
            assert record["deferred_checks"]  # the GPU's default path, on the CPU
        for mode in ("bf16", "bf16+cl+host-checks") if family != "dcgan" else ():
            assert "first case covers this mode" in training[(family, size, mode)]["skipped"]
        assert "compiling" in training[(family, size, "bf16+cl+compile")]["skipped"]
    assert "128 px covers this family's mode" in training[("stylegan2", 256, "bf16+cl")]["skipped"]
    assert not training[("dcgan", 64, "bf16+cl+host-checks")]["deferred_checks"]
    assert {(r["family"], r["size"]) for r in report["loader"]} == {("dcgan", 64)}
    for record in report["loader"]:
        assert "error" not in record, record
        assert 0 <= record["wait_share"] <= 1 and 0 <= record["data_share"] <= 1 and record["images_per_s"] > 0
    fid = report["fid"]
    assert fid["n"] == 16 and fid["reference_tiles"] == 16  # the smoke reads 16 of the 512 px crop's 64 tiles
    assert fid["fp32"]["fid"] > 0 and fid["bf16"]["fid"] > 0
    assert fid["bf16_vs_fp32"] == pytest.approx(abs(fid["bf16"]["fid"] - fid["fp32"]["fid"]) / fid["fp32"]["fid"])
    assert fid["bf16_against_fp32_reference"] > 0
    assert "FID of 16 generated 64 px tiles" in done.stdout


def test_a_missing_pack_is_named(tmp_path: Path) -> None:
    done = run([sys.executable, "bench/gpu.py", str(tmp_path / "out"), "--pack", str(tmp_path / "nope"), "--smoke"])
    assert done.returncode == 2
    assert "shards-" in done.stderr and "run bench/gpu_pack.py first" in done.stderr


def test_profile_smoke_writes_each_modes_table(pack: Path, tmp_path: Path) -> None:
    arguments = ["--pack", str(pack), "--case", "dcgan-64", "--modes", "fp32,bf16+cl", "--steps", "1", "--smoke"]
    done = run([sys.executable, "bench/gpu_profile.py", str(tmp_path), *arguments])
    assert done.returncode == 0, done.stderr[-3000:]
    for mode in ("fp32", "bf16_cl"):
        text = (tmp_path / f"profile-dcgan-64-{mode}.txt").read_text()
        assert "ms per step" in text and "aten::" in text
