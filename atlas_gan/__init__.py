"""atlas-gan: generative adversarial networks for satellite imagery, from GeoTIFF to registered generator."""

__version__ = "0.1.0"
