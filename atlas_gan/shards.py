"""WebDataset tar shards and the manifest that lists them.

A sample is three tar members sharing a key: `<key>.tile.npy` (channels-first array, dtype in the manifest),
`<key>.mask.npy` (bool, True where the pixel was valid) and `<key>.json` (tile metadata). Plain `tarfile`,
`numpy.load` and `webdataset` read them; nothing here is needed to consume a dataset.

Shards are staged in local files that ingest's workers fill in parallel (`ShardPlan`), hashed once full (from the
page cache) and moved into place whole, so a reader never sees half a shard. Members carry fixed owners and
timestamps, so re-ingesting the same input produces byte-identical shards.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class Placement:
    """Where a run of consecutive samples goes: staged shard file `path`, from byte `offset`, `count` samples and
    `length` bytes in all."""

    path: str
    offset: int
    count: int
    length: int


@dataclass
class _Staged:
    """One planned shard: its staging file, sample bytes (without the closing blocks), samples, scenes, and the
    last group that writes into it."""

    path: str = ""
    size: int = 0
    samples: int = 0
    scenes: list[str] = field(default_factory=list)
    last_group: int = -1


class ShardPlan:
    """Shards laid out before any sample is encoded, so that workers write them in place, in parallel.

    Every sample's length is known before its pixels are (ingest's first pass returns them), so the cut into shards
    is fixed up front: a shard ends when the next sample would pass `max_samples` or `max_bytes`. `place` stages
    every shard as a file of its final size (its closing zero blocks are the file's unwritten tail) and says where
    each group's samples go; `written(group)` then hashes and publishes (rename, or upload) every shard that the
    groups written so far complete, in order. Nothing is visible before it is whole."""

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
        self.first_index = first_index
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.on_shard, self.before_publish = on_shard, before_publish
        self.records: list[ShardRecord] = []
        self._shards: list[_Staged] = []
        # Local outputs stage in their own folder so publishing is a rename; S3 outputs stage in the temp dir.
        self._staging: str | None = None
        if not is_s3(output):
            Path(output).mkdir(parents=True, exist_ok=True)
            self._staging = output

    def place(self, groups: list[tuple[str, list[int]]]) -> list[list[Placement]]:
        """Lay out groups of consecutive samples, each (scene id, every sample's length in bytes), in order; stage
        the shards. Returns each group's placements."""
        runs: list[list[tuple[_Staged, int, int, int]]] = []  # per group: (shard, offset, count, length)
        current: _Staged | None = None
        for group, (scene_id, lengths) in enumerate(groups):
            mine: list[tuple[_Staged, int, int, int]] = []
            for length in lengths:
                if current is None or (
                    current.samples >= self.max_samples or current.size + length + 2 * BLOCK > self.max_bytes
                ):
                    current = _Staged()
                    self._shards.append(current)
                if not mine or mine[-1][0] is not current:
                    mine.append((current, current.size, 0, 0))
                shard, offset, count, run_length = mine[-1]
                mine[-1] = (shard, offset, count + 1, run_length + length)
                current.size += length
                current.samples += 1
                current.last_group = group
                if not current.scenes or current.scenes[-1] != scene_id:
                    current.scenes.append(scene_id)
            runs.append(mine)
        for shard in self._shards:
            shard.path = self._stage(shard.size + len(end_of_archive(shard.size)))
        return [[Placement(shard.path, offset, count, size) for shard, offset, count, size in mine] for mine in runs]

    def _stage(self, size: int) -> str:
        fd, path = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".partial", dir=self._staging)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        make_readable(path)
        return path

    def written(self, group: int) -> None:
        """Groups up to `group` hold their samples: publish the shards they complete."""
        while len(self.records) < len(self._shards) and self._shards[len(self.records)].last_group <= group:
            self._publish(self._shards[len(self.records)])

    def _publish(self, shard: _Staged) -> None:
        relative = shard_name(self.name, self.first_index + len(self.records))
        try:
            with open(shard.path, "rb") as staged, mmap.mmap(staged.fileno(), 0, access=mmap.ACCESS_READ) as data:
                sha256 = hashlib.sha256(data).hexdigest()
            if self.before_publish is not None:
                self.before_publish()
            self.store.move_file(shard.path, join_url(self.output, relative))
        finally:
            if os.path.exists(shard.path):
                os.unlink(shard.path)
        record = ShardRecord(relative, shard.samples, shard.size, sha256, shard.scenes)
        self.records.append(record)
        if self.on_shard is not None:
            self.on_shard(record)

    def abort(self) -> None:
        """Drop every shard not yet published (nothing of them becomes visible)."""
        for shard in self._shards[len(self.records) :]:
            if shard.path and os.path.exists(shard.path):
                os.unlink(shard.path)


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
