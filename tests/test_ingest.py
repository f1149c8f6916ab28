"""Ingest on the real imagery of ../shared/data/geotiff, into local folders."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import webdataset as wds
from rasterio.windows import Window
from typer.testing import CliRunner

from atlas_gan.cli import app
from atlas_gan.geo.normalize import Normalization
from atlas_gan.ingest import IngestConfigMismatch, IngestRejected, ingest
from atlas_gan.shards import read_manifest, shard_urls
from atlas_gan.storage import LocalStorage

PARANA = "landsat8-parana"

# What each file of geotiff/tests/ must give at 32 px tiles: (bands, source dtype, EPSG or None) or a rejection.
TEST_FILES = {
    "201404_13SED190110_201404_0x1500m_CL_1_nodata.tif": (3, "uint8", 26913),
    "L7_ETMs.tif": (6, "uint8", 31985),
    "LE70220491999322EDC01_stack.gtif": (8, "int16", 32615),
    "RGB.byte.tif": (3, "uint8", 32618),
    "all-nodata.tif": "no usable tile",
    "bigearthnet_S2A_MSIL2A_20170613T101031_87_48": (12, "uint16", 32633),
    "image_nodata.tif": (1, "int16", None),  # custom Albers WKT: no EPSG code, WKT kept
    "mosaic_cog1.tif": (3, "uint16", 32618),
    "rgb-byte-tenth.tif": (3, "uint8", None),  # "UTM Zone 18, Northern" WKT without an authority code
    "rgb16.tif": (3, "uint16", 32620),
    "rgbn_suba.tif": (4, "uint8", 32618),
    "rmnp-rgb.tif": (3, "uint8", 4326),
}


def read_samples(output: Path) -> list[dict]:
    """Decode every sample with plain tarfile + numpy + json (no atlas-gan code)."""
    manifest = json.loads((output / "manifest.json").read_text())
    samples = []
    for shard in manifest["shards"]:
        with tarfile.open(output / shard["url"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        keys = sorted({name.split(".", 1)[0] for name in members})
        for key in keys:
            samples.append(
                {
                    "key": key,
                    "tile": np.load(io.BytesIO(members[f"{key}.tile.npy"])),
                    "mask": np.load(io.BytesIO(members[f"{key}.mask.npy"])),
                    "meta": json.loads(members[f"{key}.json"]),
                }
            )
    return samples


def test_every_file_is_ingested_or_rejected_with_a_reason(geotiff, make_config, tmp_path):
    assert sorted(p.name for p in (geotiff / "tests").iterdir()) == sorted(TEST_FILES)  # the list is complete
    for name, expected in TEST_FILES.items():
        output = tmp_path / name
        # float32 tiles here; nodata only where the file declares it (configs/satellite.yaml assumes 0 for Landsat)
        report = ingest(
            make_config(geotiff / "tests" / name, output, tile_size=32, tile_dtype="float32", nodata=None, workers=1),
            progress=False,
        )
        manifest = read_manifest(LocalStorage(), str(output))
        rasters = [r for r in manifest["rejected"] if not r["file"].endswith(".json")]
        if isinstance(expected, str):
            assert report.added_scenes == []
            assert len(rasters) == 1 and expected in rasters[0]["reason"], rasters
            continue
        bands, dtype, epsg = expected
        assert rasters == [], name
        (scene,) = manifest["scenes"]
        assert (len(scene["bands"]), scene["dtype"], scene["epsg"]) == (bands, dtype, epsg), name
        assert "PROJCS" in scene["crs"] or "PROJCRS" in scene["crs"] or "GEOGCS" in scene["crs"]
        samples = read_samples(output)
        assert len(samples) == scene["tiles"] == manifest["totals"]["samples"] > 0
        first = samples[0]
        assert first["tile"].shape == (bands, 32, 32) and first["tile"].dtype == np.float32
        assert first["mask"].shape == (32, 32) and first["mask"].dtype == bool
        assert first["meta"]["scene_id"] == scene["id"] and first["meta"]["bands"] == scene["bands"]
        assert 0.0 <= first["meta"]["nodata_fraction"] <= 0.05


def test_json_sidecar_of_bigearthnet_is_rejected_as_non_raster(geotiff, make_config, tmp_path):
    folder = geotiff / "tests" / "bigearthnet_S2A_MSIL2A_20170613T101031_87_48"
    report = ingest(make_config(folder, tile_size=40, workers=1), progress=False)
    (rejected,) = report.rejected
    assert rejected["file"].endswith("_labels_metadata.json")
    assert rejected["reason"].startswith("not a raster GDAL can read")


@pytest.fixture(scope="module")
def parana(geotiff, tmp_path_factory):
    """Both Landsat 8 scenes ingested once, 2 workers, float32 tiles, Landsat fill value 0 as nodata."""
    from atlas_gan.config import load_config

    output = tmp_path_factory.mktemp("parana") / "shards"
    config = load_config(
        None,
        [
            f"ingest.source={geotiff / PARANA}",
            f"ingest.output={output}",
            "ingest.tile_dtype=float32",
            "ingest.workers=2",
            "ingest.nodata=0",
            "ingest.shard_max_samples=500",
        ],
    )
    report = ingest(config, progress=False)
    return config, output, report


def test_parana_shards_and_manifest(parana, geotiff):
    _, output, report = parana
    manifest = json.loads((output / "manifest.json").read_text())
    assert report.added_scenes == [
        "LC08_L1TP_224077_20200518_20200518_01_RT",
        "LC08_L1TP_224078_20200518_20200518_01_RT",
    ]
    assert manifest["tile"]["bands"] == ["B2", "B3", "B4"]
    assert 1300 <= manifest["totals"]["samples"] <= 1500  # the collar of fill values is dropped
    assert manifest["totals"]["dropped_nodata"] > 0
    assert [s["url"] for s in manifest["shards"]] == [f"tiles-{i:06d}.tar" for i in range(len(manifest["shards"]))]
    assert all(s["samples"] <= 500 for s in manifest["shards"])
    import hashlib

    for shard in manifest["shards"]:
        assert hashlib.sha256((output / shard["url"]).read_bytes()).hexdigest() == shard["sha256"]
    assert [b["name"] for b in manifest["normalization"]["bands"]] == ["B2", "B3", "B4"]
    assert manifest["normalization"]["exact"] is True
    assert manifest["config"]["tile_size"] == 64
    scene = manifest["scenes"][0]
    assert scene["acquired"] == "2020-05-18" and scene["epsg"] == 32621
    assert {s["band"] for s in scene["sources"]} == {"B2", "B3", "B4"}
    assert not list(output.glob(".*"))  # no staging files left behind


def test_normalization_is_the_dataset_percentile_of_valid_pixels(parana):
    _, output, _ = parana
    manifest = json.loads((output / "manifest.json").read_text())
    samples = read_samples(output)
    for b, band in enumerate(manifest["normalization"]["bands"]):
        raw = np.concatenate([s["tile"][b][s["mask"]] * band["scale"] + band["offset"] for s in samples])
        raw = np.rint(raw)
        assert band["valid_pixels"] == raw.size
        assert band["offset"] == np.percentile(raw, 2)
        assert band["offset"] + band["scale"] == np.percentile(raw, 98)


def test_round_trip_equals_source_window(parana, geotiff):
    _, output, _ = parana
    manifest = json.loads((output / "manifest.json").read_text())
    norm = Normalization.from_manifest(manifest["normalization"])
    samples = read_samples(output)
    for sample in samples[:: max(1, len(samples) // 25)]:
        meta = sample["meta"]
        window = Window(meta["window"]["col"], meta["window"]["row"], 64, 64)
        source = []
        for url in meta["sources"]:
            with rasterio.open(url) as ds:
                source.append(ds.read(1, window=window))
                assert list(ds.window_transform(window))[:6] == pytest.approx(meta["transform"])
        source = np.stack(source).astype(np.float64)
        restored = norm.invert(sample["tile"])
        mask = sample["mask"]
        # float32 tiles: exact up to float32 rounding of (raw - offset) / scale
        assert np.abs(restored[:, mask] - source[:, mask]).max() < 1e-3 * source.max()
        assert np.array_equal(np.rint(restored[:, mask]), source[:, mask])
        assert np.all(sample["tile"][:, ~mask] == 0)


def test_float16_round_trip_within_quantization(geotiff, make_config, tmp_path):
    scene = geotiff / "tests" / "rgb16.tif"
    output = tmp_path / "f16"
    ingest(make_config(scene, output, tile_dtype="float16", workers=1), progress=False)
    manifest = json.loads((output / "manifest.json").read_text())
    norm = Normalization.from_manifest(manifest["normalization"])
    sample = read_samples(output)[3]
    with rasterio.open(scene) as ds:
        w = sample["meta"]["window"]
        source = ds.read(window=Window(w["col"], w["row"], 64, 64)).astype(np.float64)
    restored = norm.invert(sample["tile"].astype(np.float32))
    # float16 keeps 11 significant bits: error <= half a unit in the last place of the normalized value, scaled
    bound = np.abs(sample["tile"].astype(np.float64)) * 2.0**-11 * norm.scales[:, None, None] + 1e-9
    mask = sample["mask"]
    assert np.all(np.abs(restored - source)[:, mask] <= bound[:, mask])


def test_plain_webdataset_reads_the_shards(parana):
    _, output, _ = parana
    manifest = read_manifest(LocalStorage(), str(output))
    dataset = wds.WebDataset(shard_urls(manifest, str(output)), shardshuffle=False).decode()
    count = 0
    for sample in dataset:
        assert sample["tile.npy"].shape == (3, 64, 64)
        assert sample["json"]["bounds"][0] < sample["json"]["bounds"][2]
        count += 1
    assert count == manifest["totals"]["samples"]


def test_rerun_writes_nothing(parana):
    config, output, _ = parana
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in output.iterdir()}
    report = ingest(config, progress=False)
    assert not report.wrote and report.new_shards == [] and len(report.unchanged_scenes) == 2
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in output.iterdir()} == before


def test_incremental_growth_keeps_statistics_and_old_shards(geotiff, make_config, tmp_path):
    source = tmp_path / "incoming"
    source.mkdir()
    years = sorted((geotiff / "landsat-pucallpa").glob("*.tif"))
    for tif in years[:3]:
        (source / tif.name).symlink_to(tif)
    output = tmp_path / "out"
    config = make_config(source, output, workers=2)
    first = ingest(config, progress=False)
    assert first.added_scenes == ["landsat_1985", "landsat_1990", "landsat_1995"]
    manifest1 = json.loads((output / "manifest.json").read_text())
    old_shards = {s["url"]: (output / s["url"]).read_bytes() for s in manifest1["shards"]}

    for tif in years[3:5]:  # new imagery arrives
        (source / tif.name).symlink_to(tif)
    second = ingest(config, progress=False)
    assert second.added_scenes == ["landsat_2000", "landsat_2005"]
    assert second.unchanged_scenes == first.added_scenes
    manifest2 = json.loads((output / "manifest.json").read_text())
    assert manifest2["normalization"] == manifest1["normalization"]  # statistics frozen at first ingest
    assert manifest2["shards"][: len(old_shards)] == manifest1["shards"]
    assert {url: (output / url).read_bytes() for url in old_shards} == old_shards
    new_shards = manifest2["shards"][len(old_shards) :]
    assert new_shards and all(set(s["scenes"]) <= {"landsat_2000", "landsat_2005"} for s in new_shards)
    assert {s["id"] for s in manifest2["scenes"]} == {
        "landsat_1985",
        "landsat_1990",
        "landsat_1995",
        "landsat_2000",
        "landsat_2005",
    }
    assert set(manifest2["scenes"][-1]["percentiles"]) == set(manifest2["tile"]["bands"])  # drift is visible
    assert len(manifest2["runs"]) == 2


@pytest.mark.parametrize(
    "source",
    ["landsat-pucallpa", "tests/RGB.byte.tif", "tests/bigearthnet_S2A_MSIL2A_20170613T101031_87_48"],
    ids=["8 scenes", "1 scene split in parts", "resampled group in parts"],
)
def test_same_input_gives_identical_shards_for_any_worker_count(geotiff, make_config, tmp_path, source):
    digests = []
    for workers in (1, 2, 3):
        output = tmp_path / f"workers{workers}"
        ingest(make_config(geotiff / source, output, workers=workers, tile_size=32), progress=False)
        digests.append([s["sha256"] for s in json.loads((output / "manifest.json").read_text())["shards"]])
    assert digests[0] == digests[1] == digests[2]


def test_long_scene_names_go_into_pax_headers_the_layout_counted(geotiff, make_config, tmp_path):
    """Sample keys over tar's 100 characters take pax headers, whose size the shard layout planned before pass 2
    (pass 2 refuses any sample whose length differs); shards cut inside a scene split over two workers."""
    import tarfile

    source = tmp_path / "src"
    source.mkdir()
    name = "S2B_MSIL2A_" + "x" * 100
    (source / f"{name}.tif").symlink_to(geotiff / "tests" / "RGB.byte.tif")
    output = tmp_path / "out"
    ingest(make_config(source, output, workers=2, tile_size=32, shard_max_samples=70), progress=False)
    manifest = json.loads((output / "manifest.json").read_text())
    assert len(manifest["shards"]) > 2
    for shard in manifest["shards"]:
        with tarfile.open(output / shard["url"]) as tar:
            names = tar.getnames()
        assert len(names) == 3 * shard["samples"] and all(n.startswith(f"{name}_r") and len(n) > 100 for n in names)


class Interrupt(Exception):
    pass


def test_interrupted_run_leaves_no_partial_shard_and_resumes(geotiff, make_config, tmp_path):
    clean_out, output = tmp_path / "clean", tmp_path / "interrupted"
    options = {"shard_max_samples": 100, "workers": 2}
    ingest(make_config(geotiff / "landsat-pucallpa", clean_out, **options), progress=False)
    clean = json.loads((clean_out / "manifest.json").read_text())
    assert len(clean["shards"]) >= 4

    published = []

    def crash_after_two(record):
        published.append(record.url)
        if len(published) == 2:
            raise Interrupt("simulated crash while writing shard 3")

    config = make_config(geotiff / "landsat-pucallpa", output, **options)
    with pytest.raises(Interrupt):
        ingest(config, progress=False, on_shard=crash_after_two)
    assert sorted(p.name for p in output.iterdir()) == published  # whole shards only, no manifest yet
    report = ingest(config, progress=False)  # resume
    assert report.wrote
    resumed = json.loads((output / "manifest.json").read_text())
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in clean["shards"]]
    written = ["manifest.json", "tile-index.parquet", "footprints.png", *(s["url"] for s in clean["shards"])]
    assert sorted(p.name for p in output.iterdir()) == sorted(written)


def test_leftover_shards_beyond_the_manifest_are_removed(geotiff, make_config, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "tiles-000099.tar").write_bytes(b"left by a crashed run")
    (output / ".tiles.abc123.partial").write_bytes(b"half a shard")
    ingest(make_config(geotiff / "tests" / "rgb16.tif", output, workers=1), progress=False)
    assert sorted(p.name for p in output.iterdir()) == [
        "footprints.png",
        "manifest.json",
        "tile-index.parquet",
        "tiles-000000.tar",
    ]


def test_changed_source_is_rejected_not_silently_mixed(geotiff, make_config, tmp_path):
    import shutil

    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(geotiff / "tests" / "rgb16.tif", source / "scene.tif")
    config = make_config(source, tmp_path / "out", workers=1)
    ingest(config, progress=False)
    shutil.copy(geotiff / "tests" / "mosaic_cog1.tif", source / "scene.tif")
    report = ingest(config, progress=False)
    assert [r["reason"] for r in report.rejected] == [
        "content changed since it was ingested; ingest into a new output to rebuild the dataset with it"
    ]


def test_mismatched_band_counts_and_missing_bands(geotiff, make_config, tmp_path):
    source = tmp_path / "mixed"
    source.mkdir()
    (source / "a_rgb.tif").symlink_to(geotiff / "tests" / "RGB.byte.tif")
    (source / "b_rgbn.tif").symlink_to(geotiff / "tests" / "rgbn_suba.tif")
    report = ingest(make_config(source, tmp_path / "o1", workers=1), progress=False)
    assert report.added_scenes == ["a_rgb"]
    assert report.rejected[0]["reason"] == "has 4 bands ['1', '2', '3', '4']; the dataset has 3 ['1', '2', '3']"

    landsat = tmp_path / "landsat"
    landsat.mkdir()
    for band in ("B2", "B3"):  # B4 never arrived
        name = f"LC08_L1TP_224077_20200518_20200518_01_RT_{band}.TIF"
        (landsat / name).symlink_to(geotiff / PARANA / name)
    report = ingest(make_config(landsat, tmp_path / "o2", bands=["B4", "B3", "B2"], workers=1), progress=False)
    assert "band 'B4' not found: the scene has bands ['B2', 'B3']" in report.rejected[0]["reason"]


def test_existing_dataset_with_other_tile_settings_is_refused(geotiff, make_config, tmp_path):
    ingest(make_config(geotiff / "tests" / "rgb16.tif", tmp_path / "out", workers=1), progress=False)
    with pytest.raises(IngestConfigMismatch, match="tile size 64 \\(config: 32\\)"):
        ingest(make_config(geotiff / "tests" / "rgb16.tif", tmp_path / "out", tile_size=32), progress=False)


def test_strict_fails_and_writes_nothing(geotiff, make_config, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "good.tif").symlink_to(geotiff / "tests" / "rgb16.tif")
    (source / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(IngestRejected, match="broken.tif: not a raster GDAL can read"):
        ingest(make_config(source, tmp_path / "out", strict=True, workers=1), progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_ingest_strict_exit_code_and_summary(geotiff, tmp_path):
    runner = CliRunner()
    source = tmp_path / "src"
    source.mkdir()
    (source / "good.tif").symlink_to(geotiff / "tests" / "rgb16.tif")
    (source / "empty.tif").symlink_to(geotiff / "tests" / "all-nodata.tif")
    result = runner.invoke(app, ["ingest", "-s", str(source), "-o", str(tmp_path / "out"), "-q", "--strict"])
    assert result.exit_code == 1
    assert "empty.tif" in result.output and "no usable tile" in result.output
    result = runner.invoke(
        app, ["ingest", "-s", str(source), "-o", str(tmp_path / "out"), "-q", "--report", str(tmp_path / "report.json")]
    )
    assert result.exit_code == 0, result.output
    assert "scenes added: 1, unchanged: 0, rejected: 1" in result.output
    assert json.loads((tmp_path / "report.json").read_text())["added_scenes"] == ["good"]
    result = runner.invoke(
        app, ["ingest", "-s", str(source), "-o", str(tmp_path / "out"), "--set", "ingest.tile_size=3"]
    )
    assert result.exit_code == 2 and "ingest.tile_size: Input should be greater than or equal to 8" in result.output
    assert "Tile and normalize" in runner.invoke(app, ["ingest", "--help"]).output
    result = runner.invoke(app, ["ingest", "-s", str(tmp_path / "typo"), "-o", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "typo: no files found" in result.output


def test_float_raster_with_nan_nodata(geotiff, make_config, tmp_path):
    """Reflectance as float32 with NaN where the source had no data: NaN is nodata, percentiles are sampled."""
    with rasterio.open(geotiff / "tests" / "mosaic_cog1.tif") as src:  # uint16, nodata 0
        raw = src.read().astype(np.float32)
        profile = {
            "driver": "GTiff",
            "width": src.width,
            "height": src.height,
            "count": src.count,
            "dtype": "float32",
            "crs": src.crs,
            "transform": src.transform,
        }
    reflectance = np.where(raw == 0, np.nan, raw / 10000.0).astype(np.float32)
    scene = tmp_path / "reflectance.tif"
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(reflectance)
    output = tmp_path / "out"
    report = ingest(make_config(scene, output, nodata=None, tile_dtype="float32", workers=1), progress=False)
    assert report.rejected == [] and report.dropped_nodata > 0
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["scenes"][0]["dtype"] == "float32" and manifest["normalization"]["exact"] is False
    samples = read_samples(output)
    assert all(np.isfinite(s["tile"]).all() for s in samples)  # NaN never reaches a shard
    norm = Normalization.from_manifest(manifest["normalization"])
    kept = np.concatenate([norm.invert(s["tile"])[:, s["mask"]] for s in samples], axis=1)
    for b, band in enumerate(manifest["normalization"]["bands"]):
        assert band["offset"] == pytest.approx(np.percentile(kept[b], 2), rel=1e-3)
        assert band["offset"] + band["scale"] == pytest.approx(np.percentile(kept[b], 98), rel=1e-3)
    # the sample is seeded per tile row, so splitting the scene across workers changes nothing
    ingest(make_config(scene, tmp_path / "parts", nodata=None, tile_dtype="float32", workers=2), progress=False)
    in_parts = json.loads((tmp_path / "parts" / "manifest.json").read_text())

    def mapping(m):
        return [(b["offset"], b["scale"], b["valid_pixels"]) for b in m["normalization"]["bands"]]

    assert mapping(in_parts) == mapping(manifest)


def test_small_read_windows_and_overlapping_strides_give_the_same_tiles(geotiff, make_config, tmp_path, monkeypatch):
    from atlas_gan.geo import tiling

    scene = geotiff / "tests" / "RGB.byte.tif"
    ingest(make_config(scene, tmp_path / "big", stride=48, workers=1), progress=False)
    monkeypatch.setattr(tiling, "READ_BUDGET_BYTES", 1)  # one tile row per read
    ingest(make_config(scene, tmp_path / "small", stride=48, workers=1), progress=False)
    big, small = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("big", "small"))
    assert [s["sha256"] for s in big["shards"]] == [s["sha256"] for s in small["shards"]]
    with rasterio.open(scene) as ds:
        columns, rows = (ds.width - 64) // 48 + 1, (ds.height - 64) // 48 + 1
    assert big["totals"]["samples"] + big["totals"]["dropped_nodata"] == rows * columns
    assert big["tile"]["stride"] == 48


def test_work_items_are_labelled_by_scene_and_part():
    from atlas_gan.geo.discovery import SceneSpec
    from atlas_gan.geo.tiling import SceneScan
    from atlas_gan.ingest import scene_of

    spec = SceneSpec("s2", (), grouped=True, acquired=None)
    assert scene_of((spec, 0, 1)) == "s2"
    assert scene_of((spec, 2, 4)) == "s2 part 3/4"
    assert scene_of(SceneScan(spec, 1, 2)) == "s2 part 2/2"


@pytest.mark.parametrize("source_dtype", ["uint8", "int8", "uint16", "int16"])
@pytest.mark.parametrize("tile_dtype", ["float16", "float32"])
def test_lookup_table_normalization_is_bit_identical_to_the_arithmetic(source_dtype, tile_dtype):
    """Integer sources of up to 16 bits go through per-band tables of every value; the tiles must not change."""
    info = np.iinfo(source_dtype)
    rng = np.random.default_rng(7)
    raw = rng.integers(info.min, info.max, size=(20, 3, 16, 16), endpoint=True).astype(source_dtype)
    raw[0, :, 0, :4] = [info.min, info.max, 0, 1]  # the ends of the range and zero
    valid = rng.random((20, 16, 16)) > 0.2
    for offsets, scales in [([2.0, -7.5, 0.0], [1000.0, 0.001, 1.0]), ([300.0, 4.0, 9.0], [3e4, 0.5, 2.0])]:
        norm = Normalization(np.array(offsets), np.array(scales))
        looked_up, computed = norm.apply(raw, valid, np.dtype(tile_dtype)), norm.compute(raw, valid, tile_dtype)
        assert looked_up.dtype == computed.dtype == np.dtype(tile_dtype)
        np.testing.assert_array_equal(looked_up.view(f"u{looked_up.itemsize}"), computed.view(f"u{computed.itemsize}"))
        assert np.all(np.where(valid[:, None], 0, looked_up) == 0)  # nodata pixels are 0
