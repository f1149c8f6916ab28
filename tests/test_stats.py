import numpy as np
import pytest
import rasterio

from atlas_gan.geo.stats import BandStatistics


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16"])
@pytest.mark.parametrize("q", [0.0, 2.0, 37.5, 50.0, 98.0, 100.0])
def test_integer_percentiles_equal_numpy(dtype, q):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, size=50_001, endpoint=True).astype(dtype)
    stats = BandStatistics()
    for chunk in np.array_split(values, 7):  # streamed in pieces
        stats.update(chunk, rng)
    assert stats.exact
    assert stats.percentile(q) == pytest.approx(np.percentile(values.astype(np.float64), q), abs=1e-9)


def test_merge_equals_single_pass_on_real_band(geotiff):
    with rasterio.open(geotiff / "landsat8-parana" / "LC08_L1TP_224077_20200518_20200518_01_RT_B4.TIF") as ds:
        band = ds.read(1)
    rng = np.random.default_rng(0)
    whole, left, right = BandStatistics(), BandStatistics(), BandStatistics()
    whole.update(band.ravel(), rng)
    left.update(band[:700].ravel(), rng)
    right.update(band[700:].ravel(), rng)
    left.merge(right)
    for q in (2, 98):
        assert left.percentile(q) == whole.percentile(q) == np.percentile(band, q)
    assert left.count == band.size
    assert left.mean == pytest.approx(band.mean())
    assert left.std == pytest.approx(band.std(), rel=1e-9)


def test_float_percentiles_are_sampled_within_tolerance():
    rng = np.random.default_rng(3)
    values = rng.normal(100.0, 15.0, size=400_000).astype(np.float32)
    stats = BandStatistics(sample_size=20_000)
    for chunk in np.array_split(values, 10):
        stats.update(chunk, rng)
    assert not stats.exact
    assert stats.sample_values.size == 20_000  # memory stays bounded
    for q in (2, 50, 98):
        assert stats.percentile(q) == pytest.approx(np.percentile(values, q), abs=0.6)  # ~0.04 sigma


def test_empty_band_has_no_percentile():
    with pytest.raises(ValueError, match="no valid pixels"):
        BandStatistics().percentile(50)


def test_integer_counts_need_no_generator_and_sampled_values_do():
    stats = BandStatistics()
    stats.update(np.array([3, 5, 5], np.uint16))  # exact histogram: no draw
    assert stats.percentile(50) == 5.0
    floats = BandStatistics()
    with pytest.raises(ValueError, match="float32 values are sampled: update needs an rng"):
        floats.update(np.array([1.5], np.float32))
    assert floats.count == 0  # refused whole, nothing half-counted
