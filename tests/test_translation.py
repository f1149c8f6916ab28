"""pix2pix and translation: the blocked validation split, networks, the recipe, paired metrics, training on real
Landsat tiles, and whole-scene translation into a COG."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from atlas_gan.cli import app
from atlas_gan.config import ValidationConfig, load_config
from atlas_gan.metrics.hook import EvaluationHook
from atlas_gan.metrics.paired import LinearBaseline, paired_scores, spectral_angle_degrees, ssim_per_band
from atlas_gan.models.base import ModelSpec
from atlas_gan.models.pix2pix import PatchDiscriminator, UNetGenerator
from atlas_gan.recipes import Progress, Update, band_roles, build_recipe, model_spec
from atlas_gan.runtime import distributed
from atlas_gan.runtime.checkpoint import load_checkpoint
from atlas_gan.runtime.generator import load_generator
from atlas_gan.sampling import Sampler, load_sampler
from atlas_gan.shards import read_manifest, shard_urls
from atlas_gan.split import NEIGHBOUR_DISTANCE, blocked_split
from atlas_gan.storage import LocalStorage
from atlas_gan.train.data import TileStream, read_tiles
from atlas_gan.train.figures_hook import FiguresHook
from atlas_gan.train.trainer import Trainer
from atlas_gan.translate import SceneTranslator, blend_window, translate_scene

pytestmark = pytest.mark.slow(seconds=105)

PIX2PIX = [
    "train.model.family=pix2pix",
    "train.model.input_bands=[3, 4]",  # Pucallpa: red, green
    "train.model.target_bands=[2]",  # -> NIR
    "train.g_width=8",
    "train.d_width=8",
    "train.batch_size=8",
    "train.num_workers=0",
    "train.log_every=1",
    "train.sample_every=5",
    "train.checkpoint_every=5",
    "train.shuffle_buffer=64",
    "train.sample_count=9",
    "evaluate.batch_size=64",
    "evaluate.n=32",  # held-out tiles scored (Inception on CPU is the slow part)
    "tracking.enabled=false",
]


def pix2pix_config(train_data, run_dir, *overrides):
    return load_config(None, [f"ingest.output={train_data}", f"train.run_dir={run_dir}", *PIX2PIX, *overrides])


# ---- the split ----------------------------------------------------------------------------------------------------


def grid_tiles(side: int, dates: int) -> tuple[list[str], list[str], np.ndarray]:
    """Tiles of 100 m on a side x side grid, the same ground at each date (one scene per date)."""
    keys, scenes, positions = [], [], []
    for date in range(dates):
        for row in range(side):
            for col in range(side):
                keys.append(f"d{date}_r{row}_c{col}")
                scenes.append(f"d{date}")
                positions.append((col * 100.0 + 50, row * 100.0 + 50))
    return keys, scenes, np.array(positions)


def test_blocked_split_holds_out_whole_blocks_with_a_buffer_and_every_date():
    keys, scenes, positions = grid_tiles(20, 3)
    split = blocked_split(keys, scenes, positions, 100.0, ValidationConfig(block_tiles=4), 0.1)
    assert len(split.validation) >= 0.1 * len(keys) and split.train_count > 0.6 * len(keys)
    where = dict(zip(keys, map(tuple, positions), strict=True))
    held = {where[k] for k in split.validation}
    for key in split.validation:  # every date of a held-out place is held out too
        for date in range(3):
            assert f"d{date}_{key.split('_', 1)[1]}" in split.validation
    for key in split.train_keys:  # no training tile beside (or on) a held-out one
        x, y = where[key]
        assert min(math.dist((x, y), h) for h in held) >= NEIGHBOUR_DISTANCE * 100.0
    assert split.buffer and not split.buffer & split.validation
    again = blocked_split(keys, scenes, positions, 100.0, ValidationConfig(block_tiles=4), 0.1)
    assert again.validation == split.validation  # deterministic
    other = blocked_split(keys, scenes, positions, 100.0, ValidationConfig(block_tiles=4, seed=1), 0.1)
    assert other.validation != split.validation
    none = blocked_split(keys, scenes, positions, 100.0, ValidationConfig(), 0.0)
    assert not none.excluded and none.train_count == len(keys)


def test_split_by_scenes_and_one_that_leaves_nothing_to_train_on():
    keys, scenes, positions = grid_tiles(6, 1)
    far = positions + np.array([10_000.0, 0.0])  # a second scene elsewhere
    both = blocked_split(
        keys + [f"x{k}" for k in keys],
        scenes + ["far"] * len(keys),
        np.concatenate([positions, far]),
        100.0,
        ValidationConfig(by="scenes"),
        0.1,
    )
    assert both.validation in (frozenset(keys), frozenset(f"x{k}" for k in keys)) and not both.buffer
    same_ground = grid_tiles(6, 2)  # two dates of one place: holding one out buffers the other entirely
    with pytest.raises(ValueError, match="leaves no training tile"):
        blocked_split(*same_ground, 100.0, ValidationConfig(by="scenes"), 0.1)


# ---- networks, recipe, metrics -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bands_in", "bands_out", "size"), [(3, 1, 32), (4, 4, 64), (3, 3, 32), (12, 2, 64)])
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_pix2pix_networks_any_bands(bands_in, bands_out, size, norm):
    spec = ModelSpec(bands_out, size, g_width=8, d_width=8, input_bands=bands_in, norm=norm)
    generator, discriminator = UNetGenerator(spec).eval(), PatchDiscriminator(spec)
    images = torch.rand(2, bands_in, size, size) * 2 - 1
    out = generator(images)
    assert out.shape == (2, bands_out, size, size) and out.abs().max() <= 1
    logits = discriminator(images, out)
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] == size // 8 - 2  # one logit per overlapping patch


def test_pix2pix_step_lowers_its_losses():
    cfg = load_config(None, [*PIX2PIX, "train.model.input_bands=[1, 2]", "train.model.target_bands=[3]"]).train
    roles = band_roles(cfg, ["a", "b", "c"])
    spec = model_spec(cfg, roles, 32, 0)
    ctx = distributed.setup()
    torch.manual_seed(0)
    recipe = build_recipe(cfg, spec, ctx, None, None, roles)
    generator = torch.Generator().manual_seed(1)
    source = torch.rand(8, 2, 32, 32, generator=generator) * 2 - 1
    target = (0.5 * source[:, :1] - 0.3 * source[:, 1:]).clamp(-1, 1)  # a translation that exists
    batch = {"image": torch.cat([source, target], 1), "label": torch.zeros(8), "epoch": torch.zeros(8)}

    def batches():
        while True:
            yield batch

    stream, update, progress = batches(), Update(ctx), Progress()
    first = recipe.step(stream, update, progress)
    for _ in range(60):
        last = recipe.step(stream, update, progress)
    assert set(first) == {"loss_d", "loss_g", "loss_g_adversarial", "loss_l1"}
    assert last["loss_d"] < 0.5 * first["loss_d"]  # D learns to tell real pairs from translated ones
    assert last["loss_l1"] < 0.95 * first["loss_l1"]  # and G moves toward the target all the same
    assert progress.images_seen == 61 * 8


def test_pix2pix_options_are_validated():
    with pytest.raises(Exception, match="bands repeat"):
        load_config(None, [*PIX2PIX, "train.model.input_bands=[3, 3]"])
    with pytest.raises(Exception, match="pix2pix has one D step"):
        load_config(None, [*PIX2PIX, "train.model.n_critic=5"])
    with pytest.raises(Exception, match="dcgan has no L1 loss to a target"):
        load_config(None, ["train.model.family=dcgan", "train.model.l1_weight=10"])
    cfg = load_config(None, [*PIX2PIX, "train.model.target_bands=[B8]"]).train
    with pytest.raises(ValueError, match="band 'B8' not found"):
        band_roles(cfg, ["1", "2", "3", "4"])


def test_paired_metrics_known_values():
    target = torch.rand(4, 2, 16, 16) * 2 - 1
    same = paired_scores(target, target, ["a", "b"], np.ones(2), np.zeros(2))
    assert same["psnr"] == math.inf and same["ssim"] == pytest.approx(1.0) and same["l1"] == 0
    shifted = (target + 0.2).clamp(-1, 1)  # 0.1 in normalized [0, 1] units where not clipped
    scores = paired_scores(shifted, target, ["a", "b"], np.array([100.0, 10.0]), np.zeros(2))
    mse = (((shifted - target) / 2) ** 2).mean().item()
    assert scores["psnr"] == pytest.approx(10 * math.log10(1 / mse), abs=0.5)
    for band, scale in (("a", 100.0), ("b", 10.0)):  # physical units: normalized x the band's scale
        assert scores["per_band"][band]["l1_physical"] == pytest.approx(scale * scores["per_band"][band]["l1"])
    assert spectral_angle_degrees(np.ones((1, 2, 1, 1)), np.array([1.0, 0.0]).reshape(1, 2, 1, 1)) == pytest.approx(
        45.0
    )
    assert spectral_angle_degrees(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2))) is None
    unit = (target + 1) / 2  # SSIM takes [0, 1] images: an inverted image anti-correlates
    assert (ssim_per_band(unit, 1 - unit) < -0.5).all()


def test_linear_baseline_recovers_a_linear_mapping():
    inputs = torch.rand(6, 3, 8, 8) * 2 - 1
    targets = 0.4 * inputs[:, :1] - 0.2 * inputs[:, 2:] + 0.1
    baseline = LinearBaseline(inputs, targets)
    assert torch.allclose(baseline(inputs), targets, atol=1e-5)


def test_blend_windows_sum_to_one():
    window = blend_window(16)
    total = np.zeros((48, 48))
    for y in range(0, 33, 8):
        for x in range(0, 33, 8):
            total[y : y + 16, x : x + 16] += window
    assert np.allclose(total[8:40, 8:40], 1.0)


# ---- on real tiles --------------------------------------------------------------------------------------------------


def test_pix2pix_trains_scores_and_resumes_on_landsat(train_data, tmp_path):
    """Red, green -> NIR on the Pucallpa years: the split keeps held-out tiles out of training, evaluation scores
    them against the linear baseline, and a resumed run ends where an uninterrupted one does."""
    ctx = distributed.setup()
    straight = Trainer(
        pix2pix_config(train_data, tmp_path / "straight", "train.steps=10", "train.evaluate_every=5"), ctx
    )
    evaluation = EvaluationHook()
    straight.hooks += [evaluation, FiguresHook()]
    assert straight.spec.input_bands == 2 and straight.bands == ["2"] and straight.input_bands == ["3", "4"]
    assert straight.fixed_inputs[0].shape == (9, 2, 32, 32)
    summary = straight.run()
    split = json.loads((tmp_path / "straight" / "split.json").read_text())
    assert split["validation_tiles"] > 0.1 * split["tiles"] * 0.9 and split["buffer_tiles"] > 0
    assert split["train"] == split["tiles"] - split["validation_tiles"] - split["buffer_tiles"]
    result = json.loads((tmp_path / "straight" / "eval" / "step-00000010.json").read_text())
    assert result["kind"] == "translation" and result["target_bands"] == ["2"]
    assert result["n_validation"] == 32 < split["validation_tiles"]
    assert math.isfinite(result["psnr"]) and 0 < result["baselines"]["linear"]["psnr"] < 60
    assert result["psnr_over_baseline"] == pytest.approx(result["psnr"] - result["baselines"]["linear"]["psnr"])
    assert "identity" not in result["baselines"]  # input and target bands differ
    assert result["fid_bands"] == ["2"] and np.isfinite(result["fid"])  # the NIR band as grey, vs the true NIR
    assert np.isfinite(result["baselines"]["linear"]["fid"]) and result["fid_unavailable"] is None
    events = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "evaluate_translation"] == [5, 10]
    assert (tmp_path / "straight" / "figures" / "translation-rgb.png").stat().st_size > 0

    manifest = read_manifest(LocalStorage(), str(train_data))
    urls = shard_urls(manifest, str(train_data))
    off = load_config().train.augment.model_copy(update={"flips": False, "rot90": False})
    stream = TileStream(urls, 0, 1, image_size=32, seed=0, augment_config=off, exclude=straight.split.excluded)
    trained = [s["image"].numpy().tobytes() for s in itertools.takewhile(lambda s: s["epoch"] == 0, stream)]
    assert len(trained) == split["train"]
    keys, held_out = read_tiles(urls, frozenset(split["validation_keys"]), 32, None, 10_000)
    assert len(keys) == split["validation_tiles"]
    assert not {tile.numpy().tobytes() for tile in held_out} & set(trained)

    resumed_dir = tmp_path / "resumed"
    Trainer(pix2pix_config(train_data, resumed_dir, "train.steps=5"), ctx).run()
    resumed = Trainer(pix2pix_config(train_data, resumed_dir, "train.steps=10"), ctx)
    assert resumed.resumed_from == 5
    saved = load_checkpoint(LocalStorage(), str(resumed_dir / "checkpoints" / "step-00000005.pt"))
    for name, network in resumed.recipe.networks.items():  # networks, EMA and optimizers as saved
        assert all(torch.equal(v, saved["networks"][name][k]) for k, v in network.state_dict().items())
    assert all(torch.equal(v, saved["ema"]["G"][k]) for k, v in resumed.emas["G"].model.state_dict().items())
    assert resumed.recipe.optimizers["G"].state_dict()["state"][0]["step"] == 5
    assert resumed.run()["step"] == 10 and summary["ranks_in_sync"]


def test_translate_a_whole_scene_without_seams(train_data, geotiff, tmp_path):
    """With instance norm each tile is translated with its own contrast, so tiles laid side by side show seams;
    blending must leave none where tiles meet. The COG keeps the scene's grid, names the target band and model."""
    run_dir = tmp_path / "run"
    config = pix2pix_config(train_data, run_dir, "train.steps=1", "train.model.norm=instance")
    Trainer(config, distributed.setup(), progress=False).run()
    checkpoint = str(run_dir / "checkpoints" / "step-00000001.pt")
    scene = geotiff / "landsat-pucallpa" / "landsat_2015.tif"
    out = tmp_path / "out" / "nir.tif"
    result = CliRunner().invoke(
        app, ["translate", str(scene), "--model", checkpoint, "--out", str(out), "--quiet", "--set", "train.seed=0"]
    )
    assert result.exit_code == 0, result.output
    assert "3,4 -> 2" in result.output
    from rio_cogeo.cogeo import cog_validate

    assert cog_validate(str(out))[0]
    with rasterio.open(scene) as source, rasterio.open(out) as translated:
        assert translated.crs == source.crs and translated.transform == source.transform
        assert translated.shape == source.shape and translated.descriptions == ("2",)
        assert translated.tags()["atlas_model_uri"] == checkpoint and translated.tags()["atlas_translation"]
        values = translated.read(1)
        valid = (source.read_masks([3, 4]) > 0).all(axis=0)  # the bands the model reads
    assert np.isfinite(values[valid]).all() and np.isnan(values[~valid]).all()
    stride = 16  # half the 32 px tiles: tiles start every 16 columns (and rows), from -16
    for axis in (0, 1):  # the change from one pixel to the next is no larger where tiles meet than inside them
        steps = np.abs(np.diff(values, axis=axis))
        at_borders = (np.arange(steps.shape[axis]) % stride) == stride - 1
        border = np.take(steps, np.flatnonzero(at_borders), axis=axis)
        inside = np.take(steps, np.flatnonzero(~at_borders), axis=axis)
        assert np.nanmean(border) <= 1.1 * np.nanmean(inside)


def test_translate_refuses_a_latent_generator_and_missing_bands(train_data, geotiff, tmp_path):
    ctx = distributed.setup()
    latent_run = tmp_path / "dcgan"
    config = load_config(
        None,
        [
            f"ingest.output={train_data}",
            f"train.run_dir={latent_run}",
            "train.steps=1",
            "train.g_width=8",
            "train.d_width=8",
            "train.batch_size=4",
            "train.num_workers=0",
            "tracking.enabled=false",
        ],
    )
    Trainer(config, ctx, progress=False).run()
    generator, meta = load_generator(LocalStorage(), str(latent_run / "checkpoints" / "step-00000001.pt"))
    with pytest.raises(ValueError, match="translate needs an image-to-image model"):
        SceneTranslator(Sampler(generator, meta, "dcgan"))
    run_dir = tmp_path / "pix2pix"
    Trainer(pix2pix_config(train_data, run_dir, "train.steps=1"), ctx, progress=False).run()
    sampler = load_sampler(str(run_dir / "checkpoints" / "step-00000001.pt"))
    translator = SceneTranslator(sampler)
    with pytest.raises(ValueError, match="the model reads bands"):
        translate_scene(translator, str(geotiff / "tests" / "RGB.byte.tif"), str(tmp_path / "x.tif"), progress=False)
    assert not (tmp_path / "x.tif").exists()
    state = load_checkpoint(LocalStorage(), str(run_dir / "checkpoints" / "step-00000001.pt"))
    assert state["input_bands"] == ["3", "4"] and state["generator"]["signature"] == "image"


def test_pix2pix_registers_with_its_scores_and_serves_images(train_data, tmp_path, monkeypatch):
    """Registered like any generator, scored by PSNR, crowned only above the linear baseline, and the registered
    pyfunc translates images exactly as the checkpoint does."""
    import mlflow
    from mlflow import MlflowClient

    from atlas_gan.metrics.hook import EvaluationHook as Scores
    from atlas_gan.tracking.hook import MLflowHook
    from atlas_gan.tracking.registry import register_generator

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = ["train.steps=6", "train.evaluate_every=6", "tracking.enabled=true", f"tracking.uri={uri}"]
    config = pix2pix_config(train_data, tmp_path / "run", *settings, "tracking.registered_model=nir")
    summary = Trainer(config, distributed.setup(), hooks=[Scores(), MLflowHook()], progress=False).run()
    registration = register_generator(config, progress=False)
    client = MlflowClient(uri, uri)
    tags = client.get_model_version("nir", registration.version).tags
    assert tags["atlas.primary_metric"] == "psnr" and tags["atlas.translation"] == "3,4 -> 2"
    over = float(tags["atlas.translation.score"]) - float(tags["atlas.translation.baseline"])
    assert registration.psnr == pytest.approx(float(tags["atlas.translation.score"]))
    assert registration.alias == ("champion" if over > 0 else "challenger")
    assert "PSNR" in registration.summary()
    run = client.get_run(registration.run_id)
    assert "psnr" in run.data.metrics and "baseline_psnr" in run.data.metrics  # logged while training too
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    logged = client.download_artifacts(registration.run_id, "dataset/split.json", str(tmp_path))
    assert json.loads(Path(logged).read_text())["validation_keys"] == split["validation_keys"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test (the session's sandbox store)
    model = mlflow.pyfunc.load_model(f"models:/nir/{registration.version}")
    generator, meta = load_generator(LocalStorage(), summary["checkpoint"])
    images = torch.rand(3, 2, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        expected = generator(images).numpy()
    served = model.predict(images.numpy())
    np.testing.assert_array_equal(served["images"], expected)
    assert served["bands"] == ["2"] and meta["input_bands"] == ["3", "4"]
    with pytest.raises(Exception, match="missing inputs \\['images'\\]"):  # nothing to draw from a seed
        model.predict(None, params={"count": 4})


def test_pix2pix_exports_with_any_batch_and_size(train_data, tmp_path):
    import onnxruntime

    from atlas_gan.export import export_generator

    run_dir = tmp_path / "run"
    Trainer(pix2pix_config(train_data, run_dir, "train.steps=2"), distributed.setup(), progress=False).run()
    generator, meta = load_generator(LocalStorage(), str(run_dir / "checkpoints" / "step-00000002.pt"))
    spec = ModelSpec(**meta["spec"])
    path = export_generator(generator, spec, tmp_path / "p2p.onnx", "onnx", info=meta)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"] and session.get_outputs()[0].name == "translated"
    for shape in ((3, 2, 32, 32), (1, 2, 64, 96)):  # batch and size both free (multiples of the 32 px tile)
        images = torch.rand(*shape, generator=torch.Generator().manual_seed(2)) * 2 - 1
        with torch.no_grad():
            expected = generator(images).numpy()
        (out,) = session.run(["translated"], {"images": images.numpy()})
        assert out.shape == (shape[0], 1, *shape[2:])
        np.testing.assert_allclose(out, expected, atol=1e-4)


@pytest.mark.integration
def test_translate_reads_and_writes_s3(s3, train_data, geotiff, tmp_path):
    """A scene on S3 (SeaweedFS) translated to a COG on S3: the same values as translating the local file."""
    run_dir = tmp_path / "run"
    Trainer(pix2pix_config(train_data, run_dir, "train.steps=1"), distributed.setup(), progress=False).run()
    checkpoint = str(run_dir / "checkpoints" / "step-00000001.pt")
    scene = geotiff / "landsat-pucallpa" / "landsat_1990.tif"
    client = s3.client()
    client.upload_file(str(scene), s3.bucket, "scenes/landsat_1990.tif")
    source, target = f"s3://{s3.bucket}/scenes/landsat_1990.tif", f"s3://{s3.bucket}/out/nir_1990.tif"
    result = CliRunner().invoke(app, ["translate", source, "--model", checkpoint, "--out", target, "--quiet"])
    assert result.exit_code == 0, result.output
    client.download_file(s3.bucket, "out/nir_1990.tif", str(tmp_path / "from-s3.tif"))
    translate_scene(SceneTranslator(load_sampler(checkpoint)), str(scene), str(tmp_path / "local.tif"), progress=False)
    with rasterio.open(tmp_path / "from-s3.tif") as remote, rasterio.open(tmp_path / "local.tif") as local:
        assert remote.crs == local.crs and remote.transform == local.transform
        np.testing.assert_array_equal(remote.read(), local.read())
    missing = CliRunner().invoke(
        app, ["translate", f"s3://{s3.bucket}/scenes/none.tif", "--model", checkpoint, "--out", target, "--quiet"]
    )
    assert missing.exit_code != 0 and "none.tif" in missing.output
