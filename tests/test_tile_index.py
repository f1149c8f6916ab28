"""The GeoParquet tile index and footprint map that ingest writes beside the manifest, on real imagery."""

import io
import json
import tarfile
from pathlib import Path

import geopandas
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
from PIL import Image
from typer.testing import CliRunner

from atlas_gan.cli import app
from atlas_gan.geo.footprints import scene_outline_wgs84
from atlas_gan.ingest import ingest
from atlas_gan.shards import read_manifest
from atlas_gan.storage import LocalStorage
from atlas_gan.tile_index import INDEX_NAME, MAP_NAME, combined_index, geo_bbox, read_index, with_geo_metadata

# One real source per band count the issue names: (path under geotiff/, bands).
SOURCES = {
    1: ("tests/image_nodata.tif", 1),  # custom Albers WKT, no EPSG code
    3: ("tests/RGB.byte.tif", 3),
    4: ("tests/rgbn_suba.tif", 4),
    12: ("tests/bigearthnet_S2A_MSIL2A_20170613T101031_87_48", 12),  # one file per band, 10-60 m resampled
}


def shard_keys(output: Path, manifest: dict) -> dict[str, str]:
    """key -> shard, read with plain tarfile."""
    keys = {}
    for shard in manifest["shards"]:
        with tarfile.open(output / shard["url"]) as tar:
            keys |= {m.name.removesuffix(".json"): shard["url"] for m in tar.getmembers() if m.name.endswith(".json")}
    return keys


@pytest.mark.parametrize("bands", sorted(SOURCES))
def test_index_rows_are_the_shards_tiles_with_footprints_inside_their_scene(bands, geotiff, make_config, tmp_path):
    source, expected = SOURCES[bands]
    output = tmp_path / "shards"
    ingest(make_config(geotiff / source, output, tile_size=32, workers=1), progress=False)
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["tile"]["bands"].__len__() == expected
    assert manifest["index"]["tiles"] == INDEX_NAME

    frame = geopandas.read_parquet(output / INDEX_NAME)  # GeoPandas alone, no atlas-gan code
    assert frame.crs.to_epsg() == 4326 or frame.crs.to_string() == "OGC:CRS84"
    keys = shard_keys(output, manifest)
    assert len(frame) == manifest["totals"]["samples"] == len(keys)
    assert dict(zip(frame["key"], frame["shard"].astype(str), strict=True)) == keys
    assert frame.geometry.is_valid.all() and (frame.geometry.geom_type == "Polygon").all()
    assert frame["nodata_fraction"].between(0, manifest["config"]["max_nodata_fraction"]).all()

    geo = json.loads(pq.read_schema(output / INDEX_NAME).metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    west, south, east, north = geo["columns"]["geometry"]["bbox"]
    assert np.allclose(frame.total_bounds, [west, south, east, north])

    for scene in manifest["scenes"]:
        outline = scene_outline_wgs84(scene["crs"], scene["transform"], scene["width"], scene["height"])
        tiles = frame[frame["scene"] == scene["id"]]
        assert len(tiles) == scene["tiles"]
        union = shapely.union_all(tiles.geometry.values)
        assert outline.buffer(1e-7).contains(union), f"{scene['id']}: tiles outside the scene's footprint"
        native = shapely.from_wkb(tiles["geometry_native"].values)
        a, _, c, _, e, f = scene["transform"]
        size = manifest["tile"]["size"]
        first = tiles.iloc[0]
        left, bottom, right, top = native[0].bounds
        assert left == pytest.approx(c + a * first["col"]) and top == pytest.approx(f + e * first["row"])
        assert right - left == pytest.approx(abs(a) * size) and top - bottom == pytest.approx(abs(e) * size)

    picture = Image.open(output / MAP_NAME)
    assert picture.format == "PNG" and picture.size[0] == 1000 and picture.size[1] >= 420
    assert len(np.unique(np.asarray(picture.convert("RGB")).reshape(-1, 3), axis=0)) > 10  # drawn, not blank


def test_incremental_ingest_extends_the_index_and_rebuilds_a_missing_one(geotiff, make_config, tmp_path):
    output = tmp_path / "shards"
    series = geotiff / "landsat-pucallpa"
    ingest(make_config(str(series / "landsat_19*.tif"), output, tile_size=64, workers=1), progress=False)
    first = pq.read_table(output / INDEX_NAME)
    assert set(first.column("scene").cast("string").to_pylist()) == {f"landsat_19{y}" for y in (85, 90, 95)}

    (output / INDEX_NAME).unlink()  # a dataset from before the index existed: rebuilt from the shards' metadata
    ingest(make_config(str(series / "landsat_20*.tif"), output, tile_size=64, workers=1), progress=False)
    manifest = read_manifest(LocalStorage(), str(output))
    table = pq.read_table(output / INDEX_NAME)
    assert table.num_rows == manifest["totals"]["samples"]
    assert len(set(table.column("scene").cast("string").to_pylist())) == 8
    rebuilt = table.slice(0, first.num_rows)
    for column in ("key", "row", "col", "acquired", "nodata_fraction", "geometry", "geometry_native"):
        assert rebuilt.column(column).to_pylist() == first.column(column).to_pylist(), column
    assert geopandas.read_parquet(output / INDEX_NAME).geometry.is_valid.all()

    # Rows of shards the manifest does not list (an interrupted run's) are not the dataset's.
    manifest["shards"] = manifest["shards"][:1]
    listed = read_index(LocalStorage(), str(output), manifest)
    assert set(listed.column("shard").cast("string").to_pylist()) == {manifest["shards"][0]["url"]}


def test_a_combined_index_is_bounded_by_both_tables() -> None:
    import pyarrow as pa

    def table(*boxes: tuple[float, float, float, float]) -> pa.Table:
        wkb = [shapely.to_wkb(shapely.box(*box)) for box in boxes]
        return with_geo_metadata(pa.table({"geometry": pa.array(wkb, pa.binary())}))

    combined = combined_index(table((0, 0, 1, 1), (0.5, -1, 2, 0)), table((-5, 2, 0.5, 3)))
    geometries = shapely.from_wkb(combined.column("geometry").to_numpy(zero_copy_only=False))
    assert geo_bbox(combined) == [-5, -1, 2, 3] == list(shapely.total_bounds(geometries))
    no_bbox = table((0, 0, 1, 1)).replace_schema_metadata(None)  # written by another tool: computed from the rows
    assert geo_bbox(no_bbox) is None
    assert geo_bbox(combined_index(no_bbox, table((2, 2, 3, 3)))) == [0, 0, 3, 3]


def test_cli_preview_map(geotiff, make_config, tmp_path):
    output = tmp_path / "shards"
    ingest(make_config(geotiff / "tests" / "rgbn_suba.tif", output, tile_size=32, workers=1), progress=False)
    result = CliRunner().invoke(app, ["preview", str(output), "--map", "--out", str(tmp_path / "map.png")])
    assert result.exit_code == 0, result.output
    image = Image.open(io.BytesIO((tmp_path / "map.png").read_bytes()))
    assert image.format == "PNG" and image.size[0] == 1000
    missing = CliRunner().invoke(app, ["preview", str(tmp_path / "nothing"), "--map", "--out", str(tmp_path / "x.png")])
    assert missing.exit_code == 2 and "no dataset there" in missing.output


@pytest.mark.parametrize("side", [0.013, 0.2], ids=["tiles smaller than cells", "tiles larger than cells"])
def test_the_maps_coverage_is_gdals_count_on_rotated_footprints(side) -> None:
    """2,000 rotated squares and 20 triangles (rings of another length) on 60 x 40 cells of 0.05 deg. Tiles larger
    than a cell: the count equals GDAL's rasterize (adding up, cell centres). Smaller ones: the number of tiles
    that overlap each cell with some area, by GEOS; GDAL's all_touched + add counts some border cells twice
    (OSGeo/gdal#8437), which the map used to show."""
    from rasterio.enums import MergeAlg
    from rasterio.features import rasterize
    from rasterio.transform import from_origin

    from atlas_gan.figures.maps import coverage

    rng = np.random.default_rng(7)
    x, y, angle = rng.uniform(-50, -47.2, 2000), rng.uniform(-25, -23.2, 2000), rng.uniform(0, np.pi / 2, 2000)
    ring = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]) * side
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    corners = np.stack(
        [x[:, None] + ring[:, 0] * cos - ring[:, 1] * sin, y[:, None] + ring[:, 0] * sin + ring[:, 1] * cos], -1
    )
    tiles = np.concatenate([shapely.polygons(corners), shapely.polygons(corners[:20, [0, 1, 2, 0]])])
    counts = coverage(tiles, shapely.bounds(tiles), -50.0, -23.0, 0.05, 40, 60)
    if side > 0.05:
        expected = rasterize(
            [(tile, 1) for tile in tiles],
            out_shape=(40, 60),
            transform=from_origin(-50.0, -23.0, 0.05, 0.05),
            merge_alg=MergeAlg.add,
            dtype="int32",
        )
    else:
        rows, cols = np.divmod(np.arange(40 * 60), 60)
        cells = shapely.box(-50 + 0.05 * cols, -23 - 0.05 * (rows + 1), -50 + 0.05 * (cols + 1), -23 - 0.05 * rows)
        cell, tile = shapely.STRtree(tiles).query(cells, predicate="intersects")
        overlapping = shapely.area(shapely.intersection(cells[cell], tiles[tile])) > 0
        expected = np.bincount(cell[overlapping], minlength=40 * 60).reshape(40, 60)
    assert counts.sum() > len(tiles) and np.array_equal(counts, expected)


def test_the_maps_coverage_counts_the_tiles_over_each_cell_centre() -> None:
    """Cells of 1 deg from (0, 3) down: two identical 2x2 tiles over the top-left four cells add up, a rotated
    diamond covers only the centre it encloses, and tiles smaller than a cell count in every cell they touch."""
    from atlas_gan.figures.maps import coverage

    square = shapely.box(0, 1, 2, 3)
    diamond = shapely.Polygon([(2.5, 0.1), (2.9, 0.5), (2.5, 0.9), (2.1, 0.5)])
    tiles = np.array([square, square, diamond])
    counts = coverage(tiles, shapely.bounds(tiles), 0.0, 3.0, 1.0, 3, 3)
    assert counts.tolist() == [[2, 2, 0], [2, 2, 0], [0, 0, 1]]
    small = np.array([shapely.box(0.2, 2.2, 0.4, 2.4), shapely.box(1.9, 0.4, 2.1, 0.6)])
    counts = coverage(small, shapely.bounds(small), 0.0, 3.0, 1.0, 3, 3)
    assert counts.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]
