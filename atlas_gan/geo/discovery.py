"""Find scenes under a folder, glob or s3:// prefix: one multi-band file, or a group of single-band files.

Grouping is by file name only (the configurable band-file pattern); whether a file is a raster at all is decided
later by opening it with rasterio, never by its extension.
"""

from __future__ import annotations

import glob
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from atlas_gan.storage import ObjectInfo, Storage, is_s3, safe_name

# GDAL side-car files and hidden files are never scenes of their own.
_SIDECAR = re.compile(r"(\.aux\.xml|\.ovr|\.msk|\.partial)$", re.IGNORECASE)
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class BandFile:
    """One source file; `band` is the band name from the file name (empty for a multi-band file)."""

    url: str
    band: str
    fingerprint: str
    size: int


@dataclass(frozen=True)
class SceneSpec:
    scene_id: str
    files: tuple[BandFile, ...]
    grouped: bool  # True: one band per file, named by the pattern; False: one file holding every band
    acquired: str | None
    partner: SceneSpec | None = None  # `ingest.paired`: the second source's scene over the same ground

    @property
    def fingerprint(self) -> str:
        own = ";".join(f"{f.url}={f.fingerprint}" for f in self.files)
        return own if self.partner is None else f"{own}|{self.partner.fingerprint}"

    @property
    def all_files(self) -> tuple[BandFile, ...]:
        """This scene's files, then its partner's."""
        return self.files + (self.partner.files if self.partner else ())


@dataclass
class Discovery:
    scenes: list[SceneSpec] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # side-car files, not rejected


def list_source(source: str, store: Storage) -> list[ObjectInfo]:
    """Every file under a local folder, a local glob, or an s3:// prefix, sorted."""
    if not is_s3(source) and _GLOB_CHARS.search(source):
        infos = (store.stat(p) for p in sorted(glob.glob(source, recursive=True)) if os.path.isfile(p))
        return [info for info in infos if info is not None]
    return store.list(source)


_DATE_PATTERNS = (
    # 20200518, 20170613T101031 (Landsat, Sentinel-2 product names)
    (re.compile(r"(?<!\d)((?:19|20)\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?:T\d{6})?(?!\d)"), "{0}-{1}-{2}"),
    # 2020-05-18 / 2020_05_18
    (re.compile(r"(?<!\d)((?:19|20)\d{2})[-_](0[1-9]|1[0-2])[-_](0[1-9]|[12]\d|3[01])(?!\d)"), "{0}-{1}-{2}"),
    # 201404 (year + month)
    (re.compile(r"(?<!\d)((?:19|20)\d{2})(0[1-9]|1[0-2])(?!\d)"), "{0}-{1}"),
    # landsat_1985
    (re.compile(r"(?<!\d)((?:19|20)\d{2})(?!\d)"), "{0}"),
)


def acquisition_date_from_name(name: str) -> str | None:
    """The acquisition date an ISO prefix (YYYY-MM-DD, YYYY-MM or YYYY) as found in a file name, else None."""
    for pattern, template in _DATE_PATTERNS:
        match = pattern.search(name)
        if match:
            return template.format(*match.groups())
    return None


def _basename(url: str) -> str:
    return PurePosixPath(url).name if is_s3(url) else os.path.basename(url)


def _dirname(url: str) -> str:
    return str(PurePosixPath(url).parent) if is_s3(url) else os.path.dirname(url)


def _stem(name: str) -> str:
    return name.split(".", 1)[0] if not name.startswith(".") else name


def discover_scenes(files: list[ObjectInfo], band_file_pattern: str) -> Discovery:
    """Group files into scenes; scene ids are unique, file-name based, and safe as WebDataset keys."""
    pattern = re.compile(band_file_pattern, re.IGNORECASE)
    found = Discovery()
    groups: dict[tuple[str, str], list[tuple[str, ObjectInfo]]] = defaultdict(list)
    singles: list[ObjectInfo] = []
    for info in files:
        name = _basename(info.url)
        if name.startswith(".") or _SIDECAR.search(name):
            found.skipped.append(info.url)
            continue
        match = pattern.match(name)
        if match:
            groups[(_dirname(info.url), match.group("scene"))].append((match.group("band"), info))
        else:
            singles.append(info)

    candidates: list[tuple[str, str, SceneSpec]] = []  # (base id, folder, spec)
    for (folder, scene), members in groups.items():
        band_files = tuple(BandFile(i.url, band, i.fingerprint, i.size) for band, i in sorted(members, key=_band_order))
        spec = SceneSpec("", band_files, grouped=True, acquired=acquisition_date_from_name(scene))
        candidates.append((safe_name(scene), folder, spec))
    for info in singles:
        name = _basename(info.url)
        spec = SceneSpec(
            "",
            (BandFile(info.url, "", info.fingerprint, info.size),),
            grouped=False,
            acquired=acquisition_date_from_name(name),
        )
        candidates.append((safe_name(_stem(name)), _dirname(info.url), spec))

    counts: dict[str, int] = defaultdict(int)
    for base, _, _ in candidates:
        counts[base] += 1
    for base, folder, spec in candidates:
        scene_id = base if counts[base] == 1 else safe_name(f"{_basename(folder)}_{base}")
        found.scenes.append(SceneSpec(scene_id, spec.files, spec.grouped, spec.acquired))
    found.scenes.sort(key=lambda s: s.scene_id)
    ids = [s.scene_id for s in found.scenes]
    if len(set(ids)) != len(ids):  # same folder name and file stem in two places: fall back to full paths
        found.scenes = sorted(
            (
                SceneSpec(
                    safe_name(s.files[0].url if not s.grouped else f"{_dirname(s.files[0].url)}_{s.scene_id}"),
                    s.files,
                    s.grouped,
                    s.acquired,
                )
                for s in found.scenes
            ),
            key=lambda s: s.scene_id,
        )
    return found


def pair_scenes(
    scenes: list[SceneSpec], partners: list[SceneSpec], partner_source: str
) -> tuple[list[SceneSpec], list[tuple[SceneSpec, str]]]:
    """Each scene with its partner from `ingest.paired.source`: the only partner scene when there is one, else the
    partner of the same scene id. Returns (paired scenes, [(unpaired scene, reason)])."""
    by_id = {p.scene_id: p for p in partners}
    paired, unpaired = [], []
    for scene in scenes:
        partner = partners[0] if len(partners) == 1 else by_id.get(scene.scene_id)
        if partner is None:
            known = ", ".join(sorted(by_id)[:5]) + (", ..." if len(by_id) > 5 else "")
            unpaired.append((scene, f"no partner: {partner_source} has no scene {scene.scene_id!r} (it has {known})"))
            continue
        paired.append(SceneSpec(scene.scene_id, scene.files, scene.grouped, scene.acquired, partner))
    return paired, unpaired


def _band_order(item: tuple[str, ObjectInfo]) -> tuple[int, str]:
    """B2 < B3 < B10 < B8A < BQA: numeric part first, so band files sort the way sensors number them."""
    band = item[0].upper()
    digits = re.sub(r"\D", "", band)
    return (int(digits) if digits else 10_000, band)
