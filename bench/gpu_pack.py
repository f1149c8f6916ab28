"""Pack what `bench/gpu.py` needs on a GPU machine that has neither GDAL nor the Inception file nor a network.

    python bench/gpu_pack.py [--out .gpu-pack] [--data ../shared/data] [--sizes 64,128,256] [--crop 768]

Writes, under `--out`:
- `shards-<size>/`: real atlas-gan shards (manifest, statistics, tiles) of a `--crop` px square from the middle of
  one landsat8-parana scene (bands B4, B3, B2, float16 tiles), ingested by atlas-gan at each size; the GPU run
  streams them through the real loader (repeating epochs) and feeds the trainer with them;
- `inception-fp16.pt`: the FID Inception weights found here (`resolve_weights`), pool3 layers only, stored in
  half precision to fit the 64 MiB a device call carries; `load_inception` upcasts them to fp32. Good for timing and
  for comparing bf16 with fp32 FID on the same samples, not for FID values comparable with published ones.
Runs where rasterio is installed (here); prints what it wrote and the total size.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import rasterio
import torch
from rasterio.windows import Window
from shared_data import SHARED_DATA

from atlas_gan.config import load_config
from atlas_gan.ingest import ingest
from atlas_gan.metrics.weights import load_state, resolve_weights

SCENE = "LC08_L1TP_224077_20200518_20200518_01_RT"
BANDS = ("B4", "B3", "B2")


def crop_scene(source: Path, work: Path, crop: int) -> Path:
    """The scene's three band files cut to a centred `crop` x `crop` window (georeferencing kept)."""
    folder = work / "landsat8-parana-crop"
    folder.mkdir(parents=True)
    for band in BANDS:
        with rasterio.open(source / f"{SCENE}_{band}.TIF") as src:
            if min(src.width, src.height) < crop:
                raise SystemExit(f"{src.name}: {src.width}x{src.height} is smaller than --crop {crop}")
            window = Window((src.width - crop) // 2, (src.height - crop) // 2, crop, crop)
            profile = src.profile | {
                "width": crop,
                "height": crop,
                "transform": src.window_transform(window),
                "tiled": False,
            }
            with rasterio.open(folder / f"{SCENE}_{band}.TIF", "w", **profile) as dst:
                dst.write(src.read(window=window))
    return folder


def half_precision_inception(target: Path) -> str:
    weights = resolve_weights()
    state = {key: value for key, value in load_state(weights.path).items() if not key.startswith("output.")}
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, target)
    return f"{weights.path} ({weights.source})"


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".gpu-pack"))
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--sizes", default="64,128,256", help="comma-separated tile sizes")
    parser.add_argument("--crop", type=int, default=768, help="side of the scene crop, px")
    parser.add_argument("--no-inception", dest="inception", action="store_false", help="pack the shards only")
    args = parser.parse_args()
    source = args.data / "geotiff" / "landsat8-parana"
    if not source.is_dir():
        parser.error(f"{source}: not found (set --data or ATLAS_SHARED_DATA)")
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="atlas-gpu-pack-") as tmp:
        scene = crop_scene(source, Path(tmp), args.crop)
        for size in sizes:
            overrides = [f"ingest.source={scene}", f"ingest.output={args.out / f'shards-{size}'}"]
            overrides += [f"ingest.tile_size={size}", "ingest.bands=[B4,B3,B2]", "ingest.workers=1"]
            ingest(load_config(None, overrides), progress=False)
            print(f"shards-{size}: {folder_bytes(args.out / f'shards-{size}') / 2**20:.1f} MiB")
    if args.inception:
        found = half_precision_inception(args.out / "inception-fp16.pt")
        print(f"inception-fp16.pt from {found}: {(args.out / 'inception-fp16.pt').stat().st_size / 2**20:.1f} MiB")
    print(f"{args.out}: {folder_bytes(args.out) / 2**20:.1f} MiB in all")


if __name__ == "__main__":
    main()
