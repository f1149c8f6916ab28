"""Raster side of the pipeline: scene discovery, band-stacked reading, tiling and normalization statistics."""
