"""Real tiles beside generated ones (one band triplet, one stretch), a translation beside its input and target, and
per-band value histograms."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from atlas_gan.figures.canvas import new_figure, png_bytes
from atlas_gan.preview import tile_grid


def real_vs_generated_png(
    real: Sequence[np.ndarray], generated: Sequence[np.ndarray], positions: list[int], title: str, label: str
) -> bytes:
    """Tiles in [0, 1] (bands, h, w): real on the left, generated on the right, both shown with the same mapping
    of normalized values to grey levels (0 black, 1 white), so a colour cast or a contrast loss is visible."""
    columns = max(1, int(np.ceil(np.sqrt(max(len(real), len(generated))))))
    left = tile_grid(list(real), positions, columns)
    right = tile_grid(list(generated), positions, columns)
    side = max(left.shape[0], right.shape[0])
    figure = new_figure(1200, int(600 * side / max(left.shape[1], 1)) + 90)
    figure.suptitle(f"{title} - bands {label}", fontsize="medium")
    for axes, grid, name in zip(figure.subplots(1, 2), (left, right), ("real tiles", "generated (EMA)"), strict=True):
        axes.imshow(grid, interpolation="nearest")
        axes.set_title(f"{name}: {len(real) if grid is left else len(generated)}", fontsize="small")
        axes.set_axis_off()
    return png_bytes(figure)


def translation_png(
    inputs: Sequence[np.ndarray],
    outputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray] | None,
    input_positions: list[int],
    output_positions: list[int],
    title: str,
) -> bytes:
    """Held-out tiles in [0, 1]: the input bands, the translation, and the target bands it should match (the last
    two with one mapping of values to grey levels); an unpaired translation (`targets` None) has no target."""
    columns = max(1, int(np.ceil(np.sqrt(len(inputs)))))
    grids = [tile_grid(list(inputs), input_positions, columns), tile_grid(list(outputs), output_positions, columns)]
    names = ["input", "translated (EMA)"]
    if targets is not None:
        grids.append(tile_grid(list(targets), output_positions, columns))
        names.append("target bands")
    figure = new_figure(500 * len(grids), int(500 * grids[0].shape[0] / max(grids[0].shape[1], 1)) + 90)
    figure.suptitle(title, fontsize="medium")
    for axes, grid, name in zip(figure.subplots(1, len(grids)), grids, names, strict=True):
        axes.imshow(grid, interpolation="nearest")
        axes.set_title(f"{name}: {len(inputs)}", fontsize="small")
        axes.set_axis_off()
    return png_bytes(figure)


def band_histograms_png(
    real: np.ndarray, generated: np.ndarray, bands: Sequence[str], title: str, units: str, bins: int = 80
) -> bytes:
    """`real`/`generated`: (bands, values) in physical units. One panel per band, densities on shared bins from the
    real values' 0.1-99.9 percentiles (widened to what the generator draws, within reason)."""
    count = len(bands)
    columns = min(4, count)
    rows = -(-count // columns)
    figure = new_figure(max(640, 320 * columns + 80), 230 * rows + 80)
    figure.suptitle(title, fontsize="medium")
    panels = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for index, (axes, name) in enumerate(zip(panels, bands, strict=False)):
        low, high = np.percentile(real[index], [0.1, 99.9]) if real[index].size else (0.0, 1.0)
        fake_low, fake_high = np.percentile(generated[index], [0.5, 99.5]) if generated[index].size else (low, high)
        span = max(high - low, 1e-9)
        low, high = max(min(low, fake_low), low - span), min(max(high, fake_high), high + span)
        edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
        axes.hist(real[index], bins=edges, density=True, histtype="stepfilled", alpha=0.45, label="real")
        axes.hist(generated[index], bins=edges, density=True, histtype="step", linewidth=1.4, label="generated")
        axes.set_title(name, fontsize="small")
        axes.set_xlabel(units, fontsize="x-small")
        axes.tick_params(labelsize="x-small")
        axes.set_yticks([])
        if index == 0:
            axes.legend(fontsize="x-small")
    for axes in panels[count:]:
        axes.set_axis_off()
    return png_bytes(figure)
