"""bench/quality.py end to end at a toy budget, so the issue's benchmark never rots between the sessions that run it
for real: ingest of a shared source, the pytorch/examples reference loop and a FastGAN run through the trainer, each
scored against the real tiles with the floor, precision and recall, its grid drawn and the table printed."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow(seconds=70)


def test_scores_the_reference_and_a_family_at_every_mark(shared_data: Path, tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "quality.json"
    # one step of 64 tiles per run reaches both marks, so each run is scored once
    toy = "--kimg 0.064 --minutes 0.001 --points 1 --n 32 --runs reference,fastgan --set train.batch_size=64"
    command = [sys.executable, "bench/quality.py", "--data", str(shared_data), "--source", "landsat-pucallpa"]
    command += [*toy.split(), "--work", str(work), "--json", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    result = json.loads(out.read_text())
    assert result["n"] == 32 and set(result["runs"]) == {"reference", "fastgan"}
    for name, run in result["runs"].items():
        (point,) = run["points"]
        assert point["kimg"] == 0.064 and run["at_minutes"] == point, name  # one step: both marks at once
        assert math.isfinite(point["fid"]) and point["fid"] > point["floor_fid"] > 0
        assert 0 <= point["precision"] <= 1 and 0 <= point["recall"] <= 1 and point["floor_recall"] > 0
        assert (work / f"landsat-pucallpa-{name}.png").stat().st_size > 0
    rows = {
        line.split()[0]: line.split()
        for line in done.stdout.splitlines()
        if line.split()[:1] in (["reference"], ["fastgan"])
    }
    assert rows["reference"][3] == "1.00" and float(rows["fastgan"][3]) > 0  # FID end / the reference's
    assert "real vs real floor at the same N: FID" in done.stdout


def test_a_variant_splits_at_the_next_key_so_list_values_keep_their_commas() -> None:
    spec = importlib.util.spec_from_file_location("bench_variants", REPO / "bench" / "variants.py")
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)
    text = "fastgan-cutout:train.diffaugment=[color,translation,cutout],train.lr_d=0.0004"
    assert variants.parse_variant(text) == (
        "fastgan-cutout",
        ["train.diffaugment=[color,translation,cutout]", "train.lr_d=0.0004"],
    )
    assert variants.parse_variant('ada:train.ada={"speed_kimg": 20}') == ("ada", ['train.ada={"speed_kimg": 20}'])
    for bad in ("no-overrides", "x:novalue", "bad name:train.lr_d=1"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected NAME:KEY=VALUE"):
            variants.parse_variant(bad)
