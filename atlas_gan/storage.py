"""Local paths and `s3://bucket/key` URLs behind one small interface, with atomic writes.

Local writes go to a temporary file in the target folder and are renamed into place. S3 writes are single PUTs or
completed multipart uploads, both of which S3 makes visible only whole. Credentials are never read here: boto3
finds them in the environment or the standard AWS config files.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from atlas_gan.config import StorageConfig


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(path: str | Path) -> None:
    """Give a mkstemp file (0600) the permissions a plain open() would have had under the umask."""
    os.chmod(path, 0o666 & ~_current_umask())


class StorageError(RuntimeError):
    """A read or write failed; the message names the URL and the reason."""


@dataclass(frozen=True)
class ObjectInfo:
    url: str
    size: int
    fingerprint: str  # changes whenever the content may have changed (S3 ETag; local size + mtime)


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def join_url(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URL."""
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def split_s3(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"{url}: not an s3://bucket/key URL")
    return parsed.netloc, parsed.path.lstrip("/")


class Storage(ABC):
    """What the pipeline needs from a store: whole-object reads, atomic writes, listing, deletion."""

    @abstractmethod
    def read_bytes(self, url: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, url: str, data: bytes) -> None:
        """Write atomically: readers see the old object or the whole new one, never a part."""

    @abstractmethod
    def put_file(self, local_path: str | Path, url: str) -> None:
        """Copy a finished local file to `url` atomically."""

    def move_file(self, local_path: str | Path, url: str) -> None:
        """Like put_file, then the local file is removed."""
        self.put_file(local_path, url)
        os.unlink(local_path)

    @abstractmethod
    def open_read(self, url: str) -> IO[bytes]: ...

    @abstractmethod
    def stat(self, url: str) -> ObjectInfo | None:
        """The object's size and fingerprint, or None when it does not exist."""

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under a folder/prefix, recursively, sorted by URL."""

    @abstractmethod
    def delete(self, url: str) -> None: ...

    def exists(self, url: str) -> bool:
        return self.stat(url) is not None


class LocalStorage(Storage):
    def read_bytes(self, url: str) -> bytes:
        try:
            return Path(url).read_bytes()
        except OSError as exc:
            raise StorageError(f"{url}: cannot read: {exc.strerror or exc}") from exc

    def open_read(self, url: str) -> IO[bytes]:
        try:
            return open(url, "rb")
        except OSError as exc:
            raise StorageError(f"{url}: cannot open: {exc.strerror or exc}") from exc

    @contextlib.contextmanager
    def _atomic_target(self, url: str) -> Iterator[str]:
        target = Path(url)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
            os.close(fd)
            make_readable(tmp)
        except OSError as exc:
            raise StorageError(f"{url}: cannot write: {exc.strerror or exc}") from exc
        try:
            yield tmp
            os.replace(tmp, target)
        except OSError as exc:
            raise StorageError(f"{url}: cannot write: {exc.strerror or exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def write_bytes(self, url: str, data: bytes) -> None:
        with self._atomic_target(url) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def put_file(self, local_path: str | Path, url: str) -> None:
        if Path(local_path).resolve() == Path(url).resolve():
            return
        with self._atomic_target(url) as tmp, open(local_path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(8 * 2**20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())

    def move_file(self, local_path: str | Path, url: str) -> None:
        """Rename a finished temp file into place (atomic on one filesystem), else copy atomically."""
        try:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            os.replace(local_path, url)
        except OSError:
            self.put_file(local_path, url)
            os.unlink(local_path)

    def stat(self, url: str) -> ObjectInfo | None:
        try:
            st = os.stat(url)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"{url}: cannot stat: {exc.strerror or exc}") from exc
        return ObjectInfo(url=str(url), size=st.st_size, fingerprint=f"{st.st_size}-{st.st_mtime_ns}")

    def list(self, prefix: str) -> list[ObjectInfo]:
        root = Path(prefix)
        if root.is_file():
            found = [root]
        elif root.is_dir():
            found = [p for p in root.rglob("*") if p.is_file()]
        else:
            return []
        infos = (self.stat(str(p)) for p in sorted(found))
        return [info for info in infos if info is not None]

    def delete(self, url: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(url)


_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}


class S3Storage(Storage):
    """boto3 client in path-style addressing with standard-mode retries; endpoint from config or environment."""

    def __init__(self, settings: StorageConfig | None = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.settings = settings or StorageConfig()
        self._session = session = boto3.session.Session()
        region = self.settings.region or session.region_name or "us-east-1"
        self.client = session.client(
            "s3",
            region_name=region,
            endpoint_url=self.settings.endpoint_url,  # None: boto3 honours AWS_ENDPOINT_URL and config files
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": self.settings.max_attempts},
                connect_timeout=10,
                read_timeout=120,
            ),
        )
        self.endpoint_url: str = self.client.meta.endpoint_url
        self.region = region
        threshold = self.settings.multipart_threshold_mb * 2**20
        self.transfer = TransferConfig(multipart_threshold=threshold, multipart_chunksize=threshold)

    @contextlib.contextmanager
    def _errors(self, action: str, url: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except NoCredentialsError as exc:
            raise StorageError(
                f"{url}: cannot {action}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / ~/.aws/credentials)"
            ) from exc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", "") or str(exc)
            if code in _CREDENTIAL_CODES:
                reason = f"S3 at {self.endpoint_url} rejected the credentials ({code}: {message})"
            elif code in {"403", "Forbidden"}:  # HEAD responses carry no error body
                reason = f"S3 at {self.endpoint_url} rejected the credentials or their permissions (403 Forbidden)"
            elif code == "NoSuchBucket":
                reason = f"bucket does not exist on {self.endpoint_url}"
            else:
                reason = f"{code or 'error'}: {message}"
            raise StorageError(f"{url}: cannot {action}: {reason}") from exc
        except BotoCoreError as exc:
            raise StorageError(
                f"{url}: cannot {action}: S3 endpoint {self.endpoint_url} failed after "
                f"{self.settings.max_attempts} attempts: {exc}"
            ) from exc

    def read_bytes(self, url: str) -> bytes:
        bucket, key = split_s3(url)
        with self._errors("read", url):
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def open_read(self, url: str) -> IO[bytes]:
        bucket, key = split_s3(url)
        with self._errors("open", url):
            return self.client.get_object(Bucket=bucket, Key=key)["Body"]

    def write_bytes(self, url: str, data: bytes) -> None:
        bucket, key = split_s3(url)
        with self._errors("write", url):
            self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def put_file(self, local_path: str | Path, url: str) -> None:
        bucket, key = split_s3(url)
        with self._errors("upload", url):
            self.client.upload_file(str(local_path), bucket, key, Config=self.transfer)

    def stat(self, url: str) -> ObjectInfo | None:
        bucket, key = split_s3(url)
        try:
            with self._errors("stat", url):
                head = self.client.head_object(Bucket=bucket, Key=key)
        except StorageError as exc:
            if _not_found(exc):
                return None
            raise
        return ObjectInfo(url=url, size=int(head["ContentLength"]), fingerprint=head["ETag"].strip('"'))

    def list(self, prefix: str) -> list[ObjectInfo]:
        bucket, key_prefix = split_s3(prefix)
        if key_prefix and not key_prefix.endswith("/"):
            single = self.stat(prefix)
            if single is not None:
                return [single]
            key_prefix += "/"
        infos: list[ObjectInfo] = []
        with self._errors("list", prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
                for obj in page.get("Contents", []):
                    infos.append(ObjectInfo(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), obj["ETag"].strip('"')))
        return sorted(infos, key=lambda info: info.url)

    def delete(self, url: str) -> None:
        bucket, key = split_s3(url)
        with self._errors("delete", url):
            self.client.delete_object(Bucket=bucket, Key=key)

    def put_if(self, url: str, data: bytes, *, etag: str | None = None) -> str | None:
        """Conditional write: create `url` only if absent (`etag` None), else replace it only while its ETag is
        still `etag`. Returns the new ETag, or None when the condition did not hold (another writer was first)."""
        bucket, key = split_s3(url)
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        try:
            with self._errors("write", url):
                return self.client.put_object(Bucket=bucket, Key=key, Body=data, **condition)["ETag"]
        except StorageError as exc:
            if _precondition_failed(exc) or (etag is not None and _not_found(exc)):
                return None
            raise

    def read_with_etag(self, url: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None when it does not exist."""
        bucket, key = split_s3(url)
        try:
            with self._errors("read", url):
                response = self.client.get_object(Bucket=bucket, Key=key)
                return response["Body"].read(), response["ETag"]
        except StorageError as exc:
            if _not_found(exc):
                return None
            raise

    def delete_if(self, url: str, etag: str) -> bool:
        """Delete `url` only while its ETag is still `etag`; False when it changed or is gone."""
        bucket, key = split_s3(url)
        try:
            with self._errors("delete", url):
                self.client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
            return True
        except StorageError as exc:
            if _precondition_failed(exc) or _not_found(exc):
                return False
            raise

    def gdal_options(self) -> dict[str, Any]:
        """Settings for `rasterio_env` so rasterio reads s3:// URLs from this endpoint with the same credentials.

        Plain data (picklable) so worker processes can rebuild the environment; credentials stay in memory.
        """
        endpoint = urlparse(self.endpoint_url)
        options: dict[str, Any] = {
            "AWS_REGION": self.region,
            "AWS_S3_ENDPOINT": endpoint.netloc,
            "AWS_HTTPS": "YES" if endpoint.scheme == "https" else "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            "GDAL_HTTP_MAX_RETRY": str(self.settings.max_attempts),
            "GDAL_HTTP_RETRY_DELAY": "1",
        }
        credentials = self._session.get_credentials()  # boto3's normal chain: environment, then config files
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            options[_CREDENTIALS_KEY] = {
                "aws_access_key_id": frozen.access_key,
                "aws_secret_access_key": frozen.secret_key,
                "aws_session_token": frozen.token,
            }
        return options


_CREDENTIALS_KEY = "_atlas_aws_credentials"


def _error_code(exc: StorageError) -> str:
    from botocore.exceptions import ClientError

    cause = exc.__cause__
    return cause.response.get("Error", {}).get("Code", "") if isinstance(cause, ClientError) else ""


def _precondition_failed(exc: StorageError) -> bool:
    # 412 when the condition fails; 409 when a concurrent conditional write on the same key won the race (AWS).
    return _error_code(exc) in {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def _not_found(exc: StorageError) -> bool:
    return _error_code(exc) in {"NoSuchKey", "404"}


def rasterio_env(gdal_options: dict[str, Any] | None) -> Any:
    """A `rasterio.Env` for the options from `S3Storage.gdal_options` (or an empty one for local files)."""
    import rasterio
    from rasterio.session import AWSSession

    options = dict(gdal_options or {})
    credentials = options.pop(_CREDENTIALS_KEY, None)
    if credentials is None:
        return rasterio.Env(**options)
    session = AWSSession(
        **credentials,
        region_name=options.get("AWS_REGION"),
        endpoint_url=options.get("AWS_S3_ENDPOINT"),
    )
    return rasterio.Env(session=session, **options)


def storage_for(url: str, settings: StorageConfig | None = None) -> Storage:
    """The store that serves `url`."""
    return S3Storage(settings) if is_s3(url) else LocalStorage()


def register_webdataset_s3(settings: StorageConfig | None = None) -> None:
    """Let plain `webdataset.WebDataset("s3://...")` stream shards through an in-process boto3 client."""
    import importlib

    gopen_module = importlib.import_module("webdataset.gopen")
    store = S3Storage(settings)

    def open_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> IO[bytes]:
        if mode != "rb":
            raise StorageError(f"{url}: webdataset writes to S3 are not supported; write shards with atlas_gan")
        return store.open_read(url)

    gopen_module.gopen_schemes["s3"] = open_s3


_SAFE_KEY = re.compile(r"[^A-Za-z0-9_-]+")


def safe_name(text: str) -> str:
    """A name usable as a WebDataset key or a file name: no dots, slashes or spaces."""
    return _SAFE_KEY.sub("_", text).strip("_") or "x"
