import io

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from atlas_gan.cli import app
from atlas_gan.ingest import ingest
from atlas_gan.preview import band_positions, tile_grid


def test_band_positions():
    assert band_positions(["B2", "B3", "B4"], ["b4", "B3", "B2"]) == [2, 1, 0]
    assert band_positions(["B2", "B3", "B4", "B8"], None) == [0, 1, 2]
    assert band_positions(["1"], None) == [0, 0, 0]
    assert band_positions(["B2", "B8"], ["B8"]) == [1, 1, 1]
    with pytest.raises(ValueError, match="band 'B5' is not in this dataset"):
        band_positions(["B2", "B3", "B4"], ["B5", "B3", "B2"])
    with pytest.raises(ValueError, match="one band .* or three"):
        band_positions(["B2", "B3", "B4"], ["B4", "B3"])


def test_grid_layout_and_clipping():
    tiles = [np.full((3, 4, 4), v, np.float16) for v in (-1.0, 0.5, 2.0)]
    grid = tile_grid(tiles, [0, 1, 2], columns=2, gap=1)
    assert grid.shape == (1 + 2 * 5, 1 + 2 * 5, 3)
    assert (grid[1:5, 1:5] == 0).all() and (grid[1:5, 6:10] == 128).all() and (grid[6:10, 1:5] == 255).all()


def test_cli_preview_of_real_tiles(geotiff, make_config, tmp_path):
    output = tmp_path / "shards"
    ingest(make_config(geotiff / "tests" / "rgbn_suba.tif", output, tile_size=32, workers=1), progress=False)
    result = CliRunner().invoke(
        app,
        ["preview", str(output), "--out", str(tmp_path / "p.png"), "-n", "12", "--columns", "4", "--bands", "3,2,1"],
    )
    assert result.exit_code == 0, result.output
    image = Image.open(io.BytesIO((tmp_path / "p.png").read_bytes()))
    assert image.size == (2 + 4 * 34, 2 + 3 * 34) and image.mode == "RGB"
    assert np.asarray(image).std() > 10  # real imagery, not a blank canvas
    missing = CliRunner().invoke(app, ["preview", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")])
    assert missing.exit_code == 2 and "no dataset there" in missing.output
