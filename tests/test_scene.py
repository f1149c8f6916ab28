import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from atlas_gan.config import DEFAULT_BAND_FILE_PATTERN
from atlas_gan.geo.discovery import discover_scenes, list_source
from atlas_gan.geo.scene import SceneError, SceneReader, select_bands
from atlas_gan.storage import LocalStorage

BIGEARTHNET = "bigearthnet_S2A_MSIL2A_20170613T101031_87_48"
PATCH = BIGEARTHNET.removeprefix("bigearthnet_")


def scene_in(folder, pattern=DEFAULT_BAND_FILE_PATTERN):
    scenes = [s for s in discover_scenes(list_source(str(folder), LocalStorage()), pattern).scenes]
    return scenes


def test_band_selection_by_name_index_and_leading_zero():
    names = ["B02", "B03", "B04", "B08"]
    assert select_bands(names, ["B4", "b03", 1]) == [2, 1, 0]
    assert select_bands(["1", "2", "3"], ["3", 1]) == [2, 0]
    with pytest.raises(SceneError, match=r"band 'B12' not found: the scene has bands \['B02'"):
        select_bands(names, ["B12"])
    with pytest.raises(SceneError, match="band index 5 out of range"):
        select_bands(names, [5])


def test_sentinel2_bands_resampled_onto_finest_grid(geotiff):
    folder = geotiff / "tests" / BIGEARTHNET
    (scene,) = [s for s in scene_in(folder) if s.grouped]
    with SceneReader(scene, ["B04", "B01", "B8A"], "nearest", None) as reader:
        assert (reader.width, reader.height) == (120, 120)
        assert reader.transform.a == 10.0
        assert reader.resampled == ["B01", "B8A"]
        data, valid = reader.read_strip(0, 120)
    with rasterio.open(folder / f"{PATCH}_B01.tif") as ds:
        b01 = ds.read(1)  # 20 x 20 at 60 m
    with rasterio.open(folder / f"{PATCH}_B04.tif") as ds:
        b04 = ds.read(1)
    assert np.array_equal(data[0], b04)
    assert np.array_equal(data[1], np.repeat(np.repeat(b01, 6, axis=0), 6, axis=1))
    assert valid.all()


def _write_band(path, data, crs, transform):
    profile = {
        "driver": "GTiff",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)


@pytest.fixture
def band_02(geotiff):
    with rasterio.open(geotiff / "tests" / BIGEARTHNET / f"{PATCH}_B02.tif") as ds:
        return ds.read(1), ds.crs, ds.transform


def test_group_with_mismatched_crs_is_rejected(tmp_path, band_02):
    data, crs, transform = band_02
    _write_band(tmp_path / "s_B02.tif", data, crs, transform)
    _write_band(tmp_path / "s_B03.tif", data, CRS.from_epsg(32634), transform)
    (scene,) = scene_in(tmp_path)
    with pytest.raises(SceneError, match="s_B03.tif: CRS EPSG:32634 differs from .*s_B02.tif's EPSG:32633"):
        SceneReader(scene, None, "bilinear", None)


def test_group_with_mismatched_extent_is_rejected(tmp_path, band_02):
    data, crs, transform = band_02
    _write_band(tmp_path / "s_B02.tif", data, crs, transform)
    _write_band(tmp_path / "s_B03.tif", data, crs, transform @ Affine.translation(5, 0))
    (scene,) = scene_in(tmp_path)
    with pytest.raises(SceneError, match="s_B03.tif: extent .* differs .* by 50 .*more than one coarse pixel"):
        SceneReader(scene, None, "bilinear", None)


def test_non_raster_and_truncated_files(tmp_path, geotiff):
    (tmp_path / "notes.tif").write_text("this is not a GeoTIFF")
    source = (geotiff / "tests" / "rgb16.tif").read_bytes()
    (tmp_path / "truncated.tif").write_bytes(source[: len(source) // 3])
    by_id = {s.scene_id: s for s in scene_in(tmp_path)}
    with pytest.raises(SceneError, match="notes.tif: not a raster GDAL can read"):
        SceneReader(by_id["notes"], None, "bilinear", None)
    with (
        pytest.raises(SceneError, match="truncated.tif: (read failed at rows|not a raster)"),
        SceneReader(by_id["truncated"], None, "bilinear", None) as reader,
    ):
        for row in range(0, reader.height - 64 + 1, 64):
            reader.read_strip(row, 64)


def test_masks_come_from_nodata_value_and_config_override(geotiff):
    (scene,) = scene_in(geotiff / "tests" / "rmnp-rgb.tif")  # EPSG:4326, nodata 255
    with SceneReader(scene, None, "bilinear", None) as reader:
        assert reader.crs.to_epsg() == 4326
        data, valid = reader.read_strip(0, 64)
    assert np.array_equal(valid, ~(data == 255).any(axis=0))
    (scene,) = scene_in(geotiff / "tests" / "rgb16.tif")  # declares no nodata
    with SceneReader(scene, None, "bilinear", 0) as reader:
        data, valid = reader.read_strip(0, 64)
    assert np.array_equal(valid, ~(data == 0).any(axis=0))
