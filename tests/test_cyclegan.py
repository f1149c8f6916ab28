"""CycleGAN: ResNet generators for any bands, the history pool, the learning-rate schedule, a step that learns,
and unpaired year-to-year training on real Landsat tiles with its FID against not translating."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from atlas_gan.config import load_config
from atlas_gan.labels import LabelVocabulary
from atlas_gan.metrics.hook import EvaluationHook
from atlas_gan.models.base import ModelSpec
from atlas_gan.models.cyclegan import ResNetGenerator, residual_blocks_for
from atlas_gan.models.pix2pix import PatchDiscriminator
from atlas_gan.recipes import Progress, Update, band_roles, build_recipe, model_spec
from atlas_gan.recipes.cyclegan import HistoryPool
from atlas_gan.runtime import distributed
from atlas_gan.runtime.checkpoint import load_checkpoint
from atlas_gan.storage import LocalStorage
from atlas_gan.train.figures_hook import FiguresHook
from atlas_gan.train.trainer import Trainer

pytestmark = pytest.mark.slow(seconds=100)

CYCLEGAN = [
    "train.model.family=cyclegan",
    "train.model.domain_a=[1985, 1990]",
    "train.model.domain_b=[2015, 2020]",
    "train.model.residual_blocks=2",
    "train.condition.by=year",
    "train.g_width=8",
    "train.d_width=8",
    "train.batch_size=8",
    "train.num_workers=0",
    "train.log_every=1",
    "train.sample_every=4",
    "train.checkpoint_every=4",
    "train.shuffle_buffer=2000",  # every year mixed from the first batch on
    "train.sample_count=9",
    "evaluate.batch_size=64",
    "tracking.enabled=false",
]


def cyclegan_config(train_data, run_dir, *overrides):
    return load_config(None, [f"ingest.output={train_data}", f"train.run_dir={run_dir}", *CYCLEGAN, *overrides])


@pytest.mark.parametrize(("bands", "size"), [(3, 32), (4, 64), (12, 32)])
def test_resnet_generator_keeps_size_and_bands(bands, size):
    spec = ModelSpec(bands, size, g_width=8, d_width=8, input_bands=bands, norm="instance", residual_blocks=2)
    generator = ResNetGenerator(spec).eval()
    images = torch.rand(2, bands, size, size) * 2 - 1
    out = generator(images)
    assert out.shape == images.shape and out.abs().max() <= 1
    assert PatchDiscriminator(spec, paired=False)(out).shape[:2] == (2, 1)
    assert ResNetGenerator(spec).eval()(torch.rand(1, bands, 2 * size, size)).shape[-2:] == (2 * size, size)
    assert (residual_blocks_for(128), residual_blocks_for(256)) == (6, 9)


def test_history_pool_fills_then_swaps_and_saves_its_images():
    torch.manual_seed(0)
    pool = HistoryPool(4)
    first = torch.arange(3.0).reshape(3, 1)
    assert torch.equal(pool.query(first), first) and len(pool.images) == 3  # filling: fakes pass through
    later = torch.full((20, 1), 9.0)
    out = pool.query(later)
    assert len(pool.images) == 4 and (out != 9.0).any() and (out == 9.0).any()  # some swapped for older fakes
    restored = HistoryPool(4)
    restored.load_state_dict(pool.state_dict(), torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(restored.images, pool.images, strict=True))
    assert torch.equal(HistoryPool(0).query(later), later)


def test_learning_rates_decay_linearly_over_the_second_half():
    cfg = load_config(None, [*CYCLEGAN, "train.steps=100"]).train
    vocabulary = LabelVocabulary("year", ("1985", "1990", "2015", "2020"), (0.25,) * 4)
    roles = band_roles(cfg, ["1", "2", "3"])
    recipe = build_recipe(cfg, model_spec(cfg, roles, 32, 4), distributed.setup(), None, None, roles, vocabulary)
    assert (recipe.domain_a, recipe.domain_b) == ({0, 1}, {2, 3})
    factors = [recipe.learning_rate_factor(step) for step in (0, 49, 50, 75, 99)]
    assert factors == [1.0, 1.0, 1.0, 0.5, pytest.approx(0.02)]  # 0 after the last step


def test_cyclegan_step_learns_and_refuses_bad_domains():
    cfg = load_config(None, [*CYCLEGAN, "train.steps=1000"]).train
    vocabulary = LabelVocabulary("year", ("1985", "1990", "2015", "2020"), (0.25,) * 4)
    roles = band_roles(cfg, ["1", "2", "3"])
    spec = model_spec(cfg, roles, 32, 4)
    assert spec.num_classes == 0 and spec.input_bands == spec.bands == 3  # domains pick data, not condition nets
    ctx = distributed.setup()
    torch.manual_seed(0)
    recipe = build_recipe(cfg, spec, ctx, None, None, roles, vocabulary)
    generator = torch.Generator().manual_seed(1)
    a = torch.rand(4, 3, 32, 32, generator=generator) * 2 - 1
    batch = {"image": torch.cat([a, -a]), "label": torch.tensor([0, 1, 0, 1, 2, 3, 2, 3]), "epoch": torch.zeros(8)}

    def batches():
        while True:
            yield batch

    stream, update, progress = batches(), Update(ctx), Progress()
    first = recipe.step(stream, update, progress)
    for step in range(1, 60):
        progress.step = step
        last = recipe.step(stream, update, progress)
    assert set(first) == {"loss_d", "loss_g", "loss_g_adversarial", "loss_cycle", "loss_identity"}
    assert last["loss_cycle"] < 0.9 * first["loss_cycle"] and last["loss_identity"] < 0.9 * first["loss_identity"]
    assert last["loss_g"] < first["loss_g"]
    assert progress.images_seen == 60 * 8
    with pytest.raises(ValueError, match="unknown label '1999'.*known: 1985, 1990, 2015, 2020"):
        build_recipe(
            load_config(None, [*CYCLEGAN, "train.model.domain_a=[1999]"]).train,
            spec,
            ctx,
            None,
            None,
            roles,
            vocabulary,
        )
    with pytest.raises(ValueError, match="set train.condition"):
        build_recipe(cfg, spec, ctx, None, None, roles, None)
    with pytest.raises(Exception, match="share labels"):
        load_config(None, [*CYCLEGAN, "train.model.domain_b=[1990]"])


def test_cyclegan_trains_year_to_year_on_landsat_and_resumes_its_pools(train_data, tmp_path):
    """1985/1990 -> 2015/2020 on the Pucallpa years: scored on held-out tiles of both domains (FID beside the FID
    of not translating), drawn, and a resumed run gets each rank's history pool back exactly."""
    ctx = distributed.setup()
    run_dir = tmp_path / "run"
    first = Trainer(cyclegan_config(train_data, run_dir, "train.steps=4", "train.evaluate_every=4"), ctx)
    assert first.examples is not None and len(first.examples) == 9
    evaluation = EvaluationHook(n=40)
    first.hooks += [evaluation, FiguresHook()]
    first.run()
    result = evaluation.results[-1]
    assert result["kind"] == "unpaired" and result["domain_a"] == ["1985", "1990"]
    assert np.isfinite(result["fid"]) and np.isfinite(result["identity_fid"]) and result["n_a"] == result["n_b"] == 40
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "evaluate_unpaired"] == [4]
    assert (run_dir / "figures" / "translation-rgb.png").stat().st_size > 0
    saved = load_checkpoint(LocalStorage(), str(run_dir / "checkpoints" / "step-00000004.pt"))
    assert set(saved["networks"]) == {"G", "F", "D_A", "D_B"}
    assert set(saved["optimizers"]) == {"generators", "discriminators"}
    pools = saved["recipe_ranks"][0]
    assert 0 < pools["D_A"]["images"].shape[0] <= 50 and 0 < pools["D_B"]["images"].shape[0] <= 50
    resumed = Trainer(cyclegan_config(train_data, run_dir, "train.steps=6"), ctx)
    assert resumed.resumed_from == 4
    assert torch.equal(torch.stack(resumed.recipe.pools["D_A"].images).cpu(), pools["D_A"]["images"])
    assert resumed.run()["step"] == 6


def test_cyclegan_registers_by_fid_and_serves_translations(train_data, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from atlas_gan.runtime.generator import load_generator
    from atlas_gan.tracking.hook import MLflowHook
    from atlas_gan.tracking.registry import register_generator

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = [
        "train.steps=2",
        "train.evaluate_every=2",
        "evaluate.n=24",
        "tracking.enabled=true",
        f"tracking.uri={uri}",
    ]
    config = cyclegan_config(train_data, tmp_path / "run", *settings, "tracking.registered_model=years")
    summary = Trainer(config, distributed.setup(), hooks=[EvaluationHook(), MLflowHook()], progress=False).run()
    registration = register_generator(config, progress=False)
    tags = MlflowClient(uri, uri).get_model_version("years", registration.version).tags
    assert tags["atlas.primary_metric"] == "fid" and tags["atlas.translation"] == "1985,1990 -> 2015,2020"
    better = float(tags["atlas.translation.score"]) < float(tags["atlas.translation.baseline"])
    assert registration.alias == ("champion" if better else "challenger") and registration.fid is not None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test (the session's sandbox store)
    model = mlflow.pyfunc.load_model(f"models:/years/{registration.version}")
    generator, _ = load_generator(LocalStorage(), summary["checkpoint"])
    images = torch.rand(2, 4, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        expected = generator(images).numpy()
    np.testing.assert_array_equal(model.predict(images.numpy())["images"], expected)
