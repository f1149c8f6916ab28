"""Ingest through a real SeaweedFS S3 server: S3 sources, S3 output, and a server that goes away mid-run."""

import json

import pytest
import webdataset as wds

from atlas_gan.ingest import ingest
from atlas_gan.shards import read_manifest, shard_urls
from atlas_gan.storage import S3Storage, StorageError, register_webdataset_s3

pytestmark = pytest.mark.integration


def upload_folder(s3, folder, prefix):
    client = s3.client()
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), s3.bucket, f"{prefix}/{path.name}")
    return f"s3://{s3.bucket}/{prefix}"


def test_s3_source_to_s3_output_matches_local(s3, geotiff, make_config, tmp_path):
    source = upload_folder(s3, geotiff / "landsat8-parana", "imagery/parana")
    output = f"s3://{s3.bucket}/datasets/parana"
    report = ingest(make_config(source, output, workers=2, shard_max_samples=600), progress=False)
    local = ingest(
        make_config(geotiff / "landsat8-parana", tmp_path / "local", workers=2, shard_max_samples=600), progress=False
    )
    assert report.rejected == []
    assert report.added_scenes == local.added_scenes and report.new_samples == local.new_samples > 1000

    store = S3Storage()
    manifest = read_manifest(store, output)
    assert manifest["normalization"] == json.loads((tmp_path / "local" / "manifest.json").read_text())["normalization"]
    assert manifest["scenes"][0]["sources"][0]["url"].startswith(f"s3://{s3.bucket}/imagery/parana/")
    listed = sorted(info.url.rsplit("/", 1)[-1] for info in store.list(output))
    assert listed == sorted(
        ["manifest.json", "tile-index.parquet", "footprints.png", *(s["url"] for s in manifest["shards"])]
    )

    register_webdataset_s3()  # plain webdataset, streaming through boto3
    keys = [sample["__key__"] for sample in wds.WebDataset(shard_urls(manifest, output), shardshuffle=False)]
    assert len(keys) == len(set(keys)) == manifest["totals"]["samples"]

    again = ingest(make_config(source, output, workers=2, shard_max_samples=600), progress=False)
    assert not again.wrote and len(again.unchanged_scenes) == 2


def test_wrong_credentials_fail_clearly(s3, geotiff, make_config, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone-else")
    with pytest.raises(StorageError, match=r"out/.atlas-ingest.lock: cannot write: S3 at .* rejected the credentials"):
        ingest(make_config(geotiff / "tests" / "rgb16.tif", f"s3://{s3.bucket}/out", workers=1), progress=False)


def test_server_stopped_mid_ingest_then_rerun_completes(s3, geotiff, make_config, tmp_path):
    output = f"s3://{s3.bucket}/pucallpa"
    options = {"workers": 2, "shard_max_samples": 100}
    clean = ingest(make_config(geotiff / "landsat-pucallpa", tmp_path / "clean", **options), progress=False)
    assert len(clean.new_shards) >= 4

    def stop_server_after_first_shard(record):
        if record.url.endswith("-000000.tar"):
            s3.stop()

    config = make_config(geotiff / "landsat-pucallpa", output, **options)
    config.storage.max_attempts = 2
    with pytest.raises(StorageError) as excinfo:
        ingest(config, progress=False, on_shard=stop_server_after_first_shard)
    message = str(excinfo.value)
    assert f"{output}/tiles-000001.tar: cannot upload" in message
    assert f"S3 endpoint {s3.endpoint} failed after 2 attempts" in message

    s3.start()  # same data folder and ports
    store = S3Storage()
    left = [i.url.rsplit("/", 1)[-1] for i in store.list(output)]
    assert left == [".atlas-ingest.lock", "tiles-000000.tar"]  # a whole, unlisted shard; the lease it could not delete
    report = ingest(config, progress=False)
    assert report.new_samples == clean.new_samples
    manifest = read_manifest(store, output)
    clean_manifest = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in clean_manifest["shards"]]
    listed = sorted(info.url.rsplit("/", 1)[-1] for info in store.list(output))
    assert listed == sorted(
        ["manifest.json", "tile-index.parquet", "footprints.png", *(s["url"] for s in manifest["shards"])]
    )  # no duplicates


def test_a_storage_outage_while_reading_is_retried_not_rejected():
    """GDAL's messages for a server failing: raised as StorageError (the flow's task retries), never a rejection."""
    from atlas_gan.geo.tiling import is_transient_read_failure

    remote = ["s3://imagery/scene_B4.TIF"]
    assert is_transient_read_failure("'/vsis3/imagery/x.tif' not recognized: HTTP response code: 503", remote)
    assert is_transient_read_failure("Couldn't connect to server", remote)
    assert is_transient_read_failure("Connection timed out after 30001 milliseconds", remote)
    assert not is_transient_read_failure("not recognized as a supported file format", remote)
    assert not is_transient_read_failure("HTTP response code: 503", ["/data/scene_B4.TIF"])  # local file: bad input
