"""bench/superres.py's lattice check, which says whether a generator's detail repeats with the scale's period (its
upsampling stages drawn apart) rather than following the scene."""

from __future__ import annotations

import importlib.util
import sys

import torch

from atlas_gan.metrics.superres import bicubic
from tests.conftest import REPO


def _superres_bench():
    sys.path.insert(0, str(REPO / "bench"))  # its sibling modules (shared_data, variants)
    try:
        spec = importlib.util.spec_from_file_location("bench_superres", REPO / "bench" / "superres.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "bench"))
    return module


def test_scale_period_peak_tells_a_lattice_from_natural_detail():
    peak = _superres_bench().scale_period_peak
    torch.manual_seed(0)
    low = torch.rand(8, 3, 16, 16) * 2 - 1
    natural = bicubic(low, 4) + 0.05 * torch.randn(8, 3, 64, 64)  # detail with no period
    block = torch.randn(1, 3, 4, 4) * 0.05
    lattice = bicubic(low, 4) + block.repeat(8, 1, 16, 16)  # the same 4 x 4 pattern in every block
    assert 0.8 < peak(natural, low, 4) < 1.25
    assert peak(lattice, low, 4) > 100
    assert peak(natural + block.repeat(8, 1, 16, 16) * 0.3, low, 4) > 2  # a faint lattice over detail still shows
