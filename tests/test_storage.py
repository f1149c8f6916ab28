import os
from pathlib import Path

import pytest

from atlas_gan.config import StorageConfig
from atlas_gan.storage import LocalStorage, S3Storage, StorageError, join_url, storage_for
from tests.servers import free_port


def test_local_atomic_write_list_and_delete(tmp_path: Path):
    store = LocalStorage()
    target = str(tmp_path / "deep" / "folder" / "file.bin")
    store.write_bytes(target, b"first")
    store.write_bytes(target, b"second")
    assert store.read_bytes(target) == b"second"
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o666 & ~_umask())
    assert [Path(i.url).name for i in store.list(str(tmp_path))] == ["file.bin"]  # no temp files left
    info = store.stat(target)
    assert info is not None and info.size == 6
    store.delete(target)
    assert store.stat(target) is None and store.list(str(tmp_path / "missing")) == []
    with pytest.raises(StorageError, match="file.bin: cannot read"):
        store.read_bytes(target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failed_local_write_leaves_old_content(tmp_path: Path):
    store = LocalStorage()
    target = str(tmp_path / "manifest.json")
    store.write_bytes(target, b"good")

    with pytest.raises(TypeError):
        store.write_bytes(target, object())  # type: ignore[arg-type]
    assert store.read_bytes(target) == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_join_url():
    assert join_url("s3://bucket/prefix/", "a.tar") == "s3://bucket/prefix/a.tar"
    assert join_url("/data/out", "a.tar") == "/data/out/a.tar"
    assert isinstance(storage_for("/tmp/x"), LocalStorage)


@pytest.mark.integration
def test_s3_round_trip_multipart_and_listing(s3, tmp_path: Path):
    store = S3Storage(StorageConfig(multipart_threshold_mb=5))
    base = f"s3://{s3.bucket}/data"
    store.write_bytes(f"{base}/small.json", b"{}")
    big = tmp_path / "big.bin"
    payload = os.urandom(12 * 2**20)
    big.write_bytes(payload)
    store.put_file(big, f"{base}/nested/big.bin")
    info = store.stat(f"{base}/nested/big.bin")
    assert info is not None and info.size == len(payload)
    assert info.fingerprint.endswith("-3")  # a completed 3-part multipart upload (5 + 5 + 2 MiB)
    assert store.read_bytes(f"{base}/nested/big.bin") == payload
    assert [i.url for i in store.list(base)] == [f"{base}/nested/big.bin", f"{base}/small.json"]
    assert store.stat(f"{base}/absent") is None
    store.delete(f"{base}/small.json")
    assert [i.url for i in store.list(base)] == [f"{base}/nested/big.bin"]


@pytest.mark.integration
def test_s3_wrong_credentials_are_named(s3, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = S3Storage()
    with pytest.raises(StorageError) as excinfo:
        store.write_bytes(f"s3://{s3.bucket}/x.json", b"{}")
    message = str(excinfo.value)
    assert f"s3://{s3.bucket}/x.json: cannot write: S3 at {s3.endpoint} rejected the credentials" in message
    assert "SignatureDoesNotMatch" in message
    assert "not-the-secret" not in message


@pytest.mark.integration
def test_s3_missing_credentials_and_bucket(s3, monkeypatch, tmp_path):
    with pytest.raises(StorageError, match="bucket does not exist"):
        S3Storage().read_bytes("s3://no-such-bucket-atlas/x")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(StorageError, match="no S3 credentials found; set AWS_ACCESS_KEY_ID"):
        S3Storage().read_bytes(f"s3://{s3.bucket}/x")


def test_s3_unreachable_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = S3Storage(StorageConfig(endpoint_url=endpoint, max_attempts=2))
    with pytest.raises(StorageError, match=f"S3 endpoint {endpoint} failed after 2 attempts"):
        store.read_bytes("s3://bucket-x/key")
