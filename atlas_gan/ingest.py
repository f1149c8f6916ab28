"""Ingest: scenes -> normalized tiles -> WebDataset shards + manifest.json, incrementally and atomically.

Two passes. Pass 1 (parallel: one process per scene, or per part of a scene when scenes are fewer than
workers) reads each new scene once, keeps tiles under the nodata
limit, spools their raw values locally and accumulates per-band statistics. Pass 2 normalizes the spooled tiles
with the dataset statistics and writes shards in scene order, so the same input always gives the same shards.

Statistics policy on growth: the normalization is fixed by the first ingest that produced tiles. Later runs
scale new scenes with the same numbers, so every shard of a dataset stays comparable and old shards are never
rewritten; each scene records its own percentiles (`scenes[].percentiles`) so drift is visible. To renormalize,
ingest into a new output.

Overlapping runs into one output (a schedule, a new-imagery trigger and a manual run) take turns: the whole run
holds the output's lock (`atlas_gan.locks`: a file lock locally, a renewed lease on S3), so the manifest it reads
is the one it extends, and shard numbers never collide. A run that has to wait says so.

Crash safety: shards appear whole (temp + rename, or a completed upload) and the manifest is written last, in one
atomic write. A rerun after an interruption starts numbering from the manifest, overwrites shards that the
interrupted run published but never listed, and deletes any such leftovers it does not reach.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from tqdm import tqdm

from atlas_gan.config import AtlasConfig, IngestConfig, config_to_dict
from atlas_gan.geo.discovery import SceneSpec, discover_scenes, list_source, pair_scenes
from atlas_gan.geo.footprints import tile_transform
from atlas_gan.geo.normalize import Normalization, describe
from atlas_gan.geo.stats import merge_band_statistics
from atlas_gan.geo.tiling import SceneScan, encode_scene, merge_parts, scan_scene, tile_key
from atlas_gan.locks import Lease, exclusive_output
from atlas_gan.shards import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    ShardPlan,
    ShardRecord,
    manifest_url,
    read_manifest,
    shard_pattern,
    write_manifest,
)
from atlas_gan.storage import S3Storage, Storage, is_s3, join_url, storage_for
from atlas_gan.tile_index import INDEX_NAME, MAP_NAME, PendingIndex, TileRows, map_png, pending_index, write_index


class IngestRejected(RuntimeError):
    """`strict` was set and some input was rejected; nothing was written."""


class IngestConfigMismatch(ValueError):
    """The output already holds a dataset made with other tile settings."""


class SourceEmpty(ValueError):
    """The source names no file at all (a typo in the path or prefix, usually)."""


@dataclass
class IngestReport:
    manifest_url: str
    added_scenes: list[str] = field(default_factory=list)
    unchanged_scenes: list[str] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    new_shards: list[str] = field(default_factory=list)
    new_samples: int = 0
    dropped_nodata: int = 0
    wrote: bool = False
    seconds: float = 0.0
    tile_index: str | None = None  # the GeoParquet tile index and its footprint map, when this run wrote them
    footprint_map: str | None = None

    def summary(self) -> str:
        lines = [
            f"manifest: {self.manifest_url}",
            f"scenes added: {len(self.added_scenes)}, unchanged: {len(self.unchanged_scenes)}, "
            f"rejected: {len(self.rejected)}",
            f"tiles written: {self.new_samples} in {len(self.new_shards)} shard(s); "
            f"dropped for nodata: {self.dropped_nodata}; {self.seconds:.1f} s",
        ]
        if self.tile_index:
            lines.append(f"tile index: {self.tile_index} (GeoParquet); map: {self.footprint_map}")
        lines += [f"  rejected {r['file']}: {r['reason']}" for r in self.rejected]
        if not self.wrote:
            lines.append("nothing new: no file was written")
        return "\n".join(lines)


def _gdal_options(config: AtlasConfig) -> dict[str, Any]:
    source = config.ingest.source
    return S3Storage(config.storage).gdal_options() if is_s3(source) else {}


class SceneMapper(Protocol):
    """Runs `fn` over the per-scene work items of one pass and yields the results in order. The default is a process
    pool; the Prefect ingest flow runs one task per item instead. `fn` and the items are picklable."""

    def map(self, fn: Callable[..., Any], items: list[Any], desc: str, unit: str, progress: bool) -> Iterator[Any]: ...

    def close(self) -> None: ...


def scene_of(item: SceneSpec | SceneScan | tuple[SceneSpec, int, int]) -> str:
    """A readable label for a work item: the scene id, plus the part when a scene is split."""
    if isinstance(item, SceneScan):
        spec, part, parts = item.spec, item.part, item.parts
    elif isinstance(item, tuple):
        spec, part, parts = item
    else:
        spec, part, parts = item, 0, 1
    return spec.scene_id if parts == 1 else f"{spec.scene_id} part {part + 1}/{parts}"


class _SceneRunner:
    """Runs one function per scene, in order, in a process pool kept for both passes (in-process for 1 worker)."""

    def __init__(self, workers: int) -> None:
        self._pool: ProcessPoolExecutor | None = None
        if workers > 1:
            # fork: workers start in milliseconds; this process has opened no GDAL dataset yet.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))

    def map(self, fn: Callable[..., Any], items: list[Any], desc: str, unit: str, progress: bool) -> Iterator[Any]:
        results = self._pool.map(fn, items) if self._pool is not None else map(fn, items)
        yield from tqdm(results, total=len(items), desc=desc, unit=unit, disable=not progress, file=sys.stderr)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


def _scan_task(task: tuple[SceneSpec, int, int], **kwargs: Any) -> SceneScan:
    spec, part, parts = task
    return scan_scene(spec, part=part, parts=parts, **kwargs)


def _encode(scan: SceneScan, norm: Normalization, config: IngestConfig) -> None:
    encode_scene(scan, norm, config)
    os.unlink(scan.spool_path)


def _scene_entry(scan: SceneScan, config: IngestConfig) -> dict[str, Any]:
    low, high = config.normalization.low, config.normalization.high
    percentiles = {
        name: [s.percentile(low), s.percentile(high)] for name, s in zip(scan.bands, scan.stats, strict=True)
    }
    return {
        "id": scan.spec.scene_id,
        "sources": [{"url": f.url, "band": f.band, "fingerprint": f.fingerprint} for f in scan.spec.all_files],
        "paired_with": scan.spec.partner.scene_id if scan.spec.partner else None,
        "fingerprint": scan.spec.fingerprint,
        "acquired": scan.spec.acquired,
        **scan.meta,
        "tiles": scan.tile_count,
        "dropped_nodata": scan.dropped_nodata,
        "percentiles": percentiles,
    }


def _clean_leftovers(store: Storage, output: str, name: str, listed: set[str]) -> list[str]:
    """Delete shards an interrupted run published without listing them, and stale local staging files."""
    pattern = shard_pattern(name)
    removed = []
    for info in store.list(output):
        base = info.url.rsplit("/", 1)[-1]
        stale_partial = base.startswith(f".{name}.") and base.endswith(".partial")
        if (pattern.match(base) and base not in listed) or stale_partial:
            store.delete(info.url)
            removed.append(info.url)
    return removed


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def ingest(
    config: AtlasConfig,
    *,
    progress: bool = True,
    on_shard: Callable[[ShardRecord], None] | None = None,
    mapper: SceneMapper | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> IngestReport:
    """Ingest new scenes from `config.ingest.source` into `config.ingest.output`. Safe to rerun at any time.

    Runs into the same output take turns (see `atlas_gan.locks`); a run that waits says so through `on_wait`
    (default: a line on stderr). `mapper` runs the per-scene work of both passes (default: a pool of
    `ingest.workers` processes)."""
    started = time.perf_counter()
    cfg = config.ingest
    with exclusive_output(
        cfg.output,
        config.storage,
        purpose="ingest",
        wait_minutes=cfg.lock_wait_minutes,
        lease_seconds=cfg.lock_lease_seconds,
        on_wait=on_wait or _say_on_stderr,
    ) as lease:
        return _ingest_holding_lock(config, lease, started, progress, on_shard, mapper)


def _say_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _ingest_holding_lock(
    config: AtlasConfig,
    lease: Lease,
    started: float,
    progress: bool,
    on_shard: Callable[[ShardRecord], None] | None,
    mapper: SceneMapper | None,
) -> IngestReport:
    cfg = config.ingest
    out_store = storage_for(cfg.output, config.storage)
    src_store = storage_for(cfg.source, config.storage)
    manifest = read_manifest(out_store, cfg.output)
    _check_compatible(manifest, cfg)
    report = IngestReport(manifest_url=manifest_url(cfg.output))

    new_specs, unchanged, rejected = _plan(cfg, src_store, manifest, _partner_store(config))
    report.unchanged_scenes = unchanged

    # Few scenes on many workers: split each into parts (bands of tile rows) so every worker has work.
    parts = 1 if cfg.workers == 1 or not new_specs else min(64, -(-2 * cfg.workers // len(new_specs)))
    tasks = [(spec, part, parts) for spec in new_specs for part in range(parts)]
    runner = mapper or _SceneRunner(min(cfg.workers, max(len(tasks), 1)))
    # The pool closes (waiting for its workers) before the spool folder goes: a failing run must not delete files
    # that workers are still writing (rmtree then fails with "Directory not empty").
    with tempfile.TemporaryDirectory(prefix="atlas-gan-spool-") as spool_dir, contextlib.closing(runner):
        scan = partial(_scan_task, config=cfg, gdal_options=_gdal_options(config), spool_dir=spool_dir)
        pieces = list(runner.map(scan, tasks, "scan scenes", "part", progress))
        pieces_of = {spec.scene_id: pieces[i * parts : (i + 1) * parts] for i, spec in enumerate(new_specs)}
        scans = [merge_parts(pieces_of[spec.scene_id], cfg) for spec in new_specs]
        frozen = manifest is not None and manifest["normalization"] is not None
        bands = manifest["tile"]["bands"] if frozen else _first_bands(scans)
        accepted = _accept(scans, bands, rejected)
        report.rejected = rejected
        if cfg.strict and rejected:
            details = "\n".join(f"  {r['file']}: {r['reason']}" for r in rejected)
            raise IngestRejected(f"--strict: {len(rejected)} input(s) rejected, nothing written:\n{details}")
        if not accepted and manifest is not None and manifest.get("rejected", []) == rejected:
            report.seconds = time.perf_counter() - started
            return report  # nothing new: write nothing at all

        normalization = manifest["normalization"] if frozen else None
        if accepted and not frozen:
            sample_size = cfg.normalization.float_sample_size
            stats = merge_band_statistics([s.stats for s in accepted], len(bands), sample_size)
            norm = Normalization.from_statistics(stats, cfg.normalization)
            normalization = describe(stats, norm, bands, cfg.normalization)
            normalization["computed_from"] = [s.spec.scene_id for s in accepted]
        scene_entries = [_scene_entry(s, cfg) for s in accepted]

        first_index = len(manifest["shards"]) if manifest else 0
        plan = ShardPlan(
            out_store,
            cfg.output,
            cfg.name,
            first_index,
            cfg.shard_max_samples,
            cfg.shard_max_bytes,
            on_shard,
            before_publish=lease.check,
        )
        light = [  # pass 2 works part by part, and needs no histograms
            replace(piece, stats=[])
            for scene in accepted
            for piece in pieces_of[scene.spec.scene_id]
            if piece.tile_count
        ]
        scenes_after = (manifest["scenes"] if manifest else []) + scene_entries
        # The tile index and the footprint map need no shard bytes: a thread builds them while pass 2 runs (most of
        # their time is in shapely, GDAL, zlib and numpy, which release the GIL).
        with ThreadPoolExecutor(1, thread_name_prefix="atlas-gan-index") as background:
            index_ahead = background.submit(_index_and_map, out_store, cfg, manifest, light, scenes_after)
            if light:
                encode = partial(_encode, norm=Normalization.from_manifest(normalization), config=cfg)
                try:  # the shards are laid out first, so every worker writes its samples in place
                    placements = plan.place([(piece.spec.scene_id, piece.sample_lengths) for piece in light])
                    placed = [
                        replace(piece, placements=at, sample_lengths=[])
                        for piece, at in zip(light, placements, strict=True)
                    ]
                    for part, _ in enumerate(runner.map(encode, placed, "write shards", "part", progress)):
                        plan.written(part)
                except BaseException:
                    plan.abort()
                    raise
            pending, footprint_png = index_ahead.result()

    index = pending.finished(plan.records)
    manifest = _updated_manifest(
        manifest or _new_manifest(config), bands, normalization, plan.records, scene_entries, accepted, rejected
    )
    manifest["index"] = {"tiles": INDEX_NAME, "format": "GeoParquet 1.1 (WKB, OGC:CRS84)", "map": MAP_NAME}
    lease.check()
    write_index(out_store, cfg.output, index)
    out_store.write_bytes(join_url(cfg.output, MAP_NAME), footprint_png)
    lease.check()  # the manifest is the one write two runs must never interleave
    write_manifest(out_store, cfg.output, manifest)
    _clean_leftovers(out_store, cfg.output, cfg.name, {s["url"] for s in manifest["shards"]})

    report.wrote = True
    report.tile_index, report.footprint_map = join_url(cfg.output, INDEX_NAME), join_url(cfg.output, MAP_NAME)
    report.added_scenes = [s.spec.scene_id for s in accepted]
    report.new_shards = [r.url for r in plan.records]
    report.new_samples = sum(r.samples for r in plan.records)
    report.dropped_nodata = sum(s.dropped_nodata for s in accepted)
    report.seconds = time.perf_counter() - started
    return report


def _index_rows(pieces: list[SceneScan]) -> TileRows:
    """Index rows of the tiles pass 2 writes, in the order they go into the shards (which shard: later)."""
    rows = TileRows()
    for piece in pieces:
        meta, scene = piece.meta, piece.spec.scene_id
        for row, cols, fractions in piece.strips:
            for col, fraction in zip(cols, fractions, strict=True):
                transform = tile_transform(meta["transform"], row, col)
                key = tile_key(scene, row, col)
                crs, epsg = meta["crs"], meta["epsg"]
                rows.add(key, scene, "", piece.spec.acquired, round(fraction, 6), (row, col), crs, epsg, transform)
    return rows


def _index_and_map(
    store: Storage,
    cfg: IngestConfig,
    manifest: dict[str, Any] | None,
    pieces: list[SceneScan],
    scenes: list[dict[str, Any]],
) -> tuple[PendingIndex, bytes]:
    """The index of the dataset after this run (less the new rows' shards) and its footprint map, with `scenes`
    the manifest's scene entries after it."""
    pending = pending_index(store, cfg.output, manifest, _index_rows(pieces), cfg.tile_size)
    about = {"name": manifest["name"] if manifest else cfg.name, "tile": {"size": cfg.tile_size}, "scenes": scenes}
    return pending, map_png(about, None, pending.all_geometries())


@dataclass
class PendingScenes:
    """What an ingest would do now: scenes at the source that are not in the dataset yet, and changed ones."""

    new: list[str]
    changed: list[str]
    fingerprints: dict[str, str]  # scene id -> content fingerprint, of the new scenes


def pending_scenes(config: AtlasConfig) -> PendingScenes:
    """Compare the source with the dataset's manifest without reading any pixels (for watchers and schedulers)."""
    cfg = config.ingest
    manifest = read_manifest(storage_for(cfg.output, config.storage), cfg.output)
    new, _, rejected = _plan(cfg, storage_for(cfg.source, config.storage), manifest, _partner_store(config))
    changed = [r["scene"] for r in rejected if r["reason"] == CHANGED_REASON]  # not the unpaired ones
    return PendingScenes([spec.scene_id for spec in new], changed, {s.scene_id: s.fingerprint for s in new})


def _partner_store(config: AtlasConfig) -> Storage | None:
    paired = config.ingest.paired
    return storage_for(paired.source, config.storage) if paired else None


CHANGED_REASON = "content changed since it was ingested; ingest into a new output to rebuild the dataset with it"


def _plan(
    cfg: IngestConfig, src_store: Storage, manifest: dict[str, Any] | None, partner_store: Storage | None = None
) -> tuple[list[SceneSpec], list[str], list[dict[str, str]]]:
    """Scenes at the source (with their partners under `ingest.paired`) against the manifest: (new ones, unchanged
    ids, rejections of changed and unpaired ones)."""
    files = list_source(cfg.source, src_store)
    if not files:
        raise SourceEmpty(f"{cfg.source}: no files found (check the folder, glob or s3:// prefix)")
    scenes = discover_scenes(files, cfg.band_file_pattern).scenes
    new, unchanged, rejected = [], [], []
    if cfg.paired is not None and partner_store is not None:
        partner_files = list_source(cfg.paired.source, partner_store)
        if not partner_files:
            raise SourceEmpty(f"ingest.paired.source {cfg.paired.source}: no files found")
        partners = discover_scenes(partner_files, cfg.band_file_pattern).scenes
        scenes, unpaired = pair_scenes(scenes, partners, cfg.paired.source)
        rejected += [_rejection(spec, reason) for spec, reason in unpaired]
    known = {scene["id"]: scene for scene in (manifest or {}).get("scenes", [])}
    for spec in scenes:
        previous = known.get(spec.scene_id)
        if previous is None:
            new.append(spec)
        elif previous["fingerprint"] == spec.fingerprint:
            unchanged.append(spec.scene_id)
        else:
            rejected.append(_rejection(spec, CHANGED_REASON))
    return new, unchanged, rejected


def _accept(scans: list[SceneScan], bands: list[str], rejected: list[dict[str, str]]) -> list[SceneScan]:
    """Scenes that scanned cleanly and match the dataset's band count; the others go to `rejected`."""
    accepted = []
    for scan in scans:
        if scan.reason is None and len(scan.bands) != len(bands):
            scan.reason = f"has {len(scan.bands)} bands {scan.bands}; the dataset has {len(bands)} {bands}"
        if scan.reason is not None:
            rejected.append(_rejection(scan.spec, scan.reason))
        else:
            accepted.append(scan)
    return accepted


def _updated_manifest(
    manifest: dict[str, Any],
    bands: list[str],
    normalization: dict[str, Any] | None,
    records: list[ShardRecord],
    scene_entries: list[dict[str, Any]],
    accepted: list[SceneScan],
    rejected: list[dict[str, str]],
) -> dict[str, Any]:
    """The manifest after this run: new shards and scenes appended, rejections and totals current."""
    manifest["tile"]["bands"] = bands
    manifest["normalization"] = normalization
    manifest["shards"] += [vars(record) for record in records]
    manifest["scenes"] += scene_entries
    manifest["rejected"] = rejected
    manifest["updated"] = _now()
    manifest["runs"].append(
        {
            "at": manifest["updated"],
            "added_scenes": [s.spec.scene_id for s in accepted],
            "new_shards": [r.url for r in records],
            "rejected": len(rejected),
        }
    )
    manifest["totals"] = {
        "scenes": len(manifest["scenes"]),
        "samples": sum(s["samples"] for s in manifest["shards"]),
        "shards": len(manifest["shards"]),
        "dropped_nodata": sum(s["dropped_nodata"] for s in manifest["scenes"]),
    }
    return manifest


def _check_compatible(manifest: dict[str, Any] | None, cfg: IngestConfig) -> None:
    """Adding to an existing dataset with another tile geometry or dtype would corrupt it: refuse up front."""
    if manifest is None:
        return
    tile = manifest["tile"]
    wanted = {"size": cfg.tile_size, "stride": cfg.effective_stride, "dtype": cfg.tile_dtype}
    clashes = [f"{k} {tile[k]} (config: {v})" for k, v in wanted.items() if tile[k] != v]
    if clashes:
        raise IngestConfigMismatch(
            f"{manifest_url(cfg.output)}: the dataset there has tile {', '.join(clashes)}; "
            "use the same settings to add to it, or a new output"
        )


def _first_bands(scans: list[SceneScan]) -> list[str]:
    for scan in scans:
        if scan.reason is None:
            return scan.bands
    return []


def _rejection(spec: SceneSpec, reason: str) -> dict[str, str]:
    files = ", ".join(f.url for f in spec.files)
    if len(spec.files) == 1:
        reason = reason.removeprefix(f"{files}: ")  # the file is named once, in `file`
    return {"scene": spec.scene_id, "file": files, "reason": reason}


def _new_manifest(config: AtlasConfig) -> dict[str, Any]:
    cfg = config.ingest
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "name": cfg.name,
        "created": _now(),
        "updated": None,
        "tile": {
            "size": cfg.tile_size,
            "stride": cfg.effective_stride,
            "bands": [],
            "dtype": cfg.tile_dtype,
            "layout": "CHW",
            "members": {
                "tile.npy": f"normalized tile, {cfg.tile_dtype}, shape (bands, size, size)",
                "mask.npy": "bool (size, size), True where every band is valid",
                "json": "tile metadata: scene, sources, bands, CRS, transform, bounds, acquisition date, nodata",
            },
        },
        "normalization": None,
        "shards": [],
        "scenes": [],
        "rejected": [],
        "runs": [],
        "totals": {},
        "config": config_to_dict(cfg),
    }
