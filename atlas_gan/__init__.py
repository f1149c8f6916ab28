"""atlas-gan: generative adversarial networks for satellite imagery, from GeoTIFF to registered generator.

The one call a Python user needs to use a trained generator::

    import atlas_gan

    champion = atlas_gan.load_generator("models:/atlas-gan-satellite@champion")
    champion.generator              # the torch.nn.Module (EMA weights, eval mode)
    tiles = champion.generate(16, seed=0)   # (16, bands, size, size) float32 in [-1, 1]
    champion.bands, champion.meta["normalization"]   # band names; how to map back to source units
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from atlas_gan.sampling import Sampler

__version__ = "0.1.0"
__all__ = ["__version__", "load_generator"]


def load_generator(uri: str, tracking_uri: str | None = None) -> Sampler:
    """The generator behind a registry URI (`models:/NAME@champion`, `models:/NAME/3`, `runs:/ID/generator`) or a
    checkpoint path / s3:// URL, with its bands, label vocabulary and normalization.

    `tracking_uri` defaults to the configured MLflow store, resolved as the CLI does it (`tracking.uri` of
    $ATLAS_CONFIG or the packaged default, else $MLFLOW_TRACKING_URI, else the embedded sqlite store)."""
    from atlas_gan.config import resolve_config
    from atlas_gan.sampling import load_configured_sampler

    return load_configured_sampler(uri, resolve_config(), tracking_uri)
