"""WebDataset tar shards and the manifest that lists them.

A sample is three tar members sharing a key: `<key>.tile.npy` (channels-first array, dtype in the manifest),
`<key>.mask.npy` (bool, True where the pixel was valid) and `<key>.json` (tile metadata). Plain `tarfile`,
`numpy.load` and `webdataset` read them; nothing here is needed to consume a dataset.

Shards are built in a local temporary file and moved into place whole, so a reader never sees half a shard.
Members carry fixed owners and timestamps, so re-ingesting the same input produces byte-identical shards.
The checksum is computed while writing, not by reading the shard back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from atlas_gan.samples import BLOCK, end_of_archive
from atlas_gan.storage import Storage, StorageError, is_s3, join_url, make_readable

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "atlas-gan/webdataset-tiles"
MANIFEST_VERSION = 1


def shard_name(name: str, index: int) -> str:
    return f"{name}-{index:06d}.tar"


def shard_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(name)}-\d{{6}}\.tar$")


@dataclass
class ShardRecord:
    url: str  # relative to the manifest's folder
    samples: int
    bytes: int
    sha256: str
    scenes: list[str] = field(default_factory=list)


class ShardWriter:
    """Append encoded samples; a shard is sealed and published when the next sample would cross a bound."""

    def __init__(
        self,
        store: Storage,
        output: str,
        name: str,
        first_index: int,
        max_samples: int,
        max_bytes: int,
        on_shard: Callable[[ShardRecord], None] | None = None,
        before_publish: Callable[[], None] | None = None,
    ) -> None:
        """`before_publish` runs before each shard becomes visible and may refuse it by raising (a lost lock)."""
        self.store, self.output, self.name = store, output, name
        self.before_publish = before_publish
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.next_index = first_index
        self.on_shard = on_shard
        self.records: list[ShardRecord] = []
        # Local outputs stage in their own folder so publishing is a rename; S3 outputs stage in the temp dir.
        self._staging: str | None = None
        if not is_s3(output):
            Path(output).mkdir(parents=True, exist_ok=True)
            self._staging = output
        self._file: BinaryIO | None = None
        self._path = ""
        self._size = 0
        self._samples = 0
        self._scenes: list[str] = []
        self._digest = hashlib.sha256()

    def _open(self) -> None:
        fd, self._path = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".partial", dir=self._staging)
        make_readable(self._path)
        self._file = os.fdopen(fd, "wb")
        self._size, self._samples, self._scenes, self._digest = 0, 0, [], hashlib.sha256()

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._digest.update(data)
        self._size += len(data)

    def add(self, sample: bytes, scene_id: str) -> None:
        """Append one sample: its tar members, as `atlas_gan.samples.encode_sample` returns them."""
        self.add_many(memoryview(sample), [len(sample)], scene_id)

    def add_many(self, samples: memoryview, lengths: list[int], scene_id: str) -> None:
        """Append consecutive samples laid end to end in `samples` (`lengths` bytes each): each run of them that
        fits the current shard goes in with one write, so the shards are the same as adding them one by one."""
        start = end = 0  # samples[start:end] is the run not written yet
        for length in lengths:
            if self._file is not None and (
                self._samples >= self.max_samples or self._size + (end - start) + length + 2 * BLOCK > self.max_bytes
            ):
                self._write(samples[start:end])
                start = end
                self.seal()
            if self._file is None:
                self._open()
            end += length
            self._samples += 1
            if not self._scenes or self._scenes[-1] != scene_id:
                self._scenes.append(scene_id)
        if end > start:
            self._write(samples[start:end])

    def seal(self) -> None:
        if self._file is None:
            return
        self._write(end_of_archive(self._size))
        self._file.close()
        self._file = None
        relative = shard_name(self.name, self.next_index)
        try:
            if self.before_publish is not None:
                self.before_publish()
            self.store.move_file(self._path, join_url(self.output, relative))
        finally:
            if os.path.exists(self._path):
                os.unlink(self._path)
        record = ShardRecord(relative, self._samples, self._size, self._digest.hexdigest(), self._scenes)
        self.records.append(record)
        self.next_index += 1
        if self.on_shard is not None:
            self.on_shard(record)

    def abort(self) -> None:
        """Drop the shard in progress (nothing of it becomes visible)."""
        if self._file is not None:
            self._file.close()
            self._file = None
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
