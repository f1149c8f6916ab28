"""WebDataset tar shards and the manifest that lists them.

A sample is three tar members sharing a key: `<key>.tile.npy` (channels-first array, dtype in the manifest),
`<key>.mask.npy` (bool, True where the pixel was valid) and `<key>.json` (tile metadata). Plain `tarfile`,
`numpy.load` and `webdataset` read them; nothing here is needed to consume a dataset.

Shards are built in a local temporary file and moved into place whole, so a reader never sees half a shard.
Members carry fixed owners and timestamps, so re-ingesting the same input produces byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from atlas_gan.storage import Storage, StorageError, is_s3, join_url, make_readable

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "atlas-gan/webdataset-tiles"
MANIFEST_VERSION = 1


def shard_name(name: str, index: int) -> str:
    return f"{name}-{index:06d}.tar"


def shard_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(name)}-\d{{6}}\.tar$")


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


@dataclass
class ShardRecord:
    url: str  # relative to the manifest's folder
    samples: int
    bytes: int
    sha256: str
    scenes: list[str] = field(default_factory=list)


class ShardWriter:
    """Append samples; a shard is sealed and published when it reaches the sample or byte bound."""

    def __init__(
        self,
        store: Storage,
        output: str,
        name: str,
        first_index: int,
        max_samples: int,
        max_bytes: int,
        on_shard: Callable[[ShardRecord], None] | None = None,
    ) -> None:
        self.store, self.output, self.name = store, output, name
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.next_index = first_index
        self.on_shard = on_shard
        self.records: list[ShardRecord] = []
        # Local outputs stage in their own folder so publishing is a rename; S3 outputs stage in the temp dir.
        if is_s3(output):
            self._staging = None
        else:
            Path(output).mkdir(parents=True, exist_ok=True)
            self._staging = output
        self._tar: tarfile.TarFile | None = None
        self._path = ""
        self._samples = 0
        self._scenes: list[str] = []

    def _open(self) -> None:
        fd, self._path = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".partial", dir=self._staging)
        make_readable(self._path)
        self._tar = tarfile.open(fileobj=os.fdopen(fd, "wb"), mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._samples, self._scenes = 0, []

    def add(self, key: str, members: dict[str, bytes], scene_id: str) -> None:
        size = sum(len(b) + 512 for b in members.values())
        if (
            self._tar is not None
            and self._samples
            and (self._samples >= self.max_samples or self._tar.fileobj.tell() + size > self.max_bytes)
        ):
            self.seal()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for suffix, payload in members.items():
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mode, info.mtime = len(payload), 0o644, 0
            self._tar.addfile(info, io.BytesIO(payload))
        self._samples += 1
        if not self._scenes or self._scenes[-1] != scene_id:
            self._scenes.append(scene_id)

    def seal(self) -> None:
        if self._tar is None:
            return
        fileobj = self._tar.fileobj
        self._tar.close()
        fileobj.close()
        self._tar = None
        digest = hashlib.sha256()
        with open(self._path, "rb") as fh:
            while chunk := fh.read(4 * 2**20):
                digest.update(chunk)
        size = os.path.getsize(self._path)
        relative = shard_name(self.name, self.next_index)
        try:
            self.store.move_file(self._path, join_url(self.output, relative))
        finally:
            if os.path.exists(self._path):
                os.unlink(self._path)
        record = ShardRecord(relative, self._samples, size, digest.hexdigest(), self._scenes)
        self.records.append(record)
        self.next_index += 1
        if self.on_shard is not None:
            self.on_shard(record)

    def abort(self) -> None:
        """Drop the shard in progress (nothing of it becomes visible)."""
        if self._tar is not None:
            fileobj = self._tar.fileobj
            self._tar = None
            fileobj.close()
        if self._path and os.path.exists(self._path):
            os.unlink(self._path)


def manifest_url(output: str) -> str:
    return join_url(output, MANIFEST_NAME)


def read_manifest(store: Storage, output: str) -> dict[str, Any] | None:
    """The manifest in `output`, or None when the folder has none yet."""
    url = manifest_url(output)
    if not store.exists(url):
        return None
    try:
        manifest = json.loads(store.read_bytes(url))
    except json.JSONDecodeError as exc:
        raise StorageError(f"{url}: not valid JSON ({exc}); move it away to rebuild the dataset") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise StorageError(f"{url}: not an atlas-gan manifest (format {manifest.get('format')!r})")
    if manifest.get("version", 0) > MANIFEST_VERSION:
        raise StorageError(f"{url}: manifest version {manifest['version']} is newer than this atlas-gan supports")
    return manifest


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """Identifies the dataset's content: the shards' checksums and the normalization, in order."""
    content = {
        "shards": [(s["url"], s["sha256"]) for s in manifest["shards"]],
        "normalization": manifest["normalization"],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def write_manifest(store: Storage, output: str, manifest: dict[str, Any]) -> str:
    manifest["checksum"] = manifest_checksum(manifest)
    url = manifest_url(output)
    store.write_bytes(url, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())
    return url


def shard_urls(manifest: dict[str, Any], output: str) -> list[str]:
    """Absolute URLs of every shard, for webdataset."""
    return [join_url(output, shard["url"]) for shard in manifest["shards"]]
