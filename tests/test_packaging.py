"""The wheel is what pip users get: built here, installed into a fresh venv outside the repository, it must run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding only the atlas-gan wheel; its dependencies are this environment's (a `.pth` line), so the
    test needs no package index. Returns the venv's bin folder."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"  # a clean copy: building in the repository would leave build/ and egg-info behind
    shutil.copytree(REPO / "atlas_gan", source / "atlas_gan", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", source], check=True)
    wheel = next((root / "dist").glob("atlas_gan-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", python, "install", "--no-deps", wheel], check=True)
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    Path(site, "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_dir / "atlas-gan", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_wheel_carries_the_default_config_and_runs_outside_the_repository(installed_wheel, geotiff, tmp_path):
    where = subprocess.run(
        [installed_wheel / "python", "-c", "import atlas_gan; print(atlas_gan.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(installed_wheel.parent)), where.stdout + where.stderr  # the wheel's copy

    version = run(installed_wheel, "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip().startswith("atlas-gan 0."), version.stderr
    help_text = run(installed_wheel, "--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "Exit codes:" in help_text.stdout

    shown = run(installed_wheel, "config", "show", "--format", "json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["ingest"]["tile_size"] == 64  # the packaged default, read from the wheel

    output = tmp_path / "shards"
    scene = geotiff / "landsat-pucallpa" / "landsat_1985.tif"
    ingest = run(
        installed_wheel,
        "ingest",
        "-s",
        str(scene),
        "-o",
        str(output),
        "-q",
        "--set",
        "ingest.tile_size=32",
        cwd=tmp_path,
    )
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    manifest = json.loads((output / "manifest.json").read_text())
    assert [s["id"] for s in manifest["scenes"]] == ["landsat_1985"] and manifest["totals"]["samples"] > 0
