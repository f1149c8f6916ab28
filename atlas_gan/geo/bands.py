"""Band selection by name or index, without GDAL: training and scoring pick bands from a manifest's names."""

from __future__ import annotations

from collections.abc import Sequence


class SceneError(ValueError):
    """The scene cannot be ingested; the message is the reason recorded in the manifest."""


def _same_name(a: str, b: str) -> bool:
    """B04 == b4 == B4: case-insensitive, leading zeros of the number ignored."""

    def canon(text: str) -> str:
        text = text.strip().upper()
        return text[0] + text[1:].lstrip("0") if text[:1].isalpha() and text[1:2] == "0" else text

    return canon(a) == canon(b)


def select_bands(available: Sequence[str], wanted: Sequence[str | int] | None) -> list[int]:
    """0-based positions of the wanted bands (names or 1-based indexes) among `available`."""
    if wanted is None:
        return list(range(len(available)))
    positions = []
    for band in wanted:
        if isinstance(band, int):
            if band > len(available):
                raise SceneError(f"band index {band} out of range: the scene has {len(available)} bands")
            positions.append(band - 1)
            continue
        matches = [i for i, name in enumerate(available) if _same_name(name, band)]
        if not matches and band.isdigit() and 1 <= int(band) <= len(available):
            matches = [int(band) - 1]
        if not matches:
            raise SceneError(f"band {band!r} not found: the scene has bands {list(available)}")
        positions.append(matches[0])
    return positions
