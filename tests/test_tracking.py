"""MLflow tracking and registry: real training runs, real FIDs, real pyfunc models; on the embedded sqlite store
and on a real `mlflow server` whose artifacts live on S3 (SeaweedFS), across a server restart."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
import rasterio
import torch
from mlflow import MlflowClient
from PIL import Image
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

import atlas_gan
from atlas_gan.cli import app
from atlas_gan.config import AtlasConfig, ConfigError, load_config
from atlas_gan.metrics.hook import EvaluationHook
from atlas_gan.models.base import seeded_latents
from atlas_gan.runtime import distributed
from atlas_gan.runtime.generator import load_generator
from atlas_gan.sampling import load_sampler
from atlas_gan.storage import LocalStorage
from atlas_gan.tracking.hook import MLflowHook
from atlas_gan.tracking.promotion import CHALLENGER, CHAMPION, Score, decide
from atlas_gan.tracking.registry import Registration, register_generator
from atlas_gan.tracking.store import flatten, read_run_id, redact, tracking_uri
from atlas_gan.train.trainer import Trainer
from tests.servers import MlflowServer, free_port
from tests.test_train import SMALL

pytestmark = pytest.mark.slow(seconds=175)

SECRET = "atlas-secret-must-never-be-logged"
EVAL = [
    "evaluate.n=16",
    "evaluate.batch_size=16",
    "evaluate.kid_subset_size=8",
    "evaluate.kid_subsets=5",
    # Generators trained for a few steps here test the registry's mechanics, not their own quality: the quality gate
    # (no champion whose samples collapsed) is tested in test_fastgan.py.
    "tracking.champion_min_spread=null",
]


# ---- pure rules -------------------------------------------------------------------------------------------------


def test_promotion_rule():
    champ = Score(50.0, "p", "f")
    assert decide(Score(40.0, "p", "f"), champ).alias == CHAMPION
    assert decide(Score(60.0, "p", "f"), champ).alias == CHALLENGER
    tie = decide(Score(50.0, "p", "f"), champ)
    assert tie.alias == CHALLENGER and "tie" in tie.reason
    assert decide(Score(None, "p", "f"), champ).alias == CHALLENGER  # missing metric never demotes
    assert decide(Score(math.nan, "p", "f"), champ).alias == CHALLENGER
    assert decide(Score(1.0, "p", "f"), Score(None, "p", "f")).alias == CHALLENGER
    assert "protocol" in decide(Score(1.0, "other", "f"), champ).reason
    assert "dataset family" in decide(Score(1.0, "p", "other"), champ).reason
    assert decide(Score(99.0, "p", "f"), None).alias == CHAMPION


def test_params_are_flat_and_carry_no_credentials():
    flat = flatten({"train": {"lr_g": 0.0002, "run_dir": "s3://b/r"}, "x": {"url": "http://u:pw@host/p"}})
    assert flat == {"train.lr_g": "0.0002", "train.run_dir": "s3://b/r", "x.url": "http://***@host/p"}
    assert flatten({"storage": {"secret_key": "abc"}}) == {"storage.secret_key": "***"}
    assert redact("postgresql://admin:hunter2@db:5432/mlflow") == "postgresql://***@db:5432/mlflow"


def test_tracking_config_is_validated(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="tracking.uri: .*credentials do not belong"):
        load_config(None, ["tracking.uri=http://user:pw@127.0.0.1:5000"])
    with pytest.raises(ConfigError, match="tracking.uri: .*scheme must be one of"):
        load_config(None, ["tracking.uri=ftp://host/x"])
    with pytest.raises(ConfigError, match="tracking.registered_model"):
        load_config(None, ["tracking.registered_model=has space"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    config = load_config(None, [f"tracking.store_dir={tmp_path / 'store'}"]).tracking
    assert tracking_uri(config) == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking_uri(config) == "http://127.0.0.1:1"
    assert tracking_uri(config.model_copy(update={"uri": "sqlite:///x.db"})) == "sqlite:///x.db"


# ---- real runs ------------------------------------------------------------------------------------------------------


@dataclass
class TrackedRun:
    config: AtlasConfig
    fid: float
    run_id: str


def tracked_config(data: Path, run_dir: Path, store: Path, *extra: str) -> AtlasConfig:
    return load_config(
        None,
        [
            f"ingest.output={data}",
            f"train.run_dir={run_dir}",
            f"tracking.store_dir={store}",
            "tracking.registered_model=tiles-test",
            *SMALL,
            *EVAL,
            *extra,
        ],
    )


def train_tracked(config: AtlasConfig) -> dict:
    ctx = distributed.setup()
    return Trainer(config, ctx, hooks=[EvaluationHook(), MLflowHook()], progress=False).run()


@pytest.fixture(scope="module")
def tracked(train_data, tmp_path_factory):
    """Three real training runs tracked in the embedded default store (no URI anywhere), each scored at N=16;
    registered middle FID first, then the best, then the worst. An S3 secret sits in the environment throughout."""
    root = tmp_path_factory.mktemp("tracked")
    store = root / "mlflow"
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET
    try:
        runs = []
        for index, (steps, seed) in enumerate([(2, 0), (4, 1), (6, 2)]):
            config = tracked_config(
                train_data, root / f"run{index}", store, f"train.steps={steps}", f"train.seed={seed}",
                f"train.evaluate_every={steps}",
            )  # fmt: skip
            train_tracked(config)
            result = json.loads((root / f"run{index}" / "eval" / f"step-{steps:08d}.json").read_text())
            runs.append(TrackedRun(config, result["fid"], read_run_id(config)))
        assert len({r.fid for r in runs}) == 3
        ordered = sorted(runs, key=lambda r: r.fid)
        best, middle, worst = ordered
        registrations = [register_generator(r.config, progress=False) for r in (middle, best, worst)]
    finally:
        os.environ.pop("AWS_SECRET_ACCESS_KEY", None)
        for key, value in saved.items():
            if value is not None:
                os.environ[key] = value
    uri = f"sqlite:///{store / 'mlflow.db'}"
    return {"root": root, "store": store, "uri": uri, "runs": runs, "best": best, "middle": middle,
            "worst": worst, "registrations": registrations}  # fmt: skip


def test_champion_follows_the_better_fid_and_a_worse_run_is_challenger(tracked):
    first, second, third = tracked["registrations"]
    assert mlflow.get_tracking_uri() == os.environ["MLFLOW_TRACKING_URI"]  # registering left MLflow's globals alone
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    assert isinstance(first, Registration)
    assert (first.alias, second.alias, third.alias) == (CHAMPION, CHAMPION, CHALLENGER)
    assert second.champion_version == first.version and second.champion_fid == pytest.approx(tracked["middle"].fid)
    client = MlflowClient(tracked["uri"], tracked["uri"])
    assert str(client.get_model_version_by_alias("tiles-test", "champion").version) == second.version
    assert str(client.get_model_version_by_alias("tiles-test", "challenger").version) == third.version
    worst = client.get_model_version("tiles-test", third.version)
    assert worst.tags["atlas.promotion.decision"] == CHALLENGER
    assert float(worst.tags["atlas.fid"]) == pytest.approx(tracked["worst"].fid)
    assert float(worst.tags["atlas.promotion.champion_fid"]) == pytest.approx(tracked["best"].fid)
    assert "does not beat" in worst.description and str(tracked["best"].fid) in worst.description
    assert client.get_model_version("tiles-test", first.version).tags["atlas.superseded_by"] == second.version
    # each version lives in its training's MLflow run
    assert second.run_id == tracked["best"].run_id
    version = client.get_model_version("tiles-test", second.version)
    assert version.run_id == tracked["best"].run_id
    # the registered model says what it holds; the FID metric is linked to the logged model and the dataset
    registered = client.get_registered_model("tiles-test")
    assert "atlas_gan.load_generator" in registered.description and registered.tags["atlas.bands"]
    assert version.source == f"models:/{second.model_id}"
    logged = client.get_logged_model(second.model_id)
    fid = {m.key: m for m in logged.metrics}["fid"]
    assert fid.value == pytest.approx(tracked["best"].fid) and fid.step == tracked["best"].config.train.steps
    manifest = json.loads((Path(tracked["best"].config.dataset_url) / "manifest.json").read_text())
    assert fid.dataset_digest == manifest["checksum"][:32]


def test_registry_code_uses_only_public_mlflow_api():
    """No private MLflow modules or attributes: they change between releases without notice."""
    package = Path(__file__).resolve().parent.parent / "atlas_gan"
    offenders = [
        f"{path.relative_to(package)}: {line.strip()}"
        for path in package.rglob("*.py")
        for line in path.read_text().splitlines()
        if "mlflow" in line and (re.search(r"mlflow[\w.]*\._", line) or "_tracking_service" in line)
    ]
    assert offenders == []


def test_load_generator_is_the_public_call(tracked, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    champion = atlas_gan.load_generator("models:/tiles-test@champion", tracking_uri=tracked["uri"])
    assert isinstance(champion.generator, torch.nn.Module) and champion.bands
    tiles = champion.generate(3, seed=1)
    assert tiles.shape[:2] == (3, len(champion.bands)) and np.isfinite(tiles).all()
    assert os.environ.get("MLFLOW_TRACKING_URI") is None  # loading set no process-wide MLflow state


def test_champion_generates_the_same_images_as_the_source_generator(tracked, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["uri"])
    model = mlflow.pyfunc.load_model("models:/tiles-test@champion")
    config = tracked["best"].config
    store = LocalStorage()
    checkpoint = str(Path(config.train.run_dir) / "checkpoints" / f"step-{config.train.steps:08d}.pt")
    generator, meta = load_generator(store, checkpoint)
    latents = seeded_latents(12, config.train.latent_dim, 7)
    with torch.no_grad():
        expected = generator(latents).numpy()
    out = model.predict(latents.numpy())
    assert out["bands"] == meta["bands"]
    np.testing.assert_array_equal(out["images"], expected)  # same code, same weights: bit-identical
    by_seed = model.predict(np.zeros((0, config.train.latent_dim), np.float32), params={"count": 12, "seed": 7})
    np.testing.assert_array_equal(by_seed["images"], expected)
    assert out["images"].min() >= -1.0 and out["images"].max() <= 1.0
    with pytest.raises(Exception, match=r"does not match expected shape \(-1, 16\)"):  # the signature
        model.predict(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"latents must have shape \(n, 16\)"):  # predict's own check
        model.unwrap_python_model().predict(None, np.zeros((2, 3), np.float32))
    info = model.metadata
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 16]
    assert info.metadata["atlas_gan"]["bands"] == meta["bands"]


def test_the_training_run_is_tracked(tracked):
    client = MlflowClient(tracked["uri"])
    run_info = tracked["best"]
    run = client.get_run(run_info.run_id)
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["train.steps"] == str(run_info.config.train.steps) and params["train.model.family"] == "dcgan"
    assert params["ingest.output"] == run_info.config.ingest.output and params["evaluate.n"] == "16"
    manifest = json.loads((Path(run_info.config.dataset_url) / "manifest.json").read_text())
    assert tags["atlas.dataset.checksum"] == manifest["checksum"]
    assert tags["atlas.dataset.url"] == run_info.config.dataset_url
    assert tags["atlas.fid.n_fake"] == "16" and len(tags["atlas.fid.weights_sha256"]) == 64
    assert tags["atlas.fid.bands"]
    assert len(tags.get("mlflow.source.git.commit", "x" * 40)) == 40
    losses = client.get_metric_history(run_info.run_id, "loss_d")
    assert [m.step for m in losses] == list(range(1, run_info.config.train.steps + 1))
    assert client.get_metric_history(run_info.run_id, "images_per_s")
    fid = client.get_metric_history(run_info.run_id, "fid")
    assert fid[0].value == pytest.approx(run_info.fid)
    files = {f.path for f in client.list_artifacts(run_info.run_id)}
    assert {"config.yaml", "dataset", "images"} <= files
    images = [f.path for f in client.list_artifacts(run_info.run_id, "images")]  # log_image: one per grid and step
    assert any(path.startswith("images/samples-rgb+step+2+") for path in images), images
    (dataset,) = run.inputs.dataset_inputs  # the dataset as the run's input
    assert dataset.dataset.digest == manifest["checksum"][:32]
    assert json.loads(dataset.dataset.source)["uri"] == run_info.config.dataset_url
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"
    scenes = json.loads(Path(client.download_artifacts(run_info.run_id, "dataset/scenes.json")).read_text())
    assert len(scenes) == len(manifest["scenes"]) and scenes[0]["sources"]


def test_no_secret_reaches_the_store(tracked):
    """The S3 secret was in the environment during training and registration: no byte of the store holds it."""
    hits = [p for p in tracked["store"].rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert hits == []
    assert (tracked["store"] / "artifacts").is_dir()  # the embedded store keeps artifacts beside mlflow.db


def test_resumed_training_continues_the_same_mlflow_run(train_data, tmp_path):
    config = tracked_config(train_data, tmp_path / "run", tmp_path / "mlflow", "train.steps=2")
    config = config.model_copy(update={"tracking": config.tracking.model_copy(update={"uri": None})})
    os.environ.pop("MLFLOW_TRACKING_URI")
    try:
        train_tracked(config)
        first = read_run_id(config)
        longer = config.model_copy(update={"train": config.train.model_copy(update={"steps": 4})})
        train_tracked(longer)
    finally:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert read_run_id(longer) == first
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(first, "loss_g")] == [1, 2, 3, 4]
    run = client.get_run(first)
    assert run.data.params["train.steps"] == "2"  # params are immutable: the change is a tag
    assert run.data.tags["atlas.changed_on_resume.train.steps"].startswith("2 -> 4")
    assert run.data.tags["atlas.resumed_at_step"] == "2" and run.info.status == "FINISHED"
    assert "atlas.stopped_by" not in run.data.tags  # it ended at train.steps


def test_a_run_the_time_budget_ended_says_so_in_mlflow(train_data, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the embedded store under tracking.store_dir
    config = tracked_config(
        train_data, tmp_path / "run", tmp_path / "mlflow", "train.steps=50", "train.max_minutes=0.0001"
    )
    config = config.model_copy(update={"tracking": config.tracking.model_copy(update={"uri": None})})
    # 6 ms: the first step (which starts the loader) already takes longer
    Trainer(config, distributed.setup(), hooks=[MLflowHook()], progress=False).run()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(read_run_id(config))
    assert run.data.tags["atlas.stopped_by"] == "train.max_minutes (0.0001) at step 1 of 50"
    assert run.info.status == "FINISHED"


def test_tracking_never_stops_training(train_data, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    config = tracked_config(
        train_data,
        tmp_path / "run",
        tmp_path / "unused",
        "train.steps=2",
        f"tracking.uri=http://127.0.0.1:{free_port()}",
    )
    with caplog.at_level(logging.WARNING, logger="atlas_gan.tracking.hook"):
        summary = Trainer(config, distributed.setup(), hooks=[MLflowHook()], progress=False).run()
    assert summary["step"] == 2
    assert "MLflow tracking failed while opening the MLflow run" in caplog.text
    assert (tmp_path / "run" / "checkpoints" / "step-00000002.pt").exists()


def test_a_champion_scored_under_another_protocol_is_scored_again(tracked, monkeypatch):
    """Registering at another N re-scores the champion at that N before comparing: like for like."""
    best, worst = tracked["best"], tracked["worst"]
    uri = f"tracking.uri={tracked['uri']}"
    name = "tracking.registered_model=rescore-test"
    first = register_generator(load_config(None, [*_args(best.config), uri, name, "evaluate.n=16"]), progress=False)
    second = register_generator(load_config(None, [*_args(worst.config), uri, name, "evaluate.n=12"]), progress=False)
    assert first.alias == CHAMPION
    client = MlflowClient(tracked["uri"], tracked["uri"])
    champion = client.get_model_version("rescore-test", first.version)
    assert champion.tags["atlas.fid.rescored"] == "true"
    assert (
        champion.tags["atlas.fid.protocol"]
        == client.get_model_version("rescore-test", second.version).tags["atlas.fid.protocol"]
    )
    assert second.champion_fid == pytest.approx(float(champion.tags["atlas.fid"]))
    assert second.champion_fid != pytest.approx(best.fid)  # N=12, not the N=16 figure


def _args(config: AtlasConfig) -> list[str]:
    return [
        f"ingest.output={config.ingest.output}",
        f"train.run_dir={config.train.run_dir}",
        *SMALL,
        *EVAL[1:],
    ]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # reading them back: no CRS on purpose
def test_sample_cli_writes_a_grid_and_geotiffs(tracked, tmp_path):
    runner = CliRunner()
    args = ["sample", "--model", "models:/tiles-test@champion", "-n", "9", "--seed", "3", "--set"]
    result = runner.invoke(
        app,
        [
            *args,
            f"tracking.uri={tracked['uri']}",
            "--out",
            str(tmp_path / "grid.png"),
            "--geotiff",
            str(tmp_path / "t"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    files = sorted((tmp_path / "t").glob("*.tif"))
    assert len(files) == 9 and not list((tmp_path / "t").glob(".*"))
    config = tracked["best"].config
    checkpoint = str(Path(config.train.run_dir) / "checkpoints" / f"step-{config.train.steps:08d}.pt")
    sampler = load_sampler(checkpoint)
    images = sampler.generate(9, seed=3)
    manifest = json.loads((Path(config.dataset_url) / "manifest.json").read_text())
    band = manifest["normalization"]["bands"][0]
    champion = MlflowClient(tracked["uri"], tracked["uri"]).get_model_version_by_alias("tiles-test", "champion")
    for index, path in enumerate(files):
        valid, errors, _ = cog_validate(str(path), quiet=True)
        assert valid, (path, errors)
        with rasterio.open(path) as tif:
            tags = tif.tags()
        assert tags["atlas_model_uri"] == "models:/tiles-test@champion"
        assert tags["atlas_model_version"] == str(champion.version)
        assert (tags["atlas_seed"], tags["atlas_tile"], tags["atlas_truncation_psi"]) == ("3", str(index), "1.0")
        assert tags["atlas_model_family"] == sampler.meta["model"] and "atlas_label" not in tags
    with rasterio.open(files[0]) as tif:
        assert tif.descriptions == tuple(manifest["tile"]["bands"]) and tif.crs is None and tif.count == 4
        assert tif.profile["tiled"] and tif.overviews(1)  # the COG layout: internal tiles and overviews
        physical = tif.read(1)
    np.testing.assert_allclose(physical, (images[0, 0] + 1) / 2 * band["scale"] + band["offset"], rtol=1e-5)
    claimed = runner.invoke(
        app, ["sample", "--model", checkpoint, "-n", "1", "--geotiff", str(tmp_path / "c"), "--crs", "EPSG:32618"]
    )
    assert claimed.exit_code == 0, claimed.output
    with rasterio.open(tmp_path / "c" / "sample-00000.tif") as tif:
        assert tif.crs.to_epsg() == 32618
    walk = tmp_path / "walk.gif"
    walk_args = ["--walk", str(walk), "-n", "4", "--keyframes", "2", "--frames-between", "3"]
    args = ["sample", "--model", checkpoint, *walk_args]
    walked = runner.invoke(app, args)
    assert walked.exit_code == 0, walked.output
    gif = Image.open(walk)
    assert gif.format == "GIF" and gif.n_frames == 6 and gif.size == (2 * (2 * 34 + 2),) * 2
    missing = runner.invoke(
        app, ["sample", "--model", "models:/no-such-model@champion", "--set", f"tracking.uri={tracked['uri']}"]
    )
    assert missing.exit_code == 2 and "not found in MLflow" in missing.output and "no-such-model" in missing.output
    no_alias = runner.invoke(
        app, ["sample", "--model", "models:/tiles-test@nope", "--set", f"tracking.uri={tracked['uri']}"]
    )
    assert no_alias.exit_code == 2 and "alias nope not found" in no_alias.output  # bad input, not a server failure
    assert "Traceback" not in missing.output + no_alias.output


# ---- a real MLflow server with S3 artifacts ------------------------------------------------------------------------


@pytest.fixture
def mlflow_server(s3, tmp_path):
    """A tracking server with proxied artifacts on the S3 fixture's bucket; the client never needs S3 keys."""
    server = MlflowServer(
        tmp_path / "server",
        f"s3://{s3.bucket}/mlflow",
        {
            "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    server.root.mkdir()
    server.start()
    yield server
    server.stop()


def _served_copy(source: TrackedRun, run_dir: Path, server_url: str) -> AtlasConfig:
    """A copy of a tracked run registering into the server (its own MLflow run there)."""
    shutil.copytree(source.config.train.run_dir, run_dir)
    (run_dir / "mlflow-run.json").unlink()
    return load_config(
        None,
        [
            f"ingest.output={source.config.ingest.output}",
            f"train.run_dir={run_dir}",
            f"tracking.uri={server_url}",
            "tracking.registered_model=served",
            *SMALL,
            *EVAL,
        ],
    )


@pytest.mark.integration
def test_register_promote_restart_and_load_the_champion(tracked, mlflow_server, s3, tmp_path, monkeypatch):
    worse, better = tracked["middle"], tracked["best"]
    registrations = [
        register_generator(_served_copy(source, tmp_path / name, mlflow_server.url), progress=False)
        for name, source in (("worse", worse), ("better", better))
    ]
    assert [r.alias for r in registrations] == [CHAMPION, CHAMPION]
    assert registrations[1].champion_fid == pytest.approx(worse.fid)

    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="mlflow/")["Contents"]]
    assert any(k.endswith("generator.pt") for k in keys) and any(k.endswith("MLmodel") for k in keys)

    mlflow_server.stop()
    mlflow_server.start()
    client = MlflowClient(mlflow_server.url, mlflow_server.url)
    assert str(client.get_model_version_by_alias("served", "champion").version) == registrations[1].version

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    model = mlflow.pyfunc.load_model("models:/served@champion")
    checkpoint = Path(better.config.train.run_dir) / "checkpoints" / f"step-{better.config.train.steps:08d}.pt"
    generator, _ = load_generator(LocalStorage(), str(checkpoint))
    latents = seeded_latents(8, better.config.train.latent_dim, 11)
    with torch.no_grad():
        expected = generator(latents).numpy()
    np.testing.assert_array_equal(model.predict(latents.numpy())["images"], expected)

    again = _served_copy(worse, tmp_path / "again", mlflow_server.url)
    assert register_generator(again, progress=False).alias == CHALLENGER  # after the restart, promotion still works


def test_evaluate_cli_logs_into_the_checkpoints_mlflow_run(tracked, tmp_path):
    run = tracked["worst"]
    config = run.config
    args = ["evaluate", "-q", "--count", "16", "--out", str(tmp_path / "r.json")]
    for value in (f"ingest.output={config.ingest.output}", f"train.run_dir={config.train.run_dir}",
                  f"tracking.uri={tracked['uri']}", *EVAL):  # fmt: skip
        args += ["--set", value]
    before = len(MlflowClient(tracked["uri"]).get_metric_history(run.run_id, "fid"))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"logged to MLflow run {run.run_id}" in result.output
    history = MlflowClient(tracked["uri"]).get_metric_history(run.run_id, "fid")
    assert len(history) == before + 1 and history[-1].step == config.train.steps
    assert history[-1].value == pytest.approx(json.loads((tmp_path / "r.json").read_text())["fid"])
    elsewhere = CliRunner().invoke(app, [*args[:-2], "--set", f"tracking.uri=sqlite:///{tmp_path / 'other.db'}"])
    assert elsewhere.exit_code == 0 and "warning: scores not logged to MLflow" in elsewhere.output  # scores kept
