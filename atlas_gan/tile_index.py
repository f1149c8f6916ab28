"""The tile index beside a dataset's manifest: one row per tile, as GeoParquet (`tile-index.parquet`), and its map.

Columns: `key` (the WebDataset sample key), `scene`, `shard` (relative to the manifest), `acquired` (ISO date or
null), `nodata_fraction`, `row`/`col` (the tile's window in its scene), `lon`/`lat` (its centre), `geometry` (the
footprint in WGS84, WKB, the GeoParquet primary column), `geometry_native` (WKB in the scene's CRS, named by `crs`,
WKT, and `epsg`). GeoPandas, DuckDB's spatial extension or plain pyarrow read it without atlas-gan.

Ingest writes the index before the manifest; rows of shards the manifest does not list (an interrupted run's) are
dropped when the index is read, so the manifest stays the one source of truth.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from atlas_gan.geo.footprints import polygons, tile_corners, to_wgs84
from atlas_gan.samples import read_members
from atlas_gan.shards import ShardRecord
from atlas_gan.storage import Storage, join_url

INDEX_NAME = "tile-index.parquet"
MAP_NAME = "footprints.png"
GEOPARQUET_VERSION = "1.1.0"


@dataclass
class TileRows:
    """Tiles to index, column by column; `transforms` holds each tile's own affine transform (n, 6)."""

    keys: list[str] = field(default_factory=list)
    scenes: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    acquired: list[str | None] = field(default_factory=list)
    fractions: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    cols: list[int] = field(default_factory=list)
    crs: list[str] = field(default_factory=list)
    epsg: list[int | None] = field(default_factory=list)
    transforms: list[list[float]] = field(default_factory=list)

    def add(
        self,
        key: str,
        scene: str,
        shard: str,
        acquired: str | None,
        fraction: float,
        window: tuple[int, int],
        crs: str,
        epsg: int | None,
        transform: list[float],
    ) -> None:
        self.keys.append(key)
        self.scenes.append(scene)
        self.shards.append(shard)
        self.acquired.append(acquired)
        self.fractions.append(fraction)
        self.rows.append(window[0])
        self.cols.append(window[1])
        self.crs.append(crs)
        self.epsg.append(epsg)
        self.transforms.append(list(transform[:6]))


def shard_of_each(records: list[ShardRecord], count: int) -> list[str]:
    """The shard each of `count` samples written in order landed in (shards are filled one after another)."""
    names = [record.url for record in records for _ in range(record.samples)]
    if len(names) != count:
        raise ValueError(f"the shards hold {len(names)} samples but {count} tiles were indexed")
    return names


@dataclass
class TileGeometry:
    """The tiles' footprints (shapely polygons, native CRS and lon/lat) and centres, in the rows' order."""

    native: np.ndarray
    wgs84: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    bbox: list[float] | None  # west, south, east, north of every corner; None without tiles


def tile_geometry(tiles: TileRows, size: int) -> TileGeometry:
    """Footprints of the tiles: their four corners by their own transforms, reprojected one CRS at a time."""
    import shapely

    count = len(tiles.keys)
    transforms = np.asarray(tiles.transforms, dtype=np.float64).reshape(count, 6)
    x, y = tile_corners(transforms, size)
    lon, lat = np.zeros_like(x), np.zeros_like(y)
    crs = np.asarray(tiles.crs, dtype=object)
    for name in dict.fromkeys(tiles.crs):  # reproject one CRS at a time
        rows = crs == name
        lon[rows], lat[rows] = to_wgs84(name, x[rows], y[rows])
    wgs84 = polygons(lon, lat)
    centres = shapely.centroid(wgs84)
    bbox = [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())] if count else None
    return TileGeometry(polygons(x, y), wgs84, shapely.get_x(centres), shapely.get_y(centres), bbox)


def index_table(tiles: TileRows, size: int, geometry: TileGeometry | None = None) -> Any:
    """A pyarrow Table with GeoParquet metadata for these tiles (`geometry`: their `tile_geometry`, if known)."""
    import pyarrow as pa
    import shapely

    geometry = geometry or tile_geometry(tiles, size)
    table = pa.table(
        {
            "key": pa.array(tiles.keys, pa.string()),
            "scene": pa.array(tiles.scenes, pa.string()).dictionary_encode(),
            "shard": pa.array(tiles.shards, pa.string()).dictionary_encode(),
            "acquired": pa.array(tiles.acquired, pa.string()),
            "nodata_fraction": pa.array(tiles.fractions, pa.float32()),
            "row": pa.array(tiles.rows, pa.int32()),
            "col": pa.array(tiles.cols, pa.int32()),
            "lon": pa.array(geometry.lon, pa.float64()),
            "lat": pa.array(geometry.lat, pa.float64()),
            "crs": pa.array(tiles.crs, pa.string()).dictionary_encode(),
            "epsg": pa.array(tiles.epsg, pa.int32()),
            "geometry_native": pa.array(list(shapely.to_wkb(geometry.native)), pa.binary()),
            "geometry": pa.array(list(shapely.to_wkb(geometry.wgs84)), pa.binary()),
        }
    )
    return with_geo_metadata(table, geometry.bbox)


def with_geo_metadata(table: Any, bbox: list[float] | None = None) -> Any:
    """Attach GeoParquet's `geo` metadata: `geometry` is WKB polygons in OGC:CRS84 (lon/lat), with its bbox
    (computed from the geometries unless given)."""
    import shapely

    if bbox is None and table.num_rows:
        geometries = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
        bbox = [float(v) for v in shapely.total_bounds(geometries)]
    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": ["Polygon"], "orientation": "counterclockwise"}
    if bbox is not None and all(np.isfinite(bbox)):
        column["bbox"] = bbox
    geo = {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}
    return table.replace_schema_metadata({**(table.schema.metadata or {}), b"geo": json.dumps(geo).encode()})


def write_index(store: Storage, output: str, table: Any) -> str:
    """Write the index atomically beside the manifest; returns its URL."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    url = join_url(output, INDEX_NAME)
    store.write_bytes(url, buffer.getvalue())
    return url


def read_index(store: Storage, output: str, manifest: dict[str, Any]) -> Any | None:
    """The index rows of the shards the manifest lists (None when the dataset has no index yet)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    url = join_url(output, INDEX_NAME)
    if not store.exists(url):
        return None
    table = pq.read_table(io.BytesIO(store.read_bytes(url)))
    listed = [shard["url"] for shard in manifest["shards"]]
    shards = table.column("shard").cast("string")
    return table.filter(pc.is_in(shards, value_set=_string_array(listed)))


def _string_array(values: list[str]) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.string())


def rows_from_shards(store: Storage, output: str, shard_names: Iterable[str]) -> TileRows:
    """Index rows rebuilt from the tiles' own JSON metadata (datasets ingested before the index existed)."""
    tiles = TileRows()
    for shard in shard_names:
        with store.open_read(join_url(output, shard)) as stream:
            for name, payload in read_members(stream):
                if not name.endswith(".json"):
                    continue
                meta = json.loads(payload)
                window = meta["window"]
                tiles.add(
                    name.removesuffix(".json"),
                    meta["scene_id"],
                    shard,
                    meta.get("acquired"),
                    meta["nodata_fraction"],
                    (window["row"], window["col"]),
                    meta["crs"],
                    meta.get("epsg"),
                    meta["transform"],
                )
    return tiles


def combined_index(old: Any | None, new: Any) -> Any:
    """Old rows then new ones, one GeoParquet table (the bbox: both tables' merged, recomputed if one lacks it)."""
    import pyarrow as pa

    if old is None or old.num_rows == 0:
        return new
    boxes = [geo_bbox(old), geo_bbox(new)]
    bbox = None
    if all(box is not None for box in boxes):
        lows, highs = np.min([box[:2] for box in boxes], axis=0), np.max([box[2:] for box in boxes], axis=0)
        bbox = [float(v) for v in (*lows, *highs)]
    parts = [old.replace_schema_metadata(None), new.replace_schema_metadata(None)]
    return with_geo_metadata(pa.concat_tables(parts), bbox)


def geo_bbox(table: Any) -> list[float] | None:
    """The bbox of a table's GeoParquet `geo` metadata (minx, miny, maxx, maxy), or None when it has none."""
    raw = (table.schema.metadata or {}).get(b"geo")
    bbox = json.loads(raw)["columns"]["geometry"].get("bbox") if raw else None
    return [float(v) for v in bbox] if bbox is not None and len(bbox) == 4 else None


@dataclass
class PendingIndex:
    """The index after an ingest, less the new tiles' shards: built while the shards are being written."""

    old: Any | None  # the rows of the shards listed before this ingest
    new: TileRows
    geometry: TileGeometry  # of the new rows
    size: int

    def all_geometries(self) -> np.ndarray:
        """Every tile's lon/lat footprint, old rows first."""
        import shapely

        if self.old is None or self.old.num_rows == 0:
            return self.geometry.wgs84
        old = shapely.from_wkb(self.old.column("geometry").to_numpy(zero_copy_only=False))
        return np.concatenate([old, self.geometry.wgs84])

    def finished(self, records: list[ShardRecord]) -> Any:
        """The whole index, once `records` (the shards the new rows went into, in order) are written."""
        placed = replace(self.new, shards=shard_of_each(records, len(self.new.keys)))
        return combined_index(self.old, index_table(placed, self.size, self.geometry))


def pending_index(
    store: Storage, output: str, old_manifest: dict[str, Any] | None, new: TileRows, size: int
) -> PendingIndex:
    """The existing rows of listed shards (rebuilt from the shards if the dataset predates the index) and the new
    tiles' footprints."""
    old = None
    if old_manifest and old_manifest["shards"]:
        old = read_index(store, output, old_manifest)
        if old is None:
            old = index_table(rows_from_shards(store, output, [s["url"] for s in old_manifest["shards"]]), size)
    return PendingIndex(old, new, tile_geometry(new, size), size)


def map_png(manifest: dict[str, Any], table: Any, geometries: np.ndarray | None = None) -> bytes:
    """The dataset's footprint map (`atlas_gan.figures.maps`): every scene's outline and the tile density.
    `geometries`: the tiles' lon/lat footprints when known (else decoded from `table`)."""
    from atlas_gan.figures.maps import footprint_map_png
    from atlas_gan.geo.footprints import scene_outline_wgs84

    outlines = {
        scene["id"]: scene_outline_wgs84(scene["crs"], scene["transform"], scene["width"], scene["height"])
        for scene in manifest["scenes"]
    }
    import shapely

    if geometries is None:
        geometries = (
            shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False)) if table is not None else []
        )
    title = (
        f"dataset {manifest['name']!r}: {len(geometries):,} tiles of {manifest['tile']['size']} px "
        f"from {len(outlines)} scene(s)"
    )
    return footprint_map_png(outlines, np.asarray(geometries), title)


def dataset_map(store: Storage, output: str) -> bytes:
    """The footprint map of the dataset at `output`, from its index (rebuilt from the shards when it has none)."""
    from atlas_gan.shards import read_manifest

    manifest = read_manifest(store, output)
    if manifest is None or not manifest["shards"]:
        raise ValueError(f"{output}: no dataset there (no manifest.json with shards)")
    table = read_index(store, output, manifest)
    if table is None:
        rows = rows_from_shards(store, output, [shard["url"] for shard in manifest["shards"]])
        table = index_table(rows, manifest["tile"]["size"])
    return map_png(manifest, table)
