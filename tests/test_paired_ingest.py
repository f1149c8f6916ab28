"""Paired co-registered sources (`ingest.paired`): two Landsat years of one place in each tile, on the first's grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from atlas_gan.geo.normalize import Normalization
from atlas_gan.ingest import ingest, pending_scenes

from .test_ingest import read_samples

PUCALLPA = "landsat-pucallpa"
OFFSET = (40, 60)  # rows, cols: where the cropped partner starts on the first year's grid


def linked(folder: Path, *files: Path) -> Path:
    folder.mkdir(parents=True)
    for path in files:
        (folder / path.name).symlink_to(path.resolve())
    return folder


def cropped_partner(geotiff: Path, folder: Path, nodata: float | None = 0) -> Path:
    """2020 cut to a window that starts at OFFSET: another grid (another transform and size) over the same ground."""
    folder.mkdir(parents=True)
    with rasterio.open(geotiff / PUCALLPA / "landsat_2020.tif") as src:
        window = Window(OFFSET[1], OFFSET[0], 500, 300)
        profile = src.profile | {"width": 500, "height": 300, "transform": src.window_transform(window)}
        profile["photometric"] = "MINISBLACK"  # as the source: four plain bands, no alpha
        profile["nodata"] = nodata
        with rasterio.open(folder / "landsat_2020_crop.tif", "w", **profile) as dst:
            dst.write(src.read(window=window))
    return folder / "landsat_2020_crop.tif"


@pytest.mark.parametrize("partner_nodata", [0, None], ids=["partner-nodata", "partner-without-nodata"])
def test_paired_tiles_carry_both_years_aligned_on_the_first_grid(geotiff, make_config, tmp_path, partner_nodata):
    first = linked(tmp_path / "a", geotiff / PUCALLPA / "landsat_1985.tif")
    partner = cropped_partner(geotiff, tmp_path / "b", partner_nodata)
    output = tmp_path / "paired"
    paired = {"source": str(partner.parent)}
    # without nodata anywhere (ingest.nodata null too), only the warp's coverage keeps tiles inside the partner
    config = make_config(first, output, tile_size=32, workers=1, resampling="nearest", paired=paired, nodata=None)
    report = ingest(config, progress=False)
    assert report.rejected == [] and report.new_samples > 0
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["tile"]["bands"] == ["1", "2", "3", "4", "1_pair", "2_pair", "3_pair", "4_pair"]
    scene = manifest["scenes"][0]
    assert scene["paired_with"] == "landsat_2020_crop"
    assert [s["url"] for s in scene["sources"]] == [str(first / "landsat_1985.tif"), str(partner)]
    assert scene["resampled"] == ["1_pair", "2_pair", "3_pair", "4_pair"]  # warped onto 1985's grid
    norm = Normalization.from_manifest(manifest["normalization"])
    samples = read_samples(output)
    with rasterio.open(first / "landsat_1985.tif") as a, rasterio.open(partner) as b:
        for sample in samples:
            row, col = sample["meta"]["window"]["row"], sample["meta"]["window"]["col"]
            # only where both are valid: every tile lies inside the partner's footprint
            assert OFFSET[0] <= row and row + 32 <= OFFSET[0] + 300 and OFFSET[1] <= col and col + 32 <= OFFSET[1] + 500
            source = np.concatenate(
                [
                    a.read(window=Window(col, row, 32, 32)),
                    b.read(window=Window(col - OFFSET[1], row - OFFSET[0], 32, 32)),
                ]
            ).astype(np.float64)
            restored = norm.invert(sample["tile"].astype(np.float32))
            mask = sample["mask"]
            bound = np.abs(sample["tile"].astype(np.float64)) * 2.0**-11 * norm.scales[:, None, None] + 1e-9
            assert np.all(np.abs(restored - source)[:, mask] <= bound[:, mask])
            assert sample["meta"]["sources"] == [str(first / "landsat_1985.tif"), str(partner)]


def test_a_partner_elsewhere_is_rejected_with_the_reason(geotiff, make_config, tmp_path):
    first = linked(tmp_path / "a", geotiff / PUCALLPA / "landsat_1985.tif")
    parana = sorted((geotiff / "landsat8-parana").glob("LC08_L1TP_224077_*"))
    elsewhere = linked(tmp_path / "b", *parana)  # one scene of three band files, in Brazil
    config = make_config(first, tmp_path / "out", tile_size=32, workers=1, paired={"source": str(elsewhere)})
    report = ingest(config, progress=False)
    assert report.new_samples == 0
    [rejection] = report.rejected
    assert rejection["scene"] == "landsat_1985"
    assert "paired with LC08_L1TP_224077_20200518_20200518_01_RT" in rejection["reason"]
    assert "the footprints do not overlap" in rejection["reason"]


def test_scenes_pair_by_id_and_an_unpaired_one_is_named(geotiff, make_config, tmp_path):
    years = [geotiff / PUCALLPA / f"landsat_{year}.tif" for year in (1985, 1990)]
    first = linked(tmp_path / "a", *years)
    partners = linked(tmp_path / "b", years[0], geotiff / PUCALLPA / "landsat_2020.tif")
    config = make_config(first, tmp_path / "out", tile_size=32, workers=1, paired={"source": str(partners)})
    report = ingest(config, progress=False)
    assert report.added_scenes == ["landsat_1985"]
    [rejection] = report.rejected
    assert rejection["scene"] == "landsat_1990"
    assert "no partner" in rejection["reason"] and "landsat_2020" in rejection["reason"]
    pending = pending_scenes(config)  # what watchers see: nothing new, nothing changed (the partner is fingerprinted)
    assert pending.new == [] and pending.changed == []


def test_paired_config_is_validated(make_config, tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        make_config(tmp_path, tmp_path / "out", paired={"source": str(tmp_path), "suffix": "a b"})
