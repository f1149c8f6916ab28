from atlas_gan.config import DEFAULT_BAND_FILE_PATTERN
from atlas_gan.geo.discovery import acquisition_date_from_name, discover_scenes, list_source
from atlas_gan.storage import LocalStorage


def test_landsat_band_files_group_into_scenes(geotiff):
    found = discover_scenes(list_source(str(geotiff / "landsat8-parana"), LocalStorage()), DEFAULT_BAND_FILE_PATTERN)
    assert [s.scene_id for s in found.scenes] == [
        "LC08_L1TP_224077_20200518_20200518_01_RT",
        "LC08_L1TP_224078_20200518_20200518_01_RT",
    ]
    for scene in found.scenes:
        assert scene.grouped
        assert [f.band for f in scene.files] == ["B2", "B3", "B4"]
        assert scene.acquired == "2020-05-18"


def test_sentinel2_bands_sort_like_the_sensor(geotiff):
    folder = geotiff / "tests" / "bigearthnet_S2A_MSIL2A_20170613T101031_87_48"
    found = discover_scenes(list_source(str(folder), LocalStorage()), DEFAULT_BAND_FILE_PATTERN)
    grouped = [s for s in found.scenes if s.grouped]
    assert len(grouped) == 1
    bands = [f.band for f in grouped[0].files]
    assert bands == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    assert grouped[0].acquired == "2017-06-13"
    # the label JSON beside the bands is not grouped; opening it decides whether it is a raster
    assert [s.files[0].url.endswith(".json") for s in found.scenes if not s.grouped] == [True]


def test_globs_and_multiband_files(geotiff):
    found = discover_scenes(
        list_source(str(geotiff / "landsat-pucallpa" / "landsat_19*.tif"), LocalStorage()), DEFAULT_BAND_FILE_PATTERN
    )
    assert [s.scene_id for s in found.scenes] == ["landsat_1985", "landsat_1990", "landsat_1995"]
    assert all(not s.grouped and s.acquired and s.acquired.startswith("19") for s in found.scenes)


def test_duplicate_stems_in_two_folders_get_distinct_ids(tmp_path, geotiff):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "scene.tif").symlink_to(geotiff / "tests" / "RGB.byte.tif")
    (tmp_path / "a" / "scene.tif.aux.xml").write_text("<PAMDataset/>")
    found = discover_scenes(list_source(str(tmp_path), LocalStorage()), DEFAULT_BAND_FILE_PATTERN)
    assert sorted(s.scene_id for s in found.scenes) == ["a_scene", "b_scene"]
    assert [p.endswith(".aux.xml") for p in found.skipped] == [True]


def test_dates_from_names():
    assert acquisition_date_from_name("LC08_L1TP_224077_20200518_20200601_01_RT_B2.TIF") == "2020-05-18"
    assert acquisition_date_from_name("S2A_MSIL2A_20170613T101031_87_48") == "2017-06-13"
    assert acquisition_date_from_name("201404_13SED190110_201404_0x1500m_CL_1_nodata.tif") == "2014-04"
    assert acquisition_date_from_name("landsat_1985.tif") == "1985"
    assert acquisition_date_from_name("rmnp-rgb.tif") is None
