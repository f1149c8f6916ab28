from pathlib import Path

import pytest

from atlas_gan.config import DEFAULT_CONFIG_PATH, ConfigError, load_config


def test_default_config_is_valid_and_documented():
    config = load_config()
    assert config.ingest.tile_size == 64
    assert config.ingest.effective_stride == 64
    assert config.ingest.normalization.low < config.ingest.normalization.high
    assert DEFAULT_CONFIG_PATH.name == "satellite.yaml"


def test_overrides_are_parsed_as_yaml():
    config = load_config(None, ["ingest.tile_size=128", "ingest.bands=[B4, B3, 2]", "ingest.stride=null"])
    assert config.ingest.tile_size == 128
    assert config.ingest.bands == ["B4", "B3", 2]
    assert config.ingest.effective_stride == 128


@pytest.mark.parametrize(
    ("override", "path", "reason"),
    [
        ("ingest.tile_size=4", "ingest.tile_size", "greater than or equal to 8"),
        ("ingest.tile_sise=64", "ingest.tile_sise", "Extra inputs are not permitted"),
        ("ingest.normalization.low=99", "ingest.normalization", "must be below high"),
        ("ingest.max_nodata_fraction=1.5", "ingest.max_nodata_fraction", "less than or equal to 1"),
        ("ingest.source=http://example.com/x", "ingest.source", "unsupported URL scheme 'http'"),
        ("ingest.output=s3://A_bad_bucket/x", "ingest.output", "S3 URLs look like"),
        ("ingest.band_file_pattern=(?P<scene>.*)", "ingest.band_file_pattern", "missing ['band']"),
        ("ingest.bands=[B4, b4]", "ingest.bands", "repeat"),
        ("ingest.bands=[0]", "ingest.bands", "1-based"),
        ("storage.endpoint_url=localhost:9000", "storage.endpoint_url", "http(s)://host"),
        ("ingest.resampling=sharpest", "ingest.resampling", "Input should be"),
        ("train.max_minutes=0", "train.max_minutes", "greater than 0"),
    ],
)
def test_bad_values_name_the_key(override, path, reason):
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, [override])
    message = str(excinfo.value)
    assert f"{path}:" in message
    assert reason in message


def test_bad_files_are_named(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read config file .*nope.yaml"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("ingest: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(listy)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(None, ["ingest.tile_size"])
    with pytest.raises(ConfigError, match="ingest.source is not a section"):
        load_config(None, ["ingest.source.deeper=1"])


def test_missing_required_section(tmp_path: Path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("storage: {}\n")
    with pytest.raises(ConfigError, match="ingest: Field required"):
        load_config(empty)


def test_family_options_live_under_train_model():
    from atlas_gan.config import MODEL_FAMILIES
    from atlas_gan.models import family_names

    assert sorted(MODEL_FAMILIES) == family_names()  # one list of families: the config's and the registry's agree
    base = ["ingest.source=x", "ingest.output=y"]
    assert load_config(None, base).train.model.family == "dcgan"
    sagan = load_config(None, [*base, "train.model=sagan"]).train.model  # a plain name sets the family
    assert (sagan.family, sagan.attention_resolution, sagan.n_critic) == ("sagan", None, None)
    styled = load_config(None, [*base, "train.model.family=stylegan2", "train.model.path_length_weight=0"])
    assert styled.train.model.path_length_weight == 0.0
    for key in ("n_critic", "r1_gamma", "path_length_weight", "attention_resolution"):
        with pytest.raises(ConfigError, match=f"train.{key} moved to train.model.{key}"):
            load_config(None, [*base, f"train.{key}=1"])
    with pytest.raises(ConfigError, match="attention_resolution: wgan has no self-attention block .sagan and biggan"):
        load_config(None, [*base, "train.model.family=wgan", "train.model.attention_resolution=16"])
    with pytest.raises(ConfigError, match="train.model: Input tag 'stylegan9' .* does not match"):
        load_config(None, [*base, "train.model=stylegan9"])
    with pytest.raises(ConfigError, match="attention_resolution.*must be 8, 16, 32, 64 or 128"):
        load_config(None, [*base, "train.model=sagan", "train.model.attention_resolution=24"])
